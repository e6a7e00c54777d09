//! Datagrams on the simulated network: limits that differ between the hosts, and best-effort
//! datagrams sent on a stream before the peer knows it.

mod common;

use std::time::Duration;

use common::seeds;
use common::sessions::{pattern, World};
use sss_proto::sim::LinkConfig;
use sss_proto::stream::{ErrorCode, SessionConfig, SessionEvent, StreamError, StreamId};

const SERVICE: (&str, &str) = ("test", "datagrams/1");

/// A (dialling) and B (listening) with their own session configurations.
fn world(seed: u64, link: LinkConfig, a: SessionConfig, b: SessionConfig) -> World {
    common::sessions::world(seed, link, a, b, SERVICE)
}

impl World {
    fn run(&mut self, d: Duration) {
        self.net.run_for(d).unwrap();
    }

    /// Runs until both sessions have met over a channel (the handshake may lose packets).
    fn wait_attached(&mut self, seed: u64) {
        for _ in 0..600 {
            let b_has = self.net.node(self.b).sessions.contains_key(&self.a_eid);
            if b_has && self.a_session().peer_max_datagram_size().is_some() {
                return;
            }
            self.run(Duration::from_millis(100));
        }
        panic!("seed {seed}: no channel within a minute");
    }

    fn a_events(&mut self) -> Vec<SessionEvent> {
        self.net
            .node_mut(self.a)
            .events
            .drain(..)
            .map(|(_, e)| e)
            .collect()
    }
}

const SMALL_LIMIT: u64 = 64 * 1024;

/// A accepts datagrams of 4 MiB, B only of 64 KiB.
fn mismatched(seed: u64, link: LinkConfig) -> World {
    let a = SessionConfig {
        max_datagram_size: 4 << 20,
        ..SessionConfig::default()
    };
    let b = SessionConfig {
        max_datagram_size: SMALL_LIMIT,
        ..SessionConfig::default()
    };
    world(seed, link, a, b)
}

impl World {
    /// Every datagram B's application can read on `id`.
    fn b_datagrams(&mut self, id: StreamId) -> Vec<Vec<u8>> {
        let b = self.b_session();
        std::iter::from_fn(|| b.read_datagram(id).ok().flatten()).collect()
    }
}

/// Both hosts hold nothing for the datagrams any more: only the parent stream is left on
/// each side, and A has nothing left to send or to have acknowledged.
fn assert_nothing_stuck(w: &mut World, s: StreamId, seed: u64) {
    let mut buf = [0u8; 64];
    while w.b_session().read(s, &mut buf).is_ok_and(|n| n > 0) {}
    assert_eq!(
        w.a_session().stream_count(),
        1,
        "seed {seed}: A\n{}",
        w.a_session().debug_streams()
    );
    assert_eq!(
        w.b_session().stream_count(),
        1,
        "seed {seed}: B\n{}",
        w.b_session().debug_streams()
    );
    assert!(w.a_session().is_quiescent(), "seed {seed}: A not quiescent");
    assert_eq!(
        w.b_session().buffered_bytes(),
        0,
        "seed {seed}: B still buffers"
    );
}

