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
    /// SSS clients and servers use standard slow start instead of CUBIC's HyStart++.
    #[arg(long)]
    pub no_hystart: bool,
    /// Impairment relay command. Placeholders: {listen} {forward} {loss} (fraction)
    /// {loss_pct} {delay_ms} (one way = RTT/2) {rtt_ms} {seed} (the round number, so each
    /// round meets a different loss pattern and both stacks of a round the same one).
    /// Default: `<dir of this binary>/examples/impair --listen {listen} --forward {forward}
    /// --loss {loss} --delay-ms {delay_ms} --seed {seed}` if that file exists; otherwise the
    /// lossy scenario is skipped.
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

impl Outcome {
    fn duplicate(&self) -> Self {
        match self {
            Outcome::Report(v) => Outcome::Report(v.clone()),
            Outcome::NotImplemented => Outcome::NotImplemented,
            Outcome::Failed(w) => Outcome::Failed(w.clone()),
        }
    }
}

/// Field added to a client's report: the CPU seconds (user + system) the client process used.
const CLIENT_CPU: &str = "client_cpu_s";
/// Field added to a client's report: the CPU seconds the server used while the client ran.
const SERVER_CPU: &str = "server_cpu_s";
/// Label suffixes of the CPU rows.
const CLIENT_ROW: &str = ": client CPU";
const SERVER_ROW: &str = ": server CPU";

/// `/proc` counts CPU time in USER_HZ ticks, 100 per second on Linux (`sysconf(_SC_CLK_TCK)`;
/// the kernel fixes it at 100 for user space on every architecture it builds for).
const USER_HZ: f64 = 100.0;

/// CPU seconds from `/proc/<pid>/stat`: (the process's own user + system time, the user +
/// system time of its children it has waited for). `None` off Linux or for a reaped process.
fn proc_cpu(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    // Then field 3 is index 0, utime (14) index 11, stime 12, cutime 13, cstime 14.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    (f.len() == 4).then(|| ((f[0] + f[1]) / USER_HZ, (f[2] + f[3]) / USER_HZ))
}

/// Adds `field: seconds` to a report.
fn annotate(outcome: &mut Outcome, field: &str, seconds: Option<f64>) {
    if let (Outcome::Report(Value::Object(map)), Some(s)) = (outcome, seconds) {
        if let Some(n) = serde_json::Number::from_f64(s) {
            map.insert(field.to_owned(), Value::Number(n));
        }
    }
}

