//! End-to-end tests of the handshake state machines, through the public API.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::crypto::aead::Suite;
use crate::crypto::noise::{hash, mac16};

const T0: u64 = 1_700_000_000_000_000_000;

fn keys(seed: u8) -> StaticKeys {
    StaticKeys::new(&Identity::from_secret_bytes(&[seed; 32]))
}

fn hello() -> Hello {
    Hello {
        service: "files".into(),
        protocol: "sss-demo/1".into(),
        params: TransportParams {
            suites: Suite::ChaCha20Poly1305.bit() | Suite::Aes256Gcm.bit(),
            ..TransportParams::default()
        },
    }
}

fn accept() -> Reply {
    Reply::Accept {
        suite: Suite::ChaCha20Poly1305,
        params: TransportParams {
            idle_timeout_ms: 10_000,
            ..TransportParams::default()
        },
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], port))
}

/// An initiator (keys 1) and a responder (keys 2) with a seeded generator and a clock.
struct Pair {
    rng: ChaCha20Rng,
    now: Instant,
    ik: StaticKeys,
    responder: Responder,
}

impl Pair {
    fn new(capacity: usize) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let now = Instant::now();
        let config = ResponderConfig {
            replay_table_capacity: capacity,
        };
        let responder = Responder::new(keys(2), config, now, &mut rng);
        Self {
            rng,
            now,
            ik: keys(1),
            responder,
        }
    }

    fn start(&mut self, ik: &StaticKeys, unix_nanos: u64) -> (Initiator, Vec<u8>) {
        let mut out = Vec::new();
        let remote = self.responder.local().eid();
        let init = Initiator::start(
            ik,
            remote,
            11,
            &hello(),
            unix_nanos,
            &mut self.rng,
            &mut out,
        )
        .unwrap();
        (init, out)
    }

    fn receive(
        &mut self,
        msg: &[u8],
        from: SocketAddr,
        load: bool,
    ) -> Result<(Initiation, Vec<u8>), HandshakeError> {
        let mut out = Vec::new();
        let r =
            self.responder
                .handle_initiation(self.now, from, msg, load, &mut self.rng, &mut out)?;
        Ok((r, out))
    }

    fn pending(&mut self, msg: &[u8]) -> PendingInitiation {
        match self.receive(msg, addr(1), false) {
            Ok((Initiation::Valid(p), out)) if out.is_empty() => p,
            other => panic!("expected a valid initiation, got {other:?}"),
        }
    }

    fn respond(&mut self, pending: PendingInitiation, reply: &Reply) -> (Option<Keys>, Vec<u8>) {
        let mut out = Vec::new();
        let keys = self
            .responder
            .respond(pending, 22, reply, &mut self.rng, &mut out)
            .unwrap();
        (keys, out)
    }
}

fn flip(msg: &[u8], i: usize) -> Vec<u8> {
    let mut m = msg.to_vec();
    m[i] ^= 0x01;
    m
}

/// Recomputes mac1 as an attacker who knows the receiver's static public key can.
fn fix_mac1(msg: &mut [u8], receiver_static: &[u8; 32]) {
    let at = msg.len() - 32;
    let mac = mac16(&hash(&[LABEL_MAC1, receiver_static]), &[&msg[..at]]);
    msg[at..at + 16].copy_from_slice(&mac);
}

#[test]
fn full_handshake_accept_yields_matching_keys() {
    let mut p = Pair::new(16);
    let ik = p.ik.clone();
    let (init, msg) = p.start(&ik, T0);
    assert_eq!(msg.len(), INITIATION_LEN);
    assert_eq!(init.local_index(), 11);
    let pending = p.pending(&msg);
    assert_eq!(pending.remote(), ik.eid());
    assert_eq!(pending.initiator_index(), 11);
    assert_eq!(pending.hello(), &hello());
    assert_eq!(pending.timestamp().unix_nanos(), T0);
    let (rkeys, resp) = p.respond(pending, &accept());
    let rkeys = rkeys.expect("accept returns keys");
    assert_eq!(receiver_index(&resp), Some(11));
    assert!(resp.len() <= INITIATION_LEN);

    let est = init.handle_response(&ik, &resp).unwrap();
    assert_eq!(est.remote_index, 22);
    assert_eq!(est.reply, accept());
    assert_eq!(*est.keys.send, *rkeys.recv);
    assert_eq!(*est.keys.recv, *rkeys.send);
    assert_ne!(*est.keys.send, *est.keys.recv);
    assert_eq!(est.keys.handshake_hash, rkeys.handshake_hash);
}

