//! Early data (spec/handshake.md §3.1, §9) on the simulated network: the initiator's first
//! stream frames ride in the initiation and reach the responder's application one round trip
//! earlier; whatever is lost, duplicated, declined or replayed, every byte arrives exactly
//! once.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::seeds;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sss_proto::endpoint::EndpointConfig;
use sss_proto::sim::{Intercept, LinkConfig, Network, NodeId, Verdict};
use sss_proto::stream::{SessionConfig, SessionEvent, StreamId};
use sss_proto::testkit::session_host::SessionHost;
use sss_proto::testkit::{addr, identity, UNIX_NANOS};
use sss_proto::{ChannelConfig, Eid};

const SERVICE: (&str, &str) = ("test", "early/1");
const INITIATION: u8 = 0x01;
const RESPONSE: u8 = 0x02;

struct World {
    net: Network<SessionHost>,
    a: NodeId,
    b: NodeId,
    a_eid: Eid,
    b_eid: Eid,
    seed: u64,
    /// What B's application read from A's stream, and whether it saw the end.
    got: Vec<u8>,
    fin: bool,
    /// IncomingStream events B's application saw.
    incoming: Vec<StreamId>,
    /// When B first read a byte.
    b_first_read: Option<Instant>,
    /// What B's application answers once it has read the whole request (sent once).
    reply: Option<Vec<u8>>,
}

fn channel_config() -> ChannelConfig {
    let mut c = ChannelConfig::default();
    c.initial_rtt = Duration::from_millis(100);
    c.handshake_timeout = Duration::from_secs(120);
    c.handshake_retry = Duration::from_millis(300);
    c
}

fn b_host(seed: u64, unix_nanos: u64, now: Instant, config: SessionConfig) -> SessionHost {
    let mut cb = EndpointConfig::new([seed as u8 ^ 0xff; 32]);
    cb.channel = Arc::new(channel_config());
    let mut hb = SessionHost::with_unix_nanos(&identity(seed * 2 + 2), cb, config, now, unix_nanos);
    hb.listeners.push((SERVICE.0.into(), SERVICE.1.into()));
    hb
}

/// A (early data on) dials B, whose wall clock read `b_unix` when it started.
fn world(seed: u64, link: LinkConfig, b_unix: u64) -> World {
    world_with(seed, link, b_unix, SessionConfig::default())
}

/// [`world`] with B's stream-layer configuration.
fn world_with(seed: u64, link: LinkConfig, b_unix: u64, b_config: SessionConfig) -> World {
    let start = Instant::now();
    let mut net = Network::new(seed, start);
    let mut ca = EndpointConfig::new([seed as u8; 32]);
    ca.channel = Arc::new(channel_config());
    let ida = identity(seed * 2 + 1);
    let mut ha = SessionHost::new(&ida, ca, SessionConfig::default(), start);
    ha.early_data = true;
    let hb = b_host(seed, b_unix, start, b_config);
    let b_eid = hb.endpoint.eid();
    let a = net.add_node(addr(1), ha);
    let b = net.add_node(addr(2), hb);
    net.connect(addr(1), addr(2), link);
    World {
        net,
        a,
        b,
        a_eid: ida.eid(),
        b_eid,
        seed,
        got: Vec::new(),
        fin: false,
        incoming: Vec::new(),
        b_first_read: None,
        reply: None,
    }
}

fn link(latency_ms: u64) -> LinkConfig {
    LinkConfig::with_latency(Duration::from_millis(latency_ms))
}

/// A opens a stream to B, writes `msg` and finishes it, all before its initiation is sent.
/// The clock first moves on a little: B started at the same instant in these worlds, and
/// early data is taken only from initiations made after the responder started.
fn send(w: &mut World, msg: &[u8]) -> StreamId {
    w.net.run_for(Duration::from_millis(1)).unwrap();
    let now = w.net.now();
    let b_eid = w.b_eid;
    let host = w.net.node_mut(w.a);
    let id = host
        .open(now, b_eid, addr(2), SERVICE.0, SERVICE.1)
        .unwrap();
    let session = host.sessions.get_mut(&b_eid).unwrap();
    let mut off = 0;
    while off < msg.len() {
        let n = session.write(id, &msg[off..]).unwrap();
        assert!(n > 0, "send buffer full");
        off += n;
    }
    session.finish(id).unwrap();
    id
}

