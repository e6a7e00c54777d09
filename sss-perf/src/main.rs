//! `sss-perf`: throughput, latency and connect time of SSS and quinn on real sockets.
//! See `sss-perf/README.md` for the commands and the definitions of every figure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sss_perf::client::{Corruption, RequestsPlan, UploadPlan};
use sss_perf::compare::CompareArgs;
use sss_perf::stats::json_line;
use sss_perf::tuning::Tuning;
use sss_perf::{parse_size, run, PerfError, StackKind, Target};

#[derive(Parser)]
#[command(
    name = "sss-perf",
    about = "Measure SSS against quinn on loopback",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until killed; the first stdout line is `eid=<EID> addr=<ADDR>`.
    Server {
        /// UDP address to bind (port 0 picks a free port).
        #[arg(long)]
        listen: SocketAddr,
        /// Identity key file (quinn: a PEM key, created if absent).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Stack under test.
        #[arg(long, value_enum, default_value_t = StackKind::Sss)]
        stack: StackKind,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Upload `--bytes` over `--streams`, or make `--requests` round trips of `--size`;
    /// prints one JSON line.
    Client {
        /// `EID@ADDR` as printed by the server (`quinn@ADDR` skips pinning for quinn).
        #[arg(long)]
        connect: String,
        /// Content bytes to upload (units k, M, G, Ki, Mi, Gi).
        #[arg(long, value_parser = parse_size, conflicts_with = "requests")]
        bytes: Option<u64>,
        /// Concurrent streams for the upload.
        #[arg(long, default_value_t = 1)]
        streams: u32,
        /// Sequential request/response round trips, each on a new stream.
        #[arg(long, requires = "size")]
        requests: Option<u32>,
        /// Bytes per request and per response.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// Seed of the content.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Stack under test.
        #[arg(long, value_enum, default_value_t = StackKind::Sss)]
        stack: StackKind,
        /// Test hook: flip the byte at STREAM:OFFSET (the run must then fail).
        #[arg(long, hide = true, value_parser = parse_corruption)]
        corrupt: Option<Corruption>,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Run both stacks alternately over the standard scenarios and print a table.
    Compare(CompareArgs),
}

fn parse_corruption(text: &str) -> Result<Corruption, String> {
    let (stream, offset) = text.split_once(':').ok_or("expected STREAM:OFFSET")?;
    Ok(Corruption {
        stream: stream.parse().map_err(|e| format!("stream: {e}"))?,
        offset: offset.parse().map_err(|e| format!("offset: {e}"))?,
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // The content table is built before anything is timed.
    sss_perf::content::warm_up();
    let result = match cli.command {
        Command::Compare(args) => sss_perf::compare::run(&args),
        command => current_thread().and_then(|rt| rt.block_on(run_command(command))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sss-perf: error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// One single-threaded runtime per process, as quinn's own benchmarks use.
fn current_thread() -> Result<tokio::runtime::Runtime, PerfError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PerfError::io("starting the tokio runtime", e))
}

async fn run_command(command: Command) -> Result<(), PerfError> {
    match command {
        Command::Server {
            listen,
            key,
            stack,
            tuning,
        } => {
            eprintln!("sss-perf server: stack={stack} {tuning}");
            run::server(stack, listen, key.as_deref(), &tuning, |eid, addr| {
                println!("eid={eid} addr={addr}");
            })
            .await
        }
        Command::Client {
            connect,
            bytes,
            streams,
            requests,
            size,
            seed,
            stack,
            corrupt,
            tuning,
        } => {
            let target: Target = connect.parse()?;
            eprintln!("sss-perf client: stack={stack} {tuning}");
            let line = match (bytes, requests, size) {
                (Some(bytes), None, _) => {
                    let plan = UploadPlan {
                        bytes,
                        streams,
                        seed,
                        corrupt,
                    };
                    json_line(&run::upload(stack, &target, &tuning, plan).await?)
                }
                (None, Some(requests), Some(size)) => {
                    let plan = RequestsPlan {
                        requests,
                        size,
                        seed,
                    };
                    json_line(&run::requests(stack, &target, &tuning, plan).await?)
                }
                _ => {
                    return Err(PerfError::Config(
                        "give either --bytes N [--streams K] or --requests N --size S".into(),
                    ))
                }
            };
            println!("{line}");
            Ok(())
        }
        Command::Compare(_) => unreachable!("handled before starting a runtime"),
    }
}
