//! Stream-layer benchmarks (issue 3).
//!
//! (a) `substream_lifecycle`: substreams opened, written (100 bytes), finished, delivered,
//!     answered with a FIN and forgotten on both sides, per second. Two `Session`s talk
//!     through the `Upper` trait directly with a trivial in-memory "channel" that hands every
//!     frame over and acknowledges everything: this measures the stream layer alone (no
//!     AEAD, no packet numbers, no ACK frames). Printed as the median of 3 runs of 200k, per
//!     second of wall time and per second of the thread's CPU time (the machine may be shared),
//!     with the allocator calls per lifecycle; then criterion's figure.
//! (b) memory per idle open stream: N substreams (`SSS_IDLE_N`, default 57344, 100000 and
//!     1000000; 57344 + the top-level stream is one past a hash-table doubling, the worst
//!     case) that exchanged a few bytes each way and are idle (everything acknowledged and
//!     read), heap growth measured with a counting global allocator (live bytes after minus
//!     before, both sessions).
//! (c) one million concurrent substreams on one session pair, each sending one 16-byte record,
//!     all delivered and read: wall time and peak heap.
//! (d) bulk goodput with real AEAD (ChaCha20-Poly1305) through the simulator: two
//!     `SessionHost`s on a clean 10 Gbit/s, 1 ms link, one stream of 100 MB (`SSS_BULK_MB`),
//!     MB/s of wall time.
//!
//! `cargo bench --bench streams` (criterion options after `--`); `SSS_BENCH_PARTS=ab` runs
//! only (a) and (b), say. (b) and (c) run first, while the counting allocator has seen every
//! allocation; the timed runs of (a) and (d) run with the counting off.
#![allow(missing_docs)]
// criterion's macros generate undocumented functions
// The counting allocator below needs `unsafe impl GlobalAlloc`; it only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use sss_proto::channel::Upper;
use sss_proto::endpoint::EndpointConfig;
use sss_proto::frame::{Frame, Frames};
use sss_proto::sim::{LinkConfig, Network};
use sss_proto::stream::{SentFrame, Session, SessionConfig, SessionEvent, StreamId};
use sss_proto::testkit::session_host::SessionHost;
use sss_proto::testkit::{addr, attached_sessions, identity};

// ------------------------------------------------------------------ counting allocator

/// Counts live heap bytes, the peak and allocation calls while `TRACK` is on; forwards to
/// `System` untouched otherwise (so the timed runs of (a) pay nothing for it).
struct Counting;

static TRACK: AtomicBool = AtomicBool::new(true);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    if TRACK.load(Ordering::Relaxed) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
        PEAK.fetch_max(live, Ordering::Relaxed);
    }
}

fn shrank(n: usize) {
    if TRACK.load(Ordering::Relaxed) {
        LIVE.fetch_sub(n, Ordering::Relaxed);
    }
}

// SAFETY: every call forwards to `System` with the caller's arguments; the counters are
// side bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            shrank(layout.size() - new_size);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Live heap bytes. Only meaningful when `TRACK` stayed on since the start of the process:
/// the parts that measure memory run before anything turns it off.
fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// CPU time this thread has run (`/proc/thread-self/schedstat`, nanoseconds), so rates can be
/// given per CPU second on a machine shared with other jobs; `None` where unavailable.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

// ------------------------------------------------------------------ in-memory pair

/// Two sessions joined by a perfect in-memory "channel": frames are handed over and
/// acknowledged at once.
struct Pair {
    now: Instant,
    s: [Session; 2],
    buf: Vec<u8>,
    metas: Vec<SentFrame>,
}

impl Pair {
    fn new(config: SessionConfig) -> Self {
        let now = Instant::now();
        let s = attached_sessions(config, now);
        Self {
            now,
            s,
            buf: Vec::with_capacity(1500),
            metas: Vec::new(),
        }
    }