/// Whether B's application has something to do: a new stream, or bytes or the end to read.
#[allow(clippy::too_many_arguments)]
fn b_has_work(
    net: &Network<SessionHost>,
    b: NodeId,
    a_eid: Eid,
    incoming: &[StreamId],
    fin: bool,
) -> bool {
    let host = net.node(b);
    !host.events.is_empty()
        || host.sessions.get(&a_eid).is_some_and(|s| {
            incoming.iter().any(|&id| {
                s.bytes_available(id).map_or(!fin, |n| n > 0)
                    || (!fin && s.at_end(id).unwrap_or(false))
            })
        })
}

/// B's application: notes new streams and reads everything readable.
fn serve(w: &mut World) {
    let a_eid = w.a_eid;
    let now = w.net.now();
    // Only touch B (which wakes it) when there is something to do.
    if !b_has_work(&w.net, w.b, a_eid, &w.incoming, w.fin) {
        return;
    }
    let host = w.net.node_mut(w.b);
    for (_, e) in host.events.drain(..) {
        if let SessionEvent::IncomingStream { id, .. } = e {
            w.incoming.push(id);
        }
    }
    let Some(session) = host.sessions.get_mut(&a_eid) else {
        return;
    };
    let mut buf = [0u8; 4096];
    for &id in &w.incoming {
        loop {
            match session.read(id, &mut buf) {
                Ok(0) => {
                    if session.at_end(id).unwrap_or(true) && !w.got.is_empty() {
                        w.fin = true;
                    }
                    break;
                }
                Ok(n) => {
                    w.b_first_read.get_or_insert(now);
                    w.got.extend_from_slice(&buf[..n]);
                }
                // Read to the end and forgotten.
                Err(_) => {
                    w.fin = true;
                    break;
                }
            }
        }
    }
    if w.fin {
        if let (Some(reply), Some(&id)) = (w.reply.take(), w.incoming.first()) {
            assert_eq!(session.write(id, &reply).unwrap(), reply.len());
            session.finish(id).unwrap();
        }
    }
}

/// Runs until B's application has something to do (and serves it), or until `until`
/// (then `false`).
fn step_until(w: &mut World, until: Instant) -> bool {
    let (b, a_eid, fin) = (w.b, w.a_eid, w.fin);
    let incoming = w.incoming.clone();
    let work = w
        .net
        .run_while(until, |net| !b_has_work(net, b, a_eid, &incoming, fin))
        .unwrap();
    serve(w);
    work
}

/// Runs until B has read all of `msg` and the end, then `linger` more (late duplicates and
/// retransmissions), and checks that B's application got `msg` exactly once on one stream.
fn deliver(w: &mut World, msg: &[u8], limit: Duration, linger: Duration) {
    let deadline = w.net.now() + limit;
    while !(w.fin && w.got.len() >= msg.len()) && step_until(w, deadline) {}
    let until = w.net.now() + linger;
    while step_until(w, until) {}
    let seed = w.seed;
    assert_eq!(w.incoming.len(), 1, "seed {seed}: one stream, seen once");
    assert_eq!(w.got.len(), msg.len(), "seed {seed}: every byte once");
    assert!(w.got == msg, "seed {seed}: bytes intact and in order");
    assert!(w.fin, "seed {seed}: the stream ended");
}

fn message(seed: u64, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed ^ 0xea51).fill_bytes(&mut m);
    m
}

/// Early data bytes A's channels sent, and B's channels took.
fn early_counts(w: &World) -> (u64, u64) {
    let a: u64 = w
        .net
        .node(w.a)
        .channels
        .values()
        .map(|c| c.channel.stats().early_data_sent)
        .sum();
    let b: u64 = w
        .net
        .node(w.b)
        .channels
        .values()
        .map(|c| c.channel.stats().early_data_received)
        .sum();
    (a, b)
}

#[test]
fn early_data_reaches_the_responder_with_the_initiation() {
    let mut w = world(1, link(20), UNIX_NANOS);
    let start = w.net.now();
    let msg = message(1, 300);
    send(&mut w, &msg);
    deliver(&mut w, &msg, Duration::from_secs(10), Duration::ZERO);
    let (sent, taken) = early_counts(&w);
    assert!(
        sent > 300,
        "the request rode in the initiation ({sent} bytes)"
    );
    assert_eq!(sent, taken, "and the responder took it");
    // B's application read the request one way after A started, before any second flight.
    let read_at = w.b_first_read.unwrap() - start;
    assert!(
        read_at < Duration::from_millis(30),
        "read after {read_at:?}, one-way latency is 20 ms"
    );
    assert_eq!(w.net.node(w.b).endpoint.early_data_declined(), 0);
}