#[test]
fn refusal_reaches_the_initiator() {
    let mut p = Pair::new(16);
    let ik = p.ik.clone();
    let (init, msg) = p.start(&ik, T0);
    let pending = p.pending(&msg);
    let refuse = Reply::Refuse {
        code: RefuseCode::UNKNOWN_SERVICE,
        reason: "no files here".into(),
    };
    let (rkeys, resp) = p.respond(pending, &refuse);
    assert!(rkeys.is_none());
    assert_eq!(init.handle_response(&ik, &resp).unwrap().reply, refuse);
}

#[test]
fn an_unoffered_suite_is_refused_on_both_sides() {
    let mut p = Pair::new(16);
    let ik = p.ik.clone();
    let mut out = Vec::new();
    let mut only_chacha = hello();
    only_chacha.params.suites = Suite::ChaCha20Poly1305.bit();
    let remote = p.responder.local().eid();
    Initiator::start(&ik, remote, 1, &only_chacha, T0, &mut p.rng, &mut out).unwrap();
    let pending = p.pending(&out);
    let aes = Reply::Accept {
        suite: Suite::Aes256Gcm,
        params: TransportParams::default(),
    };
    let mut resp = Vec::new();
    let r = p.responder.respond(pending, 2, &aes, &mut p.rng, &mut resp);
    assert_eq!(r.err(), Some(HandshakeError::SuiteNotOffered));
    assert!(resp.is_empty());
}

#[test]
fn initiation_for_another_responder_fails() {
    let mut p = Pair::new(16);
    let ik = p.ik.clone();
    let mut out = Vec::new();
    // The initiator believes the responder is keys(3).
    Initiator::start(&ik, keys(3).eid(), 1, &hello(), T0, &mut p.rng, &mut out).unwrap();
    assert_eq!(
        p.receive(&out, addr(1), false).err(),
        Some(HandshakeError::Mac1)
    );
    // Even with mac1 made for the real responder, the Noise part was sealed to keys(3).
    fix_mac1(&mut out, &p.responder.local().public());
    assert_eq!(
        p.receive(&out, addr(1), false).err(),
        Some(HandshakeError::Decrypt)
    );
    assert_eq!(p.responder.replay_table_len(), 0);
}

#[test]
fn response_from_the_wrong_responder_fails() {
    let mut p = Pair::new(16);
    let mut q = Pair::new(16);
    let ik = p.ik.clone();
    let (init, msg) = p.start(&ik, T0);
    // An impostor (keys 3) cannot read the initiation; it answers with its own handshake
    // state for some other initiation made to it, patched to our index.
    let mut out = Vec::new();
    let mut impostor = Responder::new(keys(3), ResponderConfig::default(), q.now, &mut q.rng);
    Initiator::start(&ik, keys(3).eid(), 11, &hello(), T0, &mut q.rng, &mut out).unwrap();
    let Ok(Initiation::Valid(pending)) =
        impostor.handle_initiation(q.now, addr(1), &out, false, &mut q.rng, &mut Vec::new())
    else {
        panic!("the impostor's own initiation is valid")
    };
    let mut resp = Vec::new();
    impostor
        .respond(pending, 5, &accept(), &mut q.rng, &mut resp)
        .unwrap();
    assert!(p.receive(&msg, addr(1), false).is_ok());
    assert_eq!(
        init.handle_response(&ik, &resp).err(),
        Some(HandshakeError::Decrypt)
    );
}

#[test]
fn every_byte_flip_in_an_initiation_is_rejected() {
    let mut p = Pair::new(16);
    let ik = p.ik.clone();
    let (mut init, msg) = p.start(&ik, T0);
    // Get a cookie so that mac2 is checked too (under load).
    let (r, reply) = p.receive(&msg, addr(1), true).unwrap();
    assert!(matches!(r, Initiation::CookieSent));
    init.handle_cookie_reply(p.now, &reply).unwrap();
    let mut msg = Vec::new();
    init.retry(&ik, p.now, T0, &mut p.rng, &mut msg).unwrap();
    for i in 0..msg.len() {
        let bad = flip(&msg, i);
        match p.receive(&bad, addr(1), true) {
            Err(_) | Ok((Initiation::CookieSent, _)) => {}
            Ok((Initiation::Valid(_), _)) => panic!("flip at {i} accepted"),
        }
        // Without load mac2 is not checked (as in WireGuard); everything before it is.
        if i < field::INIT_MAC2.start {
            assert!(p.receive(&bad, addr(1), false).is_err(), "flip at {i}");
        }
    }
    assert_eq!(p.responder.replay_table_len(), 0);
    assert!(matches!(
        p.receive(&msg, addr(1), true),
        Ok((Initiation::Valid(_), _))
    ));
}

