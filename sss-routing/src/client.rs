//! The host side of the rendezvous protocol (spec/routing.md §5.2): registration with one
//! regserver (cookie, signed record, refresh, keepalive, retry with backoff), lookups,
//! NOTIFY handling, and relay slots (spec/routing.md §6: [`Client::open_relay`]).
//!
//! A host that uses several regservers runs one [`Client`] per server. Feed it every routing
//! datagram from the server's address with [`Client::handle_datagram`], drain
//! [`Client::poll_transmit`] (every datagram goes to [`ClientConfig::server_addr`]) and
//! [`Client::poll_event`], and call [`Client::handle_timeout`] when [`Client::poll_timeout`]
//! says so.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sss_proto::{Eid, Identity, Transmit};
use thiserror::Error;

use crate::record::{RecordBody, SignedRecord};
use crate::wire::{
    Cookie, ErrorCode, ErrorMsg, Hello, Keepalive, KeepaliveStatus, Lookup, Message, Register,
    RelayOpen, RequestId, HELLO_LEN,
};

/// How long a client uses one cookie (the server accepts it for at least
/// [`crate::COOKIE_SECRET_LIFETIME`]).
pub const COOKIE_REUSE: Duration = Duration::from_secs(90);
/// First retry delay of a request.
pub const RETRY_INITIAL: Duration = Duration::from_millis(500);
/// Largest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// Lifetime a client asks for by default.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// Default keepalive interval: below the 30 s UDP mapping timeout of many NATs.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Default time a lookup waits for its answer.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Configuration of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Where the regserver listens.
    pub server_addr: SocketAddr,
    /// The regserver's EID (records name it; replies are checked against it).
    pub server_id: Eid,
    /// Endpoints the host reports besides the one the server observes (local addresses,
    /// port mappings); at most [`crate::record::MAX_REPORTED`] are used.
    pub reported: Vec<SocketAddr>,
    /// Lifetime to ask for (the server clamps it to 30 s..1 h).
    pub lifetime: Duration,
    /// Interval between keepalives while registered (at least 1 s is used).
    pub keepalive_interval: Duration,
    /// The first record's sequence number (e.g. wall-clock microseconds, so that a restarted
    /// host continues above its old records).
    pub first_seq: u64,
    /// Seed of the generator that draws request identifiers.
    pub rng_seed: [u8; 32],
    /// Most concurrent lookups.
    pub max_lookups: usize,
    /// How long a lookup waits for its answer.
    pub lookup_timeout: Duration,
}

impl ClientConfig {
    /// The defaults of spec/routing.md §5.3.
    pub fn new(
        server_addr: SocketAddr,
        server_id: Eid,
        first_seq: u64,
        rng_seed: [u8; 32],
    ) -> Self {
        Self {
            server_addr,
            server_id,
            reported: Vec::new(),
            lifetime: DEFAULT_LIFETIME,
            keepalive_interval: KEEPALIVE_INTERVAL,
            first_seq,
            rng_seed,
            max_lookups: 64,
            lookup_timeout: LOOKUP_TIMEOUT,
        }
    }
}

/// How a lookup ended.
#[derive(Debug, Clone, Eq, PartialEq)]
pub enum LookupOutcome {
    /// The target's verified record: its observed endpoint first, then the reported ones.
    Found(Vec<SocketAddr>),
    /// The server holds no record for the target.
    NotFound,
    /// The server refused the lookup (e.g. NOTIFY asked while this host is not registered).
    Refused(ErrorCode),
    /// No valid answer within the lookup timeout.
    TimedOut,
}

/// How a [`Client::open_relay`] ended.
#[derive(Debug, Clone, Eq, PartialEq)]
pub enum RelayOutcome {
    /// The server holds a slot between us and the peer.
    Opened {
        /// The slot, to name in every RELAY_DATA.
        relay_id: u32,
        /// The slot ends after this long without traffic.
        idle: Duration,
    },
    /// The server refused (FULL, NO_TARGET, NOT_REGISTERED...).
    Refused(ErrorCode),
    /// No valid answer within the lookup timeout.
    TimedOut,
}