#[test]
fn without_early_data_the_request_waits_for_the_handshake() {
    let mut w = world(2, link(20), UNIX_NANOS);
    w.net.node_mut(w.a).early_data = false;
    let start = w.net.now();
    let msg = message(2, 300);
    send(&mut w, &msg);
    deliver(&mut w, &msg, Duration::from_secs(10), Duration::ZERO);
    assert_eq!(early_counts(&w), (0, 0));
    let read_at = w.b_first_read.unwrap() - start;
    assert!(
        read_at >= Duration::from_millis(60),
        "read after {read_at:?}"
    );
}

/// Initiations and responses dropped, initiations duplicated and delivered late (so that
/// the responder may answer several initiations of one handshake, each with the same early
/// data), random loss on top: the request arrives exactly once.
#[test]
fn early_data_arrives_once_whatever_happens_to_the_handshake() {
    let mut early_delivered = 0;
    let n = seeds(150);
    for seed in 0..n {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut l = link(5 + rng.next_u64() % 30);
        if seed % 3 == 0 {
            l.loss = 0.1;
        }
        let mut w = world(seed, l, UNIX_NANOS);
        let drop_inits = rng.next_u64() % 3;
        let drop_resps = rng.next_u64() % 3;
        let dup_every = 1 + rng.next_u64() % 3;
        let dup_delay = Duration::from_millis(rng.next_u64() % 900);
        let mut inits = 0u64;
        let mut resps = 0u64;
        w.net
            .set_interceptor(Box::new(move |i: &mut Intercept<'_>| {
                match i.data.first() {
                    Some(&INITIATION) => {
                        inits += 1;
                        if inits <= drop_inits {
                            Verdict::Drop
                        } else if inits % dup_every == 0 {
                            Verdict::DeliverAndReplayLater(dup_delay)
                        } else {
                            Verdict::Deliver
                        }
                    }
                    Some(&RESPONSE) => {
                        resps += 1;
                        if resps <= drop_resps {
                            Verdict::Drop
                        } else {
                            Verdict::Deliver
                        }
                    }
                    _ => Verdict::Deliver,
                }
            }));
        let len = 1 + (rng.next_u64() % 3000) as usize;
        let msg = message(seed, len);
        send(&mut w, &msg);
        deliver(
            &mut w,
            &msg,
            Duration::from_secs(60),
            Duration::from_secs(2),
        );
        let (sent, taken) = early_counts(&w);
        assert!(sent > 0, "seed {seed}: early data sent");
        if taken > 0 {
            early_delivered += 1;
        }
    }
    assert!(
        early_delivered >= n / 4,
        "early data delivered in {early_delivered} of {n} runs"
    );
}

/// A responder that started after the initiation was made declines its early data (it
/// could be a replay from before the restart): the handshake completes, and the initiator's
/// loss detection re-sends the frames in an ordinary packet.
#[test]
fn declined_early_data_is_sent_again_and_arrives_once() {
    for seed in 0..seeds(40) {
        let mut l = link(5 + seed % 20);
        if seed % 2 == 1 {
            l.loss = 0.1;
        }
        // B's clock read one hour later than A's when B started.
        let mut w = world(seed, l, UNIX_NANOS + 3_600_000_000_000);
        let msg = message(seed, 1 + (seed as usize * 97) % 2500);
        send(&mut w, &msg);
        deliver(
            &mut w,
            &msg,
            Duration::from_secs(60),
            Duration::from_secs(1),
        );
        let b = w.net.node(w.b);
        assert!(b.endpoint.early_data_declined() >= 1, "seed {seed}");
        let (sent, taken) = early_counts(&w);
        assert!(sent > 0, "seed {seed}");
        assert_eq!(taken, 0, "seed {seed}: declined");
    }
}

