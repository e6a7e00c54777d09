//! Stream-layer behaviour on the simulated network: no head-of-line blocking across streams,
//! streams that survive the death of their channel, link status events, the SST priority
//! experiment, and a hostile peer that cannot make a session grow without bound.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sessions::{pattern, World};
use sss_proto::channel::{CloseCode, Upper};
use sss_proto::frame::FrameType;
use sss_proto::sim::{LinkConfig, NodeId, Verdict};
use sss_proto::stream::frames::{OpenInfo, StreamLayerFrame};
use sss_proto::stream::pages::IDLE_SPARE_PAGES;
use sss_proto::stream::{LinkStatus, Session, SessionConfig, SessionEvent, StreamError, StreamId};
use sss_proto::stream::{PAGE_TRIM_INTERVAL, WRITER_HOLD};
use sss_proto::testkit::{addr, identity};

const SERVICE: (&str, &str) = ("test", "behaviour/1");

fn world(seed: u64, link: LinkConfig, config: SessionConfig) -> World {
    common::sessions::world(seed, link, config.clone(), config, SERVICE)
}

impl World {
    fn write(&mut self, id: StreamId, data: &[u8]) {
        let n = self.a_session().write(id, data).unwrap();
        assert_eq!(n, data.len());
        let a = self.a;
        self.net.wake(a);
    }

    /// Runs the network for `total` in 5 ms steps, reading what B receives on `ids`.
    fn read_for(&mut self, ids: &[StreamId], got: &mut [Vec<u8>], total: Duration) {
        self.run_reading(ids, got, Duration::from_millis(5), total, |_, _| {});
    }

    /// Runs the network in `step`s for `total`, reading everything B receives on `ids` after
    /// each step; calls `tick` with the time and the bytes read so far per stream.
    fn run_reading(
        &mut self,
        ids: &[StreamId],
        got: &mut [Vec<u8>],
        step: Duration,
        total: Duration,
        mut tick: impl FnMut(Instant, &[Vec<u8>]),
    ) {
        let end = self.net.now() + total;
        let mut buf = vec![0u8; 64 * 1024];
        while self.net.now() < end {
            self.net.run_for(step).unwrap();
            let a_eid = self.a_eid;
            if let Some(s) = self.net.node_mut(self.b).sessions.get_mut(&a_eid) {
                for (i, id) in ids.iter().enumerate() {
                    while let Ok(n) = s.read(*id, &mut buf) {
                        if n == 0 {
                            break;
                        }
                        got[i].extend_from_slice(&buf[..n]);
                    }
                }
            }
            let b = self.b;
            self.net.wake(b);
            let now = self.net.now();
            tick(now, got);
        }
    }
}

/// Time from `t0` until B has all of stream i's `want` bytes, for a run where the first large
/// packet from A after the streams are written is dropped (if `drop_one`).
fn hol_run(drop_one: bool) -> (Duration, Duration) {
    let link = LinkConfig::with_latency(Duration::from_millis(20));
    let mut w = world(7, link, SessionConfig::default());
    // Warm up: establish the channel and both streams.
    let x = w.open();
    let y = w.open();
    w.write(x, b"x");
    w.write(y, b"y");
    let mut got = vec![Vec::new(), Vec::new()];
    w.read_for(&[x, y], &mut got, Duration::from_secs(1));
    assert_eq!(got, vec![b"x".to_vec(), b"y".to_vec()]);
    // X's data goes out first (one full packet), Y's next; the first packet is dropped.
    let armed = Rc::new(Cell::new(drop_one));
    let flag = armed.clone();
    let a_addr = addr(1);
    w.net.set_interceptor(Box::new(move |i| {
        if flag.get() && i.from == a_addr && i.data.len() > 1000 {
            flag.set(false);
            return Verdict::Drop;
        }
        Verdict::Deliver
    }));
    let (dx, dy) = (pattern(1, 6000), pattern(2, 4000));
    let t0 = w.net.now();
    w.write(x, &dx);
    w.write(y, &dy);
    let (mut tx, mut ty) = (None, None);
    w.run_reading(
        &[x, y],
        &mut got,
        Duration::from_millis(1),
        Duration::from_secs(3),
        |now, got| {
            if tx.is_none() && got[0].len() == 1 + dx.len() {
                tx = Some(now - t0);
            }
            if ty.is_none() && got[1].len() == 1 + dy.len() {
                ty = Some(now - t0);
            }
        },
    );
    assert!(!armed.get(), "the interceptor dropped a packet");
    assert_eq!(&got[0][1..], &dx[..]);
    assert_eq!(&got[1][1..], &dy[..]);
    (tx.unwrap(), ty.unwrap())
}

#[test]
fn the_session_send_buffer_bounds_all_streams_together_and_frees_on_acknowledgement() {
    let link = LinkConfig::with_latency(Duration::from_millis(10));
    let config = SessionConfig {
        send_buffer: 80_000,
        session_send_buffer: 100_000,
        ..SessionConfig::default()
    };
    let mut w = world(5, link, config);
    let ids = [w.open(), w.open(), w.open()];
    let data: Vec<Vec<u8>> = (0..3).map(|i| pattern(40 + i, 60_000)).collect();
    let s = w.a_session();
    assert_eq!(s.write(ids[0], &data[0]).unwrap(), 60_000);
    assert_eq!(
        s.write(ids[1], &data[1]).unwrap(),
        40_000,
        "cut at the session's limit"
    );
    assert_eq!(s.write(ids[2], &data[2]).unwrap(), 0);
    assert_eq!(s.send_buffered(), 100_000);
    assert_eq!(s.write_capacity(ids[2]), 0);
    w.net.wake(w.a);
    let mut got = vec![Vec::new(); 3];
    w.read_for(&ids, &mut got, Duration::from_secs(1));
    let s = w.a_session();
    assert_eq!(s.send_buffered(), 0, "every byte was acknowledged");
    assert_eq!(s.write_capacity(ids[2]), 80_000);
    assert_eq!(s.write(ids[1], &data[1][40_000..]).unwrap(), 20_000);
    assert_eq!(s.write(ids[2], &data[2]).unwrap(), 60_000);
    w.net.wake(w.a);
    w.read_for(&ids, &mut got, Duration::from_secs(1));
    assert_eq!(w.a_session().send_buffered(), 0);
    assert_eq!(got, data);
}

