//! The regserver against hostile input, driven directly (no network): spoofed sources,
//! amplification, forged and replayed records, expiry, floods and caps.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{identity, ServerRig};
use proptest::prelude::*;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sss_routing::wire::{
    ErrorCode, ErrorMsg, Hello, Keepalive, KeepaliveStatus, Lookup, LookupReply, Message, Register,
    HELLO_LEN,
};
use sss_routing::{RecordBody, SignedRecord, COOKIE_SECRET_LIFETIME};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn error_code(m: &Message) -> Option<ErrorCode> {
    match m {
        Message::Error(ErrorMsg { code, .. }) => Some(*code),
        _ => None,
    }
}

#[test]
fn spoofed_registration_gets_a_small_reply_and_creates_no_state() {
    let mut h = ServerRig::new();
    let victim = addr("198.51.100.7:4000");
    let attacker = addr("203.0.113.66:1234");
    let mallory = identity(66);
    // The attacker holds a cookie for its own address only, and signs a record naming the
    // victim's address, then sends it with the victim's address as the source.
    let own_cookie = h.cookie(attacker);
    let rec = h.record(&mallory, 1, own_cookie, victim);
    let spoofed = h.register_msg(rec);
    let out = h.send(victim, &spoofed);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, victim);
    assert!(
        out[0].1.len() <= spoofed.len(),
        "reply no larger than the request"
    );
    assert!(matches!(Message::decode(&out[0].1), Ok(Message::Cookie(_))));
    // A guessed cookie fares no better.
    let rec = h.record(&mallory, 2, [0x5a; 16], victim);
    let guessed = h.register_msg(rec);
    let out = h.send(victim, &guessed);
    assert!(out[0].1.len() <= guessed.len());

    assert_eq!(h.server.record_count(), 0);
    assert_eq!(h.server.source_count(), 0, "no credit bucket either");
    assert_eq!(h.server.max_records_of_one_ip(), 0);
    assert_eq!(h.server.stats().registered, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever a source that has not done the cookie round trip sends (HELLO of any size,
    /// KEEPALIVE, LOOKUP or REGISTER with a wrong cookie, random bytes), every reply is at
    /// most as large as the request, goes only to the source, and no state is created.
    #[test]
    fn replies_before_the_cookie_round_trip_are_never_larger_than_the_request(
        kind in 0u8..5,
        len in 0usize..200,
        seed in any::<u64>(),
        ip in any::<[u8; 4]>(),
        port in any::<u16>(),
    ) {
        let mut h = ServerRig::new();
        let from = SocketAddr::from((ip, port));
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let someone = identity(seed);
        let mut cookie = [0u8; 16];
        rng.fill_bytes(&mut cookie);
        let request_id = rng.next_u64();
        let data = match kind {
            0 => {
                let mut d = vec![0x10];
                d.resize(1 + len, 0);
                d
            }
            1 => Message::Keepalive(Keepalive { request_id, eid: someone.eid() }).to_vec(),
            2 => Message::Lookup(Lookup { request_id, cookie, notify: seed % 2 == 0, caller: someone.eid(), target: someone.eid() }).to_vec(),
            3 => {
                let rec = h.record(&someone, 1, cookie, from);
                Message::Register(Register { request_id, record: rec }).to_vec()
            }
            _ => {
                let mut d = vec![0u8; len];
                rng.fill_bytes(&mut d);
                d
            }
        };
        let out = h.send(from, &data);
        prop_assert!(out.len() <= 1);
        for (to, reply) in &out {
            prop_assert_eq!(*to, from);
            prop_assert!(reply.len() <= data.len(), "{} byte reply to {} bytes", reply.len(), data.len());
        }
        prop_assert_eq!(h.server.record_count(), 0);
        prop_assert_eq!(h.server.source_count(), 0);
    }
}

#[test]
fn short_hello_and_server_messages_get_no_reply() {
    let mut h = ServerRig::new();
    let from = addr("198.51.100.1:1");
    assert!(h.send(from, &[0x10; HELLO_LEN - 1]).is_empty());
    let reflected = Message::Error(ErrorMsg {
        request_id: 1,
        code: ErrorCode::Full,
        value: 0,
    });
    assert!(h.send(from, &reflected.to_vec()).is_empty());
    let reply = Message::LookupReply(LookupReply {
        request_id: 1,
        target: identity(1).eid(),
        record: None,
    });
    assert!(h.send(from, &reply.to_vec()).is_empty());
    // A hole-punching probe is not for a server either.
    let probe = Message::Punch(sss_routing::wire::Punch { nonce: 1 });
    assert!(h.send(from, &probe.to_vec()).is_empty());
}

#[test]
fn forged_or_modified_records_are_rejected() {
    let mut h = ServerRig::new();
    let from = addr("198.51.100.1:5000");
    let victim = identity(1);
    let mallory = identity(2);

    // Mallory's signature over a record claiming the victim's EID.
    let cookie = h.cookie(from);
    let mut forged = h.record(&mallory, 1, cookie, from);
    forged.body.eid = victim.eid();
    let msg = h.register_msg(forged);
    let out = h.send(from, &msg);
    assert_eq!(
        error_code(&Message::decode(&out[0].1).unwrap()),
        Some(ErrorCode::BadRecord)
    );

    // A genuine record modified after signing (seq, endpoints, lifetime).
    for tweak in 0..3 {
        let cookie = h.cookie(from);
        let mut rec = h.record(&victim, 5, cookie, from);
        match tweak {
            0 => rec.body.seq += 1,
            1 => rec.body.reported.push(addr("10.9.9.9:1")),
            _ => rec.body.lifetime = 3600,
        }
        let msg = h.register_msg(rec);
        let out = h.send(from, &msg);
        assert_eq!(
            error_code(&Message::decode(&out[0].1).unwrap()),
            Some(ErrorCode::BadRecord)
        );
    }

    // A genuine record made for another server, or naming another observed endpoint.
    let cookie = h.cookie(from);
    let mut other_server = SignedRecord::sign(
        &victim,
        RecordBody {
            server: identity(501).eid(),
            ..h.record(&victim, 6, cookie, from).body
        },
    );
    let msg = h.register_msg(other_server.clone());
    let out = h.send(from, &msg);
    assert_eq!(
        error_code(&Message::decode(&out[0].1).unwrap()),
        Some(ErrorCode::BadRecord)
    );
    other_server = h.record(&victim, 7, cookie, addr("198.51.100.1:5001"));
    let msg = h.register_msg(other_server);
    let out = h.send(from, &msg);
    assert_eq!(
        error_code(&Message::decode(&out[0].1).unwrap()),
        Some(ErrorCode::BadRecord)
    );

    assert_eq!(h.server.record_count(), 0);
    assert!(matches!(
        h.register(&victim, from, 8),
        Message::Registered(_)
    ));
    assert_eq!(h.server.record(&victim.eid()).unwrap().body.seq, 8);
}

#[test]
fn a_record_cannot_be_replayed_after_a_newer_one() {
    let mut h = ServerRig::new();
    let from = addr("198.51.100.1:5000");
    let host = identity(1);
    let cookie = h.cookie(from);
    let old = h.record(&host, 5, cookie, from);
    let old_msg = h.register_msg(old);
    assert!(matches!(
        Message::decode(&h.send(from, &old_msg)[0].1),
        Ok(Message::Registered(_))
    ));
    // The same datagram again (a retransmission) is acknowledged, nothing changes.
    assert!(matches!(
        Message::decode(&h.send(from, &old_msg)[0].1),
        Ok(Message::Registered(_))
    ));
    assert!(matches!(h.register(&host, from, 6), Message::Registered(_)));

    let out = h.send(from, &old_msg);
    match Message::decode(&out[0].1).unwrap() {
        Message::Error(ErrorMsg {
            code: ErrorCode::Stale,
            value: 6,
            ..
        }) => {}
        other => panic!("expected STALE(6), got {other:?}"),
    }
    assert_eq!(h.server.record(&host.eid()).unwrap().body.seq, 6);
    // A new record with the same seq but other content is stale too.
    let cookie = h.cookie(from);
    let mut same_seq = h.record(&host, 6, cookie, from);
    same_seq.body.reported.push(addr("10.0.0.1:1"));
    let same_seq = SignedRecord::sign(&host, same_seq.body);
    let msg = h.register_msg(same_seq);
    assert_eq!(
        error_code(&Message::decode(&h.send(from, &msg)[0].1).unwrap()),
        Some(ErrorCode::Stale)
    );

    // After the server forgot the newer record (expiry), the old datagram's cookie is long
    // dead: it only gets a fresh COOKIE, no record.
    h.now += Duration::from_secs(3601);
    h.server.handle_timeout(h.now);
    assert_eq!(h.server.record_count(), 0);
    let out = h.send(from, &old_msg);
    assert!(matches!(Message::decode(&out[0].1), Ok(Message::Cookie(_))));
    assert_eq!(h.server.record_count(), 0);
}

#[test]
fn a_record_for_one_server_is_refused_by_another() {
    let mut a = ServerRig::new();
    let mut b = ServerRig::with(|c| c.server_id = identity(501).eid());
    let from = addr("198.51.100.1:5000");
    let host = identity(1);
    let cookie = a.cookie(from);
    let rec = a.record(&host, 1, cookie, from);
    let msg = a.register_msg(rec.clone());
    assert!(matches!(
        Message::decode(&a.send(from, &msg)[0].1),
        Ok(Message::Registered(_))
    ));
    // At server B, with a valid B cookie in place (the host would have to re-sign anyway).
    let b_cookie = b.cookie(from);
    let mut moved = rec;
    moved.body.cookie = b_cookie;
    let msg = b.register_msg(moved);
    assert_eq!(
        error_code(&Message::decode(&b.send(from, &msg)[0].1).unwrap()),
        Some(ErrorCode::BadRecord)
    );
    assert_eq!(b.server.record_count(), 0);
}

#[test]
fn cookies_expire_after_two_secret_lifetimes() {
    let mut h = ServerRig::new();
    let from = addr("198.51.100.1:5000");
    let host = identity(1);
    let cookie = h.cookie(from);
    h.now += COOKIE_SECRET_LIFETIME;
    let rec = h.record(&host, 1, cookie, from);
    let msg = h.register_msg(rec);
    assert!(
        matches!(
            Message::decode(&h.send(from, &msg)[0].1),
            Ok(Message::Registered(_))
        ),
        "still valid one lifetime later"
    );
    h.now += COOKIE_SECRET_LIFETIME;
    let rec = h.record(&host, 2, cookie, from);
    let msg = h.register_msg(rec);
    assert!(
        matches!(
            Message::decode(&h.send(from, &msg)[0].1),
            Ok(Message::Cookie(_))
        ),
        "dead two lifetimes later"
    );
}

#[test]
fn expired_records_disappear() {
    let mut h = ServerRig::new();
    let from = addr("198.51.100.1:5000");
    let host = identity(1);
    let cookie = h.cookie(from);
    let mut rec = h.record(&host, 1, cookie, from);
    rec.body.lifetime = 5; // clamped up to MIN_LIFETIME (30 s)
    let rec = SignedRecord::sign(&host, rec.body);
    let msg = h.register_msg(rec);
    match Message::decode(&h.send(from, &msg)[0].1).unwrap() {
        Message::Registered(r) => assert_eq!(r.lifetime, 30),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.server.poll_timeout(),
        Some(h.now + Duration::from_secs(30))
    );
    h.now += Duration::from_secs(29);
    h.server.handle_timeout(h.now);
    assert!(h.server.record(&host.eid()).is_some());
    h.now += Duration::from_secs(1);
    h.server.handle_timeout(h.now);
    assert!(h.server.record(&host.eid()).is_none());
    let asker = addr("198.51.100.2:1");
    let out = h.lookup(asker, identity(2).eid(), host.eid(), false);
    assert!(matches!(
        &out[0].1,
        Message::LookupReply(LookupReply { record: None, .. })
    ));
    assert_eq!(h.server.max_records_of_one_ip(), 0);
}

#[test]
fn keepalive_reports_the_registration_status() {
    let mut h = ServerRig::new();
    let from = addr("198.51.100.1:5000");
    let host = identity(1);
    let status = |h: &mut ServerRig, from| {
        let msg = Message::Keepalive(Keepalive {
            request_id: 9,
            eid: host.eid(),
        });
        match Message::decode(&h.send(from, &msg.to_vec())[0].1).unwrap() {
            Message::KeepaliveReply(r) => {
                assert_eq!(r.observed, from);
                r.status
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(status(&mut h, from), KeepaliveStatus::Unknown);
    h.register(&host, from, 1);
    assert_eq!(status(&mut h, from), KeepaliveStatus::Registered);
    assert_eq!(
        status(&mut h, addr("198.51.100.1:5001")),
        KeepaliveStatus::Elsewhere
    );
}

#[test]
fn notify_needs_a_registered_caller_and_is_rate_limited_per_target() {
    let mut h = ServerRig::new();
    let (a, b) = (identity(1), identity(2));
    let (fa, fb) = (addr("198.51.100.1:5000"), addr("198.51.100.2:5000"));
    h.register(&b, fb, 1);
    // A is not registered: refused, and B hears nothing.
    let out = h.lookup(fa, a.eid(), b.eid(), true);
    assert_eq!(out.len(), 1);
    assert_eq!(error_code(&out[0].1), Some(ErrorCode::NotRegistered));
    // A registered, but asking from another source: refused too.
    h.register(&a, fa, 1);
    let out = h.lookup(addr("198.51.100.1:5999"), a.eid(), b.eid(), true);
    assert_eq!(error_code(&out[0].1), Some(ErrorCode::NotRegistered));

    let mut notified = 0;
    for _ in 0..10 {
        for (to, msg) in h.lookup(fa, a.eid(), b.eid(), true) {
            match msg {
                Message::LookupReply(r) => {
                    assert_eq!(to, fa);
                    assert_eq!(r.record.unwrap().body.eid, b.eid());
                }
                Message::Notify(n) => {
                    assert_eq!(to, fb);
                    assert_eq!(n.caller.body.eid, a.eid());
                    assert!(n.caller.verify());
                    notified += 1;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(notified, sss_routing::server::NOTIFY_BURST);
    h.now += Duration::from_secs(1);
    let out = h.lookup(fa, a.eid(), b.eid(), true);
    assert_eq!(out.len(), 2, "one more NOTIFY a second later");
}

#[test]
fn a_source_gets_its_burst_then_rate_limited() {
    let mut h = ServerRig::new();
    let from = addr("198.51.100.1:5000");
    let cookie = h.cookie(from);
    let target = identity(2).eid();
    let mut limited = 0;
    for i in 0..100 {
        let msg = Message::Lookup(Lookup {
            request_id: i,
            cookie,
            notify: false,
            caller: identity(1).eid(),
            target,
        });
        let out = h.send(from, &msg.to_vec());
        if error_code(&Message::decode(&out[0].1).unwrap()) == Some(ErrorCode::RateLimited) {
            limited += 1;
        }
    }
    assert_eq!(limited, 100 - h.server.config().source_burst as usize);
}

/// Thousands of sources register and look up, a few IPs try to hold many records, and
/// nobody drains the transmit queue for a while: every table stays within its cap, and a
/// host already registered can still refresh at the cap.
#[test]
fn a_flood_from_many_sources_stays_within_the_caps() {
    let mut h = ServerRig::with(|c| {
        c.max_records = 100;
        c.max_records_per_ip = 4;
        c.max_sources = 50;
        c.max_queued = 64;
    });
    let early = identity(7);
    let early_addr = addr("192.0.2.1:7");
    assert!(matches!(
        h.register(&early, early_addr, 1),
        Message::Registered(_)
    ));

    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (mut stored, mut full, mut limited) = (0, 0, 0);
    for i in 0..3000u64 {
        // Half the hosts share 10 IPs (NATs), the rest have their own.
        let ip = if i % 2 == 0 {
            [198, 51, 100, (i % 20) as u8]
        } else {
            let r = rng.next_u32().to_be_bytes();
            [10, r[1], r[2], r[3]]
        };
        let from = SocketAddr::from((ip, 1000 + (i % 5000) as u16));
        let host = identity(10_000 + i);
        match h.register(&host, from, 1) {
            Message::Registered(_) => stored += 1,
            Message::Error(ErrorMsg {
                code: ErrorCode::Full,
                ..
            }) => full += 1,
            Message::Error(ErrorMsg {
                code: ErrorCode::RateLimited,
                ..
            }) => limited += 1,
            other => panic!("{other:?}"),
        }
        let out = h.lookup(from, host.eid(), early.eid(), true);
        assert!(out.len() <= 2);
        assert!(h.server.record_count() <= 100);
        assert!(h.server.source_count() <= 50);
        assert!(h.server.max_records_of_one_ip() <= 4);
        h.now += Duration::from_millis(1);
    }
    assert_eq!(stored, 99, "up to the cap, the early host included");
    assert_eq!(stored + full + limited, 3000);
    assert!(
        full > 0 && limited > 0,
        "full {full}, rate limited {limited}"
    );
    assert_eq!(h.server.record_count(), 100);

    // The queue cap: replies pile up while nobody drains.
    for i in 0..500u32 {
        let from = SocketAddr::from(([172, 16, (i >> 8) as u8, i as u8], 9));
        let hello = Message::Hello(Hello {
            request_id: 1,
            len: HELLO_LEN,
        });
        h.server.handle_datagram(h.now, from, &hello.to_vec());
        assert!(h.server.queued() <= 64);
    }
    let mut buf = Vec::new();
    while h.server.poll_transmit(h.now, &mut buf).is_some() {}

    // The early host refreshes at the cap.
    assert!(matches!(
        h.register(&early, early_addr, 2),
        Message::Registered(_)
    ));
    assert_eq!(h.server.record(&early.eid()).unwrap().body.seq, 2);
}

#[test]
fn a_late_timeout_never_lets_an_expired_record_be_served() {
    let mut h = ServerRig::new();
    let host = identity(1);
    let from = addr("198.51.100.1:5000");
    h.register(&host, from, 1);
    // The driver never calls handle_timeout; the record's 600 s pass anyway.
    h.now += Duration::from_secs(601);
    let out = h.lookup(addr("198.51.100.2:1"), identity(2).eid(), host.eid(), false);
    assert!(matches!(
        &out[0].1,
        Message::LookupReply(LookupReply { record: None, .. })
    ));
    assert_eq!(h.server.record_count(), 0);
}
