//! A sender's session (several files at once, one substream each) and a receiver's loop
//! over the sessions peers open.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sss_host::{Listener, Stream};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::common::{mib, rate};
use crate::proto::SESSION_DONE;
use crate::receiver::{Inbox, ReceiveError, Received};
use crate::sender::{self, Outgoing, Sent};

/// Files a sender has in flight at once (each its own substream).
pub(crate) const PARALLEL_FILES: usize = 8;

/// A sender's progress, for a display.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Body bytes handed to SSS (written to the substreams: not yet delivered).
    pub(crate) written: AtomicU64,
    /// Files the receiver has answered for.
    pub(crate) files_done: AtomicU64,
    /// Bytes of the files it confirmed (verdict OK).
    pub(crate) bytes_confirmed: AtomicU64,
}

/// Sends `files` on substreams of `session`, up to [`PARALLEL_FILES`] at once, and returns
/// each file's outcome in the order given, counting in `progress` as they go.
pub(crate) async fn send_files(
    session: &Stream,
    files: &[Outgoing],
    progress: &Arc<Progress>,
) -> Vec<io::Result<Sent>> {
    let permits = Arc::new(Semaphore::new(PARALLEL_FILES));
    let mut tasks = JoinSet::new();
    for (i, file) in files.iter().enumerate() {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let sub = match session.open_substream() {
            Ok(sub) => sub,
            Err(e) => {
                tasks.spawn(async move { (i, Err(e.into())) });
                continue;
            }
        };
        let file = file.clone();
        let progress = progress.clone();
        tasks.spawn(async move {
            let result = sender::send(sub, &file, |n| {
                progress.written.fetch_add(n, Ordering::Relaxed);
            })
            .await;
            drop(permit);
            progress.files_done.fetch_add(1, Ordering::Relaxed);
            if result.as_ref().is_ok_and(Sent::ok) {
                progress
                    .bytes_confirmed
                    .fetch_add(file.header.size, Ordering::Relaxed);
            }
            (i, result)
        });
    }
    let mut results: Vec<Option<io::Result<Sent>>> = (0..files.len()).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, result)) => results[i] = Some(result),
            Err(e) => return vec![Err(io::Error::other(format!("a sending task failed: {e}")))],
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::other("not sent"))))
        .collect()
}

/// Tells the receiver that the session is over (every file sent has its verdict), finishes
/// the session stream and waits until the receiver finishes its side: then it has heard,
/// and closing the host loses nothing.
pub(crate) async fn end_session(session: &mut Stream) -> io::Result<()> {
    session.send_datagram(SESSION_DONE, true)?;
    session.finish()?;
    let mut rest = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), session.read(&mut rest)).await {
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(_)) => Err(io::Error::other(
            "the receiver sent data on the session stream",
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the receiver did not end the session within 10 s",
        )),
    }
}

/// What a receiver reports about one file.
pub(crate) type FileOutcome = Result<Received, ReceiveError>;

/// Serves one session: receives every file the peer sends on a substream, concurrently,
/// until the peer ends the session; `on_file` hears of each outcome. Returns how many files
/// arrived and how many failed.
pub(crate) async fn serve_session(
    session: Stream,
    inbox: Arc<Inbox>,
    received: Arc<AtomicU64>,
    on_file: impl Fn(&FileOutcome) + Send + Sync + 'static,
) -> (usize, usize) {
    let on_file = Arc::new(on_file);
    let mut tasks = JoinSet::new();
    let (mut ok, mut failed) = (0, 0);
    // `accept_substream` ends (None or an error) when the session stream is over or the link
    // is gone for good; the sender's reliable datagram [`SESSION_DONE`] says it has all its
    // verdicts (so every substream it opened was accepted).
    loop {
        let sub = tokio::select! {
            sub = session.accept_substream() => match sub {
                Ok(Some(sub)) => sub,
                _ => break,
            },
            d = session.recv_datagram() => match d {
                Ok(Some(d)) if d == SESSION_DONE => break,
                Ok(Some(_)) => continue,
                _ => break,
            },
        };
        let inbox = inbox.clone();
        let received = received.clone();
        let on_file = on_file.clone();
        tasks.spawn(async move {
            let outcome = inbox
                .receive(sub, |n| {
                    received.fetch_add(n, Ordering::Relaxed);
                })
                .await;
            on_file(&outcome);
            outcome.is_ok()
        });
        // Reap what is done so that a long session does not pile up finished tasks.
        while let Some(done) = tasks.try_join_next() {
            count(done, &mut ok, &mut failed);
        }
    }
    // The sender has every verdict: our side of the session is done too.
    let _ = session.finish();
    while let Some(done) = tasks.join_next().await {
        count(done, &mut ok, &mut failed);
    }
    (ok, failed)
}