/// A reliable datagram larger than the receiver's `max_datagram_size` used to stall for
/// ever: the receiver's window stopped at its limit, the sender waited for more window, and
/// neither application was told (B also held the bytes against its session window). Now the
/// peer's limit comes in the handshake and `write_datagram` refuses such a datagram at once;
/// datagrams up to the limit still go through.
#[test]
fn a_datagram_too_large_for_the_peer_is_refused_at_once() {
    for seed in 0..seeds(8) {
        let link = LinkConfig {
            loss: 0.02,
            ..LinkConfig::with_latency(Duration::from_millis(10))
        };
        let mut w = mismatched(seed, link);
        let s = w.open();
        w.a_session().write(s, b"hello").unwrap();
        w.wait_attached(seed);
        assert_eq!(w.a_session().peer_max_datagram_size(), Some(SMALL_LIMIT));
        let too_big = pattern(seed, SMALL_LIMIT as usize + 1);
        for reliable in [true, false] {
            assert_eq!(
                w.a_session().write_datagram(s, &too_big, reliable),
                Err(StreamError::DatagramTooLargeForPeer(SMALL_LIMIT)),
                "seed {seed}"
            );
        }
        // Exactly the limit is fine.
        let fits = pattern(seed + 1, SMALL_LIMIT as usize);
        w.a_session().write_datagram(s, &fits, true).unwrap();
        w.net.wake(w.a);
        w.run(Duration::from_secs(3));
        assert_eq!(w.b_datagrams(s), vec![fits], "seed {seed}");
        let stats = w.a_session().datagram_stats();
        assert_eq!(stats.refused_for_peer, 2, "seed {seed}");
        assert_eq!(stats.reliable_failed, 0, "seed {seed}");
        assert_nothing_stuck(&mut w, s, seed);
    }
}

/// Datagrams written before the first channel (the peer's limit unknown): once the handshake
/// tells the limit, a reliable datagram beyond it fails with a `DatagramFailed` event instead
/// of stalling, a best-effort one is dropped and counted, and the others are delivered. With
/// early data the first frames of the oversized datagram may already be on their way.
#[test]
fn datagrams_written_before_the_limit_is_known_fail_when_it_is() {
    for seed in 0..seeds(8) {
        for early in [false, true] {
            let link = LinkConfig {
                loss: 0.02,
                ..LinkConfig::with_latency(Duration::from_millis(10))
            };
            let mut w = mismatched(seed, link);
            w.net.node_mut(w.a).early_data = early;
            let s = w.open();
            let small = pattern(seed, 3000);
            let too_big = pattern(seed + 7, 300_000);
            w.a_session().write_datagram(s, &too_big, true).unwrap();
            w.a_session().write_datagram(s, &small, true).unwrap();
            w.a_session().write_datagram(s, &too_big, false).unwrap();
            w.a_session().write(s, b"hello").unwrap();
            w.run(Duration::from_secs(5));
            w.wait_attached(seed);
            w.run(Duration::from_secs(3));
            let events = w.a_events();
            let failed: Vec<_> = events
                .iter()
                .filter(|e| matches!(e, SessionEvent::DatagramFailed { .. }))
                .collect();
            assert_eq!(
                failed,
                vec![&SessionEvent::DatagramFailed {
                    parent: s,
                    code: ErrorCode::DATAGRAM_TOO_LARGE
                }],
                "seed {seed} early {early}: {events:?}"
            );
            assert_eq!(w.b_datagrams(s), vec![small], "seed {seed} early {early}");
            let stats = w.a_session().datagram_stats();
            assert_eq!(
                (stats.reliable_failed, stats.best_effort_too_large),
                (1, 1),
                "seed {seed} early {early}"
            );
            assert_nothing_stuck(&mut w, s, seed);
        }
    }
}

/// Sends `n` best-effort datagrams of varied sizes (one packet to several) on `id`; returns
/// them.
fn send_burst(w: &mut World, id: StreamId, seed: u64, n: usize) -> Vec<Vec<u8>> {
    let sent: Vec<Vec<u8>> = (0..n)
        .map(|i| pattern(seed * 1000 + i as u64, 100 + 900 * (i % 7)))
        .collect();
    for d in &sent {
        w.a_session().write_datagram(id, d, false).unwrap();
    }
    w.net.wake(w.a);
    sent
}