/// Early data is opt-in for the responder too.
#[test]
fn a_responder_may_refuse_all_early_data() {
    let mut w = world(7, link(10), UNIX_NANOS);
    let now = w.net.now();
    let seed = w.seed;
    let mut hb = b_host(seed, UNIX_NANOS, now, SessionConfig::default());
    let mut cb = hb.endpoint.config().clone();
    cb.accept_early_data = false;
    hb = SessionHost::with_unix_nanos(
        &identity(seed * 2 + 2),
        cb,
        SessionConfig::default(),
        now,
        UNIX_NANOS,
    );
    hb.listeners.push((SERVICE.0.into(), SERVICE.1.into()));
    *w.net.node_mut(w.b) = hb;
    let msg = message(7, 500);
    send(&mut w, &msg);
    deliver(
        &mut w,
        &msg,
        Duration::from_secs(10),
        Duration::from_millis(500),
    );
    assert_eq!(w.net.node(w.b).endpoint.early_data_declined(), 1);
    assert_eq!(early_counts(&w).1, 0);
}

/// A captured initiation replayed to the responder delivers nothing: not to the same
/// responder (its replay table), nor after it restarted (its start time).
#[test]
fn a_replayed_initiation_delivers_no_early_data() {
    for seed in 0..seeds(20) {
        let mut w = world(seed, link(10), UNIX_NANOS);
        let captured: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
        let c = captured.clone();
        w.net
            .set_interceptor(Box::new(move |i: &mut Intercept<'_>| {
                if i.data.first() == Some(&INITIATION) {
                    c.borrow_mut().push(i.data.clone());
                }
                Verdict::Deliver
            }));
        let msg = message(seed, 400);
        send(&mut w, &msg);
        deliver(
            &mut w,
            &msg,
            Duration::from_secs(10),
            Duration::from_millis(200),
        );
        eprintln!("after deliver: {:?}", w.net.elapsed());
        let initiation = captured.borrow()[0].clone();
        assert!(w.net.node(w.b).channels.len() == 1);

        // The same responder: rejected outright.
        let now = w.net.now();
        w.net.inject(now, addr(1), addr(2), initiation.clone());
        deliver(&mut w, &msg, Duration::ZERO, Duration::from_secs(1));
        assert_eq!(
            w.net.node(w.b).channels.len(),
            1,
            "seed {seed}: no new channel {:?} / {:?}",
            w.net.node(w.b).channel_events,
            w.net.node(w.a).channel_events
        );

        // The responder restarted (same identity, empty replay table, later clock): the
        // handshake is answered, the early data is not taken.
        let now = w.net.now();
        *w.net.node_mut(w.b) = b_host(
            seed,
            UNIX_NANOS + 1_000_000_000,
            now,
            SessionConfig::default(),
        );
        w.net.inject(now, addr(1), addr(2), initiation);
        w.net.run_for(Duration::from_millis(1)).unwrap();
        let b = w.net.node_mut(w.b);
        assert_eq!(b.endpoint.early_data_declined(), 1, "seed {seed}");
        assert!(
            !b.events
                .iter()
                .any(|(_, e)| matches!(e, SessionEvent::IncomingStream { .. })),
            "seed {seed}: nothing delivered after the restart"
        );
        let taken: u64 = b
            .channels
            .values()
            .map(|c| c.channel.stats().early_data_received)
            .sum();
        assert_eq!(taken, 0);
    }
}

/// More than the initiation holds: the first part rides in it, the rest follows in ordinary
/// packets once connected.
#[test]
fn early_data_larger_than_the_room_falls_back_to_ordinary_packets() {
    for seed in 0..seeds(30) {
        let mut l = link(10);
        if seed % 2 == 1 {
            l.loss = 0.05;
        }
        let mut w = world(seed, l, UNIX_NANOS);
        let msg = message(seed, 5000 + seed as usize * 31);
        send(&mut w, &msg);
        deliver(
            &mut w,
            &msg,
            Duration::from_secs(60),
            Duration::from_millis(500),
        );
        let a = w.net.node(w.a);
        let early_len: usize = a
            .channels
            .values()
            .map(|c| c.channel.early_data_len())
            .sum();
        assert!(
            (500..1064).contains(&early_len),
            "seed {seed}: {early_len} bytes in the initiation"
        );
    }
}