/// What a [`Client`] reports to its host.
#[derive(Debug, Clone, Eq, PartialEq)]
pub enum Event {
    /// The server stored our record (first time, or the observed endpoint changed).
    Registered {
        /// Our endpoint as the server sees it.
        observed: SocketAddr,
    },
    /// Our record expired without a refresh getting through; registration continues.
    RegistrationLost,
    /// A lookup ended.
    LookupResult {
        /// The EID looked up.
        eid: Eid,
        /// How it ended.
        outcome: LookupOutcome,
    },
    /// Someone looked us up with NOTIFY: punch toward its endpoints (send handshake
    /// initiations or probes there).
    PunchRequest {
        /// The caller (its record was verified).
        peer: Eid,
        /// The caller's endpoints, observed first.
        endpoints: Vec<SocketAddr>,
    },
    /// A [`Client::open_relay`] ended.
    RelayResult {
        /// The peer asked for.
        peer: Eid,
        /// How it ended.
        outcome: RelayOutcome,
    },
    /// Another host opened a relay slot toward us (the server vouches with our NOTIFY
    /// token); its datagrams may now arrive as RELAY_DATA of `relay_id`.
    RelayOffered {
        /// The host at the other end (the server says so; the SSS handshake through the
        /// relay authenticates it).
        peer: Eid,
        /// The slot.
        relay_id: u32,
        /// The slot ends after this long without traffic.
        idle: Duration,
    },
}

/// Why [`Client::lookup`] refused to start a lookup.
#[derive(Debug, Clone, Eq, PartialEq, Error)]
#[non_exhaustive]
pub enum LookupError {
    /// [`ClientConfig::max_lookups`] lookups are already pending.
    #[error("too many lookups pending")]
    TooMany,
}

/// Where the registration procedure stands.
#[derive(Debug)]
enum Phase {
    /// `register` was not called.
    Off,
    /// Nothing in flight until `until` (refresh time, or backoff after an error).
    Waiting { until: Instant },
    /// Waiting for a fresh cookie to sign a record with.
    NeedCookie,
    /// A REGISTER is in flight.
    Sent {
        request_id: RequestId,
        bytes: Vec<u8>,
        retry_at: Instant,
        /// The observed endpoint the record names.
        observed: SocketAddr,
    },
}

#[derive(Debug)]
struct Registration {
    token: RequestId,
    previous_token: Option<RequestId>,
    observed: SocketAddr,
    expiry: Instant,
    next_keepalive: Instant,
    keepalive_id: Option<RequestId>,
}

#[derive(Debug, Clone, Copy)]
struct HeldCookie {
    cookie: Cookie,
    observed: SocketAddr,
    received: Instant,
}

#[derive(Debug)]
struct PendingLookup {
    notify: bool,
    request_id: RequestId,
    deadline: Instant,
    /// When to (re)send; `None` while waiting for a cookie.
    send_at: Option<Instant>,
    backoff: Duration,
}

/// A pending RELAY_OPEN.
#[derive(Debug)]
struct PendingRelay {
    request_id: RequestId,
    deadline: Instant,
    /// When to (re)send; `None` while waiting for a cookie.
    send_at: Option<Instant>,
    backoff: Duration,
}

/// The registration and lookup state machine of one host toward one regserver.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    identity: Identity,
    rng: ChaCha20Rng,
    seq: u64,
    cookie: Option<HeldCookie>,
    /// The outstanding HELLO and when to resend it.
    hello: Option<(RequestId, Instant)>,
    hello_backoff: Duration,
    phase: Phase,
    backoff: Duration,
    registration: Option<Registration>,
    lookups: BTreeMap<Eid, PendingLookup>,
    relays: BTreeMap<Eid, PendingRelay>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
}