    /// Moves every frame `from` has to send to the other side and acknowledges it.
    fn transfer(&mut self, from: usize) -> bool {
        let mut moved = false;
        while self.s[from].has_pending() {
            self.buf.clear();
            self.s[from].write_frames(self.now, &mut self.buf, 1400, &mut self.metas);
            if self.buf.is_empty() {
                break;
            }
            moved = true;
            let (a, b) = self.s.split_at_mut(1);
            let (tx, rx) = if from == 0 {
                (&mut a[0], &mut b[0])
            } else {
                (&mut b[0], &mut a[0])
            };
            for f in Frames::new(&self.buf) {
                let Ok(Frame::Upper { ty, body }) = f else {
                    panic!("bad framing")
                };
                rx.handle_frame(self.now, ty, body).expect("honest frame");
            }
            for m in self.metas.drain(..) {
                tx.on_acked(m);
            }
        }
        moved
    }

    fn pump(&mut self) {
        while self.transfer(0) | self.transfer(1) {}
    }

    /// A top-level stream A opened and B accepted.
    fn top(&mut self) -> StreamId {
        let top = self.s[0].open("bench", "streams/1").unwrap();
        self.pump();
        while let Some(e) = self.s[1].poll_event() {
            if let SessionEvent::IncomingStream { id, .. } = e {
                self.s[1].accept(id).unwrap();
            }
        }
        top
    }
}

fn big_config() -> SessionConfig {
    SessionConfig {
        initial_max_streams: 4 << 20,
        initial_max_data: 1 << 30,
        max_session_window: 1 << 30,
        ..SessionConfig::default()
    }
}

// ------------------------------------------------------------------ (a) lifecycle

/// Runs `n` complete substream lifecycles in batches; returns the wall time taken and the
/// thread's CPU time, if known.
fn lifecycles(
    pair: &mut Pair,
    top: StreamId,
    n: usize,
    batch: usize,
) -> (Duration, Option<Duration>) {
    let payload = [0x42u8; 100];
    let mut buf = [0u8; 256];
    let cpu = thread_cpu();
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let k = batch.min(n - done);
        for _ in 0..k {
            let id = pair.s[0].open_substream(top).unwrap();
            pair.s[0].write(id, &payload).unwrap();
            pair.s[0].finish(id).unwrap();
        }
        pair.transfer(0);
        // B: accept, read, answer with its FIN.
        let b = &mut pair.s[1];
        while let Some(e) = b.poll_event() {
            if let SessionEvent::NewSubstream { parent } = e {
                while let Ok(Some(child)) = b.accept_substream(parent) {
                    assert_eq!(b.read(child, &mut buf), Ok(100));
                    b.finish(child).unwrap();
                    // Reading the end forgets B's side once its FIN is acknowledged.
                    let _ = b.read(child, &mut buf);
                }
            }
        }
        pair.transfer(1);
        // A: read the end; the stream is forgotten.
        let a = &mut pair.s[0];
        while let Some(e) = a.poll_event() {
            if let SessionEvent::Readable(id) = e {
                let _ = a.read(id, &mut buf);
            }
        }
        pair.pump();
        done += k;
    }
    let t = start.elapsed();
    let cpu = cpu.and_then(|c0| Some(thread_cpu()?.saturating_sub(c0)));
    assert_eq!(pair.s[0].stream_count(), 1, "A forgot every substream");
    assert_eq!(pair.s[1].stream_count(), 1, "B forgot every substream");
    (t, cpu)
}

fn bench_lifecycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("streams");
    const BATCH: usize = 1000;
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("substream_lifecycle", |b| {
        let mut pair = Pair::new(SessionConfig::default());
        let top = pair.top();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += lifecycles(&mut pair, top, BATCH, BATCH).0;
            }
            total
        });
    });
    g.finish();
}

// ------------------------------------------------------------------ (b) idle memory