/// The responder's answer to early data can overtake its handshake response on the way (it
/// is sent right after it): the initiator keeps it until the response authenticates, instead
/// of dropping it and waiting for a retransmission.
#[test]
fn an_answer_that_overtakes_the_response_is_kept() {
    for delay_ms in [0u64, 5, 15] {
        let mut w = world(11 + delay_ms, link(20), UNIX_NANOS);
        let delay = Duration::from_millis(delay_ms);
        w.net
            .set_interceptor(Box::new(move |i: &mut Intercept<'_>| {
                if i.data.first() == Some(&RESPONSE) && !delay.is_zero() {
                    Verdict::Delay(delay)
                } else {
                    Verdict::Deliver
                }
            }));
        w.reply = Some(b"pong".to_vec());
        let start = w.net.now();
        let msg = message(11, 100);
        let id = send(&mut w, &msg);
        let (a, b, a_eid, b_eid) = (w.a, w.b, w.a_eid, w.b_eid);
        let deadline = start + Duration::from_secs(5);
        let answered = |net: &Network<SessionHost>| {
            net.node(a)
                .sessions
                .get(&b_eid)
                .is_some_and(|s| s.bytes_available(id).is_ok_and(|n| n > 0))
        };
        loop {
            let (incoming, fin) = (w.incoming.clone(), w.fin);
            let stopped = w
                .net
                .run_while(deadline, |net| {
                    !answered(net) && !b_has_work(net, b, a_eid, &incoming, fin)
                })
                .unwrap();
            serve(&mut w);
            if answered(&w.net) || !stopped {
                break;
            }
        }
        assert!(answered(&w.net), "delay {delay_ms} ms: answered");
        let at = w.net.now() - start;
        // One round trip (40 ms) plus the response's extra delay; a retransmission would
        // take at least one probe timeout more (the initial RTT is 100 ms).
        assert!(
            at <= Duration::from_millis(41) + delay,
            "delay {delay_ms} ms: answered after {at:?}"
        );
    }
}

#[test]
fn streams_opened_before_the_handshake_wait_for_the_responders_credit() {
    // B grants one stream at a time (credit: counters below 2). A opens three top-level
    // streams before its initiation: only the first may ride in the early data, the others
    // must wait for B's parameters and then its credit, never open beyond it (which B would
    // answer by closing the channel).
    let b_config = SessionConfig {
        initial_max_streams: 2,
        ..SessionConfig::default()
    };
    let mut w = world_with(31, link(10), UNIX_NANOS, b_config);
    let (a, b, a_eid, b_eid) = (w.a, w.b, w.a_eid, w.b_eid);
    let net = &mut w.net;
    net.run_for(Duration::from_millis(1)).unwrap();
    let now = net.now();
    let messages: Vec<Vec<u8>> = (0..3).map(|i| message(i, 300)).collect();
    let mut ids = Vec::new();
    for m in &messages {
        let host = net.node_mut(a);
        let id = host
            .open(now, b_eid, addr(2), SERVICE.0, SERVICE.1)
            .unwrap();
        let session = host.sessions.get_mut(&b_eid).unwrap();
        assert_eq!(session.write(id, m).unwrap(), m.len());
        session.finish(id).unwrap();
        ids.push(id);
    }
    net.wake(a);
    // B's application reads every stream it is given to its end, then ends its own
    // direction (a stream returns its credit once both directions are over).
    let mut got: Vec<(StreamId, Vec<u8>, bool)> = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = net.now() + Duration::from_secs(10);
    while got.iter().filter(|(_, _, done)| *done).count() < 3 && net.now() < deadline {
        net.run_for(Duration::from_millis(2)).unwrap();
        let host = net.node_mut(b);
        for (_, e) in host.events.drain(..) {
            if let SessionEvent::IncomingStream { id, .. } = e {
                got.push((id, Vec::new(), false));
            }
        }
        let Some(session) = host.sessions.get_mut(&a_eid) else {
            continue;
        };
        for (id, g, done) in &mut got {
            while let Ok(n) = session.read(*id, &mut buf) {
                if n == 0 {
                    break;
                }
                g.extend_from_slice(&buf[..n]);
            }
            if !*done && session.at_end(*id) == Ok(true) {
                session.finish(*id).unwrap();
                *done = true;
            }
        }
        net.wake(b);
    }
    let closed = net
        .node(a)
        .channel_events
        .iter()
        .any(|(_, e)| matches!(e, sss_proto::channel::ChannelEvent::Closed(_)));
    assert!(
        !closed,
        "A's channel closed: {:?}",
        net.node(a).channel_events
    );
    let (sent, taken) = early_counts(&w);
    assert_eq!(got.len(), 3, "three streams, each seen once");
    assert!(
        sent > 0 && taken > 0,
        "the first stream rode in the early data"
    );
    let mut bodies: Vec<Vec<u8>> = got.into_iter().map(|(_, g, _)| g).collect();
    bodies.sort();
    let mut want = messages;
    want.sort();
    assert!(bodies == want, "every stream's bytes exactly once");
}
