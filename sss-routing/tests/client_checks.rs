//! The client against a hostile or silent server, driven directly: forged records in lookup
//! replies and NOTIFYs, replies from elsewhere or with unknown request ids, retry backoff,
//! lookup timeouts and the lookup cap; relay answers (RELAY_OPENED, ERROR) right and wrong.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{identity, seed32};
use sss_proto::{Eid, Identity};
use sss_routing::client::{LookupError, RETRY_INITIAL};
use sss_routing::wire::{
    CookieMsg, ErrorCode, ErrorMsg, LookupReply, Message, Notify, Registered, RelayOpened,
};
use sss_routing::{
    Client, ClientConfig, Event, LookupOutcome, RecordBody, RelayOutcome, SignedRecord,
};

const SERVER: &str = "203.0.113.1:9669";

struct Rig {
    client: Client,
    server_id: Eid,
    server: SocketAddr,
    now: Instant,
}

impl Rig {
    fn new() -> Self {
        let server_id = identity(500).eid();
        let server: SocketAddr = SERVER.parse().unwrap();
        let config = ClientConfig::new(server, server_id, 1, seed32(3));
        Self {
            client: Client::new(config, identity(1)),
            server_id,
            server,
            now: Instant::now(),
        }
    }

    fn sent(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(t) = self.client.poll_transmit(self.now, &mut buf) {
            assert_eq!(t.destination, self.server);
            out.push(Message::decode(&buf[..t.size]).expect("client sends valid messages"));
        }
        out
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.client.poll_event()).collect()
    }

    fn deliver(&mut self, msg: Message) {
        let server = self.server;
        self.deliver_from(server, msg);
    }

    fn deliver_from(&mut self, from: SocketAddr, msg: Message) {
        self.client.handle_datagram(self.now, from, &msg.to_vec());
    }

    fn advance_to_timeout(&mut self) {
        self.now = self.client.poll_timeout().expect("a timer");
        self.client.handle_timeout(self.now);
    }

    /// Answers the HELLO the client just sent with a cookie (`[1; 16]`), as a server would.
    fn answer_hello(&mut self) {
        let Message::Hello(hello) = &self.sent()[0] else {
            panic!("HELLO first")
        };
        self.deliver(Message::Cookie(CookieMsg {
            request_id: hello.request_id,
            cookie: [1; 16],
            observed: "198.51.100.1:5000".parse().unwrap(),
        }));
    }

    /// Registers, answering as a server would; returns the NOTIFY token.
    fn register(&mut self) -> u64 {
        let now = self.now;
        self.client.register(now);
        self.answer_hello();
        let Message::Register(reg) = &self.sent()[0] else {
            panic!("REGISTER next")
        };
        assert!(reg.record.is_valid_for(&self.client.eid(), &self.server_id));
        assert_eq!(reg.record.body.cookie, [1; 16]);
        self.deliver(Message::Registered(Registered {
            request_id: reg.request_id,
            seq: reg.record.body.seq,
            lifetime: 600,
        }));
        assert_eq!(
            self.events(),
            vec![Event::Registered {
                observed: "198.51.100.1:5000".parse().unwrap()
            }]
        );
        reg.request_id
    }

    /// Starts a lookup of `target` and returns the LOOKUP sent.
    fn lookup(&mut self, target: Eid) -> sss_routing::wire::Lookup {
        let now = self.now;
        self.client.lookup(now, target, true).unwrap();
        match self.sent().pop() {
            Some(Message::Lookup(l)) => l,
            other => panic!("expected a LOOKUP, got {other:?}"),
        }
    }
}

fn record_of(signer: &Identity, eid: Eid, server: Eid) -> SignedRecord {
    let mut rec = SignedRecord::sign(
        signer,
        RecordBody {
            eid,
            server,
            seq: 1,
            lifetime: 600,
            cookie: [0; 16],
            observed: "192.0.2.99:1".parse().unwrap(),
            reported: vec![],
        },
    );
    rec.body.eid = eid;
    rec
}