fn idle_memory(n: usize) -> (usize, usize) {
    let mut pair = Pair::new(big_config());
    let top = pair.top();
    let mut buf = [0u8; 64];
    let before = live();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let id = pair.s[0].open_substream(top).unwrap();
        pair.s[0].write(id, b"hello").unwrap();
        ids.push(id);
        if ids.len() % 1024 == 0 {
            pair.pump();
        }
    }
    pair.pump();
    let b = &mut pair.s[1];
    let mut accepted = 0;
    while let Ok(Some(child)) = b.accept_substream(top) {
        let mut got = 0;
        while let Ok(k @ 1..) = b.read(child, &mut buf[got..]) {
            got += k;
        }
        assert_eq!(got, 5, "B reads what A wrote on {child}");
        b.write(child, b"world").unwrap();
        accepted += 1;
    }
    assert_eq!(accepted, n);
    pair.pump();
    for &id in &ids {
        let mut got = 0;
        while let Ok(k @ 1..) = pair.s[0].read(id, &mut buf[got..]) {
            got += k;
        }
        assert_eq!(got, 5, "A reads what B wrote on {id}");
    }
    pair.pump();
    // Events are the application's to drain; they are not stream state.
    for s in &mut pair.s {
        while s.poll_event().is_some() {}
    }
    assert!(pair.s.iter().all(Session::is_quiescent));
    let grown = live().saturating_sub(before);
    // `ids` is the application's, not the sessions'.
    let ids_bytes = ids.capacity() * std::mem::size_of::<StreamId>();
    let per_stream_both = (grown - ids_bytes) / n;
    drop(ids);
    (per_stream_both, pair.s[0].stream_count())
}

// ------------------------------------------------------------------ (c) one million

fn million(n: usize) -> (Duration, usize, usize) {
    let base = live();
    PEAK.store(base, Ordering::Relaxed);
    let start = Instant::now();
    let mut pair = Pair::new(big_config());
    let top = pair.top();
    for i in 0..n {
        let id = pair.s[0].open_substream(top).unwrap();
        pair.s[0]
            .write_record(id, &(i as u128).to_le_bytes())
            .unwrap();
        if i % 4096 == 4095 {
            pair.transfer(0);
        }
    }
    pair.pump();
    let b = &mut pair.s[1];
    let mut got = 0;
    while let Ok(Some(child)) = b.accept_substream(top) {
        let (rec, cut) = b
            .read_record(child, 64)
            .unwrap()
            .expect("a complete record");
        assert!(!cut && rec.len() == 16);
        got += 1;
    }
    assert_eq!(got, n);
    let t = start.elapsed();
    let peak = PEAK.load(Ordering::Relaxed) - base;
    let streams = pair.s[0].stream_count() + pair.s[1].stream_count();
    (t, peak, streams)
}

// ------------------------------------------------------------------ (d) goodput

fn goodput(bytes: u64) -> (Duration, Duration) {
    let start_v = Instant::now();
    let mut net = Network::new(7, start_v);
    let (ida, idb) = (identity(11), identity(12));
    let mk = |seed: u8| {
        let mut c = EndpointConfig::new([seed; 32]);
        let mut ch = sss_proto::ChannelConfig::default();
        ch.suites = sss_proto::crypto::aead::Suite::ChaCha20Poly1305.bit();
        c.channel = Arc::new(ch);
        c
    };
    let cfg = SessionConfig {
        send_buffer: 4 << 20,
        ..SessionConfig::default()
    };
    let ha = SessionHost::new(&ida, mk(1), cfg.clone(), start_v);
    let mut hb = SessionHost::new(&idb, mk(2), cfg, start_v);
    hb.listeners.push(("bench".into(), "bulk/1".into()));
    let a = net.add_node(addr(1), ha);
    let b = net.add_node(addr(2), hb);
    net.connect(
        addr(1),
        addr(2),
        LinkConfig {
            latency: Duration::from_millis(1),
            bandwidth_bps: Some(10_000_000_000),
            queue_bytes: 16 << 20,
            ..LinkConfig::default()
        },
    );
    let (ea, eb) = (ida.eid(), idb.eid());
    let now = net.now();
    let id = net
        .node_mut(a)
        .open(now, eb, addr(2), "bench", "bulk/1")
        .unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    let mut rbuf = vec![0u8; 1 << 20];
    let (mut written, mut read) = (0u64, 0u64);
    let wall = Instant::now();
    while read < bytes {
        let host = net.node_mut(a);
        let s = host.sessions.get_mut(&eb).unwrap();
        while written < bytes {
            let want = chunk.len().min((bytes - written) as usize);
            let n = s.write(id, &chunk[..want]).unwrap();
            written += n as u64;
            if n < want {
                break;
            }
        }
        host.events.clear();
        net.wake(a);
        net.run_for(Duration::from_micros(500)).unwrap();
        let host = net.node_mut(b);
        host.events.clear();
        if let Some(s) = host.sessions.get_mut(&ea) {
            while let Ok(n @ 1..) = s.read(id, &mut rbuf) {
                read += n as u64;
            }
        }
        net.wake(b);
    }
    (wall.elapsed(), net.elapsed())
}

