//! A UDP impairment relay for manual tests and benchmarks (netem stand-in).
//!
//! ```text
//! cargo run -p sss-host --example impair -- --listen 127.0.0.1:0 --forward 127.0.0.1:4433 \
//!     --delay-ms 20 --loss 0.01 --rate-mbit 100 --queue-kb 256
//! ```
//!
//! Prints `relay=<listen address>` as its first line on stdout, then the statistics every
//! `--stats-secs` seconds on stderr, and once more on stdout when interrupted (SIGINT or
//! SIGTERM). The impairments apply to both directions; the backward direction's seed is
//! derived from `--seed`. One client per relay: the first address that sends to it.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use sss_host::impair::{ImpairConfig, Relay, RelayConfig, DEFAULT_QUEUE_BYTES};

/// Command line of the relay.
#[derive(Debug, Parser)]
#[command(about = "UDP impairment relay: delay, jitter, loss, reordering, rate limit")]
struct Args {
    /// Address to listen on; clients send here.
    #[arg(long)]
    listen: SocketAddr,
    /// Address to forward the client's datagrams to.
    #[arg(long)]
    forward: SocketAddr,
    /// One-way delay per direction, in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Delay jitter (uniform, ±), in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Loss probability (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Probability of holding a datagram back so that later ones overtake it.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// How long reordered datagrams are held back, in milliseconds.
    #[arg(long, default_value_t = 10.0)]
    reorder_ms: f64,
    /// Duplication probability.
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Probability of flipping one bit.
    #[arg(long, default_value_t = 0.0)]
    corrupt: f64,
    /// Bottleneck rate in Mbit/s (no limit if absent).
    #[arg(long)]
    rate_mbit: Option<f64>,
    /// Bottleneck drop-tail queue (or, without a rate, delay-line bound) in KiB.
    #[arg(long, default_value_t = DEFAULT_QUEUE_BYTES / 1024)]
    queue_kb: usize,
    /// Seed of the random decisions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seconds between statistics lines on stderr (0: none).
    #[arg(long, default_value_t = 5)]
    stats_secs: u64,
}

fn millis(ms: f64) -> Duration {
    Duration::try_from_secs_f64(ms / 1e3).unwrap_or(Duration::ZERO)
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let config = ImpairConfig {
        delay: millis(args.delay_ms),
        jitter: millis(args.jitter_ms),
        loss: args.loss,
        reorder: args.reorder,
        reorder_delay: millis(args.reorder_ms),
        duplicate: args.duplicate,
        corrupt: args.corrupt,
        rate_bps: args.rate_mbit.map(|r| (r.max(0.0) * 1e6) as u64),
        queue_bytes: args.queue_kb.saturating_mul(1024),
        seed: args.seed,
    };
    let relay = Relay::start(args.listen, args.forward, RelayConfig::symmetric(config))?;
    println!("relay={}", relay.local_addr());
    std::io::stdout().flush()?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let period = Duration::from_secs(args.stats_secs.max(1));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => break r,
                _ = terminate.recv() => break Ok(()),
                _ = ticker.tick(), if args.stats_secs > 0 => eprintln!("{}", relay.stats()),
            }
        }
    })?;
    println!("{}", relay.stats());
    Ok(())
}