#[test]
fn flips_under_a_recomputed_mac1_fail_the_noise_checks() {
    let mut p = Pair::new(16);
    let ik = p.ik.clone();
    let (_init, msg) = p.start(&ik, T0);
    let rs = p.responder.local().public();
    for i in (0..field::INIT_MAC1.start).filter(|i| !field::INIT_SENDER.contains(i)) {
        let mut bad = flip(&msg, i);
        fix_mac1(&mut bad, &rs);
        assert!(p.receive(&bad, addr(1), false).is_err(), "flip at {i}");
    }
    // The sender index is outside Noise, so only mac1 protects it (see the spec's security
    // considerations): with a recomputed mac1 the altered index gets through.
    let mut bad = flip(&msg, field::INIT_SENDER.start);
    fix_mac1(&mut bad, &rs);
    let Ok((Initiation::Valid(pending), _)) = p.receive(&bad, addr(1), false) else {
        panic!("index flip with a fixed mac1 is accepted")
    };
    assert_ne!(pending.initiator_index(), 11);
}

#[test]
fn every_byte_flip_in_a_response_is_rejected() {
    let mut p = Pair::new(16);
    let ik = p.ik.clone();
    let (init, msg) = p.start(&ik, T0);
    let pending = p.pending(&msg);
    let (_, resp) = p.respond(pending, &accept());
    for i in 0..resp.len() {
        assert!(
            init.handle_response(&ik, &flip(&resp, i)).is_err(),
            "flip at {i}"
        );
        // An attacker who knows the initiator's static key can fix mac1; the Noise part
        // still fails, and only the responder's index is unprotected.
        if i < resp.len() - 32 && !field::RESP_SENDER.contains(&i) {
            let mut bad = flip(&resp, i);
            fix_mac1(&mut bad, &ik.public());
            assert!(init.handle_response(&ik, &bad).is_err(), "flip at {i}");
        }
    }
    assert!(init.handle_response(&ik, &resp).is_ok());
}

#[test]
fn every_byte_flip_in_a_cookie_reply_is_rejected() {
    let mut p = Pair::new(16);
    let ik = p.ik.clone();
    let (mut init, msg) = p.start(&ik, T0);
    let (_, reply) = p.receive(&msg, addr(1), true).unwrap();
    assert_eq!(reply.len(), COOKIE_REPLY_LEN);
    assert_eq!(receiver_index(&reply), Some(11));
    for i in 0..reply.len() {
        assert!(
            init.handle_cookie_reply(p.now, &flip(&reply, i)).is_err(),
            "flip at {i}"
        );
    }
    init.handle_cookie_reply(p.now, &reply).unwrap();
}

#[test]
fn truncated_messages_are_errors() {
    let mut p = Pair::new(16);
    let ik = p.ik.clone();
    let (mut init, msg) = p.start(&ik, T0);
    let (_, cookie_reply) = p.receive(&msg, addr(1), true).unwrap();
    let pending = p.pending(&msg);
    let (_, resp) = p.respond(pending, &accept());
    for n in 0..msg.len() {
        assert!(p.receive(&msg[..n], addr(1), false).is_err());
    }
    for n in 0..resp.len() {
        assert!(init.handle_response(&ik, &resp[..n]).is_err());
    }
    for n in 0..cookie_reply.len() {
        assert!(init.handle_cookie_reply(p.now, &cookie_reply[..n]).is_err());
        assert_eq!(receiver_index(&cookie_reply[..n]).is_some(), n >= 8);
    }
}

#[test]
fn a_replayed_initiation_is_rejected_and_leaves_no_state() {
    let mut p = Pair::new(16);
    let ik = p.ik.clone();
    let (_init, msg) = p.start(&ik, T0);
    p.pending(&msg);
    assert_eq!(p.responder.replay_table_len(), 1);
    assert_eq!(
        p.receive(&msg, addr(1), false).err(),
        Some(HandshakeError::Replay)
    );
    assert_eq!(
        p.receive(&msg, addr(9), false).err(),
        Some(HandshakeError::Replay)
    );
    assert_eq!(p.responder.replay_table_len(), 1);
    // An older initiation from the same initiator is stale too.
    let (_old, older) = p.start(&ik, T0 - 1);
    assert_eq!(
        p.receive(&older, addr(1), false).err(),
        Some(HandshakeError::Replay)
    );
}

