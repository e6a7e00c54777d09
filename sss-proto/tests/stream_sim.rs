//! The stream layer on the simulated network: random trees of streams and substreams with
//! random writes, records, datagrams, finishes and resets under impairments, checked for
//! exactly-once, in-order delivery; and streams that survive the death of their channel.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::seeds;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sss_proto::sim::{LinkConfig, Network, NodeId};
use sss_proto::stream::{SessionConfig, SessionEvent, StreamError, StreamId};
use sss_proto::testkit::addr;
use sss_proto::testkit::session_host::{SessionHost, SessionPair};
use sss_proto::Eid;

const SERVICE: (&str, &str) = ("test", "streams/1");

struct World {
    net: Network<SessionHost>,
    a: NodeId,
    b: NodeId,
    a_eid: Eid,
    b_eid: Eid,
    /// What B's application read, per stream.
    received: BTreeMap<StreamId, Received>,
}

/// What B read on one stream: records (`true`) and plain byte reads (`false`), in order, and
/// datagrams.
#[derive(Default, Debug)]
struct Received {
    pieces: Vec<(bool, Vec<u8>)>,
    datagrams: Vec<Vec<u8>>,
    blocked: bool,
}

fn world(seed: u64, link: LinkConfig) -> World {
    let mut channel = sss_proto::ChannelConfig::default();
    channel.initial_rtt = Duration::from_millis(100);
    channel.handshake_timeout = Duration::from_secs(120);
    let SessionPair {
        net,
        a,
        b,
        a_eid,
        b_eid,
    } = SessionPair::new(seed, link, SessionConfig::default(), channel, SERVICE);
    World {
        net,
        a,
        b,
        a_eid,
        b_eid,
        received: BTreeMap::new(),
    }
}

/// What the sender did on one stream.
#[derive(Default, Debug)]
struct Sent {
    records: Vec<Vec<u8>>,
    tail: Vec<u8>,
    finished: bool,
    reset: bool,
}

