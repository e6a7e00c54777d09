//! Drives a regserver with programs of datagrams from a few sources: raw bytes, and
//! well-formed HELLO, REGISTER (genuine or tampered records, with the source's latest cookie
//! or a wrong one), LOOKUP, KEEPALIVE, RELAY_OPEN and RELAY_DATA (naming slots the server
//! opened, or any id), interleaved with time steps and timeouts.
//!
//! Checks: no panic; every queued datagram decodes and is a server-to-client message; a
//! datagram causes at most two; replies go to the source except NOTIFY, which goes to a
//! stored record's observed endpoint; COOKIE and KEEPALIVE_REPLY are never larger than the
//! request; every table stays within its cap; every stored record verifies, names this
//! server and the source that registered it; a stored record's seq never goes down while it
//! stays stored; after `handle_timeout(now)` the next deadline lies after `now`. Relay:
//! RELAY_OPENED goes to the source or to a stored record's observed endpoint and is smaller
//! than the RELAY_OPEN; a forwarded RELAY_DATA is the received datagram unchanged, sent once,
//! to another endpoint than its source; the slots stay within their caps.
#![no_main]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sss_proto::{Eid, Identity};
use sss_routing::wire::{
    msg_type, relay_header, Cookie, Hello, Keepalive, Lookup, Message, Register, RelayOpen,
    HELLO_LEN,
};
use sss_routing::{RecordBody, Server, ServerConfig, SignedRecord};

const SOURCES: [&str; 6] = [
    "198.51.100.1:1000",
    "198.51.100.1:1001",
    "198.51.100.2:1000",
    "203.0.113.9:5",
    "[2001:db8::1]:9",
    "[2001:db8::2]:9",
];

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
    Raw {
        src: u8,
        data: Vec<u8>,
    },
    Hello {
        src: u8,
        extra: u8,
    },
    Register {
        src: u8,
        host: u8,
        seq: u8,
        lifetime: u16,
        reported: u8,
        /// Record field to corrupt after signing: 0 none, 1 seq, 2 server, 3 observed, 4
        /// signature, 5 signed by another key.
        tamper: u8,
        wrong_cookie: bool,
        /// Resend the previous REGISTER datagram instead (replay).
        replay: bool,
    },
    Lookup {
        src: u8,
        caller: u8,
        target: u8,
        notify: bool,
        wrong_cookie: bool,
    },
    Keepalive {
        src: u8,
        host: u8,
    },
    RelayOpen {
        src: u8,
        caller: u8,
        target: u8,
        wrong_cookie: bool,
    },
    RelayData {
        src: u8,
        /// A relay_id the server handed out (by index), or this value if none.
        relay: u32,
        len: u16,
    },
    Advance {
        ms: u32,
    },
    Timeout,
}

fn pick<T: Copy>(items: &[T], i: u8) -> T {
    items[usize::from(i) % items.len()]
}

struct Rig {
    server: Server,
    server_id: Eid,
    now: Instant,
    cookies: BTreeMap<SocketAddr, Cookie>,
    last_register: Option<(SocketAddr, Vec<u8>)>,
    next_id: u64,
    /// relay_ids seen in RELAY_OPENED.
    relays: Vec<u32>,
}