#[test]
fn retries_are_strictly_newer_even_with_a_stuck_clock() {
    let mut p = Pair::new(16);
    let ik = p.ik.clone();
    let (mut init, msg) = p.start(&ik, T0);
    p.pending(&msg);
    let mut again = Vec::new();
    init.retry(&ik, p.now, T0, &mut p.rng, &mut again).unwrap();
    let pending = p.pending(&again);
    assert_eq!(pending.timestamp().unix_nanos(), T0 + 1);
    // The response to the retry completes the handshake.
    let (rkeys, resp) = p.respond(pending, &accept());
    assert_eq!(
        *init.handle_response(&ik, &resp).unwrap().keys.send,
        *rkeys.unwrap().recv
    );
}

#[test]
fn under_load_the_cookie_round_trip_completes_the_handshake() {
    let mut p = Pair::new(16);
    let ik = p.ik.clone();
    let (mut init, msg) = p.start(&ik, T0);
    let (r, reply) = p.receive(&msg, addr(1), true).unwrap();
    assert!(matches!(r, Initiation::CookieSent));
    assert_eq!(p.responder.replay_table_len(), 0);
    init.handle_cookie_reply(p.now, &reply).unwrap();
    let mut retry = Vec::new();
    init.retry(
        &ik,
        p.now + Duration::from_secs(1),
        T0 + 5,
        &mut p.rng,
        &mut retry,
    )
    .unwrap();
    let (r, out) = p.receive(&retry, addr(1), true).unwrap();
    assert!(out.is_empty());
    let Initiation::Valid(pending) = r else {
        panic!("retry with cookie is valid")
    };
    let (rkeys, resp) = p.respond(pending, &accept());
    let est = init.handle_response(&ik, &resp).unwrap();
    assert_eq!(*est.keys.recv, *rkeys.unwrap().send);
}

/// Found by the `handshake_responder` fuzz target (whose oracle expected a cookie here): the
/// header is checked before mac1 and mac2, so a bad type or reserved byte is `Malformed` even
/// under load with a valid mac1, and earns no cookie reply.
#[test]
fn under_load_a_bad_header_with_a_valid_mac1_gets_no_cookie() {
    let mut p = Pair::new(16);
    let ik = p.ik.clone();
    let (_, msg) = p.start(&ik, T0);
    let rs = p.responder.local().public();
    for i in [field::TYPE, field::RESERVED.start, field::RESERVED.end - 1] {
        let mut bad = msg.clone();
        bad[i] ^= 0x18;
        fix_mac1(&mut bad, &rs);
        match p.receive(&bad, addr(1), true) {
            Err(HandshakeError::Malformed(_)) => {}
            other => panic!("byte {i}: expected Malformed, got {other:?}"),
        }
    }
    assert_eq!(p.responder.replay_table_len(), 0);
}

#[test]
fn a_cookie_from_another_address_or_too_old_is_not_accepted() {
    let mut p = Pair::new(16);
    let ik = p.ik.clone();
    let (mut init, msg) = p.start(&ik, T0);
    let (_, reply) = p.receive(&msg, addr(1), true).unwrap();
    init.handle_cookie_reply(p.now, &reply).unwrap();
    let mut retry = Vec::new();
    init.retry(&ik, p.now, T0, &mut p.rng, &mut retry).unwrap();
    assert!(matches!(
        p.receive(&retry, addr(2), true),
        Ok((Initiation::CookieSent, _))
    ));
    // The initiator stops using a cookie after COOKIE_SECRET_LIFETIME.
    let mut late = Vec::new();
    init.retry(
        &ik,
        p.now + COOKIE_SECRET_LIFETIME,
        T0,
        &mut p.rng,
        &mut late,
    )
    .unwrap();
    assert_eq!(late[field::INIT_MAC2], [0; 16]);
    assert!(matches!(
        p.receive(&late, addr(1), true),
        Ok((Initiation::CookieSent, _))
    ));
    // Cookie replies for another index are refused.
    let mut other = reply.clone();
    other[field::COOKIE_RECEIVER].copy_from_slice(&12u32.to_be_bytes());
    assert_eq!(
        init.handle_cookie_reply(p.now, &other),
        Err(HandshakeError::WrongIndex)
    );
}