#[test]
fn lookup_replies_with_forged_or_foreign_records_are_ignored() {
    let mut rig = Rig::new();
    rig.register();
    let target = identity(2);
    let lookup = rig.lookup(target.eid());
    let reply = |record| {
        Message::LookupReply(LookupReply {
            request_id: lookup.request_id,
            target: target.eid(),
            record: Some(record),
        })
    };
    // Signed by someone else; genuine but for another server; genuine but of another EID.
    rig.deliver(reply(record_of(&identity(66), target.eid(), rig.server_id)));
    rig.deliver(reply(record_of(&target, target.eid(), identity(501).eid())));
    let other = identity(3);
    rig.deliver(reply(record_of(&other, other.eid(), rig.server_id)));
    // The genuine record, but from another address or with another request id.
    let genuine = record_of(&target, target.eid(), rig.server_id);
    rig.deliver_from("203.0.113.2:9669".parse().unwrap(), reply(genuine.clone()));
    rig.deliver(Message::LookupReply(LookupReply {
        request_id: lookup.request_id ^ 1,
        target: target.eid(),
        record: Some(genuine.clone()),
    }));
    assert!(rig.events().is_empty(), "nothing accepted");

    rig.deliver(reply(genuine));
    assert_eq!(
        rig.events(),
        vec![Event::LookupResult {
            eid: target.eid(),
            outcome: LookupOutcome::Found(vec!["192.0.2.99:1".parse().unwrap()])
        }]
    );
}

#[test]
fn notify_is_accepted_only_with_the_token_from_the_server_and_a_genuine_record() {
    let mut rig = Rig::new();
    let token = rig.register();
    let caller = identity(2);
    let genuine = record_of(&caller, caller.eid(), rig.server_id);
    let notify = |token, caller| Message::Notify(Notify { token, caller });

    rig.deliver(notify(token ^ 1, genuine.clone()));
    rig.deliver_from(
        "203.0.113.2:9669".parse().unwrap(),
        notify(token, genuine.clone()),
    );
    rig.deliver(notify(
        token,
        record_of(&identity(66), caller.eid(), rig.server_id),
    ));
    rig.deliver(notify(
        token,
        record_of(&caller, caller.eid(), identity(501).eid()),
    ));
    assert!(rig.events().is_empty());

    rig.deliver(notify(token, genuine));
    assert_eq!(
        rig.events(),
        vec![Event::PunchRequest {
            peer: caller.eid(),
            endpoints: vec!["192.0.2.99:1".parse().unwrap()]
        }]
    );
}

#[test]
fn a_silent_server_gets_retries_with_backoff_and_lookups_time_out() {
    let mut rig = Rig::new();
    let start = rig.now;
    rig.client.register(start);
    let target = identity(2).eid();
    rig.client.lookup(start, target, false).unwrap();
    assert!(
        matches!(rig.sent()[..], [Message::Hello(_)]),
        "one HELLO for both"
    );

    let mut hellos = vec![start];
    while rig.now < start + Duration::from_secs(120) {
        rig.advance_to_timeout();
        for m in rig.sent() {
            assert!(matches!(m, Message::Hello(_)), "only HELLOs: {m:?}");
            hellos.push(rig.now);
        }
    }
    let gaps: Vec<Duration> = hellos.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps[0], RETRY_INITIAL);
    assert_eq!(gaps[1], RETRY_INITIAL * 2);
    assert!(
        gaps.windows(2).all(|g| g[1] >= g[0]),
        "backoff grows: {gaps:?}"
    );
    assert!(gaps.iter().all(|g| *g <= Duration::from_secs(30)));
    assert_eq!(
        rig.events(),
        vec![Event::LookupResult {
            eid: target,
            outcome: LookupOutcome::TimedOut
        }]
    );
}

#[test]
fn stale_errors_move_the_sequence_number_forward() {
    let mut rig = Rig::new();
    let now = rig.now;
    rig.client.register(now);
    rig.answer_hello();
    let Message::Register(reg) = &rig.sent()[0] else {
        panic!()
    };
    rig.deliver(Message::Error(ErrorMsg {
        request_id: reg.request_id,
        code: ErrorCode::Stale,
        value: 1_000,
    }));
    let Message::Register(again) = &rig.sent()[0] else {
        panic!("a new REGISTER at once")
    };
    assert_eq!(again.record.body.seq, 1_001);
    assert!(again.record.verify());
}