#[test]
fn spare_pages_go_back_once_transfers_end_or_streams_reset() {
    let link = LinkConfig::with_latency(Duration::from_millis(5));
    let mut w = world(12, link, SessionConfig::default());
    // A stream reset with a megabyte unsent: its pages go back to the pool (were they
    // dropped uncounted, the pool would think them still in use and keep too many spares
    // after the transfer below).
    let s = w.open();
    let big = pattern(80, 3_000_000);
    let a = w.a_session();
    let n = a.write(s, &big).unwrap();
    assert!(n >= 1_000_000, "{n} bytes taken");
    a.reset(s, 7).unwrap();
    let ids: Vec<_> = (0..4).map(|_| w.open()).collect();
    let data: Vec<_> = (0..4).map(|i| pattern(70 + i, 1_500_000)).collect();
    let mut taken = [0; 4];
    let mut got = vec![Vec::new(); 4];
    let mut peak = 0;
    for _ in 0..2000 {
        let a = w.a_session();
        for (i, id) in ids.iter().enumerate() {
            taken[i] += a.write(*id, &data[i][taken[i]..]).unwrap();
        }
        w.net.wake(w.a);
        w.read_for(&ids, &mut got, Duration::from_millis(5));
        peak = peak
            .max(w.a_session().spare_pages())
            .max(w.b_session().spare_pages());
        if got == data {
            break;
        }
    }
    assert_eq!(got, data);
    // Let the last acknowledgements arrive: the spares of the transfer stay for the next one.
    w.net.run_for(Duration::from_millis(100)).unwrap();
    assert!(
        peak > IDLE_SPARE_PAGES,
        "pages were recycled during the transfer ({peak})"
    );
    let after = (w.a_session().spare_pages(), w.b_session().spare_pages());
    assert!(
        after.0 > IDLE_SPARE_PAGES,
        "A keeps its spares at first ({after:?})"
    );
    // Two trim intervals without use: back to the idle bound.
    w.net
        .run_for(2 * PAGE_TRIM_INTERVAL + Duration::from_millis(100))
        .unwrap();
    assert!(w.a_session().spare_pages() <= IDLE_SPARE_PAGES);
    assert!(w.b_session().spare_pages() <= IDLE_SPARE_PAGES);
}

/// Two writers paced by `max_unsent`, refilling every `refill` of virtual time: bytes the
/// low-priority stream delivered by the time the high-priority one had delivered all of its.
fn low_priority_bytes_while_high_sends(refill: Duration) -> usize {
    // A link faster than the writers, so the high stream runs dry between refills.
    let link = LinkConfig {
        bandwidth_bps: Some(10_000_000_000),
        queue_bytes: 4_000_000,
        ..LinkConfig::with_latency(Duration::from_millis(1))
    };
    // Windows that hold everything: flow control never stops the high stream (while it is
    // blocked, lower priorities may rightly go), only its writer's pace.
    let config = SessionConfig {
        max_unsent: 30_000,
        initial_max_stream_data: 4_000_000,
        initial_max_data: 8_000_000,
        ..SessionConfig::default()
    };
    let mut w = world(14, link, config);
    let (low, high) = (w.open(), w.open());
    let a = w.a_session();
    a.set_priority(low, -1).unwrap();
    a.set_priority(high, 5).unwrap();
    let data = [pattern(1, 2_000_000), pattern(2, 2_000_000)];
    let ids = [low, high];
    let mut taken = [0; 2];
    let mut got = vec![Vec::new(); 2];
    let mut low_then = None;
    for _ in 0..100_000 {
        let a = w.a_session();
        for i in 0..2 {
            // Like a writer task: write until refused (then it waits to be woken).
            while taken[i] < data[i].len() {
                match a.write(ids[i], &data[i][taken[i]..]).unwrap() {
                    0 => break,
                    n => taken[i] += n,
                }
            }
        }
        w.net.wake(w.a);
        w.run_reading(&ids, &mut got, refill, refill, |_, _| {});
        if got[1].len() == data[1].len() && low_then.is_none() {
            low_then = Some(got[0].len());
        }
        if got[..] == data[..] {
            break;
        }
    }
    assert_eq!(got[..], data[..], "both streams arrive whole");
    low_then.expect("the high-priority stream completed")
}

#[test]
fn a_paced_high_priority_writer_keeps_the_link_from_lower_ones() {
    // The writers refill well within WRITER_HOLD: the low stream waits, but for the bytes it
    // had queued at the start (30,000 measured; without the hold, 1.84 MB of its 2 MB went
    // before the high stream finished).
    assert!(WRITER_HOLD >= Duration::from_micros(500));
    let low = low_priority_bytes_while_high_sends(Duration::from_micros(200));
    assert!(
        low <= 40_000,
        "low priority delivered {low} bytes meanwhile"
    );
    // Writers slower than the hold: lower priorities use the gaps (the link is not left
    // idle for a writer that does not come back).
    assert!(WRITER_HOLD <= Duration::from_millis(2));
    let low = low_priority_bytes_while_high_sends(Duration::from_millis(4));
    assert!(
        low > 200_000,
        "low priority delivered only {low} bytes meanwhile"
    );
}