impl Client {
    /// A client that does nothing until [`Client::register`] or [`Client::lookup`].
    pub fn new(config: ClientConfig, identity: Identity) -> Self {
        Self {
            rng: ChaCha20Rng::from_seed(config.rng_seed),
            seq: config.first_seq,
            config,
            identity,
            cookie: None,
            hello: None,
            hello_backoff: RETRY_INITIAL,
            phase: Phase::Off,
            backoff: RETRY_INITIAL,
            registration: None,
            lookups: BTreeMap::new(),
            relays: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    // ---- getters ----

    /// Our EID.
    pub fn eid(&self) -> Eid {
        self.identity.eid()
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Our endpoint as the server observed it, while registered.
    pub fn registered_as(&self) -> Option<SocketAddr> {
        self.registration.as_ref().map(|r| r.observed)
    }

    /// The sequence number the next record will carry.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Number of pending lookups.
    pub fn pending_lookups(&self) -> usize {
        self.lookups.len()
    }

    // ---- mutators ----

    /// Starts registering (and keeps the registration alive from then on).
    pub fn register(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Off | Phase::Waiting { .. }) {
            self.attempt(now);
        }
    }

    /// Changes the reported endpoints and registers a record with them.
    pub fn set_reported_endpoints(&mut self, now: Instant, endpoints: Vec<SocketAddr>) {
        self.config.reported = endpoints;
        if !matches!(self.phase, Phase::Off) {
            self.attempt(now);
        }
    }

    /// Looks `target` up; with `notify`, asks the server to tell the target to punch toward
    /// us (we must be registered). The answer comes as [`Event::LookupResult`]. A lookup of a
    /// target already pending joins it.
    pub fn lookup(&mut self, now: Instant, target: Eid, notify: bool) -> Result<(), LookupError> {
        if let Some(pending) = self.lookups.get_mut(&target) {
            pending.notify |= notify;
            return Ok(());
        }
        if self.lookups.len() >= self.config.max_lookups {
            return Err(LookupError::TooMany);
        }
        let request_id = self.rng.next_u64();
        self.lookups.insert(
            target,
            PendingLookup {
                notify,
                request_id,
                deadline: now + self.config.lookup_timeout,
                send_at: Some(now),
                backoff: RETRY_INITIAL,
            },
        );
        self.send_due_lookups(now);
        Ok(())
    }

    /// Asks the server for a relay slot between us and `target` (spec/routing.md §6; we
    /// must be registered, and so must the target). The answer comes as
    /// [`Event::RelayResult`]; asking again while a request is pending joins it, asking
    /// again later refreshes the slot (same relay_id).
    pub fn open_relay(&mut self, now: Instant, target: Eid) -> Result<(), LookupError> {
        if self.relays.contains_key(&target) {
            return Ok(());
        }
        if target == self.identity.eid() {
            // The server would answer NO_TARGET; say it at once.
            self.events.push_back(Event::RelayResult {
                peer: target,
                outcome: RelayOutcome::Refused(ErrorCode::NoTarget),
            });
            return Ok(());
        }
        if self.relays.len() >= self.config.max_lookups {
            return Err(LookupError::TooMany);
        }
        let request_id = self.rng.next_u64();
        self.relays.insert(
            target,
            PendingRelay {
                request_id,
                deadline: now + self.config.lookup_timeout,
                send_at: Some(now),
                backoff: RETRY_INITIAL,
            },
        );
        self.send_due_relays(now);
        Ok(())
    }

    // ---- handle_* ----

    /// Handles a routing datagram; anything not from the server's address is ignored.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if from != self.config.server_addr {
            return;
        }
        let Ok(msg) = Message::decode(data) else {
            return;
        };
        match msg {
            Message::Cookie(c) => self.on_cookie(now, c.request_id, c.cookie, c.observed),
            Message::Registered(r) => {
                let Phase::Sent { request_id, .. } = self.phase else {
                    return;
                };
                if r.request_id != request_id {
                    return;
                }
                self.on_registered(now, request_id, r.lifetime);
            }
            Message::Error(e) => self.on_error(now, e),
            Message::LookupReply(reply) => {
                let Some(pending) = self.lookups.get(&reply.target) else {
                    return;
                };
                if pending.request_id != reply.request_id {
                    return;
                }
                let outcome = match reply.record {
                    None => LookupOutcome::NotFound,
                    Some(rec) if rec.is_valid_for(&reply.target, &self.config.server_id) => {
                        LookupOutcome::Found(rec.endpoints())
                    }
                    // A forged or foreign record: ignore it, the lookup retries and times
                    // out rather than returning endpoints the target never signed.
                    Some(_) => return,
                };
                self.finish_lookup(reply.target, outcome);
            }
            Message::Notify(n) => {
                let Some(reg) = &self.registration else {
                    return;
                };
                if n.token != reg.token && Some(n.token) != reg.previous_token {
                    return;
                }
                let peer = n.caller.body.eid;
                if peer == self.identity.eid()
                    || !n.caller.is_valid_for(&peer, &self.config.server_id)
                {
                    return;
                }
                self.events.push_back(Event::PunchRequest {
                    peer,
                    endpoints: n.caller.endpoints(),
                });
            }
            Message::KeepaliveReply(k) => {
                let Some(reg) = &mut self.registration else {
                    return;
                };
                if reg.keepalive_id != Some(k.request_id) {
                    return;
                }
                reg.keepalive_id = None;
                let moved = k.observed != reg.observed;
                if k.status != KeepaliveStatus::Registered || moved {
                    if moved {
                        // Our cookie is bound to the old address.
                        self.cookie = None;
                    }
                    self.reregister_soon(now);
                }
            }
            Message::RelayOpened(o) => {
                let idle = Duration::from_secs(u64::from(o.idle));
                if self
                    .relays
                    .get(&o.peer)
                    .is_some_and(|r| r.request_id == o.request_id)
                {
                    self.relays.remove(&o.peer);
                    self.events.push_back(Event::RelayResult {
                        peer: o.peer,
                        outcome: RelayOutcome::Opened {
                            relay_id: o.relay_id,
                            idle,
                        },
                    });
                    return;
                }
                let Some(reg) = &self.registration else {
                    return;
                };
                if (o.request_id == reg.token || Some(o.request_id) == reg.previous_token)
                    && o.peer != self.identity.eid()
                {
                    self.events.push_back(Event::RelayOffered {
                        peer: o.peer,
                        relay_id: o.relay_id,
                        idle,
                    });
                }
            }
            // Client-to-server messages are not for us, probes carry nothing, and relayed
            // datagrams are the host's business (it unwraps them before they get here).
            Message::Hello(_)
            | Message::Register(_)
            | Message::Lookup(_)
            | Message::Keepalive(_)
            | Message::Punch(_)
            | Message::RelayOpen(_)
            | Message::RelayData(_) => {}
        }
    }

