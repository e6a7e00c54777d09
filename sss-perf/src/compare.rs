//! `sss-perf compare`: runs server/client process pairs for each stack alternately (A B A B
//! …) over the standard scenarios and prints medians, extremes and the sss/quinn ratio.
//!
//! Every run gets a fresh server process on a fresh port (127.0.0.1:0) and a fresh client
//! process; with `--pin` the client runs on CPU 0 and the server on CPU 1 (`taskset`). A stack
//! whose server exits with code 2 (not implemented) is shown as `n/a`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{PerfError, Result};
use crate::stack::StackKind;
use crate::stats::summary;
use crate::tuning::CipherChoice;

/// The workloads the runner knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One connection, one stream, `--bulk-bytes`.
    Bulk1,
    /// One connection, `--many-streams` concurrent streams, `--bulk-bytes` in total.
    BulkMany,
    /// `--connects` fresh client processes per round, each measuring connect time.
    Connect,
    /// `--requests` sequential round trips of `--size` bytes.
    Rr,
    /// One stream of `--lossy-bytes` through the impairment relay, per `--loss-pct`.
    Lossy,
}

/// Options of `sss-perf compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Rounds per scenario; each round runs every stack once.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Stacks, in the order run within a round; the ratio is second / first.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "quinn,sss")]
    pub stacks: Vec<StackKind>,
    /// Scenarios to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "bulk1,bulk-many,connect,rr,lossy"
    )]
    pub scenarios: Vec<Scenario>,
    /// Bytes per bulk run.
    #[arg(long, value_parser = crate::parse_size, default_value = "1G")]
    pub bulk_bytes: u64,
    /// Streams of the many-stream bulk run.
    #[arg(long, default_value_t = 100)]
    pub many_streams: u32,
    /// Client processes per round in the connect scenario.
    #[arg(long, default_value_t = 10)]
    pub connects: u32,
    /// Round trips in the request/response scenario.
    #[arg(long, default_value_t = 10_000)]
    pub requests: u32,
    /// Request and response size in the request/response scenario.
    #[arg(long, value_parser = crate::parse_size, default_value = "64")]
    pub size: u64,
    /// Pin the client to CPU 0 and the server to CPU 1 with taskset.
    #[arg(long)]
    pub pin: bool,
    /// AEAD for both stacks.
    #[arg(long, value_enum, default_value_t = CipherChoice::Auto)]
    pub cipher: CipherChoice,
    /// SSS clients send the connect probe after the handshake, not as early data inside it
    /// (for a before/after comparison of early data with one binary).
    #[arg(long)]
    pub no_early_data: bool,
    /// Impairment relay command. Placeholders: {listen} {forward} {loss} (fraction)
    /// {loss_pct} {delay_ms} (one way = RTT/2) {rtt_ms}. Default: `<dir of this binary>/
    /// examples/impair --listen {listen} --forward {forward} --loss {loss} --delay-ms
    /// {delay_ms}` if that file exists; otherwise the lossy scenario is skipped.
    #[arg(long)]
    pub relay_cmd: Option<String>,
    /// Loss rates in percent for the lossy scenario.
    #[arg(long, value_delimiter = ',', default_value = "1,5")]
    pub loss_pct: Vec<f64>,
    /// Round-trip time the relay adds, in milliseconds.
    #[arg(long, default_value_t = 40)]
    pub rtt_ms: u32,
    /// Bytes per lossy run.
    #[arg(long, value_parser = crate::parse_size, default_value = "2M")]
    pub lossy_bytes: u64,
    /// A client taking longer than this is killed and counted as failed.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// The sss-perf binary to run (default: this one).
    #[arg(long)]
    pub exe: Option<PathBuf>,
}

/// What one client run produced.
enum Outcome {
    Report(Value),
    NotImplemented,
    Failed(String),
}

/// One table row: the samples of each stack.
#[derive(Default)]
struct Row {
    unit: &'static str,
    samples: BTreeMap<String, Vec<f64>>,
    missing: BTreeMap<String, &'static str>,
}