#[test]
fn writes_stop_at_max_unsent_and_resume_once_sent() {
    let link = LinkConfig::with_latency(Duration::from_millis(10));
    let config = SessionConfig {
        max_unsent: 40_000,
        ..SessionConfig::default()
    };
    let mut w = world(9, link, config);
    let s = w.open();
    let data = pattern(77, 100_000);
    let a = w.a_session();
    assert_eq!(a.write(s, &data).unwrap(), 40_000);
    assert_eq!(a.write_capacity(s), 0);
    w.net.wake(w.a);
    let mut got = vec![Vec::new()];
    w.read_for(&[s], &mut got, Duration::from_millis(100));
    // Everything written was sent: the stream takes up to max_unsent again, although
    // nothing says all of it was acknowledged yet (the send buffer is far larger).
    let a = w.a_session();
    assert_eq!(a.write_capacity(s), 40_000);
    let mut at = 40_000;
    while at < data.len() {
        at += w.a_session().write(s, &data[at..]).unwrap();
        w.net.wake(w.a);
        w.read_for(&[s], &mut got, Duration::from_millis(20));
    }
    w.read_for(&[s], &mut got, Duration::from_millis(200));
    assert_eq!(got[0], data);
}

#[test]
fn bytes_held_by_flow_control_do_not_count_as_unsent() {
    // B does not read: A's stream fills B's window (256 KiB), and the rest waits for it.
    // Those bytes are bounded by the send buffer, not by max_unsent, so a writer that wants
    // to finish before its peer reads can (a smaller bound would block it for ever).
    let link = LinkConfig::with_latency(Duration::from_millis(5));
    let config = SessionConfig {
        max_unsent: 40_000,
        send_buffer: 1_000_000,
        ..SessionConfig::default()
    };
    let mut w = world(10, link, config);
    let s = w.open();
    let data = pattern(78, 1_200_000);
    let mut written = 0;
    for _ in 0..100 {
        written += w.a_session().write(s, &data[written..]).unwrap();
        w.net.wake(w.a);
        w.net.run_for(Duration::from_millis(10)).unwrap();
    }
    assert!(written >= 1_000_000, "only {written} bytes taken");
    let mut got = vec![Vec::new()];
    while written < data.len() {
        written += w.a_session().write(s, &data[written..]).unwrap();
        w.net.wake(w.a);
        w.read_for(&[s], &mut got, Duration::from_millis(20));
    }
    w.read_for(&[s], &mut got, Duration::from_millis(500));
    assert_eq!(got[0], data);
}

#[test]
fn a_loss_on_one_stream_does_not_delay_another() {
    let (x_clean, y_clean) = hol_run(false);
    let (x_lossy, y_lossy) = hol_run(true);
    // The loss hit X: it waits for a retransmission (at least one more round trip).
    assert!(
        x_lossy >= x_clean + Duration::from_millis(40),
        "X clean {x_clean:?}, lossy {x_lossy:?}"
    );
    // Y is delivered as if nothing happened.
    assert!(
        y_lossy <= y_clean + Duration::from_millis(2),
        "Y clean {y_clean:?}, lossy {y_lossy:?} (X lossy {x_lossy:?})"
    );
}

#[test]
fn streams_resume_exactly_on_a_new_channel_after_the_old_one_dies() {
    for seed in 0..20u64 {
        let mut link = LinkConfig::with_latency(Duration::from_millis(10));
        link.loss = (seed % 5) as f64 / 100.0;
        link.bandwidth_bps = Some(20_000_000);
        let mut w = world(seed, link, SessionConfig::default());
        let s1 = w.open();
        let s2 = w.a_session().open_substream(s1).unwrap();
        let d1 = pattern(seed, 1_500_000);
        let d2 = pattern(seed + 100, 700_000);
        // Feed the writes gradually (the send buffer takes 1 MiB per stream).
        let mut off = [0usize; 2];
        let mut got = [Vec::new(), Vec::new()];
        let mut killed = false;
        let mut b_child = None;
        let start = w.net.now();
        while got[0].len() < d1.len() || got[1].len() < d2.len() {
            if w.net.now() - start > Duration::from_secs(120) {
                let a = w.net.node(w.a);
                let b = w.net.node(w.b);
                panic!(
                    "seed {seed}: transfer stalled at {} + {} bytes\nA channel events {:?}\nB channel events {:?}\nA {}\nB {}",
                    got[0].len(),
                    got[1].len(),
                    a.channel_events,
                    b.channel_events,
                    a.sessions[&w.b_eid].debug_streams(),
                    b.sessions[&w.a_eid].debug_streams()
                );
            }
            for (i, (id, d)) in [(s1, &d1), (s2, &d2)].into_iter().enumerate() {
                if off[i] < d.len() {
                    let end = (off[i] + 64 * 1024).min(d.len());
                    let n = w.a_session().write(id, &d[off[i]..end]).unwrap();
                    off[i] += n;
                    if off[i] == d.len() {
                        w.a_session().finish(id).unwrap();
                    }
                }
            }
            let a = w.a;
            w.net.wake(a);
            // B accepts the substream.
            if b_child.is_none() {
                if let Some(s) = w.net.node_mut(w.b).sessions.get_mut(&w.a_eid) {
                    b_child = s.accept_substream(s1).ok().flatten();
                }
            }
            let ids: Vec<StreamId> = [Some(s1), b_child].into_iter().flatten().collect();
            let mut g: Vec<Vec<u8>> = ids.iter().map(|_| Vec::new()).collect();
            w.read_for(&ids, &mut g, Duration::from_millis(20));
            for (i, bytes) in g.into_iter().enumerate() {
                got[i].extend_from_slice(&bytes);
            }
            if !killed && got[0].len() > 400_000 {
                // The path dies: both hosts lose their channel without a word to the other.
                let (now, a_eid, b_eid) = (w.net.now(), w.a_eid, w.b_eid);
                w.net.node_mut(w.a).kill_channels(now, b_eid);
                w.net.node_mut(w.b).kill_channels(now, a_eid);
                assert_eq!(w.a_session().link_status(), LinkStatus::Down);
                // The application keeps writing; A negotiates a new channel.
                w.net
                    .node_mut(w.a)
                    .ensure_channel(now, b_eid, addr(2), SERVICE.0, SERVICE.1);
                killed = true;
            }
        }
        assert!(killed);
        assert!(got[0] == d1, "seed {seed}: stream 1 differs");
        assert!(got[1] == d2, "seed {seed}: substream differs");
        assert_eq!(w.b_session().at_end(s1), Ok(true));
        // A saw the link go down and come back.
        let links: Vec<LinkStatus> = w
            .net
            .node(w.a)
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                SessionEvent::Link(l) => Some(*l),
                _ => None,
            })
            .collect();
        let down = links.iter().position(|l| *l == LinkStatus::Down).unwrap();
        assert!(
            links[down..].contains(&LinkStatus::Up),
            "seed {seed}: {links:?}"
        );
    }
}