    /// When [`Client::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some((_, retry)) = self.hello {
            at(retry);
        }
        match &self.phase {
            Phase::Waiting { until } => at(*until),
            Phase::Sent { retry_at, .. } => at(*retry_at),
            Phase::Off | Phase::NeedCookie => {}
        }
        if let Some(reg) = &self.registration {
            at(reg.expiry);
            at(reg.next_keepalive);
        }
        for l in self.lookups.values() {
            at(l.deadline);
            if let Some(s) = l.send_at {
                at(s);
            }
        }
        for r in self.relays.values() {
            at(r.deadline);
            if let Some(s) = r.send_at {
                at(s);
            }
        }
        t
    }

    /// Runs the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Registration expiry.
        if self.registration.as_ref().is_some_and(|r| r.expiry <= now) {
            self.registration = None;
            self.events.push_back(Event::RegistrationLost);
            self.reregister_soon(now);
        }
        // Keepalive.
        let interval = self.keepalive_interval();
        if let Some(reg) = &mut self.registration {
            if reg.next_keepalive <= now {
                let request_id = self.rng.next_u64();
                reg.keepalive_id = Some(request_id);
                reg.next_keepalive = now + interval;
                let eid = self.identity.eid();
                self.send(Message::Keepalive(Keepalive { request_id, eid }));
            }
        }
        // Registration procedure.
        match &self.phase {
            Phase::Waiting { until } if *until <= now => self.attempt(now),
            Phase::Sent { retry_at, .. } if *retry_at <= now => {
                if self.fresh_cookie(now).is_some() {
                    // Same record, same request: the server acknowledges a duplicate again.
                    let backoff = self.next_backoff();
                    if let Phase::Sent {
                        bytes, retry_at, ..
                    } = &mut self.phase
                    {
                        *retry_at = now + backoff;
                        self.transmits.push_back(bytes.clone());
                    }
                } else {
                    self.attempt(now);
                }
            }
            _ => {}
        }
        // Lookups: deadlines, then retries.
        let expired: Vec<Eid> = self
            .lookups
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(eid, _)| *eid)
            .collect();
        for eid in expired {
            self.finish_lookup(eid, LookupOutcome::TimedOut);
        }
        self.send_due_lookups(now);
        let expired: Vec<Eid> = self
            .relays
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(eid, _)| *eid)
            .collect();
        for eid in expired {
            self.finish_relay(eid, RelayOutcome::TimedOut);
        }
        self.send_due_relays(now);
        // HELLO retry, only while someone still needs a cookie.
        if let Some((id, retry)) = self.hello {
            if retry <= now {
                self.hello = None;
                if self.needs_cookie() {
                    self.hello_backoff = (self.hello_backoff * 2).min(RETRY_MAX);
                    self.send_hello(now, Some(id));
                }
            }
        }
    }

    // ---- poll_* ----

    /// The next datagram for the server, written into `buf` (cleared first).
    pub fn poll_transmit(&mut self, _now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let data = self.transmits.pop_front()?;
        buf.clear();
        buf.extend_from_slice(&data);
        Some(Transmit {
            destination: self.config.server_addr,
            size: data.len(),
            segment_size: None,
            ecn: None,
            src_ip: None,
        })
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- internals ----

    fn send(&mut self, msg: Message) {
        self.transmits.push_back(msg.to_vec());
    }

    fn fresh_cookie(&self, now: Instant) -> Option<HeldCookie> {
        self.cookie
            .filter(|c| now.saturating_duration_since(c.received) < COOKIE_REUSE)
    }

    /// The configured keepalive interval, at least 1 s (a zero would make the timer spin).
    fn keepalive_interval(&self) -> Duration {
        self.config.keepalive_interval.max(Duration::from_secs(1))
    }

    fn needs_cookie(&self) -> bool {
        matches!(self.phase, Phase::NeedCookie)
            || self.lookups.values().any(|l| l.send_at.is_none())
            || self.relays.values().any(|r| r.send_at.is_none())
    }

    fn next_backoff(&mut self) -> Duration {
        let b = self.backoff;
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
        b
    }

    /// Sends a HELLO unless one is outstanding (`reuse` keeps the request id of a retry).
    fn send_hello(&mut self, now: Instant, reuse: Option<RequestId>) {
        if self.hello.is_some() {
            return;
        }
        let request_id = reuse.unwrap_or_else(|| self.rng.next_u64());
        self.hello = Some((request_id, now + self.hello_backoff));
        self.send(Message::Hello(Hello {
            request_id,
            len: HELLO_LEN,
        }));
    }

    /// Starts a registration attempt: a REGISTER with a fresh cookie, or a HELLO first.
    fn attempt(&mut self, now: Instant) {
        let Some(cookie) = self.fresh_cookie(now) else {
            self.phase = Phase::NeedCookie;
            self.send_hello(now, None);
            return;
        };
        let body = RecordBody {
            eid: self.identity.eid(),
            server: self.config.server_id,
            seq: self.seq,
            lifetime: u32::try_from(self.config.lifetime.as_secs()).unwrap_or(u32::MAX),
            cookie: cookie.cookie,
            observed: cookie.observed,
            reported: self.config.reported.clone(),
        };
        self.seq = self.seq.saturating_add(1);
        let record = SignedRecord::sign(&self.identity, body);
        let request_id = self.rng.next_u64();
        let bytes = Message::Register(Register { request_id, record }).to_vec();
        self.transmits.push_back(bytes.clone());
        let retry_at = now + self.next_backoff();
        self.phase = Phase::Sent {
            request_id,
            bytes,
            retry_at,
            observed: cookie.observed,
        };
    }

    /// Re-registers at once unless a registration attempt is already under way.
    fn reregister_soon(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Waiting { .. }) {
            self.attempt(now);
        }
    }

    fn on_cookie(
        &mut self,
        now: Instant,
        request_id: RequestId,
        cookie: Cookie,
        observed: SocketAddr,
    ) {
        let ours = self.hello.is_some_and(|(id, _)| id == request_id)
            || matches!(self.phase, Phase::Sent { request_id: r, .. } if r == request_id)
            || self.lookups.values().any(|l| l.request_id == request_id)
            || self.relays.values().any(|r| r.request_id == request_id);
        if !ours {
            return;
        }
        self.hello = None;
        self.hello_backoff = RETRY_INITIAL;
        self.cookie = Some(HeldCookie {
            cookie,
            observed,
            received: now,
        });
        let moved = self
            .registration
            .as_ref()
            .is_some_and(|r| r.observed != observed);
        match self.phase {
            // Waiting for it, or our REGISTER carried a stale cookie: sign a new record.
            Phase::NeedCookie => self.attempt(now),
            Phase::Sent { request_id: r, .. } if r == request_id => self.attempt(now),
            // The server sees us elsewhere now: re-register with the new address.
            Phase::Waiting { .. } if moved => self.attempt(now),
            _ => {}
        }
        // Lookups waiting for a cookie, or whose cookie was stale, go out now.
        for l in self.lookups.values_mut() {
            if l.send_at.is_none() || l.request_id == request_id {
                l.send_at = Some(now);
            }
        }
        for r in self.relays.values_mut() {
            if r.send_at.is_none() || r.request_id == request_id {
                r.send_at = Some(now);
            }
        }
        self.send_due_lookups(now);
        self.send_due_relays(now);
    }

    fn on_registered(&mut self, now: Instant, token: RequestId, lifetime: u32) {
        let Phase::Sent { observed, .. } = self.phase else {
            return;
        };
        let lifetime = Duration::from_secs(u64::from(lifetime));
        let previous = self.registration.take();
        let changed = previous.as_ref().is_none_or(|p| p.observed != observed);
        self.registration = Some(Registration {
            token,
            previous_token: previous.as_ref().map(|p| p.token),
            observed,
            expiry: now + lifetime,
            next_keepalive: now + self.keepalive_interval(),
            keepalive_id: None,
        });
        self.backoff = RETRY_INITIAL;
        // At least RETRY_INITIAL, so a server granting no lifetime cannot make us spin.
        self.phase = Phase::Waiting {
            until: now + (lifetime / 2).max(RETRY_INITIAL),
        };
        if changed {
            self.events.push_back(Event::Registered { observed });
        }
    }

    fn on_error(&mut self, now: Instant, e: ErrorMsg) {
        if matches!(self.phase, Phase::Sent { request_id, .. } if request_id == e.request_id) {
            match e.code {
                ErrorCode::Stale => {
                    self.seq = self.seq.max(e.value.saturating_add(1));
                    self.attempt(now);
                }
                ErrorCode::RateLimited => {
                    let wait = Duration::from_millis(e.value).min(RETRY_MAX);
                    let until = now + self.next_backoff().max(wait);
                    self.phase = Phase::Waiting { until };
                }
                ErrorCode::BadRecord
                | ErrorCode::Full
                | ErrorCode::NotRegistered
                | ErrorCode::NoTarget => {
                    // BAD_RECORD may mean our address changed since the cookie: get a new one.
                    if e.code == ErrorCode::BadRecord {
                        self.cookie = None;
                    }
                    let until = now + self.next_backoff();
                    self.phase = Phase::Waiting { until };
                }
            }
            return;
        }
        if let Some((&target, pending)) = self
            .relays
            .iter_mut()
            .find(|(_, r)| r.request_id == e.request_id)
        {
            if e.code == ErrorCode::RateLimited {
                let wait = Duration::from_millis(e.value).min(RETRY_MAX);
                pending.send_at = Some(now + wait.max(pending.backoff));
            } else {
                self.finish_relay(target, RelayOutcome::Refused(e.code));
            }
            return;
        }
        let Some((&target, pending)) = self
            .lookups
            .iter_mut()
            .find(|(_, l)| l.request_id == e.request_id)
        else {
            return;
        };
        if e.code == ErrorCode::RateLimited {
            let wait = Duration::from_millis(e.value).min(RETRY_MAX);
            pending.send_at = Some(now + wait.max(pending.backoff));
        } else {
            self.finish_lookup(target, LookupOutcome::Refused(e.code));
        }
    }

    fn finish_lookup(&mut self, eid: Eid, outcome: LookupOutcome) {
        if self.lookups.remove(&eid).is_some() {
            self.events.push_back(Event::LookupResult { eid, outcome });
        }
    }

    fn finish_relay(&mut self, peer: Eid, outcome: RelayOutcome) {
        if self.relays.remove(&peer).is_some() {
            self.events.push_back(Event::RelayResult { peer, outcome });
        }
    }

    /// Sends every RELAY_OPEN whose time has come, if a fresh cookie is held (else asks for
    /// one).
    fn send_due_relays(&mut self, now: Instant) {
        let cookie = self.fresh_cookie(now);
        let caller = self.identity.eid();
        let mut out = Vec::new();
        let mut need_cookie = false;
        for (target, r) in self.relays.iter_mut() {
            if r.send_at.is_none_or(|s| s > now) {
                continue;
            }
            let Some(c) = cookie else {
                r.send_at = None;
                need_cookie = true;
                continue;
            };
            out.push(Message::RelayOpen(RelayOpen {
                request_id: r.request_id,
                cookie: c.cookie,
                caller,
                target: *target,
            }));
            r.send_at = Some(now + r.backoff);
            r.backoff = (r.backoff * 2).min(RETRY_MAX);
        }
        for m in out {
            self.send(m);
        }
        if need_cookie {
            self.send_hello(now, None);
        }
    }

    /// Sends every lookup whose time has come, if a fresh cookie is held (else asks for one).
    fn send_due_lookups(&mut self, now: Instant) {
        let cookie = self.fresh_cookie(now);
        let caller = self.identity.eid();
        let mut out = Vec::new();
        let mut need_cookie = false;
        for (target, l) in self.lookups.iter_mut() {
            if l.send_at.is_none_or(|s| s > now) {
                continue;
            }
            let Some(c) = cookie else {
                l.send_at = None;
                need_cookie = true;
                continue;
            };
            out.push(Message::Lookup(Lookup {
                request_id: l.request_id,
                cookie: c.cookie,
                notify: l.notify,
                caller,
                target: *target,
            }));
            l.send_at = Some(now + l.backoff);
            l.backoff = (l.backoff * 2).min(RETRY_MAX);
        }
        for m in out {
            self.send(m);
        }
        if need_cookie {
            self.send_hello(now, None);
        }
    }
}
