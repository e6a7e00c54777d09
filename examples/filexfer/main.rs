//! File transfer over SSS: one substream per file, so files travel side by side with no
//! head-of-line blocking between them; a record with each file's name, size and SHA-256, the
//! body as bytes, and a record back with the receiver's verdict.
//!
//! ```text
//! # everything in one process: a regserver, a receiver and a sender on loopback
//! cargo run --release --example filexfer -- local
//!
//! # two machines, through a regserver (see the README's "The regserver")
//! cargo run --release --example filexfer -- serve --regserver EID@ADDR --dir inbox
//! cargo run --release --example filexfer -- send --regserver EID@ADDR RECEIVER_EID FILE...
//! ```
//!
//! The receiver treats everything it is sent as hostile: see `receiver.rs` and `proto.rs`.

// Shared with the voice demo, which uses other parts of it.
#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;
mod proto;
mod receiver;
mod sender;
mod session;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use sss_host::{Eid, Host, ImpairConfig, Relay, Stream};
use tokio::io::AsyncWriteExt;

use common::{hex, host, mib, parse_regserver, parse_size, rate, registered, BoxError, Pattern};
use proto::{Code, PROTOCOL, SERVICE};
use receiver::Inbox;
use sender::Outgoing;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "File transfer over SSS: one substream per file, SHA-256 checked")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive files into a directory (until Ctrl-C).
    Serve {
        /// The regserver to register with, as EID@ADDR.
        #[arg(long, value_parser = parse_regserver)]
        regserver: (Eid, SocketAddr),
        /// Directory to write into (must exist).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Key file of this host's identity (created if missing): keeps the EID across runs.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Local UDP address.
        #[arg(long, default_value = "[::]:0")]
        bind: SocketAddr,
        /// Replace files that exist already (default: refuse them).
        #[arg(long)]
        overwrite: bool,
        /// Largest file accepted, e.g. 10G.
        #[arg(long, value_parser = parse_size, default_value = "1024G")]
        max_size: u64,
    },
    /// Send files to a receiver, dialed by its EID.
    Send {
        /// The regserver to look the receiver up in, as EID@ADDR.
        #[arg(long, value_parser = parse_regserver)]
        regserver: (Eid, SocketAddr),
        /// Key file of this host's identity (created if missing).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Local UDP address.
        #[arg(long, default_value = "[::]:0")]
        bind: SocketAddr,
        /// Continue interrupted transfers where the receiver's partial files end.
        #[arg(long)]
        resume: bool,
        /// The receiver's EID.
        peer: Eid,
        /// Files to send.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Everything in one process on loopback: a regserver, a receiver and a sender, with
    /// generated test files.
    Local {
        /// Generated files of `--size` bytes (besides an empty and a small one).
        #[arg(long, default_value_t = 3)]
        files: usize,
        /// Size of each generated file, e.g. 100M.
        #[arg(long, value_parser = parse_size, default_value = "100M")]
        size: u64,
        /// Work in this directory (kept) instead of a temporary one (removed).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Send through the impairment relay, dropping this share of the packets each way
        /// (e.g. 0.01); the sender then dials the relay's address instead of by EID.
        #[arg(long)]
        loss: Option<f64>,
        /// Through the impairment relay, with this one-way delay in milliseconds.
        #[arg(long)]
        delay_ms: Option<f64>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Serve {
            regserver,
            dir,
            key,
            bind,
            overwrite,
            max_size,
        } => serve(regserver, dir, key, bind, overwrite, max_size).await,
        Command::Send {
            regserver,
            key,
            bind,
            resume,
            peer,
            files,
        } => send(regserver, key, bind, resume, peer, &files).await,
        Command::Local {
            files,
            size,
            dir,
            loss,
            delay_ms,
        } => {
            let impair = (loss.is_some() || delay_ms.is_some()).then(|| ImpairConfig {
                loss: loss.unwrap_or(0.0),
                delay: Duration::try_from_secs_f64(delay_ms.unwrap_or(0.0) / 1e3)
                    .unwrap_or_default(),
                seed: 1,
                ..ImpairConfig::default()
            });
            local(files, size, dir, impair).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("filexfer: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    regserver: (Eid, SocketAddr),
    dir: PathBuf,
    key: Option<PathBuf>,
    bind: SocketAddr,
    overwrite: bool,
    max_size: u64,
) -> Result<(), BoxError> {
    if !tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
        return Err(format!("{}: not a directory", dir.display()).into());
    }
    let host = host(regserver, key.as_deref(), bind)?;
    let listener = host.listen(SERVICE, PROTOCOL)?;
    println!(
        "filexfer receiver eid={} addr={}",
        host.eid(),
        host.local_addr()
    );
    let seen = registered(&host).await?;
    println!(
        "registered (the regserver sees us at {seen}); writing into {}{}; Ctrl-C stops",
        dir.display(),
        if overwrite { ", overwriting" } else { "" }
    );
    let inbox = Inbox::new(dir, overwrite, max_size);
    tokio::select! {
        r = session::serve(listener, inbox) => r?,
        _ = tokio::signal::ctrl_c() => println!("stopping"),
    }
    host.close().await;
    Ok(())
}

async fn send(
    regserver: (Eid, SocketAddr),
    key: Option<PathBuf>,
    bind: SocketAddr,
    resume: bool,
    peer: Eid,
    paths: &[PathBuf],
) -> Result<(), BoxError> {
    let files = hash_files(paths, resume).await?;
    let host = host(regserver, key.as_deref(), bind)?;
    registered(&host).await?;
    let t = Instant::now();
    let session = host.connect_eid(peer, SERVICE, PROTOCOL).await?;
    println!(
        "connected to {peer} at {:?} in {:.1} ms",
        session.remote_addr(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let failed = send_and_report(&host, session, &files).await?;
    host.close().await;
    if failed > 0 {
        return Err(format!("{failed} of {} file(s) not delivered", files.len()).into());
    }
    Ok(())
}

/// Hashes the files to send (each read once, streaming).
async fn hash_files(paths: &[PathBuf], resume: bool) -> Result<Vec<Outgoing>, BoxError> {
    let t = Instant::now();
    let mut files = Vec::new();
    for path in paths {
        files.push(sender::prepare(path, resume).await?);
    }
    let total: u64 = files.iter().map(|f| f.header.size).sum();
    println!(
        "{} file(s), {}, hashed (SHA-256) in {:.2} s",
        files.len(),
        mib(total),
        t.elapsed().as_secs_f64()
    );
    Ok(files)
}

/// Sends `files` on `session`, printing progress and one line per file; returns how many
/// were not delivered.
async fn send_and_report(
    host: &Host,
    mut session: Stream,
    files: &[Outgoing],
) -> Result<usize, BoxError> {
    let total: u64 = files.iter().map(|f| f.header.size).sum();
    let progress = Arc::new(session::Progress::default());
    let (host, peer) = (host.clone(), session.remote_eid());
    let wire = move || host.stats(peer).map_or(0, |s| s.bytes_sent);
    let ticker = session::spawn_progress(progress.clone(), files.len(), total, wire);
    let t = Instant::now();
    let results = session::send_files(&session, files, &progress).await;
    let elapsed = t.elapsed();
    ticker.abort();
    session::end_session(&mut session).await?;
    let mut failed = 0;
    for (file, result) in files.iter().zip(&results) {
        match result {
            Ok(s) if s.ok() => {
                let resumed = if s.offset > 0 {
                    format!(", resumed at {}", mib(s.offset))
                } else {
                    String::new()
                };
                println!(
                    "  {:?}: {} delivered, receiver verified SHA-256 {}...{resumed} ({:.2} s)",
                    s.name,
                    mib(file.header.size),
                    &hex(&file.header.sha256)[..16],
                    s.elapsed.as_secs_f64()
                );
            }
            Ok(s) => {
                failed += 1;
                println!(
                    "  {:?}: REFUSED by the receiver: {}: {}",
                    s.name, s.verdict.code, s.verdict.message
                );
            }
            Err(e) => {
                failed += 1;
                println!("  {:?}: FAILED: {e}", file.header.name);
            }
        }
    }
    let bytes: u64 = results.iter().flatten().map(|s| s.sent).sum();
    println!(
        "sent {} in {:.2} s: {}",
        mib(bytes),
        elapsed.as_secs_f64(),
        rate(bytes, elapsed)
    );
    Ok(failed)
}

async fn local(
    count: usize,
    size: u64,
    dir: Option<PathBuf>,
    impair: Option<ImpairConfig>,
) -> Result<(), BoxError> {
    let temp;
    let root = match dir {
        Some(dir) => dir,
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let (src, dst) = (root.join("send"), root.join("inbox"));
    tokio::fs::create_dir_all(&src).await?;
    tokio::fs::create_dir_all(&dst).await?;

    println!("[1] test files in {}", src.display());
    let t = Instant::now();
    let mut paths = vec![src.join("empty.bin"), src.join("hello.txt")];
    tokio::fs::write(&paths[0], b"").await?;
    tokio::fs::write(&paths[1], b"hello over SSS\n".repeat(1000)).await?;
    for i in 1..=count {
        let path = src.join(format!("random-{i}.bin"));
        generate(&path, size, i as u64).await?;
        paths.push(path);
    }
    println!(
        "  {} files generated in {:.2} s",
        paths.len(),
        t.elapsed().as_secs_f64()
    );
    let files = hash_files(&paths, false).await?;

    println!("[2] a regserver and two hosts on loopback; the sender dials the receiver by EID");
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let reg_identity = sss_host::Identity::generate(&mut rand_core::OsRng);
    let reg =
        regserver::RegServer::bind(loopback, regserver::server_config(reg_identity.eid())).await?;
    let receiver = host((reg.eid(), reg.local_addr()), None, loopback)?;
    let sender = host((reg.eid(), reg.local_addr()), None, loopback)?;
    let listener = receiver.listen(SERVICE, PROTOCOL)?;
    registered(&receiver).await?;
    registered(&sender).await?;
    println!(
        "  regserver {}, receiver {}, sender {}",
        reg.local_addr(),
        receiver.local_addr(),
        sender.local_addr()
    );
    let inbox = Inbox::new(&dst, false, u64::MAX);
    let received = Arc::new(AtomicU64::new(0));
    let server = {
        let inbox = inbox.clone();
        let received = received.clone();
        tokio::spawn(async move {
            let session = listener.accept().await?;
            let short = session.remote_eid().to_string()[..12].to_owned();
            let counts = session::serve_session(session, inbox, received, move |o| {
                session::print_outcome(&format!("receiver, from {short}"), o)
            })
            .await;
            Ok::<_, sss_host::Error>((listener, counts))
        })
    };
    let relay = match &impair {
        Some(i) => Some(Relay::start(loopback, receiver.loopback_addr(), i.clone())?),
        None => None,
    };
    let t = Instant::now();
    let session = match &relay {
        Some(relay) => {
            let session = sender
                .connect(receiver.eid(), &[relay.local_addr()], SERVICE, PROTOCOL)
                .await?;
            let i = impair
                .as_ref()
                .map(|i| (i.loss, i.delay))
                .unwrap_or_default();
            println!(
                "  connected through the impairment relay at {} ({:.1} % loss, {} ms delay \
                 each way) in {:.1} ms",
                relay.local_addr(),
                i.0 * 100.0,
                i.1.as_millis(),
                t.elapsed().as_secs_f64() * 1e3
            );
            session
        }
        None => {
            let session = sender
                .connect_eid(receiver.eid(), SERVICE, PROTOCOL)
                .await?;
            println!(
                "  connected by EID in {:.1} ms",
                t.elapsed().as_secs_f64() * 1e3
            );
            session
        }
    };

    println!(
        "[3] {} files at once, one substream each ({} at a time)",
        files.len(),
        session::PARALLEL_FILES
    );
    let failed = send_and_report(&sender, session, &files).await?;
    let (listener, (ok, refused)) = server.await??;
    if failed > 0 || refused > 0 || ok != files.len() {
        return Err(format!("{failed} file(s) not delivered").into());
    }
    for file in &files {
        let meta = tokio::fs::metadata(dst.join(&file.header.name)).await?;
        if meta.len() != file.header.size {
            return Err(format!("{}: wrong size in the inbox", file.header.name).into());
        }
    }

    if let Some(relay) = &relay {
        let r = relay.stats();
        println!(
            "  the relay dropped {} of {} datagrams towards the receiver and {} of {} back; \
             the sender re-sent what was lost",
            r.forward.dropped_loss,
            r.forward.received,
            r.backward.dropped_loss,
            r.backward.received
        );
    }

    println!("[4] what the receiver refuses: a name that exists, a name outside its directory");
    // A second session on the channel that exists (through the relay, if there is one).
    let addrs: Vec<SocketAddr> = relay.iter().map(|r| r.local_addr()).collect();
    let mut session = if addrs.is_empty() {
        sender
            .connect_eid(receiver.eid(), SERVICE, PROTOCOL)
            .await?
    } else {
        sender
            .connect(receiver.eid(), &addrs, SERVICE, PROTOCOL)
            .await?
    };
    let server = tokio::spawn(async move {
        let session = listener.accept().await?;
        let counts = session::serve_session(session, inbox, received, |o| {
            session::print_outcome("receiver", o)
        })
        .await;
        Ok::<_, sss_host::Error>(counts)
    });
    // The largest file again: refused at its header, so the sender stops at once.
    let again = files
        .iter()
        .max_by_key(|f| f.header.size)
        .unwrap_or(&files[0])
        .clone();
    let mut escape = files[1].clone();
    escape.header.name = "../escape.txt".into();
    let results = session::send_files(&session, &[again, escape], &Arc::default()).await;
    session::end_session(&mut session).await?;
    let (_, refused) = server.await??;
    let codes: Vec<Option<Code>> = results
        .iter()
        .map(|r| r.as_ref().ok().map(|s| s.verdict.code))
        .collect();
    for r in results.iter().flatten() {
        println!(
            "  sender told: {:?}: {} (it had sent {} of the body)",
            r.name,
            r.verdict.code,
            mib(r.sent)
        );
    }
    if codes != [Some(Code::EXISTS), Some(Code::UNSAFE_NAME)]
        || refused != 2
        || tokio::fs::metadata(root.join("escape.txt")).await.is_ok()
    {
        return Err(format!("the receiver did not refuse as it should: {codes:?}").into());
    }
    let total: u64 = files.iter().map(|f| f.header.size).sum();
    println!(
        "\nfilexfer local OK: {} files, {}, received and verified by SHA-256; unsafe and \
         existing names refused",
        files.len(),
        mib(total)
    );
    sender.close().await;
    receiver.close().await;
    Ok(())
}

/// Writes `size` seeded pseudo-random bytes to `path`.
async fn generate(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    let mut file = tokio::fs::File::create(path).await?;
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        pattern.fill(&mut buf[..n]);
        file.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    file.flush().await
}