#[test]
fn link_status_goes_stalled_then_down_then_up_again() {
    let link = LinkConfig::with_latency(Duration::from_millis(10));
    let mut w = world(3, link, SessionConfig::default());
    let s = w.open();
    w.write(s, b"hello");
    let mut got = vec![Vec::new()];
    w.read_for(&[s], &mut got, Duration::from_secs(1));
    assert_eq!(w.a_session().link_status(), LinkStatus::Up);
    // Cut the path both ways; keep sending.
    let l1 = w.net.route(addr(1), addr(2)).unwrap();
    let l2 = w.net.route(addr(2), addr(1)).unwrap();
    w.net.link_config_mut(l1).down = true;
    w.net.link_config_mut(l2).down = true;
    w.write(s, b" world");
    let mut seen = Vec::new();
    let cut = w.net.now();
    let a = w.a;
    let b_eid = w.b_eid;
    while w.net.now() - cut < Duration::from_secs(120) {
        w.net.run_for(Duration::from_millis(50)).unwrap();
        let st = w.net.node_mut(a).sessions[&b_eid].link_status();
        if seen.last() != Some(&st) {
            seen.push(st);
        }
        if st == LinkStatus::Down {
            break;
        }
    }
    assert_eq!(
        seen,
        vec![LinkStatus::Up, LinkStatus::Stalled, LinkStatus::Down]
    );
    // The path comes back; a new channel; the stream resumes.
    w.net.link_config_mut(l1).down = false;
    w.net.link_config_mut(l2).down = false;
    let now = w.net.now();
    w.net
        .node_mut(a)
        .ensure_channel(now, b_eid, addr(2), SERVICE.0, SERVICE.1);
    w.read_for(&[s], &mut got, Duration::from_secs(2));
    assert_eq!(w.a_session().link_status(), LinkStatus::Up);
    assert_eq!(got[0], b"hello world");
}

/// Bytes of each stream B read in `[from, to)`, from per-step samples.
fn delivered_between(samples: &[(Instant, Vec<usize>)], from: Instant, to: Instant) -> Vec<usize> {
    let at = |t: Instant| {
        samples
            .iter()
            .rev()
            .find(|(s, _)| *s <= t)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| vec![0; samples[0].1.len()])
    };
    let (a, b) = (at(from), at(to));
    b.iter().zip(a).map(|(x, y)| x - y).collect()
}

#[test]
fn priorities_reproduce_the_sst_experiment() {
    // A 10 Mbit/s bottleneck with a 40 ms round trip.
    let mut link = LinkConfig::with_latency(Duration::from_millis(20));
    link.bandwidth_bps = Some(10_000_000);
    link.queue_bytes = 64 * 1024;
    let mut w = world(11, link, SessionConfig::default());
    let (s1, s2) = (w.open(), w.open());
    let s3 = w.open();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut got = [Vec::new(), Vec::new(), Vec::new()];
    let mut samples: Vec<(Instant, Vec<usize>)> = Vec::new();
    let mut srtt = Duration::ZERO;
    let t0 = w.net.now();
    let phase = |t: Instant| (t - t0).as_millis();
    let mut third_on = false;
    let mut changed_at = None;
    while w.net.now() - t0 < Duration::from_secs(12) {
        let now = w.net.now();
        // Keep the send buffers of the active streams full.
        let mut active = vec![s1, s2];
        if phase(now) >= 4000 && phase(now) < 12000 {
            active.push(s3);
            if !third_on {
                w.a_session().set_priority(s3, 10).unwrap();
                third_on = true;
            }
        }
        if phase(now) >= 8000 && changed_at.is_none() {
            // Drop the third stream below the others.
            w.a_session().set_priority(s3, -10).unwrap();
            changed_at = Some(now);
            srtt = w
                .net
                .node(w.a)
                .channels
                .values()
                .next()
                .unwrap()
                .channel
                .rtt()
                .smoothed();
        }
        for id in active {
            let s = w.a_session();
            if s.write_capacity(id) >= chunk.len() {
                s.write(id, &chunk).unwrap();
            }
        }
        let a = w.a;
        w.net.wake(a);
        let mut step_got = vec![Vec::new(), Vec::new(), Vec::new()];
        w.read_for(&[s1, s2, s3], &mut step_got, Duration::from_millis(5));
        for i in 0..3 {
            got[i].extend_from_slice(&step_got[i]);
        }
        samples.push((w.net.now(), got.iter().map(Vec::len).collect()));
    }
    let t = |ms: u64| t0 + Duration::from_millis(ms);
    // Phase 1 (after slow start): two equal streams share within 10% of each other.
    let p1 = delivered_between(&samples, t(2000), t(4000));
    let (a, b) = (p1[0] as f64, p1[1] as f64);
    assert!(a > 0.0 && b > 0.0);
    assert!((a - b).abs() / a.max(b) <= 0.10, "equal priorities: {p1:?}");
    // Phase 2: the higher-priority third stream takes at least 90%.
    let p2 = delivered_between(&samples, t(4500), t(8000));
    let total: usize = p2.iter().sum();
    assert!(
        p2[2] as f64 >= 0.9 * total as f64,
        "high priority share: {p2:?}"
    );
    // Phase 3: after the change, within 2 RTTs the third stream is the one left behind.
    let changed = changed_at.unwrap();
    let settle = changed + 2 * srtt;
    let p3 = delivered_between(&samples, settle, settle + Duration::from_millis(1000));
    let total: usize = p3.iter().sum();
    assert!(
        (p3[2] as f64) <= 0.1 * total as f64,
        "after lowering (srtt {srtt:?}): {p3:?}"
    );
    let p3b = delivered_between(&samples, settle, settle + Duration::from_millis(1000));
    assert!(p3b[0] > 0 && p3b[1] > 0);
}