/// Runs the comparison and prints the table to stdout (progress goes to stderr).
pub fn run(args: &CompareArgs) -> Result<()> {
    let runner = Runner::new(args)?;
    let mut rows: Vec<(String, Row)> = Vec::new();
    let mut udp = BTreeMap::<String, UdpCounters>::new();
    for &scenario in &args.scenarios {
        let relay = if scenario == Scenario::Lossy {
            match runner.relay_template() {
                Some(t) => Some(t),
                None => {
                    eprintln!(
                        "compare: no impairment relay (see --relay-cmd); lossy scenario skipped"
                    );
                    continue;
                }
            }
        } else {
            None
        };
        for round in 1..=args.rounds {
            for &stack in &args.stacks {
                let before = UdpCounters::read();
                let results = runner.scenario(scenario, stack, relay.as_deref());
                udp.entry(stack.to_string())
                    .or_default()
                    .add(&UdpCounters::read().since(&before));
                for (label, unit, outcome) in results {
                    eprintln!(
                        "compare: [{label} {round}/{}] {stack}: {}",
                        args.rounds,
                        describe(&outcome)
                    );
                    // A scenario can give several rows under one label (p50 and p99).
                    let row = match rows.iter_mut().find(|(l, r)| *l == label && r.unit == unit) {
                        Some((_, row)) => row,
                        None => {
                            rows.push((
                                label.clone(),
                                Row {
                                    unit,
                                    ..Row::default()
                                },
                            ));
                            &mut rows.last_mut().expect("just pushed").1
                        }
                    };
                    record(row, stack, unit, outcome);
                }
            }
        }
    }
    print_table(args, &rows, &udp);
    Ok(())
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Report(v) => v.to_string(),
        Outcome::NotImplemented => "n/a (not implemented)".into(),
        Outcome::Failed(why) => format!("FAILED: {why}"),
    }
}

fn record(row: &mut Row, stack: StackKind, unit: &'static str, outcome: Outcome) {
    let key = stack.to_string();
    let field = match unit {
        "Gbit/s" => "gbps",
        "ms" => "connect_ms",
        "us p50" => "p50_us",
        "us p99" => "p99_us",
        _ => "mean_us",
    };
    match outcome {
        Outcome::Report(v) => match v.get(field).and_then(Value::as_f64) {
            Some(x) => row.samples.entry(key).or_default().push(x),
            None => {
                row.missing.insert(key, "bad output");
            }
        },
        Outcome::NotImplemented => {
            row.missing.insert(key, "n/a");
        }
        Outcome::Failed(_) => {
            row.missing.entry(key).or_insert("FAILED");
        }
    }
}

struct Runner<'a> {
    args: &'a CompareArgs,
    exe: PathBuf,
}