/// One table row: the samples of each stack.
#[derive(Default)]
struct Row {
    unit: &'static str,
    /// A [`CPU_PER_GB`] row of the server's CPU time (else the client's).
    server_cpu: bool,
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
                let results = runner.scenario(scenario, stack, relay.as_deref(), round);
                udp.entry(stack.to_string())
                    .or_default()
                    .add(&UdpCounters::read().since(&before));
                for (label, unit, outcome) in results {
                    // (The CPU rows repeat their run's report.)
                    if unit != CPU_PER_GB {
                        eprintln!(
                            "compare: [{label} {round}/{}] {stack}: {}",
                            args.rounds,
                            describe(&outcome)
                        );
                    }
                    // A scenario can give several rows under one label (p50 and p99).
                    let row = match rows.iter_mut().find(|(l, r)| *l == label && r.unit == unit) {
                        Some((_, row)) => row,
                        None => {
                            rows.push((
                                label.clone(),
                                Row {
                                    unit,
                                    server_cpu: label.ends_with(SERVER_ROW),
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

/// Unit of the rows giving CPU time per GB of goodput; the row label says which process.
const CPU_PER_GB: &str = "s/GB";

/// The figure a row of `unit` takes from a client report (`process` names the CPU-time
/// field for [`CPU_PER_GB`] rows).
fn figure(v: &Value, unit: &str, process: &str) -> Option<f64> {
    let field = match unit {
        "Gbit/s" => "gbps",
        "ms" => "connect_ms",
        "us p50" => "p50_us",
        "us p99" => "p99_us",
        CPU_PER_GB => {
            let cpu = v.get(process).and_then(Value::as_f64)?;
            let gb = v.get("bytes").and_then(Value::as_f64)? / 1e9;
            return (gb > 0.0).then(|| cpu / gb);
        }
        _ => "mean_us",
    };
    v.get(field).and_then(Value::as_f64)
}

fn record(row: &mut Row, stack: StackKind, unit: &'static str, outcome: Outcome) {
    let key = stack.to_string();
    let process = if row.server_cpu {
        SERVER_CPU
    } else {
        CLIENT_CPU
    };
    match outcome {
        Outcome::Report(v) => match figure(&v, unit, process) {
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
                "{} --listen {{listen}} --forward {{forward}} --loss {{loss}} --delay-ms {{delay_ms}} \
                 --seed {{seed}}",
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
        round: u32,
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
                with_cpu_rows(label, self.pair(stack, &bulk(1, a.bulk_bytes), None))
            }
            Scenario::BulkMany => {
                let label = format!(
                    "bulk, {} streams, {} total",
                    a.many_streams,
                    human(a.bulk_bytes)
                );
                with_cpu_rows(
                    label,
                    self.pair(stack, &bulk(a.many_streams, a.bulk_bytes), None),
                )
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
                let copy = outcome.duplicate();
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
                    let outcome = self.pair(
                        stack,
                        &bulk(1, a.lossy_bytes),
                        relay.map(|t| (t, loss, round)),
                    );
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
        .args(self.args.no_hystart.then_some("--no-hystart"))
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
        relay: Option<(&str, f64, u32)>,
    ) -> Outcome {
        let (server, eid, addr) = match self.server(stack) {
            Ok(s) => s,
            Err(outcome) => return outcome,
        };
        let server_pid = server.0.id().to_string();
        let server_before = proc_cpu(&server_pid);
        let (_relay, target_addr) = match relay {
            None => (None, addr),
            Some((template, loss, seed)) => match self.relay(template, loss, seed, &addr) {
                Ok((guard, listen)) => (Some(guard), listen),
                Err(e) => return Outcome::Failed(e),
            },
        };
        let mut outcome = self.client(stack, &format!("{eid}@{target_addr}"), client_args);
        let server_cpu = match (server_before, proc_cpu(&server_pid)) {
            (Some((before, _)), Some((after, _))) => Some(after - before),
            _ => None,
        };
        annotate(&mut outcome, SERVER_CPU, server_cpu);
        outcome
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
            .args(self.args.no_hystart.then_some("--no-hystart"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        // The client's CPU time: what this process's reaped children used, before and after
        // reaping it (servers and relays are reaped only after their client).
        let children_before = proc_cpu("self").map(|(_, children)| children);
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
        let client_cpu = match (children_before, proc_cpu("self")) {
            (Some(before), Some((_, after))) => Some(after - before),
            _ => None,
        };
        match status.code() {
            Some(0) => match serde_json::from_str(&out) {
                Ok(v) => {
                    let mut outcome = Outcome::Report(v);
                    annotate(&mut outcome, CLIENT_CPU, client_cpu);
                    outcome
                }
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
        seed: u32,
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
            .replace("{rtt_ms}", &self.args.rtt_ms.to_string())
            .replace("{seed}", &seed.to_string());
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

/// A bulk run's rows: goodput, then the client's and the server's CPU time per GB.
fn with_cpu_rows(label: String, outcome: Outcome) -> Vec<(String, &'static str, Outcome)> {
    let client = outcome.duplicate();
    let server = outcome.duplicate();
    let rows = [
        (format!("{label}{CLIENT_ROW}"), CPU_PER_GB, client),
        (format!("{label}{SERVER_ROW}"), CPU_PER_GB, server),
    ];
    std::iter::once((label, "Gbit/s", outcome))
        .chain(rows)
        .collect()
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
    let mut header = format!("{:<46} {:<7}", "scenario", "unit");
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
        let mut line = format!("{label:<46} {:<7}", row.unit);
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
    println!(
        "(Gbit/s: higher is better; ms, us and s/GB: lower is better. us = microseconds; \
         s/GB = CPU seconds, user + system, per GB of goodput, from /proc in 10 ms ticks.)"
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cpu_counts_this_process_time() {
        let (start, _) = proc_cpu("self").expect("/proc/self/stat parses");
        // Burn CPU until the counter moves by two ticks (it must, within seconds).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut x = 1u64;
        loop {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            }
            let (now, _) = proc_cpu("self").expect("/proc/self/stat parses");
            if now - start >= 0.02 {
                break;
            }
            assert!(Instant::now() < deadline, "CPU time did not move ({x})");
        }
        assert!(proc_cpu("not-a-pid").is_none());
    }

    #[test]
    fn cpu_rows_divide_the_process_time_by_the_gigabytes() {
        let v: Value = serde_json::from_str(
            r#"{"bytes":2000000000,"gbps":4.0,"client_cpu_s":1.0,"server_cpu_s":0.5}"#,
        )
        .unwrap();
        assert_eq!(figure(&v, CPU_PER_GB, CLIENT_CPU), Some(0.5));
        assert_eq!(figure(&v, CPU_PER_GB, SERVER_CPU), Some(0.25));
        assert_eq!(figure(&v, "Gbit/s", CLIENT_CPU), Some(4.0));
        let rows = with_cpu_rows("bulk".into(), Outcome::Report(v));
        let labels: Vec<_> = rows.iter().map(|(l, u, _)| (l.as_str(), *u)).collect();
        assert_eq!(
            labels,
            [
                ("bulk", "Gbit/s"),
                ("bulk: client CPU", CPU_PER_GB),
                ("bulk: server CPU", CPU_PER_GB)
            ]
        );
    }
}