// ------------------------------------------------------------------ hostile peer

/// A session B, fed frames directly as if from a hostile peer A.
fn victim(config: SessionConfig) -> (Session, Instant) {
    let (a, b) = (identity(1).eid(), identity(2).eid());
    let mut s = Session::new(Arc::new(config), b, a, 42);
    let params = sss_proto::handshake::TransportParams::default();
    let now = Instant::now();
    s.attach(now, &params);
    (s, now)
}

/// Feeds one frame; returns the close code if the session refused it.
fn feed(s: &mut Session, now: Instant, frame: &StreamLayerFrame<'_>) -> Option<u64> {
    let mut buf = Vec::new();
    frame.encode(&mut buf);
    let (ty, body) = split_upper(&buf);
    s.handle_frame(now, ty, body).err().map(|e| e.code)
}

/// Splits an encoded upper-layer frame into its type and body.
fn split_upper(buf: &[u8]) -> (FrameType, &[u8]) {
    let frames = sss_proto::frame::Frames::new(buf);
    for f in frames {
        if let Ok(sss_proto::frame::Frame::Upper { ty, body }) = f {
            return (ty, body);
        }
    }
    panic!("not an upper-layer frame");
}

/// The peer's stream id with counter `n` (A's side as seen by B).
fn peer_id(n: u64) -> StreamId {
    let (a, b) = (identity(1).eid(), identity(2).eid());
    StreamId::new(a.as_bytes() > b.as_bytes(), n)
}

/// A STREAM frame; with `open`, announcing a top-level stream.
fn data_frame(id: StreamId, offset: u64, data: &[u8], open: bool) -> StreamLayerFrame<'_> {
    StreamLayerFrame::Stream(sss_proto::stream::frames::StreamFrame {
        id,
        offset,
        data,
        fin: false,
        record: false,
        open: open.then_some(OpenInfo::Top {
            service: "svc",
            protocol: "p",
        }),
    })
}

fn top(id: StreamId, data: &[u8]) -> StreamLayerFrame<'_> {
    data_frame(id, 0, data, true)
}

#[test]
fn hostile_peer_opening_streams_past_credit_is_closed() {
    let config = SessionConfig {
        initial_max_streams: 16,
        ..SessionConfig::default()
    };
    let (mut s, now) = victim(config);
    for n in 1..16 {
        assert_eq!(feed(&mut s, now, &top(peer_id(n), b"x")), None);
    }
    assert_eq!(
        feed(&mut s, now, &top(peer_id(16), b"x")),
        Some(CloseCode::RESOURCE_EXHAUSTED.0)
    );
    assert!(s.stream_count() <= 16);
    // Counter 0 is never used.
    let (mut s, now) = victim(SessionConfig::default());
    assert!(feed(&mut s, now, &top(peer_id(0), b"x")).is_some());
}

#[test]
fn hostile_peer_sending_past_windows_is_closed_and_memory_stays_bounded() {
    let config = SessionConfig::default();
    let window = config.initial_max_stream_data;
    let (mut s, now) = victim(config.clone());
    let id = peer_id(1);
    assert_eq!(feed(&mut s, now, &top(id, b"hello")), None);
    // Data ending past the stream window.
    let data = vec![0u8; 1000];
    let far = data_frame(id, window - 10, &data, false);
    assert!(feed(&mut s, now, &far).is_some());
    // An offset far beyond any window.
    let (mut s, now) = victim(config.clone());
    let huge = data_frame(id, 1 << 60, b"x", true);
    assert!(feed(&mut s, now, &huge).is_some());
    assert!(s.buffered_bytes() <= 1);
    // Scattered single bytes inside the window: refused before the bookkeeping explodes.
    let (mut s, now) = victim(config.clone());
    assert_eq!(feed(&mut s, now, &top(id, b"h")), None);
    let mut closed = false;
    for i in 0..(window / 2) {
        let f = data_frame(id, 2 + 2 * i, b"x", false);
        if feed(&mut s, now, &f).is_some() {
            closed = true;
            break;
        }
        assert!(s.buffered_bytes() as u64 <= window);
    }
    assert!(closed, "scattered bytes were never refused");
    // Many streams each filling its window: the session window stops it.
    let (mut s, now) = victim(config.clone());
    let block = vec![1u8; 16 * 1024];
    let mut refused = false;
    'outer: for n in 1..200 {
        let id = peer_id(n);
        for k in 0..(window / block.len() as u64) {
            let f = data_frame(id, k * block.len() as u64, &block, true);
            if feed(&mut s, now, &f).is_some() {
                refused = true;
                break 'outer;
            }
        }
    }
    assert!(refused, "the session window was never enforced");
    assert!(s.buffered_bytes() as u64 <= config.initial_max_data);
}