// ------------------------------------------------------------------ main

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    // `cargo test --benches` runs this binary with `--bench` absent: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        bench_lifecycle(&mut c);
        return;
    }

    println!("== stream layer figures (in-memory Upper pair unless said) ==");
    // SSS_BENCH_PARTS=bd runs only (b) and (d), say.
    let parts = std::env::var("SSS_BENCH_PARTS").unwrap_or_else(|_| "abcd".into());
    let median_of = |v: &[f64]| median(v.to_vec());
    let rounded = |v: &[f64]| v.iter().map(|r| r.round()).collect::<Vec<_>>();

    // The memory figures come first, while the counting allocator has tracked every
    // allocation since the process started.
    if parts.contains('b') {
        let ns: Vec<usize> = std::env::var("SSS_IDLE_N")
            .ok()
            .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![57_344, 100_000, 1_000_000]);
        for n in ns {
            let (both, alive) = idle_memory(n);
            println!(
                "(b) idle open streams: {n} substreams ({alive} alive at A) that exchanged 5 \
                 bytes each way: {both} bytes heap per stream for both ends, {} per end",
                both / 2
            );
        }
    }

    if parts.contains('c') {
        let n = 1_000_000;
        let (t, peak, streams) = million(n);
        println!(
            "(c) {n} concurrent substreams, one 16-byte record each, all delivered: {:.2} s, \
         peak heap {:.0} MiB ({streams} streams alive on both ends)",
            t.as_secs_f64(),
            peak as f64 / (1 << 20) as f64
        );
    }

    if parts.contains('a') {
        // Allocator calls per lifecycle (steady state: after a warm-up of 10k).
        let mut pair = Pair::new(SessionConfig::default());
        let top = pair.top();
        lifecycles(&mut pair, top, 10_000, 1000);
        let before = ALLOCS.load(Ordering::Relaxed);
        let n = 100_000;
        lifecycles(&mut pair, top, n, 1000);
        let allocs = (ALLOCS.load(Ordering::Relaxed) - before) as f64 / n as f64;
        drop(pair);
        // The timed runs do not pay for the counting.
        TRACK.store(false, Ordering::Relaxed);
        let n: usize = std::env::var("SSS_LIFECYCLES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(200_000);
        let runs: Vec<(f64, Option<f64>)> = (0..3)
            .map(|_| {
                let mut pair = Pair::new(SessionConfig::default());
                let top = pair.top();
                let (wall, cpu) = lifecycles(&mut pair, top, n, 1000);
                (
                    n as f64 / wall.as_secs_f64(),
                    cpu.map(|c| n as f64 / c.as_secs_f64()),
                )
            })
            .collect();
        let wall: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let cpu: Vec<f64> = runs.iter().filter_map(|r| r.1).collect();
        println!(
            "(a) substream lifecycles (open, write 100 B, finish, deliver, FIN back, forget), \
             3 runs of {n}: median {:.0}/s of wall time {:?}; median {:.0}/s of thread CPU \
             time {:?}; {allocs:.2} allocator calls per lifecycle",
            median_of(&wall),
            rounded(&wall),
            if cpu.is_empty() {
                f64::NAN
            } else {
                median_of(&cpu)
            },
            rounded(&cpu),
        );
    }
    TRACK.store(false, Ordering::Relaxed);

    if parts.contains('a') {
        bench_lifecycle(&mut c);
        c.final_summary();
    }

    if parts.contains('d') {
        let mb: u64 = std::env::var("SSS_BULK_MB")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(100);
        let runs: Vec<(Duration, Duration)> = (0..3).map(|_| goodput(mb << 20)).collect();
        let rates: Vec<f64> = runs
            .iter()
            .map(|(w, _)| mb as f64 / w.as_secs_f64())
            .collect();
        println!(
            "(d) bulk goodput, real ChaCha20-Poly1305, simulator 10 Gbit/s 1 ms link, one stream \
         of {mb} MiB: median {:.0} MiB/s of wall time (runs {:?} MiB/s; virtual time {:?})",
            median(rates.clone()),
            rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
            runs[0].1
        );
    }
}
