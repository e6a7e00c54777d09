//! A synthetic voice call over SSS: 20 ms audio frames each way as best-effort datagrams on
//! a high-priority stream, played out through a jitter buffer, optionally with a bulk
//! transfer competing on a low-priority substream of the same channel.
//!
//! Frames default to 160 bytes, what Opus sends for 20 ms at 64 kbit/s; `--frame-bytes 1920`
//! gives uncompressed 48 kHz 16-bit mono PCM (a datagram larger than a packet: SSS fragments
//! it and delivers it whole or not at all). The payload is filler: what is measured is when
//! each frame arrives.
//!
//! ```text
//! # both ends in one process on loopback, with and without a competing bulk transfer
//! cargo run --release --example voice -- local
//! cargo run --release --example voice -- local --bulk
//! # through the impairment relay: 2 % loss and 20 ms delay each way
//! cargo run --release --example voice -- local --bulk --loss 0.02 --delay-ms 20
//!
//! # two machines, through a regserver
//! cargo run --release --example voice -- listen --regserver EID@ADDR
//! cargo run --release --example voice -- call --regserver EID@ADDR CALLEE_EID --bulk
//! ```

mod call;
// Shared with the file-transfer demo, which uses other parts of it.
#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;
mod jitter;
mod local;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use sss_host::{Eid, ImpairConfig};

use call::{CallConfig, CallReport, FRAME, MIN_FRAME_BYTES, PROTOCOL, SERVICE};
use common::{host, parse_regserver, registered, BoxError};

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "A synthetic voice call over SSS, with a jitter buffer and call statistics")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Both ends in one process on loopback.
    Local {
        #[command(flatten)]
        call: CallArgs,
        /// Loss probability of the impairment relay (each way), e.g. 0.02.
        #[arg(long)]
        loss: Option<f64>,
        /// One-way delay of the impairment relay, in milliseconds.
        #[arg(long)]
        delay_ms: Option<f64>,
        /// Delay jitter of the impairment relay (uniform ±), in milliseconds.
        #[arg(long)]
        jitter_ms: Option<f64>,
        /// Bottleneck rate of the impairment relay, in Mbit/s.
        #[arg(long)]
        rate_mbit: Option<f64>,
        /// Bottleneck queue of the impairment relay, in KiB (with --rate-mbit; default 256).
        #[arg(long)]
        queue_kb: Option<usize>,
    },
    /// Answer calls (until Ctrl-C).
    Listen {
        /// The regserver to register with, as EID@ADDR.
        #[arg(long, value_parser = parse_regserver)]
        regserver: (Eid, SocketAddr),
        /// Key file of this host's identity (created if missing): keeps the EID across runs.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Local UDP address.
        #[arg(long, default_value = "[::]:0")]
        bind: SocketAddr,
        #[command(flatten)]
        call: CallArgs,
    },
    /// Call a peer, dialed by its EID.
    Call {
        /// The regserver to look the peer up in, as EID@ADDR.
        #[arg(long, value_parser = parse_regserver)]
        regserver: (Eid, SocketAddr),
        /// Local UDP address.
        #[arg(long, default_value = "[::]:0")]
        bind: SocketAddr,
        /// The callee's EID.
        peer: Eid,
        #[command(flatten)]
        call: CallArgs,
    },
}

/// Options of a call.
#[derive(Debug, ClapArgs)]
struct CallArgs {
    /// How long each end talks, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Bytes per 20 ms frame (160: Opus at 64 kbit/s; 1920: 48 kHz 16-bit mono PCM).
    #[arg(long, default_value_t = 160)]
    frame_bytes: usize,
    /// Jitter buffer delay, in milliseconds.
    #[arg(long, default_value_t = 60)]
    buffer_ms: u64,
    /// The caller also sends a bulk transfer on a low-priority substream of the call.
    #[arg(long)]
    bulk: bool,
}