impl Rig {
    fn deliver(&mut self, from: SocketAddr, data: &[u8]) {
        let before: BTreeMap<Eid, u64> = identities()
            .iter()
            .filter_map(|id| Some((id.eid(), self.server.record(&id.eid())?.body.seq)))
            .collect();
        self.server.handle_datagram(self.now, from, data);
        let mut buf = Vec::new();
        let mut count = 0;
        while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
            count += 1;
            if buf.first() == Some(&msg_type::RELAY_DATA) {
                assert_eq!(
                    &buf[..t.size],
                    data,
                    "a relayed datagram is forwarded unchanged"
                );
                assert_ne!(t.destination, from, "relayed back to its source");
                continue;
            }
            let reply = Message::decode(&buf[..t.size]).expect("the server sends valid messages");
            match &reply {
                Message::Notify(_) | Message::RelayOpened(_) if t.destination != from => {
                    let stored = identities().iter().any(|id| {
                        self.server
                            .record(&id.eid())
                            .is_some_and(|r| r.body.observed == t.destination)
                    });
                    assert!(stored, "NOTIFY to an endpoint no record names");
                }
                _ => assert_eq!(t.destination, from, "reply to someone else"),
            }
            match &reply {
                Message::Cookie(c) => {
                    assert!(t.size <= data.len(), "amplifying COOKIE");
                    assert_eq!(c.observed, from);
                    self.cookies.insert(from, c.cookie);
                }
                Message::KeepaliveReply(_) => assert!(t.size <= data.len(), "amplifying reply"),
                Message::RelayOpened(o) => {
                    assert!(t.size <= data.len(), "amplifying RELAY_OPENED");
                    if !self.relays.contains(&o.relay_id) {
                        self.relays.push(o.relay_id);
                    }
                }
                Message::Registered(_)
                | Message::LookupReply(_)
                | Message::Notify(_)
                | Message::Error(_) => {}
                other => panic!("server sent a client message {other:?}"),
            }
        }
        assert!(count <= 2, "{count} datagrams for one");
        self.check(&before);
    }

    fn check(&self, before: &BTreeMap<Eid, u64>) {
        let config = self.server.config();
        assert!(self.server.record_count() <= config.max_records);
        assert!(self.server.source_count() <= config.max_sources);
        assert!(self.server.max_records_of_one_ip() <= config.max_records_per_ip);
        assert!(self.server.queued() <= config.max_queued);
        assert!(self.server.relay_count() <= config.max_relays);
        for id in identities() {
            if let Some(rec) = self.server.record(&id.eid()) {
                assert!(rec.is_valid_for(&id.eid(), &self.server_id));
                if let Some(seq) = before.get(&id.eid()) {
                    assert!(rec.body.seq >= *seq, "seq rolled back");
                }
            }
        }
    }

    fn request_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The latest cookie the server gave `from` (zeros if none), spoiled if `wrong`.
    fn cookie_for(&self, from: SocketAddr, wrong: bool) -> Cookie {
        let mut cookie = self.cookies.get(&from).copied().unwrap_or_default();
        if wrong {
            cookie[0] ^= 1;
        }
        cookie
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let ids = identities();
    let server_id = ids[4].eid();
    let now = Instant::now();
    let mut config = ServerConfig::new(server_id, [7; 32]);
    config.max_records = 3;
    config.max_records_per_ip = 2;
    config.max_sources = 3;
    config.source_burst = 4;
    config.source_rate = 2;
    config.max_relays = 2;
    config.max_relays_per_host = 1;
    config.relay_burst = 3000;
    config.relay_rate = 1000;
    let mut rig = Rig {
        server: Server::new(config, now),
        server_id,
        now,
        cookies: BTreeMap::new(),
        last_register: None,
        next_id: 0,
        relays: Vec::new(),
    };
    let sources: Vec<SocketAddr> = SOURCES.iter().map(|s| s.parse().unwrap()).collect();
    for op in ops.into_iter().take(256) {
        match op {
            Op::Raw { src, data } => rig.deliver(pick(&sources, src), &data),
            Op::Hello { src, extra } => {
                let request_id = rig.request_id();
                let len = HELLO_LEN + usize::from(extra);
                let msg = Message::Hello(Hello { request_id, len });
                rig.deliver(pick(&sources, src), &msg.to_vec());
            }
            Op::Register {
                src,
                host,
                seq,
                lifetime,
                reported,
                tamper,
                wrong_cookie,
                replay,
            } => {
                if replay {
                    if let Some((from, data)) = rig.last_register.clone() {
                        rig.deliver(from, &data);
                    }
                    continue;
                }
                let from = pick(&sources, src);
                let cookie = rig.cookie_for(from, wrong_cookie);
                let host = &ids[usize::from(host) % 4];
                let body = RecordBody {
                    eid: host.eid(),
                    server: server_id,
                    seq: u64::from(seq),
                    lifetime: u32::from(lifetime),
                    cookie,
                    observed: from,
                    reported: sources[..usize::from(reported) % 10 % sources.len()].to_vec(),
                };
                let mut record = SignedRecord::sign(host, body.clone());
                match tamper % 6 {
                    1 => record.body.seq = record.body.seq.wrapping_add(1),
                    2 => record.body.server = ids[0].eid(),
                    3 => record.body.observed = pick(&sources, src.wrapping_add(1)),
                    4 => record.signature[0] ^= 1,
                    5 => {
                        record = SignedRecord::sign(&ids[(usize::from(src) + 1) % 4], body);
                        record.body.eid = host.eid();
                    }
                    _ => {}
                }
                let request_id = rig.request_id();
                let data = Message::Register(Register { request_id, record }).to_vec();
                rig.last_register = Some((from, data.clone()));
                rig.deliver(from, &data);
            }
            Op::Lookup {
                src,
                caller,
                target,
                notify,
                wrong_cookie,
            } => {
                let from = pick(&sources, src);
                let cookie = rig.cookie_for(from, wrong_cookie);
                let request_id = rig.request_id();
                let msg = Message::Lookup(Lookup {
                    request_id,
                    cookie,
                    notify,
                    caller: ids[usize::from(caller) % 4].eid(),
                    target: ids[usize::from(target) % 4].eid(),
                });
                rig.deliver(from, &msg.to_vec());
            }
            Op::Keepalive { src, host } => {
                let request_id = rig.request_id();
                let msg = Message::Keepalive(Keepalive {
                    request_id,
                    eid: ids[usize::from(host) % 4].eid(),
                });
                rig.deliver(pick(&sources, src), &msg.to_vec());
            }
            Op::RelayOpen {
                src,
                caller,
                target,
                wrong_cookie,
            } => {
                let from = pick(&sources, src);
                let cookie = rig.cookie_for(from, wrong_cookie);
                let request_id = rig.request_id();
                let msg = Message::RelayOpen(RelayOpen {
                    request_id,
                    cookie,
                    caller: ids[usize::from(caller) % 4].eid(),
                    target: ids[usize::from(target) % 4].eid(),
                });
                rig.deliver(from, &msg.to_vec());
            }
            Op::RelayData { src, relay, len } => {
                let id = if rig.relays.is_empty() {
                    relay
                } else {
                    rig.relays[relay as usize % rig.relays.len()]
                };
                let mut data = relay_header(id).to_vec();
                data.resize(usize::from(len % 1600), 0x42);
                rig.deliver(pick(&sources, src), &data);
            }
            Op::Advance { ms } => rig.now += Duration::from_millis(u64::from(ms % 600_000)),
            Op::Timeout => {
                if let Some(t) = rig.server.poll_timeout() {
                    rig.now = rig.now.max(t);
                }
                rig.server.handle_timeout(rig.now);
                assert!(rig.server.poll_timeout().is_none_or(|t| t > rig.now));
                rig.check(&BTreeMap::new());
            }
        }
    }
});