/// A process killed when dropped (only ever one this runner started).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl<'a> Runner<'a> {
    fn new(args: &'a CompareArgs) -> Result<Self> {
        let exe = match &args.exe {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| PerfError::io("locating sss-perf", e))?,
        };
        Ok(Self { args, exe })
    }

    fn relay_template(&self) -> Option<String> {
        if let Some(t) = &self.args.relay_cmd {
            return Some(t.clone());
        }
        let impair = self.exe.parent()?.join("examples").join("impair");
        impair.exists().then(|| {
            format!(
                "{} --listen {{listen}} --forward {{forward}} --loss {{loss}} --delay-ms {{delay_ms}}",
                impair.display()
            )
        })
    }

    fn command(&self, cpu: u32) -> Command {
        if self.args.pin {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(&self.exe);
            c
        } else {
            Command::new(&self.exe)
        }
    }

    /// One scenario run for one stack: `(row label, unit, outcome)` per produced figure.
    fn scenario(
        &self,
        scenario: Scenario,
        stack: StackKind,
        relay: Option<&str>,
    ) -> Vec<(String, &'static str, Outcome)> {
        let a = self.args;
        let bulk = |streams: u32, bytes: u64| {
            vec![
                "--bytes".to_string(),
                bytes.to_string(),
                "--streams".into(),
                streams.to_string(),
            ]
        };
        match scenario {
            Scenario::Bulk1 => {
                let label = format!("bulk, 1 stream, {}", human(a.bulk_bytes));
                vec![(
                    label,
                    "Gbit/s",
                    self.pair(stack, &bulk(1, a.bulk_bytes), None),
                )]
            }
            Scenario::BulkMany => {
                let label = format!(
                    "bulk, {} streams, {} total",
                    a.many_streams,
                    human(a.bulk_bytes)
                );
                vec![(
                    label,
                    "Gbit/s",
                    self.pair(stack, &bulk(a.many_streams, a.bulk_bytes), None),
                )]
            }
            Scenario::Connect => {
                let label = "connect to first byte".to_string();
                let outcomes = self.connects(stack, a.connects);
                outcomes
                    .into_iter()
                    .map(|o| (label.clone(), "ms", o))
                    .collect()
            }
            Scenario::Rr => {
                let args = vec![
                    "--requests".to_string(),
                    a.requests.to_string(),
                    "--size".into(),
                    a.size.to_string(),
                ];
                let label = format!("{} req/resp of {} B", a.requests, a.size);
                let outcome = self.pair(stack, &args, None);
                let copy = match &outcome {
                    Outcome::Report(v) => Outcome::Report(v.clone()),
                    Outcome::NotImplemented => Outcome::NotImplemented,
                    Outcome::Failed(w) => Outcome::Failed(w.clone()),
                };
                vec![(label.clone(), "us p50", outcome), (label, "us p99", copy)]
            }
            Scenario::Lossy => a
                .loss_pct
                .iter()
                .map(|&loss| {
                    let label = format!(
                        "1 stream, {}, {loss}% loss, {} ms RTT",
                        human(a.lossy_bytes),
                        a.rtt_ms
                    );
                    let outcome =
                        self.pair(stack, &bulk(1, a.lossy_bytes), relay.map(|t| (t, loss)));
                    (label, "Gbit/s", outcome)
                })
                .collect(),
        }
    }

    /// Starts a server; `Err(outcome)` when it could not (not implemented or failed).
    fn server(&self, stack: StackKind) -> std::result::Result<(Guard, String, String), Outcome> {
        let mut cmd = self.command(1);
        cmd.args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--stack",
            &stack.to_string(),
        ])
        .args(["--cipher", &cipher_arg(self.args.cipher)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
        let child = cmd
            .spawn()
            .map_err(|e| Outcome::Failed(format!("spawning server: {e}")))?;
        let mut guard = Guard(child);
        let stdout = guard.0.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let parsed = line
            .trim()
            .strip_prefix("eid=")
            .and_then(|rest| rest.split_once(" addr="));
        match parsed {
            Some((eid, addr)) => Ok((guard, eid.to_owned(), addr.to_owned())),
            None => match guard.0.wait().map(|s| s.code()) {
                Ok(Some(2)) => Err(Outcome::NotImplemented),
                status => Err(Outcome::Failed(format!(
                    "server printed {line:?}, exit {status:?}"
                ))),
            },
        }
    }

    /// A server and one client with `client_args`, optionally through the relay.
    fn pair(
        &self,
        stack: StackKind,
        client_args: &[String],
        relay: Option<(&str, f64)>,
    ) -> Outcome {
        let (_server, eid, addr) = match self.server(stack) {
            Ok(s) => s,
            Err(outcome) => return outcome,
        };
        let (_relay, target_addr) = match relay {
            None => (None, addr),
            Some((template, loss)) => match self.relay(template, loss, &addr) {
                Ok((guard, listen)) => (Some(guard), listen),
                Err(e) => return Outcome::Failed(e),
            },
        };
        self.client(stack, &format!("{eid}@{target_addr}"), client_args)
    }

    /// One server, `n` client processes each measuring connect time with a 1-byte upload.
    fn connects(&self, stack: StackKind, n: u32) -> Vec<Outcome> {
        let (_server, eid, addr) = match self.server(stack) {
            Ok(s) => s,
            Err(outcome) => return vec![outcome],
        };
        let args = ["--bytes", "1", "--streams", "1"].map(String::from);
        (0..n)
            .map(|_| self.client(stack, &format!("{eid}@{addr}"), &args))
            .collect()
    }

    fn client(&self, stack: StackKind, target: &str, extra: &[String]) -> Outcome {
        let mut cmd = self.command(0);
        cmd.args(["client", "--connect", target, "--stack", &stack.to_string()])
            .args(["--cipher", &cipher_arg(self.args.cipher)])
            .args(self.args.no_early_data.then_some("--no-early-data"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(format!("spawning client: {e}")),
        };
        let mut guard = Guard(child);
        let deadline = Instant::now() + Duration::from_secs(self.args.timeout_secs);
        let status = loop {
            match guard.0.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => return Outcome::Failed("timed out".into()),
                Err(e) => return Outcome::Failed(format!("waiting for client: {e}")),
            }
        };
        let mut out = String::new();
        if let Some(stdout) = guard.0.stdout.take() {
            for line in BufReader::new(stdout)
                .lines()
                .map_while(std::result::Result::ok)
            {
                out = line;
            }
        }
        match status.code() {
            Some(0) => match serde_json::from_str(&out) {
                Ok(v) => Outcome::Report(v),
                Err(e) => Outcome::Failed(format!("client printed {out:?}: {e}")),
            },
            Some(2) => Outcome::NotImplemented,
            code => Outcome::Failed(format!("client exit {code:?}")),
        }
    }

    fn relay(
        &self,
        template: &str,
        loss_pct: f64,
        forward: &str,
    ) -> std::result::Result<(Guard, String), String> {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map_err(|e| format!("finding a relay port: {e}"))?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let command = template
            .replace("{listen}", &listen)
            .replace("{forward}", forward)
            .replace("{loss_pct}", &loss_pct.to_string())
            .replace("{loss}", &(loss_pct / 100.0).to_string())
            .replace(
                "{delay_ms}",
                &(f64::from(self.args.rtt_ms) / 2.0).to_string(),
            )
            .replace("{rtt_ms}", &self.args.rtt_ms.to_string());
        let mut words = command.split_whitespace();
        let program = words.next().ok_or("empty relay command")?;
        let child = Command::new(program)
            .args(words)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning relay {command:?}: {e}"))?;
        // The relay has no readiness signal in common; give it time to bind.
        std::thread::sleep(Duration::from_millis(300));
        Ok((Guard(child), listen))
    }
}