impl CallArgs {
    fn config(&self) -> Result<CallConfig, BoxError> {
        if self.frame_bytes < MIN_FRAME_BYTES || self.frame_bytes > 65_536 {
            return Err(format!("--frame-bytes must be {MIN_FRAME_BYTES} to 65536").into());
        }
        let duration = Duration::try_from_secs_f64(self.seconds)
            .ok()
            .filter(|d| *d >= FRAME && *d <= Duration::from_secs(24 * 3600))
            .ok_or("--seconds must be 0.02 to 86400")?;
        Ok(CallConfig {
            frame_bytes: self.frame_bytes,
            duration,
            buffer: Duration::from_millis(self.buffer_ms),
            bulk: self.bulk,
            report: None,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Args::parse().command {
        Command::Local {
            call,
            loss,
            delay_ms,
            jitter_ms,
            rate_mbit,
            queue_kb,
        } => {
            let impaired =
                loss.is_some() || delay_ms.is_some() || jitter_ms.is_some() || rate_mbit.is_some();
            let millis = |ms: Option<f64>| {
                Duration::try_from_secs_f64(ms.unwrap_or(0.0) / 1e3).unwrap_or_default()
            };
            let impair = impaired.then(|| ImpairConfig {
                loss: loss.unwrap_or(0.0),
                delay: millis(delay_ms),
                jitter: millis(jitter_ms),
                rate_bps: rate_mbit.map(|r| (r.max(0.0) * 1e6) as u64),
                // Without a bottleneck the queue bounds the delay line: the relay's default
                // (8 MiB) holds 20 ms at 3 Gbit/s.
                queue_bytes: match (rate_mbit, queue_kb) {
                    (_, Some(kb)) => kb.saturating_mul(1024),
                    (Some(_), None) => 256 * 1024,
                    (None, None) => sss_host::impair::DEFAULT_QUEUE_BYTES,
                },
                seed: 1,
                ..ImpairConfig::default()
            });
            local(&call, impair).await
        }
        Command::Listen {
            regserver,
            key,
            bind,
            call,
        } => listen(regserver, key, bind, &call).await,
        Command::Call {
            regserver,
            bind,
            peer,
            call,
        } => dial(regserver, bind, peer, &call).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voice: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn local(args: &CallArgs, impair: Option<ImpairConfig>) -> Result<(), BoxError> {
    let config = args.config()?;
    println!(
        "voice call on loopback: {} s each way, {} B frames every 20 ms ({:.0} kbit/s), \
         {} ms jitter buffer, call stream priority {}{}",
        args.seconds,
        config.frame_bytes,
        config.frame_bytes as f64 * 8.0 / 20.0,
        args.buffer_ms,
        call::CALL_PRIORITY,
        if config.bulk {
            format!(
                "; bulk transfer caller->callee on a substream, priority {}",
                call::BULK_PRIORITY
            )
        } else {
            String::new()
        }
    );
    match &impair {
        Some(i) => println!(
            "through the impairment relay, each way: loss {:.1} %, delay {} ± {} ms{}",
            i.loss * 100.0,
            i.delay.as_millis(),
            i.jitter.as_millis(),
            i.rate_bps
                .map(|r| format!(
                    ", bottleneck {} Mbit/s, queue {} KiB",
                    r as f64 / 1e6,
                    i.queue_bytes / 1024
                ))
                .unwrap_or_default()
        ),
        None => println!("direct, dialed by EID through an embedded regserver"),
    }
    println!("each line: frames received in that second, played on time, concealed (not there when due), late;");
    println!("one-way delay (same clock at both ends) and RFC 3550 jitter");
    let call = local::call_locally(&config, impair, true).await?;
    println!("\nconnected in {:.1} ms", call.connect.as_secs_f64() * 1e3);
    summary("caller -> callee", &call.callee);
    summary("callee -> caller", &call.caller);
    if call.caller.sent != call.callee.peer_sent.unwrap_or(0) {
        return Err("the callee heard a different frame count than the caller sent".into());
    }
    if config.bulk {
        println!(
            "bulk transfer alongside: {} sent, {} received in {:.1} s ({:.0} Mbit/s)",
            common::mib(call.caller.bulk_sent),
            common::mib(call.callee.bulk_received),
            call.callee.elapsed.as_secs_f64(),
            call.callee.bulk_received as f64 * 8.0 / call.callee.elapsed.as_secs_f64() / 1e6
        );
    }
    if let Some(c) = &call.channel {
        println!(
            "caller's channel at the end: rtt {}, congestion window {}, {} packets declared lost, \
             {} probe timeouts",
            common::ms(c.rtt),
            common::mib(c.cwnd),
            c.packets_lost,
            c.ptos
        );
    }
    if let Some(r) = call.relay {
        println!(
            "relay: random loss dropped {} of {} datagrams caller->callee and {} of {} back; \
             its bottleneck queue dropped {} and {}",
            r.forward.dropped_loss,
            r.forward.received,
            r.backward.dropped_loss,
            r.backward.received,
            r.forward.dropped_queue,
            r.backward.dropped_queue
        );
    }
    if call.callee.peer_sent.is_none() || call.caller.peer_sent.is_none() {
        return Err("an end never heard the other's goodbye".into());
    }
    Ok(())
}

/// The final figures of one direction.
fn summary(direction: &str, r: &CallReport) {
    let c = &r.figures.counters;
    let sent = r.peer_sent.unwrap_or(0);
    let pct = |n: u64| {
        if sent == 0 {
            0.0
        } else {
            n as f64 * 100.0 / sent as f64
        }
    };
    println!(
        "{direction}: sent {sent}, received {} ({:.2} %), lost {} ({:.2} %), late {}, played on time {} ({:.2} %)",
        c.received,
        pct(c.received),
        r.lost(),
        pct(r.lost()),
        c.late,
        c.played,
        pct(c.played)
    );
    match r.figures.delay_ms {
        Some([p50, p95, p99, max]) => println!(
            "    one-way delay p50 {p50:.2} ms, p95 {p95:.2} ms, p99 {p99:.2} ms, max {max:.2} ms; jitter {:.2} ms",
            r.figures.jitter_ms
        ),
        None => println!("    no frames arrived"),
    }
}

async fn listen(
    regserver: (Eid, SocketAddr),
    key: Option<PathBuf>,
    bind: SocketAddr,
    args: &CallArgs,
) -> Result<(), BoxError> {
    let config = CallConfig {
        bulk: false,
        report: Some("in".into()),
        ..args.config()?
    };
    let host = host(regserver, key.as_deref(), bind)?;
    let listener = host.listen(SERVICE, PROTOCOL)?;
    println!("voice callee eid={} addr={}", host.eid(), host.local_addr());
    let seen = registered(&host).await?;
    println!("registered (the regserver sees us at {seen}); waiting for calls; Ctrl-C stops");
    loop {
        let call = tokio::select! {
            call = listener.accept() => call?,
            _ = tokio::signal::ctrl_c() => break,
        };
        println!(
            "call from {} at {:?}",
            call.remote_eid(),
            call.remote_addr()
        );
        // One call at a time: a second caller waits in the listener's queue.
        match call::run_call(call, &config).await {
            Ok(r) => {
                summary("caller -> us", &r);
                if r.bulk_received > 0 {
                    println!(
                        "    bulk received alongside: {}",
                        common::mib(r.bulk_received)
                    );
                }
            }
            Err(e) => println!("call failed: {e}"),
        }
    }
    host.close().await;
    Ok(())
}

async fn dial(
    regserver: (Eid, SocketAddr),
    bind: SocketAddr,
    peer: Eid,
    args: &CallArgs,
) -> Result<(), BoxError> {
    let config = CallConfig {
        report: Some("in".into()),
        ..args.config()?
    };
    let host = host(regserver, None, bind)?;
    registered(&host).await?;
    let call = host.connect_eid(peer, SERVICE, PROTOCOL).await?;
    println!("connected to {peer} at {:?}", call.remote_addr());
    let r = call::run_call(call, &config).await?;
    summary("callee -> us", &r);
    if config.bulk {
        println!("    bulk sent alongside: {}", common::mib(r.bulk_sent));
    }
    host.close().await;
    if r.peer_sent.is_none() {
        return Err("the callee never said goodbye".into());
    }
    Ok(())
}