#[test]
fn notify_lookups_from_an_unregistered_host_are_refused_and_lookups_are_capped() {
    let mut rig = Rig::new();
    let target = identity(2).eid();
    let now = rig.now;
    rig.client.lookup(now, target, true).unwrap();
    rig.answer_hello();
    let Message::Lookup(l) = &rig.sent()[0] else {
        panic!()
    };
    rig.deliver(Message::Error(ErrorMsg {
        request_id: l.request_id,
        code: ErrorCode::NotRegistered,
        value: 0,
    }));
    assert_eq!(
        rig.events(),
        vec![Event::LookupResult {
            eid: target,
            outcome: LookupOutcome::Refused(ErrorCode::NotRegistered)
        }]
    );

    let max = rig.client.config().max_lookups;
    for i in 0..max as u64 {
        rig.client
            .lookup(now, identity(100 + i).eid(), false)
            .unwrap();
    }
    // The same target again joins its pending lookup; a new one is refused.
    rig.client.lookup(now, identity(100).eid(), true).unwrap();
    assert_eq!(
        rig.client.lookup(now, identity(99).eid(), false),
        Err(LookupError::TooMany)
    );
    assert_eq!(rig.client.pending_lookups(), max);
}

/// A relay is reported opened only for a RELAY_OPENED with the pending request's id and
/// peer, offered only with our NOTIFY token; refusals end the request, silence times out;
/// a relay to ourselves is refused at once.
#[test]
fn relay_answers_are_checked() {
    let mut rig = Rig::new();
    let token = rig.register();
    let (target, other) = (identity(2).eid(), identity(3).eid());
    let now = rig.now;
    rig.client.open_relay(now, target).unwrap();
    let Some(Message::RelayOpen(open)) = rig.sent().pop() else {
        panic!("RELAY_OPEN")
    };
    assert_eq!((open.caller, open.target), (rig.client.eid(), target));
    let opened = |request_id, peer| {
        Message::RelayOpened(RelayOpened {
            request_id,
            relay_id: 9,
            idle: 60,
            peer,
        })
    };
    // Wrong id, wrong peer, from elsewhere: nothing.
    rig.deliver(opened(open.request_id ^ 1, target));
    rig.deliver(opened(open.request_id, other));
    rig.deliver_from(
        "192.0.2.1:1".parse().unwrap(),
        opened(open.request_id, target),
    );
    assert_eq!(rig.events(), vec![]);
    rig.deliver(opened(open.request_id, target));
    assert_eq!(
        rig.events(),
        vec![Event::RelayResult {
            peer: target,
            outcome: RelayOutcome::Opened {
                relay_id: 9,
                idle: Duration::from_secs(60)
            }
        }]
    );
    // Offers: only with our token, never from ourselves.
    rig.deliver(opened(token ^ 1, other));
    rig.deliver(opened(token, rig.client.eid()));
    assert_eq!(rig.events(), vec![]);
    rig.deliver(opened(token, other));
    assert_eq!(
        rig.events(),
        vec![Event::RelayOffered {
            peer: other,
            relay_id: 9,
            idle: Duration::from_secs(60)
        }]
    );
    // A refusal.
    let now = rig.now;
    rig.client.open_relay(now, other).unwrap();
    let Some(Message::RelayOpen(open)) = rig.sent().pop() else {
        panic!("RELAY_OPEN")
    };
    rig.deliver(Message::Error(ErrorMsg {
        request_id: open.request_id,
        code: ErrorCode::Full,
        value: 0,
    }));
    assert_eq!(
        rig.events(),
        vec![Event::RelayResult {
            peer: other,
            outcome: RelayOutcome::Refused(ErrorCode::Full)
        }]
    );
    // Silence: retried, then timed out.
    rig.client.open_relay(now, other).unwrap();
    let mut opens = 0;
    let mut events = Vec::new();
    while events.is_empty() {
        opens += rig
            .sent()
            .iter()
            .filter(|m| matches!(m, Message::RelayOpen(_)))
            .count();
        rig.advance_to_timeout();
        events = rig
            .events()
            .into_iter()
            .filter(|e| matches!(e, Event::RelayResult { .. }))
            .collect();
    }
    assert!(opens >= 3, "{opens} RELAY_OPENs");
    assert_eq!(
        events,
        vec![Event::RelayResult {
            peer: other,
            outcome: RelayOutcome::TimedOut
        }]
    );
    // Ourselves.
    let me = rig.client.eid();
    rig.client.open_relay(rig.now, me).unwrap();
    assert_eq!(
        rig.events(),
        vec![Event::RelayResult {
            peer: me,
            outcome: RelayOutcome::Refused(ErrorCode::NoTarget)
        }]
    );
}