fn cipher_arg(c: CipherChoice) -> String {
    match c {
        CipherChoice::Auto => "auto",
        CipherChoice::Aes256 => "aes256",
        CipherChoice::Chacha20 => "chacha20",
    }
    .to_owned()
}

/// `1G`-style rendering of a byte count (SI).
fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000_000 && b % 1_000_000_000 == 0 => format!("{} GB", b / 1_000_000_000),
        b if b >= 1_000_000 && b % 1_000_000 == 0 => format!("{} MB", b / 1_000_000),
        b if b >= 1_000 && b % 1_000 == 0 => format!("{} kB", b / 1_000),
        b => format!("{b} B"),
    }
}

/// The kernel's UDP error counters (`/proc/net/snmp`): drops here mean a socket buffer
/// overflowed during a run, which makes the run measure the kernel, not the stack.
#[derive(Debug, Default, Clone, Copy)]
struct UdpCounters {
    in_errors: u64,
    rcvbuf_errors: u64,
    sndbuf_errors: u64,
}

impl UdpCounters {
    fn read() -> Self {
        let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
        let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            return Self::default();
        };
        let mut c = Self::default();
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            let v = value.parse().unwrap_or(0);
            match name {
                "InErrors" => c.in_errors = v,
                "RcvbufErrors" => c.rcvbuf_errors = v,
                "SndbufErrors" => c.sndbuf_errors = v,
                _ => {}
            }
        }
        c
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            in_errors: self.in_errors.saturating_sub(before.in_errors),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(before.rcvbuf_errors),
            sndbuf_errors: self.sndbuf_errors.saturating_sub(before.sndbuf_errors),
        }
    }

    fn add(&mut self, other: &Self) {
        self.in_errors += other.in_errors;
        self.rcvbuf_errors += other.rcvbuf_errors;
        self.sndbuf_errors += other.sndbuf_errors;
    }
}

fn cell(row: &Row, stack: StackKind) -> (String, Option<f64>) {
    let key = stack.to_string();
    match row.samples.get(&key).and_then(|v| summary(v)) {
        Some((median, min, max)) => {
            let n = row.samples[&key].len();
            let failed = if row.missing.contains_key(&key) {
                " +FAILED"
            } else {
                ""
            };
            (
                format!(
                    "{} [{} .. {}] n={n}{failed}",
                    fmt(median),
                    fmt(min),
                    fmt(max)
                ),
                Some(median),
            )
        }
        None => (
            row.missing.get(&key).copied().unwrap_or("-").to_owned(),
            None,
        ),
    }
}

/// Three significant digits, whatever the magnitude.
fn fmt(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = (2 - x.abs().log10().floor() as i32).max(0) as usize;
    format!("{x:.digits$}")
}

fn print_table(args: &CompareArgs, rows: &[(String, Row)], udp: &BTreeMap<String, UdpCounters>) {
    println!("{}", machine_line(args));
    let mut header = format!("{:<42} {:<7}", "scenario", "unit");
    for stack in &args.stacks {
        header += &format!(" | {:<36}", format!("{stack} median [min .. max]"));
    }
    let ratio_name = match args.stacks.as_slice() {
        [a, b] => format!("{b}/{a}"),
        _ => "ratio".into(),
    };
    header += &format!(" | {ratio_name}");
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for (label, row) in rows {
        let mut line = format!("{label:<42} {:<7}", row.unit);
        let mut medians = Vec::new();
        for &stack in &args.stacks {
            let (text, median) = cell(row, stack);
            line += &format!(" | {text:<36}");
            medians.push(median);
        }
        let ratio = match medians.as_slice() {
            [Some(a), Some(b)] if *a != 0.0 => format!("{:.3}", b / a),
            _ => "n/a".into(),
        };
        println!("{line} | {ratio}");
    }
    println!("(Gbit/s: higher is better; ms and us: lower is better. us = microseconds.)");
    for (stack, c) in udp {
        println!(
            "kernel UDP errors during {stack} runs: InErrors {} RcvbufErrors {} SndbufErrors {}",
            c.in_errors, c.rcvbuf_errors, c.sndbuf_errors
        );
    }
}

fn machine_line(args: &CompareArgs) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown CPU");
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!(
        "machine: {cpus} CPUs, {model}; rounds {}; pinned {}; cipher {}",
        args.rounds,
        args.pin,
        args.cipher.resolve()
    )
}