fn count(done: Result<bool, tokio::task::JoinError>, ok: &mut usize, failed: &mut usize) {
    match done {
        Ok(true) => *ok += 1,
        _ => *failed += 1,
    }
}

/// Accepts sessions forever, each served in a task of its own, printing what arrives.
pub(crate) async fn serve(listener: Listener, inbox: Arc<Inbox>) -> io::Result<()> {
    loop {
        let session = listener.accept().await?;
        let peer = session.remote_eid();
        let short = peer.to_string()[..12].to_owned();
        println!("session from {peer} at {:?}", session.remote_addr());
        let inbox = inbox.clone();
        tokio::spawn(async move {
            let received = Arc::new(AtomicU64::new(0));
            let t = Instant::now();
            let ticker = spawn_activity(format!("[{short}] received"), received.clone());
            let label = short.clone();
            let (ok, failed) = serve_session(session, inbox, received.clone(), move |outcome| {
                print_outcome(&label, outcome)
            })
            .await;
            ticker.abort();
            println!(
                "session from {peer} over: {ok} file(s) received, {failed} refused or failed, \
                 {} at {}",
                mib(received.load(Ordering::Relaxed)),
                rate(received.load(Ordering::Relaxed), t.elapsed())
            );
        });
    }
}

/// One line per file on the receiver.
pub(crate) fn print_outcome(peer: &str, outcome: &FileOutcome) {
    match outcome {
        Ok(r) => {
            let resumed = if r.resumed_from > 0 {
                format!(" (resumed at {})", mib(r.resumed_from))
            } else {
                String::new()
            };
            let speed = if r.size - r.resumed_from >= 1 << 20 {
                format!(" ({})", rate(r.size - r.resumed_from, r.elapsed))
            } else {
                String::new()
            };
            println!(
                "  [{peer}] received {:?}: {}{resumed}, SHA-256 verified, in {:.2} s{speed}",
                r.name,
                mib(r.size),
                r.elapsed.as_secs_f64(),
            );
        }
        Err(e) => println!("  [{peer}] REFUSED {e}"),
    }
}

/// Prints a sender's progress once a second until aborted: bytes handed to SSS, what went
/// on the wire in the last second (`wire` counts the channel's bytes sent, re-sent ones
/// included), and the files the receiver has confirmed.
pub(crate) fn spawn_progress(
    progress: Arc<Progress>,
    files: usize,
    total: u64,
    wire: impl Fn() -> u64 + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_wire = wire();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let now_wire = wire();
            println!(
                "  written {} of {}; on the wire {} (last second); receiver confirmed {} of \
                 {files} files, {}",
                mib(progress.written.load(Ordering::Relaxed)),
                mib(total),
                rate(now_wire.saturating_sub(last_wire), Duration::from_secs(1)),
                progress.files_done.load(Ordering::Relaxed),
                mib(progress.bytes_confirmed.load(Ordering::Relaxed)),
            );
            last_wire = now_wire;
        }
    })
}

/// Prints how many bytes `done` has counted, once a second while it grows, until aborted.
fn spawn_activity(label: String, done: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = done.load(Ordering::Relaxed);
            if now != last {
                println!(
                    "  {label} {} so far, last second {}",
                    mib(now),
                    rate(now - last, Duration::from_secs(1))
                );
                last = now;
            }
        }
    })
}
