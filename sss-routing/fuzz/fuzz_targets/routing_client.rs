//! Drives a routing client with programs of API calls (register, lookups, new reported
//! endpoints), time steps, and datagrams from the server's address or elsewhere: raw bytes,
//! or answers built from what the client last sent (COOKIE, REGISTERED, ERROR, LOOKUP_REPLY
//! with a genuine, forged or foreign record, KEEPALIVE_REPLY, NOTIFY with the right or a
//! wrong token, RELAY_OPENED to the last RELAY_OPEN or with the registration token, right
//! or wrong, and ERROR to the last RELAY_OPEN).
//!
//! Checks: no panic; everything the client sends goes to the server, decodes, is a
//! client-to-server message, and every REGISTER's record verifies and names the server;
//! pending lookups stay within the cap; a `Found` lookup result or a `PunchRequest` only
//! follows a genuine record delivered for that EID; a relay is reported opened (or offered)
//! only after a RELAY_OPENED with the pending request's id (or the registration token);
//! after `handle_timeout(now)` the next
//! deadline lies after `now`.
#![no_main]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sss_proto::{Eid, Identity};
use sss_routing::wire::{
    CookieMsg, ErrorCode, ErrorMsg, KeepaliveReply, KeepaliveStatus, LookupReply, Message, Notify,
    Registered, RelayOpened,
};
use sss_routing::{
    Client, ClientConfig, Event, LookupOutcome, RecordBody, RelayOutcome, SignedRecord,
};

const SERVER: &str = "203.0.113.1:9669";
const OBSERVED: [&str; 3] = ["198.51.100.1:5000", "198.51.100.1:5001", "[2001:db8::7]:1"];

fn identities() -> &'static [Identity] {
    static IDS: OnceLock<Vec<Identity>> = OnceLock::new();
    IDS.get_or_init(|| {
        (0..5)
            .map(|i| Identity::generate(&mut ChaCha20Rng::seed_from_u64(i)))
            .collect()
    })
}

#[derive(Arbitrary, Debug)]
enum Op {
    Register,
    SetReported(u8),
    Lookup {
        target: u8,
        notify: bool,
    },
    Raw {
        elsewhere: bool,
        data: Vec<u8>,
    },
    AnswerCookie {
        observed: u8,
        id_xor: u8,
    },
    AnswerRegister {
        error: Option<u8>,
        value: u32,
        lifetime: u16,
    },
    AnswerLookup {
        kind: u8,
        id_xor: u8,
    },
    AnswerKeepalive {
        status: u8,
        observed: u8,
    },
    Notify {
        caller: u8,
        good_token: bool,
        genuine: bool,
    },
    OpenRelay {
        target: u8,
    },
    AnswerRelay {
        /// 0: RELAY_OPENED to the last RELAY_OPEN, 1: RELAY_OPENED with the registration
        /// token (an offer), 2: ERROR to the last RELAY_OPEN.
        kind: u8,
        id_xor: u8,
        relay_id: u32,
        peer: u8,
    },
    Advance {
        ms: u32,
    },
    Timeout,
}

#[derive(Default)]
struct Last {
    hello: Option<u64>,
    register: Option<(u64, u64)>,
    lookup: Option<(u64, Eid)>,
    keepalive: Option<u64>,
    token: Option<u64>,
    relay: Option<(u64, Eid)>,
}