#[test]
fn hostile_datagram_fragments_are_dropped_and_reassembly_stays_bounded() {
    let config = SessionConfig {
        datagram_reassembly_limit: 256 * 1024,
        ..SessionConfig::default()
    };
    let (mut s, now) = victim(config.clone());
    let id = peer_id(1);
    assert_eq!(feed(&mut s, now, &top(id, b"x")), None);
    let piece = [7u8; 1000];
    let dgram = |d: u64, total: u64, off: u64, data: &'static [u8]| {
        StreamLayerFrame::Datagram(sss_proto::stream::frames::DatagramFrame {
            stream: id,
            datagram_id: d,
            total_len: total,
            frag_offset: off,
            data,
        })
    };
    let piece: &'static [u8] = Box::leak(Box::new(piece));
    // Thousands of never-completed datagrams of the largest size.
    for d in 0..5000u64 {
        let f = dgram(d, config.max_datagram_size, 0, piece);
        assert_eq!(feed(&mut s, now, &f), None);
        assert!(s.buffered_bytes() <= config.datagram_reassembly_limit + 1);
    }
    // Oversized fragments are dropped; a fragment beyond its datagram's length is malformed
    // (the channel closes); nothing is delivered.
    assert_eq!(
        feed(&mut s, now, &dgram(9000, u64::MAX >> 3, 0, piece)),
        None
    );
    assert_eq!(
        feed(&mut s, now, &dgram(9001, 500, 0, piece)),
        Some(CloseCode::PROTOCOL_VIOLATION.0)
    );
    assert_eq!(s.pending_datagrams(id), Ok(0));
    // They expire.
    s.handle_timeout(now + Duration::from_secs(60));
    assert!(s.buffered_bytes() <= 1);
    // Datagrams to a stream that does not exist are ignored.
    let ghost = StreamLayerFrame::Datagram(sss_proto::stream::frames::DatagramFrame {
        stream: peer_id(77),
        datagram_id: 0,
        total_len: 3,
        frag_offset: 0,
        data: b"abc",
    });
    assert_eq!(feed(&mut s, now, &ghost), None);
    assert_eq!(
        s.read_datagram(peer_id(77)),
        Err(StreamError::UnknownStream)
    );
}

/// Best-effort fragments for peer streams not opened yet are held until the OPEN arrives
/// (they may overtake it), but only within `unopened_datagram_limit` for the whole session,
/// oldest dropped first, and only for streams the peer may still open: a flood of fragments
/// for streams that never open costs at most that bound, and fragments for streams beyond
/// the credit, or of our own side, are dropped at once.
#[test]
fn hostile_fragments_for_unopened_streams_are_held_within_a_bound() {
    let config = SessionConfig::default();
    let limit = config.unopened_datagram_limit;
    let (mut s, now) = victim(config.clone());
    // (`peer_id` derives the identities each time: too slow for a flood.)
    let side = peer_id(1).side();
    let peer = |n| StreamId::new(side, n);
    let piece: &'static [u8] = Box::leak(Box::new([9u8; 1000]));
    let dgram = |stream: StreamId, d: u64| {
        StreamLayerFrame::Datagram(sss_proto::stream::frames::DatagramFrame {
            stream,
            datagram_id: d,
            total_len: 1000,
            frag_offset: 0,
            data: piece,
        })
    };
    // 100 000 whole datagrams spread over 1000 unopened streams within the credit.
    for d in 0..100_000u64 {
        assert_eq!(feed(&mut s, now, &dgram(peer(1 + d % 1000), d)), None);
        assert!(s.buffered_bytes() <= limit, "{} held", s.buffered_bytes());
    }
    let stats = s.datagram_stats();
    assert_eq!(stats.unopened_held, 100_000);
    assert!(stats.unopened_dropped >= 100_000 - (limit / 1000) as u64);
    // Beyond the credit, our own side, counter 0: dropped at once, nothing held.
    let before = s.buffered_bytes();
    let ours = StreamId::new(!peer_id(1).side(), 5);
    for id in [peer_id(5000), ours, peer_id(0)] {
        assert_eq!(feed(&mut s, now, &dgram(id, 1)), None);
    }
    // Nor is a fragment of a datagram larger than we accept, for a stream not opened yet.
    let oversized = StreamLayerFrame::Datagram(sss_proto::stream::frames::DatagramFrame {
        stream: peer(7),
        datagram_id: 1,
        total_len: config.max_datagram_size + 1,
        frag_offset: 0,
        data: piece,
    });
    assert_eq!(feed(&mut s, now, &oversized), None);
    assert_eq!(s.buffered_bytes(), before);
    assert_eq!(s.datagram_stats().unknown_stream_dropped, 4);
    // The last stream fed opens: its fragments still held (the newest) are delivered.
    let last = peer_id(1 + 99_999 % 1000);
    assert_eq!(feed(&mut s, now, &top(last, b"x")), None);
    assert_eq!(s.pending_datagrams(last), Ok(1));
    // A stream reset before it opened drops what was held for it; the rest expires.
    let reset = StreamLayerFrame::ResetStream {
        id: peer_id(1 + 99_998 % 1000),
        code: 0x100,
        final_size: 0,
    };
    assert_eq!(feed(&mut s, now, &reset), None);
    s.handle_timeout(now + Duration::from_secs(60));
    s.read_datagram(last).unwrap();
    assert_eq!(s.buffered_bytes(), 1, "only the stream's byte is left");
}

#[test]
fn a_receiver_that_stops_reading_gets_receive_blocked_and_holds_the_sender() {
    let link = LinkConfig::with_latency(Duration::from_millis(10));
    let config = SessionConfig::default();
    let window = config.initial_max_stream_data as usize;
    let mut w = world(5, link, config);
    let s = w.open();
    let data = pattern(9, 4 * window);
    let mut off = 0;
    // B does not read: the sender stops at the window.
    for _ in 0..200 {
        if off < data.len() {
            off += w.a_session().write(s, &data[off..]).unwrap();
        }
        let a = w.a;
        w.net.wake(a);
        w.net.run_for(Duration::from_millis(10)).unwrap();
    }
    let blocked = w
        .net
        .node(w.b)
        .events
        .iter()
        .any(|(_, e)| *e == SessionEvent::ReceiveBlocked(s));
    assert!(blocked, "no receive-blocked event");
    assert_eq!(w.b_session().bytes_available(s), Ok(window));
    // B reads: the rest flows.
    let mut got = vec![Vec::new()];
    while got[0].len() < data.len() {
        if off < data.len() {
            off += w.a_session().write(s, &data[off..]).unwrap();
        }
        w.read_for(&[s], &mut got, Duration::from_millis(20));
    }
    assert!(got[0] == data);
}