/// Best-effort datagrams sent on a stream at once, before its OPEN reached the peer, were
/// dropped when they overtook the OPEN (a reordered packet): the receiver did not know the
/// stream yet. It now holds such fragments (bounded) until the OPEN arrives. Without loss,
/// every datagram arrives, on a new top-level stream (opened with the channel) and on a new
/// substream alike, once each.
#[test]
fn best_effort_datagrams_on_a_new_stream_all_arrive_without_loss() {
    let mut held = 0;
    for seed in 0..seeds(12) {
        let link = LinkConfig {
            reorder: 0.3,
            reorder_delay: Duration::from_millis(5),
            jitter: Duration::from_millis(3),
            ..LinkConfig::with_latency(Duration::from_millis(10))
        };
        let mut w = world(
            seed,
            link,
            SessionConfig::default(),
            SessionConfig::default(),
        );
        let top = w.open();
        let mut want = vec![(top, send_burst(&mut w, top, seed, 20))];
        w.run(Duration::from_secs(1));
        w.wait_attached(seed);
        for k in 0..3 {
            let sub = w.a_session().open_substream(top).unwrap();
            want.push((sub, send_burst(&mut w, sub, seed + 100 * (k + 1), 20)));
            w.run(Duration::from_millis(3));
        }
        w.run(Duration::from_secs(2));
        let b = w.b_session();
        while let Ok(Some(_)) = b.accept_substream(top) {}
        for (id, sent) in &want {
            let mut got = w.b_datagrams(*id);
            let mut sent = sent.clone();
            got.sort();
            sent.sort();
            assert!(
                got == sent,
                "seed {seed}: stream {id}: {} of {} datagrams",
                got.len(),
                sent.len()
            );
        }
        let stats = w.b_session().datagram_stats();
        assert_eq!(stats.unopened_dropped, 0, "seed {seed}");
        held += stats.unopened_held;
        assert_eq!(w.b_session().buffered_bytes(), 0, "seed {seed}");
    }
    // The reordering did make datagrams overtake OPENs (what this test is about).
    assert!(held > 0, "no fragment ever overtook its stream's OPEN");
}

/// Under loss, reordering and duplication, datagrams on new streams are delivered at most
/// once each and only as sent, and what B holds stays bounded.
#[test]
fn best_effort_datagrams_on_new_streams_under_impairments_are_never_duplicated() {
    for seed in 0..seeds(12) {
        let link = LinkConfig {
            loss: 0.05,
            duplicate: 0.05,
            reorder: 0.2,
            reorder_delay: Duration::from_millis(5),
            jitter: Duration::from_millis(3),
            ..LinkConfig::with_latency(Duration::from_millis(10))
        };
        let config = SessionConfig::default();
        let bound = config.unopened_datagram_limit + config.datagram_reassembly_limit;
        let mut w = world(seed, link, config.clone(), config);
        let top = w.open();
        let mut want = vec![(top, send_burst(&mut w, top, seed, 20))];
        w.run(Duration::from_secs(3));
        w.wait_attached(seed);
        for k in 0..4 {
            let sub = w.a_session().open_substream(top).unwrap();
            want.push((sub, send_burst(&mut w, sub, seed + 100 * (k + 1), 20)));
            for _ in 0..10 {
                w.run(Duration::from_millis(1));
                if let Some(b) = w.net.node_mut(w.b).sessions.get_mut(&w.a_eid) {
                    assert!(b.buffered_bytes() <= bound + 100, "seed {seed}");
                }
            }
        }
        w.run(Duration::from_secs(3));
        let b = w.b_session();
        while let Ok(Some(_)) = b.accept_substream(top) {}
        let mut delivered = 0;
        for (id, sent) in &want {
            let got = w.b_datagrams(*id);
            let mut seen = std::collections::BTreeSet::new();
            for d in &got {
                assert!(sent.contains(d), "seed {seed}: a datagram nobody sent");
                assert!(seen.insert(d.clone()), "seed {seed}: delivered twice");
            }
            delivered += got.len();
        }
        assert!(delivered > 0, "seed {seed}");
        // Nothing is held once the streams are open and the deadlines passed.
        assert_eq!(w.b_session().buffered_bytes(), 0, "seed {seed}");
    }
}