#[test]
fn replay_table_evicts_the_oldest_and_raises_the_floor() {
    let mut p = Pair::new(2);
    let (a, b, c) = (keys(11), keys(12), keys(13));
    let (_, from_a) = p.start(&a, T0 + 10);
    let (_, from_b) = p.start(&b, T0 + 30);
    let (_, from_c) = p.start(&c, T0 + 20);
    p.pending(&from_a);
    p.pending(&from_b);
    p.pending(&from_c);
    assert_eq!(p.responder.replay_table_len(), 2);
    assert_eq!(
        p.responder.replay_floor(),
        Some(Timestamp::from_unix_nanos(T0 + 10))
    );
    // a was evicted, yet its initiation is still a replay because of the floor.
    assert_eq!(
        p.receive(&from_a, addr(1), false).err(),
        Some(HandshakeError::Replay)
    );
    // A newcomer at or below the floor is rejected; above it, accepted.
    let (_, low) = p.start(&keys(14), T0 + 10);
    assert_eq!(
        p.receive(&low, addr(1), false).err(),
        Some(HandshakeError::Replay)
    );
    let (_, high) = p.start(&keys(14), T0 + 11);
    p.pending(&high);
    assert_eq!(p.responder.replay_table_len(), 2);
    assert_eq!(
        p.responder.replay_floor(),
        Some(Timestamp::from_unix_nanos(T0 + 20))
    );
}

#[test]
fn low_order_remote_keys_are_rejected() {
    // The Ed25519 identity point is a valid encoding whose X25519 form has order 1.
    let mut identity_point = [0u8; 32];
    identity_point[0] = 1;
    let weak = crate::identity::Eid::from_bytes(identity_point).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut out = Vec::new();
    let r = Initiator::start(&keys(1), weak, 1, &hello(), T0, &mut rng, &mut out);
    assert_eq!(r.err(), Some(HandshakeError::LowOrderPoint));
    assert!(out.is_empty());
}

#[test]
fn api_misuse_is_reported() {
    let mut p = Pair::new(16);
    let ik = p.ik.clone();
    let (mut init, msg) = p.start(&ik, T0);
    assert!(matches!(
        init.retry(&keys(9), p.now, T0, &mut p.rng, &mut Vec::new()),
        Err(HandshakeError::InvalidArgument(_))
    ));
    let pending = p.pending(&msg);
    let (_, resp) = p.respond(pending, &accept());
    assert!(matches!(
        init.handle_response(&keys(9), &resp),
        Err(HandshakeError::InvalidArgument(_))
    ));
    let mut long = hello();
    long.service = "s".repeat(256);
    let mut out = vec![1, 2, 3];
    let r = Initiator::start(&ik, keys(2).eid(), 1, &long, T0, &mut p.rng, &mut out);
    assert!(matches!(r, Err(HandshakeError::InvalidArgument(_))));
    assert_eq!(out, [1, 2, 3]);
}

#[test]
fn debug_output_holds_no_secrets() {
    let mut p = Pair::new(16);
    let ik = p.ik.clone();
    let (init, msg) = p.start(&ik, T0);
    let pending = p.pending(&msg);
    let (rkeys, _) = p.respond(pending, &accept());
    let rkeys = rkeys.unwrap();
    let shown = format!("{rkeys:?} {init:?} {ik:?} {:?}", p.responder);
    let static_secret = *Identity::from_secret_bytes(&[1; 32]).x25519_secret();
    for secret in [*rkeys.send, *rkeys.recv, static_secret] {
        assert!(!shown.contains(&format!("{secret:?}")));
        assert!(!shown.contains(&format!("{secret:02x?}")));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1300), ty in 0u8..4) {
        let mut p = Pair::new(4);
        let ik = p.ik.clone();
        let (mut init, _) = p.start(&ik, T0);
        let mut bytes = bytes;
        if let Some(b) = bytes.first_mut() {
            *b = ty;
        }
        let _ = p.receive(&bytes, addr(1), false);
        let _ = p.receive(&bytes, addr(1), true);
        let _ = init.handle_response(&ik, &bytes);
        let _ = init.handle_cookie_reply(p.now, &bytes);
        let _ = receiver_index(&bytes);
    }

    #[test]
    fn random_initiations_with_a_valid_mac1_are_rejected(body in proptest::collection::vec(any::<u8>(), INITIATION_LEN - 4)) {
        let mut p = Pair::new(4);
        let mut msg = vec![TYPE_INITIATION, 0, 0, 0];
        msg.extend_from_slice(&body);
        fix_mac1(&mut msg, &p.responder.local().public());
        prop_assert!(p.receive(&msg, addr(1), false).is_err());
        prop_assert_eq!(p.responder.replay_table_len(), 0);
    }
}