fuzz_target!(|ops: Vec<Op>| {
    let ids = identities();
    let server_id = ids[4].eid();
    let server: SocketAddr = SERVER.parse().unwrap();
    let observed: Vec<SocketAddr> = OBSERVED.iter().map(|s| s.parse().unwrap()).collect();
    let mut config = ClientConfig::new(server, server_id, 10, [9; 32]);
    config.max_lookups = 2;
    let mut client = Client::new(config, Identity::from_secret_bytes(&ids[0].secret_bytes()));
    let mut now = Instant::now();
    let mut last = Last::default();
    let mut genuine: BTreeSet<Eid> = BTreeSet::new();
    // Relay answers that were genuine: (peer, relay_id).
    let mut relay_answers: BTreeSet<(Eid, u32)> = BTreeSet::new();

    for op in ops.into_iter().take(256) {
        let mut datagram: Option<(SocketAddr, Message)> = None;
        match op {
            Op::Register => client.register(now),
            Op::SetReported(n) => {
                client.set_reported_endpoints(now, observed[..usize::from(n) % 4].to_vec())
            }
            Op::Lookup { target, notify } => {
                let _ = client.lookup(now, ids[usize::from(target) % 4].eid(), notify);
            }
            Op::Raw { elsewhere, data } => {
                let from = if elsewhere { observed[0] } else { server };
                client.handle_datagram(now, from, &data);
            }
            Op::AnswerCookie {
                observed: o,
                id_xor,
            } => {
                let request_id = [
                    last.hello,
                    last.register.map(|r| r.0),
                    last.lookup.map(|l| l.0),
                ][usize::from(id_xor) % 3]
                    .unwrap_or(0)
                    ^ u64::from(id_xor >> 4);
                datagram = Some((
                    server,
                    Message::Cookie(CookieMsg {
                        request_id,
                        cookie: [o; 16],
                        observed: observed[usize::from(o) % 3],
                    }),
                ));
            }
            Op::AnswerRegister {
                error,
                value,
                lifetime,
            } => {
                if let Some((request_id, seq)) = last.register {
                    let msg = match error {
                        None => {
                            last.token = Some(request_id);
                            Message::Registered(Registered {
                                request_id,
                                seq,
                                lifetime: u32::from(lifetime),
                            })
                        }
                        Some(code) => Message::Error(ErrorMsg {
                            request_id,
                            code: [
                                ErrorCode::Stale,
                                ErrorCode::Full,
                                ErrorCode::RateLimited,
                                ErrorCode::NotRegistered,
                                ErrorCode::BadRecord,
                            ][usize::from(code) % 5],
                            value: u64::from(value),
                        }),
                    };
                    datagram = Some((server, msg));
                }
            }
            Op::AnswerLookup { kind, id_xor } => {
                if let Some((request_id, target)) = last.lookup {
                    let signer = &ids[usize::from(kind) % 5];
                    let record = match kind % 4 {
                        0 => None,
                        _ => {
                            let mut rec = SignedRecord::sign(
                                signer,
                                RecordBody {
                                    eid: signer.eid(),
                                    server: if kind % 4 == 3 {
                                        ids[1].eid()
                                    } else {
                                        server_id
                                    },
                                    seq: 1,
                                    lifetime: 60,
                                    cookie: [0; 16],
                                    observed: observed[2],
                                    reported: vec![],
                                },
                            );
                            if kind % 4 == 2 {
                                rec.body.eid = target; // claims the target's EID
                            }
                            Some(rec)
                        }
                    };
                    let request_id = request_id ^ u64::from(id_xor & 1);
                    if let Some(rec) = &record {
                        if rec.is_valid_for(&target, &server_id) && id_xor & 1 == 0 {
                            genuine.insert(target);
                        }
                    }
                    datagram = Some((
                        server,
                        Message::LookupReply(LookupReply {
                            request_id,
                            target,
                            record,
                        }),
                    ));
                }
            }
            Op::AnswerKeepalive {
                status,
                observed: o,
            } => {
                if let Some(request_id) = last.keepalive {
                    let status = [
                        KeepaliveStatus::Registered,
                        KeepaliveStatus::Unknown,
                        KeepaliveStatus::Elsewhere,
                    ][usize::from(status) % 3];
                    datagram = Some((
                        server,
                        Message::KeepaliveReply(KeepaliveReply {
                            request_id,
                            status,
                            observed: observed[usize::from(o) % 3],
                        }),
                    ));
                }
            }
            Op::Notify {
                caller,
                good_token,
                genuine: real,
            } => {
                let who = &ids[usize::from(caller) % 4];
                let signer = if real {
                    who
                } else {
                    &ids[(usize::from(caller) + 1) % 4]
                };
                let mut rec = SignedRecord::sign(
                    signer,
                    RecordBody {
                        eid: signer.eid(),
                        server: server_id,
                        seq: 1,
                        lifetime: 60,
                        cookie: [0; 16],
                        observed: observed[1],
                        reported: vec![],
                    },
                );
                rec.body.eid = who.eid();
                let token = last.token.unwrap_or(0) ^ u64::from(!good_token);
                if real && good_token && last.token.is_some() {
                    genuine.insert(who.eid());
                }
                datagram = Some((server, Message::Notify(Notify { token, caller: rec })));
            }
            Op::OpenRelay { target } => {
                let _ = client.open_relay(now, ids[usize::from(target) % 4].eid());
            }
            Op::AnswerRelay {
                kind,
                id_xor,
                relay_id,
                peer,
            } => {
                let peer = ids[usize::from(peer) % 4].eid();
                match kind % 3 {
                    0 | 1 => {
                        let (request_id, peer) = if kind % 3 == 0 {
                            let (id, target) = last.relay.unwrap_or((0, peer));
                            (id, if id_xor & 2 == 0 { target } else { peer })
                        } else {
                            (last.token.unwrap_or(0), peer)
                        };
                        let request_id = request_id ^ u64::from(id_xor & 1);
                        if id_xor & 1 == 0 && (last.relay.is_some() || last.token.is_some()) {
                            relay_answers.insert((peer, relay_id));
                        }
                        datagram = Some((
                            server,
                            Message::RelayOpened(RelayOpened {
                                request_id,
                                relay_id,
                                idle: u32::from(id_xor),
                                peer,
                            }),
                        ));
                    }
                    _ => {
                        if let Some((request_id, _)) = last.relay {
                            datagram = Some((
                                server,
                                Message::Error(ErrorMsg {
                                    request_id,
                                    code: ErrorCode::NoTarget,
                                    value: 0,
                                }),
                            ));
                        }
                    }
                }
            }
            Op::Advance { ms } => now += Duration::from_millis(u64::from(ms % 1_000_000)),
            Op::Timeout => {
                if let Some(t) = client.poll_timeout() {
                    now = now.max(t);
                }
                client.handle_timeout(now);
            }
        }
        if let Some((from, msg)) = datagram {
            client.handle_datagram(now, from, &msg.to_vec());
        }

        // What the client sends.
        let mut buf = Vec::new();
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            assert_eq!(t.destination, server);
            match Message::decode(&buf[..t.size]).expect("client sends valid messages") {
                Message::Hello(h) => last.hello = Some(h.request_id),
                Message::Register(r) => {
                    assert!(r.record.is_valid_for(&client.eid(), &server_id));
                    last.register = Some((r.request_id, r.record.body.seq));
                }
                Message::Lookup(l) => {
                    assert_eq!(l.caller, client.eid());
                    last.lookup = Some((l.request_id, l.target));
                }
                Message::Keepalive(k) => {
                    assert_eq!(k.eid, client.eid());
                    last.keepalive = Some(k.request_id);
                }
                Message::RelayOpen(r) => {
                    assert_eq!(r.caller, client.eid());
                    last.relay = Some((r.request_id, r.target));
                }
                other => panic!("client sent a server message {other:?}"),
            }
        }
        assert!(client.pending_lookups() <= 2);
        while let Some(ev) = client.poll_event() {
            match ev {
                Event::LookupResult {
                    eid,
                    outcome: LookupOutcome::Found(_),
                } => {
                    assert!(genuine.contains(&eid), "Found without a genuine record");
                }
                Event::RelayResult {
                    peer,
                    outcome: RelayOutcome::Opened { relay_id, .. },
                }
                | Event::RelayOffered { peer, relay_id, .. } => {
                    assert!(
                        relay_answers.contains(&(peer, relay_id)),
                        "a relay nobody answered"
                    );
                    assert_ne!(peer, client.eid());
                }
                Event::PunchRequest { peer, .. } => {
                    assert!(
                        genuine.contains(&peer),
                        "PunchRequest without a genuine record"
                    );
                    assert_ne!(peer, client.eid());
                }
                _ => {}
            }
        }
        // Timers make progress.
        if client.poll_timeout().is_some_and(|t| t <= now) {
            client.handle_timeout(now);
            assert!(client.poll_timeout().is_none_or(|t| t > now), "timer spins");
            while client.poll_transmit(now, &mut buf).is_some() {}
            while client.poll_event().is_some() {}
        }
    }
});