/// B's application: accepts every stream and substream and reads as it goes: whole records
/// whenever one is complete, plain bytes only when a stream's window is full without a complete
/// record (a record longer than the window cannot be read whole), everything at the end.
fn serve(w: &mut World, drain_all: bool) {
    let a_eid = w.a_eid;
    let host = w.net.node_mut(w.b);
    let events: Vec<SessionEvent> = host.events.drain(..).map(|(_, e)| e).collect();
    let Some(session) = host.sessions.get_mut(&a_eid) else {
        assert!(events.is_empty());
        return;
    };
    for e in events {
        match e {
            SessionEvent::IncomingStream { id, .. } => {
                w.received.entry(id).or_default();
            }
            SessionEvent::NewSubstream { parent } => {
                while let Ok(Some(child)) = session.accept_substream(parent) {
                    w.received.entry(child).or_default();
                }
            }
            SessionEvent::ReceiveBlocked(id) => {
                if let Some(r) = w.received.get_mut(&id) {
                    r.blocked = true;
                }
            }
            _ => {}
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    for (id, r) in &mut w.received {
        while let Ok(Some((rec, truncated))) = session.read_record(*id, usize::MAX) {
            assert!(!truncated);
            r.pieces.push((true, rec));
        }
        if r.blocked || drain_all {
            r.blocked = false;
            while let Ok(n) = session.read(*id, &mut buf) {
                if n == 0 {
                    break;
                }
                r.pieces.push((false, buf[..n].to_vec()));
            }
            while let Ok(Some((rec, _))) = session.read_record(*id, usize::MAX) {
                r.pieces.push((true, rec));
            }
        }
        while let Ok(Some(d)) = session.read_datagram(*id) {
            r.datagrams.push(d);
        }
    }
}

/// Streams B reset (a substream whose parent was gone, say) count as reset.
fn mark_peer_resets(w: &mut World, sent: &mut BTreeMap<StreamId, Sent>) {
    let host = w.net.node_mut(w.a);
    for (_, e) in host.events.drain(..) {
        if let SessionEvent::Reset { id, .. } = e {
            if let Some(s) = sent.get_mut(&id) {
                s.reset = true;
            }
        }
    }
}

/// Runs one random tree; returns (bytes, records, datagrams) verified.
/// Bytes, records and datagrams checked, and the packets A's channels declared lost that were
/// acknowledged after all.
fn run_random_tree(seed: u64, link: LinkConfig) -> (usize, usize, usize, u64) {
    let mut w = world(seed, link);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sent: BTreeMap<StreamId, Sent> = BTreeMap::new();
    let mut datagrams_reliable: BTreeMap<Vec<u8>, StreamId> = BTreeMap::new();
    let mut datagrams_best: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut next_tag = 0u32;
    let (a, b_eid) = (w.a, w.b_eid);
    let ops = 20 + rng.next_u32() % 40;
    for _ in 0..ops {
        mark_peer_resets(&mut w, &mut sent);
        let now = w.net.now();
        let host = w.net.node_mut(a);
        let open: Vec<StreamId> = sent
            .iter()
            .filter(|(_, s)| !s.finished && !s.reset)
            .map(|(id, _)| *id)
            .collect();
        let pick = |rng: &mut ChaCha8Rng| open[(rng.next_u32() as usize) % open.len()];
        // An operation on a stream the peer reset (or that is gone because of it) fails
        // with a typed error: the stream then counts as reset.
        let mut gone: Option<StreamId> = None;
        match rng.next_u32() % 10 {
            r if open.is_empty() || r == 0 => {
                let id = host
                    .open(now, b_eid, addr(2), SERVICE.0, SERVICE.1)
                    .unwrap();
                sent.insert(id, Sent::default());
            }
            1 | 2 => {
                let parent = pick(&mut rng);
                let s = host.sessions.get_mut(&b_eid).unwrap();
                match s.open_substream(parent) {
                    Ok(id) => {
                        sent.insert(id, Sent::default());
                    }
                    Err(e) => {
                        assert!(matches!(e, StreamError::Reset(_)), "seed {seed}: {e}");
                        gone = Some(parent);
                    }
                }
            }
            3..=5 => {
                let id = pick(&mut rng);
                // Mostly small writes, sometimes a large one that meets the flow-control
                // windows and fills many packets.
                let len = if rng.next_u32() % 10 == 0 {
                    (rng.next_u32() % 300_000) as usize
                } else {
                    (rng.next_u32() % 3000) as usize
                };
                let mut data = vec![0u8; len];
                rng.fill_bytes(&mut data);
                let s = host.sessions.get_mut(&b_eid).unwrap();
                let as_record = rng.next_u32() % 2 == 0;
                let entry = sent.get_mut(&id).unwrap();
                let r = if as_record {
                    match s.write_record(id, &data) {
                        Ok(()) => {
                            entry.tail.extend_from_slice(&data);
                            let rec = std::mem::take(&mut entry.tail);
                            entry.records.push(rec);
                            Ok(())
                        }
                        Err(StreamError::EmptyRecord) => {
                            assert!(data.is_empty() && entry.tail.is_empty());
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    s.write(id, &data).map(|n| {
                        assert_eq!(n, len);
                        entry.tail.extend_from_slice(&data);
                    })
                };
                if let Err(e) = r {
                    assert!(matches!(e, StreamError::Reset(_)), "seed {seed}: {e}");
                    gone = Some(id);
                }
            }
            6 => {
                let id = pick(&mut rng);
                let reliable = rng.next_u32() % 2 == 0;
                let len = 4 + (rng.next_u32() % 6000) as usize;
                let mut data = vec![0u8; len];
                rng.fill_bytes(&mut data);
                data[..4].copy_from_slice(&next_tag.to_be_bytes());
                next_tag += 1;
                let s = host.sessions.get_mut(&b_eid).unwrap();
                match s.write_datagram(id, &data, reliable) {
                    Ok(()) if reliable => {
                        datagrams_reliable.insert(data, id);
                    }
                    Ok(()) => {
                        datagrams_best.insert(data);
                    }
                    Err(e) => {
                        assert!(matches!(e, StreamError::Reset(_)), "seed {seed}: {e}");
                        gone = Some(id);
                    }
                }
            }
            7 | 8 => {
                let id = pick(&mut rng);
                match host.sessions.get_mut(&b_eid).unwrap().finish(id) {
                    Ok(()) => sent.get_mut(&id).unwrap().finished = true,
                    Err(e) => {
                        assert!(matches!(e, StreamError::Reset(_)), "seed {seed}: {e}");
                        gone = Some(id);
                    }
                }
            }
            _ => {
                let id = pick(&mut rng);
                host.sessions
                    .get_mut(&b_eid)
                    .unwrap()
                    .reset(id, 0x100)
                    .unwrap();
                sent.get_mut(&id).unwrap().reset = true;
            }
        }
        if let Some(id) = gone {
            sent.get_mut(&id).unwrap().reset = true;
        }
        w.net.wake(a);
        let step = Duration::from_millis(u64::from(rng.next_u32() % 30));
        w.net.run_for(step).unwrap();
        serve(&mut w, false);
    }
    // Let everything arrive.
    for _ in 0..600 {
        w.net.run_for(Duration::from_millis(200)).unwrap();
        serve(&mut w, false);
        let a_session = w.net.node(a).sessions.get(&b_eid);
        let b_session = w.net.node(w.b).sessions.get(&w.a_eid);
        // Both sides: B's resets and window updates must arrive too.
        let idle = a_session.is_some_and(|s| s.is_quiescent())
            && b_session.is_some_and(|s| s.is_quiescent());
        if idle {
            break;
        }
        if std::env::var("SSS_DEBUG").is_ok() {
            eprintln!(
                "{:?} not quiescent: {:?}\nA channel events {:?}\nB channel events {:?}",
                w.net.now(),
                a_session,
                w.net.node(a).channel_events,
                w.net.node(w.b).channel_events
            );
            if let Some(s) = a_session {
                eprintln!("A {}", s.debug_streams());
            }
            if let Some(s) = w.net.node(w.b).sessions.get(&w.a_eid) {
                eprintln!("B {}", s.debug_streams());
            }
        }
    }
    mark_peer_resets(&mut w, &mut sent);
    // Read what is left at B and compare.
    serve(&mut w, true);
    let mut got_reliable = BTreeSet::new();
    let mut got_best = BTreeSet::new();
    let (mut bytes_checked, mut records_checked) = (0, 0);
    let session = w
        .net
        .node(w.b)
        .sessions
        .get(&w.a_eid)
        .expect("B has the session");
    for (id, s) in &sent {
        if s.reset {
            continue;
        }
        let empty = Received::default();
        let r = w.received.get(id).unwrap_or(&empty);
        let mut want_records = s.records.clone();
        let mut want_tail = s.tail.clone();
        if s.finished && !want_tail.is_empty() {
            want_records.push(std::mem::take(&mut want_tail));
        }
        let want: Vec<u8> = want_records
            .iter()
            .flatten()
            .chain(&want_tail)
            .copied()
            .collect();
        let got: Vec<u8> = r.pieces.iter().flat_map(|(_, p)| p).copied().collect();
        assert!(
            got == want,
            "seed {seed}: stream {id}: bytes differ ({} read, {} written)",
            got.len(),
            want.len()
        );
        bytes_checked += got.len();
        records_checked += r.pieces.iter().filter(|(is_record, _)| *is_record).count();
        // Every record read whole ends where the sender ended one.
        let mut ends = BTreeSet::new();
        let mut at = 0;
        for rec in &want_records {
            at += rec.len();
            ends.insert(at);
        }
        let mut at = 0;
        for (is_record, piece) in &r.pieces {
            at += piece.len();
            if *is_record {
                assert!(
                    ends.contains(&at),
                    "seed {seed}: stream {id}: record ends at {at}"
                );
            }
        }
        // Without plain reads, the records are exactly those written.
        if r.pieces.iter().all(|(is_record, _)| *is_record) {
            let records: Vec<&Vec<u8>> = r.pieces.iter().map(|(_, p)| p).collect();
            let want_refs: Vec<&Vec<u8>> = want_records.iter().collect();
            assert!(
                want_tail.is_empty() || records.len() == want_refs.len(),
                "seed {seed}: stream {id}: record count"
            );
            if want_tail.is_empty() {
                assert!(
                    records == want_refs,
                    "seed {seed}: stream {id}: records differ"
                );
            }
        }
        if s.finished {
            assert_eq!(
                session.at_end(*id),
                Ok(true),
                "seed {seed}: stream {id} not at end"
            );
        }
        for d in &r.datagrams {
            let fresh = if datagrams_reliable.contains_key(d) {
                got_reliable.insert(d.clone())
            } else {
                assert!(
                    datagrams_best.contains(d),
                    "seed {seed}: a datagram nobody sent"
                );
                got_best.insert(d.clone())
            };
            assert!(fresh, "seed {seed}: a datagram was delivered twice");
        }
    }
    // Every reliable datagram whose stream was not reset arrived (exactly once, checked above).
    for (d, parent) in &datagrams_reliable {
        if !sent[parent].reset {
            assert!(
                got_reliable.contains(d),
                "seed {seed}: a reliable datagram on {parent} was lost"
            );
        }
    }
    let spurious = w
        .net
        .node(a)
        .channels
        .values()
        .map(|c| c.channel.stats().spurious_losses)
        .sum();
    (
        bytes_checked,
        records_checked,
        got_reliable.len() + got_best.len(),
        spurious,
    )
}

#[test]
fn random_stream_trees_are_delivered_exactly_under_impairments() {
    let range = match std::env::var("SSS_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(one) => one..one + 1,
        None => 0..seeds(1000),
    };
    let range_len = range.end - range.start;
    let mut totals = (0usize, 0usize, 0usize);
    for seed in range {
        let mut link = LinkConfig::with_latency(Duration::from_millis(5 + seed % 15));
        link.loss = (seed % 21) as f64 / 100.0;
        link.reorder = 0.03;
        link.reorder_delay = Duration::from_millis(5);
        link.duplicate = 0.01;
        link.corrupt = 0.005;
        link.bandwidth_bps = Some(50_000_000);
        let (b, r, d, _) = run_random_tree(seed, link);
        totals = (totals.0 + b, totals.1 + r, totals.2 + d);
    }
    // The sweep checked real traffic, not empty runs.
    let n = range_len as usize;
    assert!(
        totals.0 > n * 10_000 && totals.1 > n * 3 && totals.2 > n,
        "too little traffic checked: {totals:?} over {n} seeds"
    );
    eprintln!("checked {totals:?} (bytes, records, datagrams) over {n} seeds");
}

/// On a path that reorders a lot and loses nothing, the channel declares packets lost that
/// arrive after all: their frames were reported lost and sent again, the late originals are
/// acknowledged (spec/recovery.md §2.5), and the stream layer still delivers every byte,
/// record and reliable datagram exactly once, in order.
#[test]
fn random_stream_trees_are_delivered_exactly_on_a_path_that_reorders() {
    let n = seeds(200);
    let mut totals = (0usize, 0u64);
    for seed in 0..n {
        let mut link = LinkConfig::with_latency(Duration::from_millis(5 + seed % 15));
        link.reorder = 0.05;
        link.reorder_delay = Duration::from_millis(10 + seed % 30);
        link.bandwidth_bps = Some(50_000_000);
        let (b, _, _, spurious) = run_random_tree(seed, link);
        totals = (totals.0 + b, totals.1 + spurious);
    }
    eprintln!(
        "checked {} bytes; {} spurious losses over {n} seeds",
        totals.0, totals.1
    );
    assert!(
        totals.0 > n as usize * 10_000,
        "too little traffic: {totals:?}"
    );
    assert!(
        totals.1 >= n,
        "only {} spurious losses over {n} seeds: the test does not exercise them",
        totals.1
    );
}
