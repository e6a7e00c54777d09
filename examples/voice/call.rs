//! One end of a call: 20 ms frames out as best-effort datagrams on a high-priority stream,
//! the peer's frames in through a [`JitterBuffer`], and, optionally, a bulk transfer on a
//! low-priority substream of the same stream (so of the same channel) competing with them.
//!
//! Frames (best-effort datagrams): `'F'`, sequence number (u32), send time (u64, µs since
//! the Unix epoch), then the payload up to the frame size. When done, each end sends the
//! reliable datagram `'B'` + the number of frames it sent, so the peer can count the lost
//! ones. All integers big-endian.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sss_host::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::MissedTickBehavior;

use crate::common::Pattern;
use crate::jitter::{Figures, JitterBuffer};

/// The service a callee listens on.
pub(crate) const SERVICE: &str = "sss-voice";
/// The protocol (version) of this format.
pub(crate) const PROTOCOL: &str = "v1";
/// Audio per frame.
pub(crate) const FRAME: Duration = Duration::from_millis(20);
/// Priority of the call stream: above the default 0 of everything else.
pub(crate) const CALL_PRIORITY: i32 = 10;
/// Priority of the competing bulk transfer.
pub(crate) const BULK_PRIORITY: i32 = 0;
/// Smallest frame: the header.
pub(crate) const MIN_FRAME_BYTES: usize = 13;
/// Bulk substreams a peer may send at once.
const MAX_BULK_STREAMS: usize = 4;
/// How long after its last frame is due an end waits for a peer that never says goodbye.
const GRACE: Duration = Duration::from_secs(5);

/// How an end runs its call.
#[derive(Debug, Clone)]
pub(crate) struct CallConfig {
    /// Bytes per frame (at least [`MIN_FRAME_BYTES`]).
    pub(crate) frame_bytes: usize,
    /// How long this end talks.
    pub(crate) duration: Duration,
    /// Jitter buffer delay.
    pub(crate) buffer: Duration,
    /// Send a competing bulk transfer on a substream while the call lasts.
    pub(crate) bulk: bool,
    /// Print a line of figures every second, with this label (e.g. `A->B`).
    pub(crate) report: Option<String>,
}

/// What one end saw.
#[derive(Debug, Clone)]
pub(crate) struct CallReport {
    /// Frames this end sent.
    pub(crate) sent: u64,
    /// Frames the peer says it sent (none if it never said goodbye).
    pub(crate) peer_sent: Option<u64>,
    /// What this end received and played.
    pub(crate) figures: Figures,
    /// Bulk bytes this end sent.
    pub(crate) bulk_sent: u64,
    /// Bulk bytes this end received.
    pub(crate) bulk_received: u64,
    /// How long the call lasted here.
    pub(crate) elapsed: Duration,
}

impl CallReport {
    /// Frames the peer sent that never arrived.
    pub(crate) fn lost(&self) -> u64 {
        self.peer_sent
            .map_or(0, |s| s.saturating_sub(self.figures.counters.received))
    }
}