#[test]
fn receive_windows_grow_with_the_bandwidth_delay_product_up_to_the_limit() {
    // 100 Mbit/s and 100 ms: a BDP of 1.25 MB, five times the initial stream window.
    let mut link = LinkConfig::with_latency(Duration::from_millis(50));
    link.bandwidth_bps = Some(100_000_000);
    link.queue_bytes = 2 * 1024 * 1024;
    let config = SessionConfig {
        max_stream_window: 4 * 1024 * 1024,
        ..SessionConfig::default()
    };
    let mut w = world(6, link, config);
    let s = w.open();
    let chunk = vec![1u8; 256 * 1024];
    let mut got = vec![Vec::new()];
    let mut samples = Vec::new();
    let t0 = w.net.now();
    while w.net.now() - t0 < Duration::from_secs(10) {
        while w.a_session().write_capacity(s) >= chunk.len() {
            w.a_session().write(s, &chunk).unwrap();
        }
        w.read_for(&[s], &mut got, Duration::from_millis(20));
        samples.push((w.net.now(), vec![got[0].len()]));
        got[0].clear();
        got[0].shrink_to(0);
        let total = samples.last().unwrap().1[0];
        samples.last_mut().unwrap().1[0] =
            total + samples.iter().rev().nth(1).map_or(0, |p| p.1[0]);
    }
    // Over the last 5 s the stream runs near the link rate: far above what a fixed 256 KiB
    // window allows (256 KiB per 100 ms = 21 Mbit/s).
    let d = delivered_between(
        &samples,
        t0 + Duration::from_secs(5),
        t0 + Duration::from_secs(10),
    );
    let mbps = d[0] as f64 * 8.0 / 5.0 / 1e6;
    assert!(mbps > 80.0, "goodput {mbps:.1} Mbit/s");
    eprintln!("goodput {mbps:.1} Mbit/s");
    // The window stayed within its bound.
    let dump = w.b_session().debug_streams();
    let limit: u64 = dump
        .lines()
        .find(|l| l.contains("recv_limit"))
        .and_then(|l| l.split("recv_limit ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let read: u64 = dump
        .lines()
        .find(|l| l.contains(" read "))
        .and_then(|l| l.split(" read ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(limit - read <= 4 * 1024 * 1024, "window {}", limit - read);
}

#[test]
fn reliable_datagrams_never_show_up_as_substreams() {
    let link = LinkConfig::with_latency(Duration::from_millis(10));
    let mut w = world(8, link, SessionConfig::default());
    let s = w.open();
    w.write(s, b"parent");
    let sub = w.a_session().open_substream(s).unwrap();
    w.a_session().write(sub, b"child").unwrap();
    w.a_session()
        .write_datagram(s, b"reliable one", true)
        .unwrap();
    w.a_session()
        .write_datagram(s, b"best effort", false)
        .unwrap();
    let big = pattern(4, 100_000);
    w.a_session().write_datagram(s, &big, true).unwrap();
    let mut got = vec![Vec::new()];
    w.read_for(&[s], &mut got, Duration::from_secs(2));
    let b = w.b_session();
    assert_eq!(b.accept_substream(s), Ok(Some(sub)));
    assert_eq!(b.accept_substream(s), Ok(None));
    let mut dgrams = Vec::new();
    while let Ok(Some(d)) = b.read_datagram(s) {
        dgrams.push(d);
    }
    dgrams.sort();
    let mut want = vec![b"reliable one".to_vec(), b"best effort".to_vec(), big];
    want.sort();
    assert!(
        dgrams == want,
        "datagrams: {:?}",
        dgrams.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

#[test]
fn a_record_larger_than_the_window_is_read_whole() {
    let link = LinkConfig::with_latency(Duration::from_millis(10));
    let config = SessionConfig {
        max_stream_window: 2 * 1024 * 1024,
        ..SessionConfig::default()
    };
    let window = config.initial_max_stream_data as usize;
    let mut w = world(12, link, config);
    let s = w.open();
    let small = pattern(1, 75_000);
    let big = pattern(2, 3 * window);
    w.a_session().write_record(s, &small).unwrap();
    w.a_session().write_record(s, &big).unwrap();
    let a = w.a;
    w.net.wake(a);
    // B only ever calls read_record: the window must grow for the big record to complete.
    let mut records = Vec::new();
    for _ in 0..400 {
        w.net.run_for(Duration::from_millis(10)).unwrap();
        let a_eid = w.a_eid;
        if let Some(b) = w.net.node_mut(w.b).sessions.get_mut(&a_eid) {
            while let Ok(Some((r, truncated))) = b.read_record(s, usize::MAX) {
                assert!(!truncated);
                records.push(r);
            }
        }
        let b = w.b;
        w.net.wake(b);
        if records.len() == 2 {
            break;
        }
    }
    assert_eq!(records.len(), 2, "the large record never completed");
    assert!(records[0] == small && records[1] == big);
    // Beyond the largest window a record cannot be taken whole: the receiver is told, and
    // plain reads get the bytes.
    let huge = pattern(3, 5 * 1024 * 1024);
    let mut off = 0;
    let mut got = Vec::new();
    let mut blocked = false;
    for _ in 0..2000 {
        if off < huge.len() {
            let end = (off + 1024 * 1024).min(huge.len());
            let cap = w.a_session().write_capacity(s).min(end - off);
            if cap > 0 {
                if off + cap == huge.len() {
                    w.a_session().write_record(s, &huge[off..]).unwrap();
                } else {
                    w.a_session().write(s, &huge[off..off + cap]).unwrap();
                }
                off += cap;
            }
        }
        let a = w.a;
        w.net.wake(a);
        w.net.run_for(Duration::from_millis(10)).unwrap();
        blocked |= w
            .net
            .node_mut(w.b)
            .events
            .drain(..)
            .any(|(_, e)| e == SessionEvent::ReceiveBlocked(s));
        if blocked {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = w.b_session().read(s, &mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        }
        if got.len() == huge.len() {
            break;
        }
    }
    assert!(
        blocked,
        "no receive-blocked event for a record beyond the largest window"
    );
    assert!(got == huge);
}

#[test]
fn a_session_given_up_on_one_side_starts_afresh_on_both() {
    let link = LinkConfig::with_latency(Duration::from_millis(10));
    let mut w = world(13, link, SessionConfig::default());
    let old = w.open();
    w.write(old, b"old data");
    let mut got = vec![Vec::new()];
    w.read_for(&[old], &mut got, Duration::from_millis(500));
    assert_eq!(got[0], b"old data");
    // Only A loses the channel and, after its detached timeout, gives its streams up.
    let (now, b_eid) = (w.net.now(), w.b_eid);
    w.net.node_mut(w.a).kill_channels(now, b_eid);
    let later = now + SessionConfig::default().detached_timeout + Duration::from_secs(1);
    w.a_session().handle_timeout(later);
    assert_eq!(w.a_session().stream_count(), 0);
    // A opens a stream again: its counter starts over and collides with the old one's id.
    let new = w.open();
    assert_eq!(new, old, "stream ids restart in the new session");
    w.write(new, b"new data");
    let mut got = vec![Vec::new()];
    w.read_for(&[new], &mut got, Duration::from_secs(2));
    // B saw A's session change: the old stream was reset, the new one carries only new data.
    let resets: Vec<u64> = w
        .net
        .node(w.b)
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            SessionEvent::Reset { id, code } if *id == old => Some(*code),
            _ => None,
        })
        .collect();
    assert!(
        resets.contains(&sss_proto::stream::ErrorCode::PEER_RESTARTED),
        "{resets:?}"
    );
    assert_eq!(got[0], b"new data");
}

/// Datagrams A and B sent, summed over their channels.
fn packets_sent(w: &World) -> (u64, u64) {
    let sent = |n: NodeId| -> u64 {
        w.net
            .node(n)
            .channels
            .values()
            .map(|s| s.channel.stats().packets_sent)
            .sum()
    };
    (sent(w.a), sent(w.b))
}

/// `requests` round trips on fresh substreams, one at a time, as `sss-perf --requests` makes
/// them: A opens a substream of one top-level stream, writes a request and finishes; B reads
/// it to its end, answers and finishes; A reads the answer to its end. Returns the datagrams A
/// and B sent per round trip (the handshake and the top-level stream's opening excluded).
fn request_response(config: SessionConfig, requests: usize) -> (f64, f64) {
    let link = LinkConfig::with_latency(Duration::from_millis(5));
    let mut w = world(21, link, config);
    let top = w.open();
    w.write(top, b"hello");
    let mut got = vec![Vec::new()];
    w.read_for(&[top], &mut got, Duration::from_millis(200));
    assert_eq!(got[0], b"hello");
    let before = packets_sent(&w);
    let step = Duration::from_millis(1);
    let mut buf = vec![0u8; 4096];
    for i in 0..requests {
        let request = pattern(i as u64, 64);
        let sub = w.a_session().open_substream(top).unwrap();
        w.write(sub, &request);
        w.a_session().finish(sub).unwrap();
        // B: accept the substream, read the request to its end, answer.
        let deadline = w.net.now() + Duration::from_secs(5);
        let mut incoming = None;
        let mut got = Vec::new();
        loop {
            assert!(w.net.now() < deadline, "request {i} never arrived whole");
            w.net.run_for(step).unwrap();
            let b = w.b_session();
            if incoming.is_none() {
                incoming = b.accept_substream(top).unwrap();
            }
            let Some(id) = incoming else { continue };
            while let Ok(n) = b.read(id, &mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            if b.at_end(id) == Ok(true) {
                assert_eq!(got, request);
                b.write(id, &pattern(i as u64 + 1000, 64)).unwrap();
                b.finish(id).unwrap();
                let node = w.b;
                w.net.wake(node);
                break;
            }
        }
        // A: read the answer to its end.
        let mut answer = Vec::new();
        loop {
            assert!(w.net.now() < deadline, "answer {i} never arrived whole");
            w.net.run_for(step).unwrap();
            let a = w.a_session();
            while let Ok(n) = a.read(sub, &mut buf) {
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
            }
            // (A stream read to its end and acknowledged is forgotten at once.)
            if a.at_end(sub).unwrap_or(true) {
                assert_eq!(answer, pattern(i as u64 + 1000, 64));
                break;
            }
        }
    }
    let after = packets_sent(&w);
    let per = |a: u64, b: u64| (a - b) as f64 / requests as f64;
    (per(after.0, before.0), per(after.1, before.1))
}

#[test]
fn a_round_trip_on_a_fresh_substream_is_one_packet_each_way_and_credit_keeps_up() {
    // Far more round trips than the stream credit, so it must be renewed many times; but
    // with one stream open at a time the renewal rides in the answers instead of costing a
    // packet of its own (and an acknowledgement of that packet) per stream.
    let config = SessionConfig {
        initial_max_streams: 16,
        ..SessionConfig::default()
    };
    let (a, b) = request_response(config, 200);
    assert!(a <= 1.1, "A sent {a:.2} packets per round trip");
    assert!(b <= 1.1, "B sent {b:.2} packets per round trip");
}

#[test]
fn a_peer_using_all_its_stream_credit_gets_more_at_once() {
    // Credit of 3: the top-level stream and one substream at a time, so every renewal is
    // urgent and the 50 round trips complete only if each one is sent without waiting for
    // other traffic.
    let config = SessionConfig {
        initial_max_streams: 3,
        ..SessionConfig::default()
    };
    let (a, b) = request_response(config, 50);
    assert!(
        a <= 2.5 && b <= 2.5,
        "A {a:.2}, B {b:.2} packets per round trip"
    );
}