/// Runs this end of the call on `call` until both ends are done talking and the last frame
/// was due.
pub(crate) async fn run_call(call: Stream, config: &CallConfig) -> io::Result<CallReport> {
    call.set_priority(CALL_PRIORITY)?;
    let start = Instant::now();
    let frames = (config.duration.as_millis() / FRAME.as_millis()) as u32;
    let frame_bytes = config.frame_bytes.max(MIN_FRAME_BYTES);

    let stop_bulk = Arc::new(AtomicBool::new(false));
    let bulk_sent = Arc::new(AtomicU64::new(0));
    let bulk_received = Arc::new(AtomicU64::new(0));
    let mut bulk_sender = None;
    let mut drains = Vec::new();
    if config.bulk {
        let sub = call.open_substream()?;
        sub.set_priority(BULK_PRIORITY)?;
        bulk_sender = Some(tokio::spawn(send_bulk(
            sub,
            stop_bulk.clone(),
            bulk_sent.clone(),
        )));
    }

    let mut jitter = JitterBuffer::new(FRAME, config.buffer, start);
    let mut send_tick = tokio::time::interval(FRAME);
    // A microphone makes a frame every 20 ms whatever happens: a late tick sends the frames
    // it owes at once (each stamped with its own capture time).
    send_tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut play_tick = tokio::time::interval(Duration::from_millis(5));
    play_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut report_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut frame = vec![0u8; frame_bytes];
    let mut seq = 0u32;
    let mut bye_sent = false;
    let mut peer_sent: Option<u32> = None;
    let mut second = 0;
    let mut accepting = true;
    loop {
        let now = Instant::now();
        if seq >= frames && !bye_sent {
            let mut bye = vec![b'B'];
            bye.extend_from_slice(&seq.to_be_bytes());
            call.send_datagram(&bye, true)?;
            bye_sent = true;
        }
        jitter.play_until(now);
        let last_due = peer_sent.and_then(|n| match n {
            0 => Some(now),
            n => jitter.due(n - 1),
        });
        if bye_sent && last_due.is_some_and(|due| due <= now) {
            break;
        }
        // A peer that went silent without a goodbye: stop a while after our own end.
        if bye_sent && now > start + config.duration + config.buffer + GRACE {
            break;
        }
        tokio::select! {
            _ = send_tick.tick(), if seq < frames => {
                frame[0] = b'F';
                frame[1..5].copy_from_slice(&seq.to_be_bytes());
                // Stamped when sent (not at the 20 ms slot the timer meant: its lateness is
                // this machine's, not the transport's).
                frame[5..13].copy_from_slice(&unix_micros().to_be_bytes());
                call.send_datagram(&frame, false)?;
                seq += 1;
            }
            d = call.recv_datagram() => match d? {
                Some(d) => match parse(&d) {
                    Some(Message::Frame { seq, sent_us }) => {
                        jitter.on_frame(seq, sent_us, Instant::now(), unix_micros());
                    }
                    Some(Message::Bye { frames }) => {
                        peer_sent = Some(frames);
                        jitter.set_end(frames);
                    }
                    None => {}
                },
                None => break,
            },
            sub = call.accept_substream(), if accepting => match sub {
                // A bulk transfer or two is the demo; more are dropped (their data
                // discarded), so a peer cannot make us hold a buffer per substream.
                Ok(Some(sub)) if drains.len() < MAX_BULK_STREAMS => {
                    drains.push(tokio::spawn(drain(sub, bulk_received.clone())));
                }
                Ok(Some(_)) => {}
                _ => accepting = false,
            },
            _ = play_tick.tick() => {}
            _ = report_tick.tick(), if config.report.is_some() => {
                second += 1;
                let label = config.report.as_deref().unwrap_or_default();
                println!("  {label} {second:>3} s  {}", line(&jitter.take_interval()));
            }
        }
    }
    jitter.play_until(Instant::now());
    stop_bulk.store(true, Ordering::Relaxed);
    // Stopped for sure before its count is read (a write may be waiting for flow control).
    if let Some(task) = bulk_sender {
        task.abort();
        let _ = task.await;
    }
    for task in drains {
        task.abort();
    }
    Ok(CallReport {
        sent: u64::from(seq),
        peer_sent: peer_sent.map(u64::from),
        figures: jitter.totals(),
        bulk_sent: bulk_sent.load(Ordering::Relaxed),
        bulk_received: bulk_received.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    })
}

/// One line of figures.
pub(crate) fn line(f: &Figures) -> String {
    let c = &f.counters;
    let delay = match f.delay_ms {
        Some([p50, p95, p99, max]) => {
            format!("delay p50 {p50:.1} p95 {p95:.1} p99 {p99:.1} max {max:.1} ms")
        }
        None => "no delay samples".into(),
    };
    format!(
        "rx {:>3}  played {:>3}  concealed {:>3}  late {:>3} | {delay} | jitter {:.2} ms",
        c.received, c.played, c.concealed, c.late, f.jitter_ms
    )
}

enum Message {
    Frame { seq: u32, sent_us: u64 },
    Bye { frames: u32 },
}

/// Parses a datagram from the peer; `None` for anything malformed.
fn parse(d: &[u8]) -> Option<Message> {
    match d.first()? {
        b'F' if d.len() >= MIN_FRAME_BYTES => Some(Message::Frame {
            seq: u32::from_be_bytes(d[1..5].try_into().ok()?),
            sent_us: u64::from_be_bytes(d[5..13].try_into().ok()?),
        }),
        b'B' if d.len() == 5 => Some(Message::Bye {
            frames: u32::from_be_bytes(d[1..5].try_into().ok()?),
        }),
        _ => None,
    }
}

/// Writes pseudo-random bytes on `sub` as fast as the channel takes them until `stop`.
async fn send_bulk(mut sub: Stream, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    Pattern::new(7).fill(&mut buf);
    while !stop.load(Ordering::Relaxed) {
        // Counted as soon as the stream takes them (no await in between, so the count is
        // exact wherever the task stops).
        match sub.write(&buf).await {
            Ok(n) => sent.fetch_add(n as u64, Ordering::Relaxed),
            Err(_) => return,
        };
    }
    let _ = sub.shutdown().await;
}

/// Reads and discards a bulk substream, counting its bytes.
async fn drain(mut sub: Stream, received: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 256 * 1024];
    while let Ok(n) = sub.read(&mut buf).await {
        if n == 0 {
            break;
        }
        received.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Microseconds since the Unix epoch (the capture clock).
pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
