//! The regserver's logic (spec/routing.md §5.1, §6.2): stateless cookies, signed records
//! kept as soft state, lookups and NOTIFYs, and relay slots, with every table capped.
//!
//! Call [`Server::handle_datagram`] for every routing datagram, then drain
//! [`Server::poll_transmit`]; call [`Server::handle_timeout`] when [`Server::poll_timeout`]
//! says so. The server never reads a clock or the OS random generator: times are handed in,
//! and the cookie secrets come from a generator seeded by [`ServerConfig::rng_seed`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sss_proto::{Eid, Transmit};

use crate::bucket::Bucket;
use crate::cookie::CookieJar;
use crate::record::SignedRecord;
use crate::wire::{
    msg_type, relay_data, CookieMsg, ErrorCode, ErrorMsg, KeepaliveReply, KeepaliveStatus, Lookup,
    LookupReply, Message, Notify, Register, Registered, RelayOpen, RelayOpened, RequestId,
    MAX_RELAY_DATAGRAM,
};

/// Shortest lifetime a server grants.
pub const MIN_LIFETIME: Duration = Duration::from_secs(30);
/// Longest lifetime a server grants.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// NOTIFYs a target may receive in a burst.
pub const NOTIFY_BURST: u32 = 4;
/// NOTIFYs per second a target receives once its burst is spent.
pub const NOTIFY_RATE: u32 = 1;
/// Least time between two sweeps of a full source table for idle entries.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// A relay slot ends this long after the last datagram it forwarded (spec/routing.md §6.4).
pub const RELAY_IDLE: Duration = Duration::from_secs(60);

/// Configuration of a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The server's EID; records must name it.
    pub server_id: Eid,
    /// Seed of the generator that draws the cookie secrets (draw it from the OS in the
    /// binary, fix it in tests).
    pub rng_seed: [u8; 32],
    /// Most records held; at the cap a new EID is refused with FULL.
    pub max_records: usize,
    /// Most records whose observed endpoint has one IP address.
    pub max_records_per_ip: u32,
    /// Most source IPs with a credit bucket of their own.
    pub max_sources: usize,
    /// Cookie-checked requests a source IP may make in a burst.
    pub source_burst: u32,
    /// Cookie-checked requests per second a source IP may make once its burst is spent.
    pub source_rate: u32,
    /// Most datagrams waiting in [`Server::poll_transmit`].
    pub max_queued: usize,
    /// Most relay slots held; 0 disables relaying (every RELAY_OPEN gets FULL).
    pub max_relays: usize,
    /// Most relay slots naming one EID.
    pub max_relays_per_host: u32,
    /// Bytes per second a relay slot forwards (both directions together) once its burst is
    /// spent.
    pub relay_rate: u32,
    /// Bytes a relay slot may forward in a burst.
    pub relay_burst: u32,
}

impl ServerConfig {
    /// The defaults of spec/routing.md §5.3 for a server named `server_id`.
    pub fn new(server_id: Eid, rng_seed: [u8; 32]) -> Self {
        Self {
            server_id,
            rng_seed,
            max_records: 100_000,
            max_records_per_ip: 64,
            max_sources: 4096,
            source_burst: 32,
            source_rate: 16,
            max_queued: 1024,
            max_relays: 1024,
            max_relays_per_host: 8,
            relay_rate: 1_000_000,
            relay_burst: 250_000,
        }
    }
}

/// Counters of what the server did (for operators and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Datagrams that did not decode, or of a type a server does not accept.
    pub malformed: u64,
    /// COOKIE replies sent (to HELLO or to a stale cookie).
    pub cookies: u64,
    /// Records stored or refreshed.
    pub registered: u64,
    /// Lookups answered.
    pub lookups: u64,
    /// NOTIFYs queued.
    pub notifies: u64,
    /// NOTIFYs not sent because the target's notify credit was spent.
    pub notifies_limited: u64,
    /// ERROR replies sent.
    pub errors: u64,
    /// Records removed at expiry.
    pub expired: u64,
    /// Replies dropped because the transmit queue was full.
    pub dropped_replies: u64,
    /// Relay slots made.
    pub relays_opened: u64,
    /// RELAY_OPENs that found their slot and refreshed it.
    pub relays_refreshed: u64,
    /// Relay slots ended by their idle timer.
    pub relays_expired: u64,
    /// RELAY_DATA datagrams forwarded.
    pub relayed_packets: u64,
    /// Bytes of the RELAY_DATA datagrams forwarded (headers included).
    pub relayed_bytes: u64,
    /// RELAY_DATA dropped: unknown or ended slot, a source that is not one of the slot's
    /// endpoints, empty or longer than [`MAX_RELAY_DATAGRAM`].
    pub relay_dropped: u64,
    /// RELAY_DATA dropped because the slot's byte budget was spent.
    pub relay_over_budget: u64,
}

/// One relay slot: two registered hosts and where they registered from.
#[derive(Debug)]
struct Slot {
    /// The two ends, in EID order (the key of `relay_pairs`).
    ends: [(Eid, SocketAddr); 2],
    /// The last datagram forwarded (or the last refresh).
    last: Instant,
    budget: Bucket,
}

#[derive(Debug)]
struct Entry {
    record: SignedRecord,
    expiry: Instant,
    granted: u32,
    /// The request_id of the REGISTER that stored the record: the NOTIFY token.
    token: RequestId,
    notify: Bucket,
    /// Request credit of the host while it asks from its observed endpoint, so that a flood
    /// from other sources (which may exhaust the shared overflow credit) does not starve it.
    credit: Bucket,
}

/// The regserver state machine.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    rng: ChaCha20Rng,
    cookies: CookieJar,
    records: BTreeMap<Eid, Entry>,
    by_expiry: BTreeSet<(Instant, Eid)>,
    per_ip: BTreeMap<IpAddr, u32>,
    sources: BTreeMap<IpAddr, Bucket>,
    /// Credit shared by the sources that found no room in `sources`.
    overflow: Bucket,
    /// When `sources` was last swept for idle entries because it was full.
    last_sweep: Option<Instant>,
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    stats: ServerStats,
    relays: BTreeMap<u32, Slot>,
    /// The slot of each EID pair (smaller EID first).
    relay_pairs: BTreeMap<(Eid, Eid), u32>,
    /// Slots naming each EID.
    relays_per_host: BTreeMap<Eid, u32>,
    /// One entry per slot: a time at or before its idle deadline (checked lazily, so that
    /// forwarding a datagram only updates the slot).
    relay_expiry: BTreeSet<(Instant, u32)>,
}

impl Server {
    /// A server with no records.
    pub fn new(config: ServerConfig, now: Instant) -> Self {
        let mut rng = ChaCha20Rng::from_seed(config.rng_seed);
        let cookies = CookieJar::new(now, &mut rng);
        let overflow = Bucket::full(now, config.source_burst);
        Self {
            config,
            rng,
            cookies,
            records: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            per_ip: BTreeMap::new(),
            sources: BTreeMap::new(),
            overflow,
            last_sweep: None,
            queue: VecDeque::new(),
            stats: ServerStats::default(),
            relays: BTreeMap::new(),
            relay_pairs: BTreeMap::new(),
            relays_per_host: BTreeMap::new(),
            relay_expiry: BTreeSet::new(),
        }
    }

    // ---- getters ----

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Number of records held.
    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// Number of source IPs with their own credit bucket.
    pub fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// Number of datagrams waiting in [`Server::poll_transmit`].
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The stored record of `eid`, if any.
    pub fn record(&self, eid: &Eid) -> Option<&SignedRecord> {
        self.records.get(eid).map(|e| &e.record)
    }

    /// Number of relay slots held.
    pub fn relay_count(&self) -> usize {
        self.relays.len()
    }

    /// The relay_id of the slot between `a` and `b` (either order), if any.
    pub fn relay_between(&self, a: &Eid, b: &Eid) -> Option<u32> {
        self.relay_pairs.get(&pair(*a, *b)).copied()
    }

    /// The largest number of records stored for one observed IP address.
    pub fn max_records_of_one_ip(&self) -> u32 {
        self.per_ip.values().copied().max().unwrap_or(0)
    }

    // ---- handle_* ----

    /// Handles one routing datagram from `from`, queueing any replies (and a forwarded
    /// RELAY_DATA, copied; a runtime can use [`Server::forward`] instead and send the
    /// received buffer itself).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if data.first() == Some(&msg_type::RELAY_DATA) {
            if let Some(to) = self.forward(now, from, data) {
                self.push_raw(to, data.to_vec());
            }
            return;
        }
        let Ok(msg) = Message::decode(data) else {
            self.stats.malformed += 1;
            return;
        };
        self.cookies.rotate(now, &mut self.rng);
        // A late driver must not make us serve records past their expiry.
        self.expire(now);
        match msg {
            Message::Hello(hello) => {
                // HELLO is at least HELLO_LEN, the COOKIE at most MAX_COOKIE_MSG_LEN.
                self.send_cookie(from, hello.request_id);
            }
            Message::Keepalive(ka) => {
                let status = match self.records.get(&ka.eid) {
                    None => KeepaliveStatus::Unknown,
                    Some(e) if e.record.body.observed == from => KeepaliveStatus::Registered,
                    Some(_) => KeepaliveStatus::Elsewhere,
                };
                let reply = Message::KeepaliveReply(KeepaliveReply {
                    request_id: ka.request_id,
                    status,
                    observed: from,
                });
                self.push(from, reply);
            }
            Message::Register(reg) => {
                if !self.cookies.check(from, &reg.record.body.cookie) {
                    self.send_cookie(from, reg.request_id);
                    return;
                }
                if self.charge(now, from, reg.request_id, reg.record.body.eid) {
                    self.register(now, from, reg);
                }
            }
            Message::Lookup(lookup) => {
                if !self.cookies.check(from, &lookup.cookie) {
                    self.send_cookie(from, lookup.request_id);
                    return;
                }
                if self.charge(now, from, lookup.request_id, lookup.caller) {
                    self.lookup(now, from, lookup);
                }
            }
            Message::RelayOpen(open) => {
                if !self.cookies.check(from, &open.cookie) {
                    self.send_cookie(from, open.request_id);
                    return;
                }
                if self.charge(now, from, open.request_id, open.caller) {
                    self.relay_open(now, from, open);
                }
            }
            // Handled above; a RELAY_DATA never reaches this point.
            Message::RelayData(_) => {}
            // Server-to-client messages are never answered (no reflection).
            Message::RelayOpened(_)
            | Message::Cookie(_)
            | Message::Registered(_)
            | Message::LookupReply(_)
            | Message::Notify(_)
            | Message::KeepaliveReply(_)
            | Message::Error(_)
            // Probes between hosts are not for a server either.
            | Message::Punch(_) => self.stats.malformed += 1,
        }
    }

    /// Checks a RELAY_DATA from `from` against its slot (spec/routing.md §6.2) and, if it
    /// may go, returns where: the slot's other endpoint, to which the caller sends
    /// `datagram` unchanged. Anything else is dropped (and counted). Neither allocates nor
    /// queues anything: this is the forwarding hot path.
    pub fn forward(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Option<SocketAddr> {
        let slot = match relay_data(datagram) {
            Some((id, _)) if datagram.len() <= MAX_RELAY_DATAGRAM => self.relays.get_mut(&id),
            _ => None,
        };
        let to = slot.and_then(|slot| {
            if now.saturating_duration_since(slot.last) >= RELAY_IDLE {
                return None;
            }
            let [(_, a), (_, b)] = slot.ends;
            let to = if from == a {
                b
            } else if from == b {
                a
            } else {
                return None;
            };
            if to == from {
                // Never back to the source (a slot's two ends differ, see `relay_open`).
                return None;
            }
            Some((slot, to))
        });
        let Some((slot, to)) = to else {
            self.stats.relay_dropped += 1;
            return None;
        };
        let len = datagram.len() as u64;
        let (burst, rate) = (self.config.relay_burst, self.config.relay_rate);
        if !slot.budget.take_n(now, len, burst, rate) {
            self.stats.relay_over_budget += 1;
            return None;
        }
        slot.last = now;
        self.stats.relayed_packets += 1;
        self.stats.relayed_bytes += len;
        Some(to)
    }

    /// When [`Server::handle_timeout`] should next be called: the next record expiry,
    /// relay slot check or cookie secret rotation.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let rotation = self.cookies.next_rotation();
        let records = self.by_expiry.first().map(|(t, _)| *t);
        let relays = self.relay_expiry.first().map(|(t, _)| *t);
        [records, relays]
            .into_iter()
            .flatten()
            .chain([rotation])
            .min()
    }

    /// Removes expired records and rotates the cookie secret when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.cookies.rotate(now, &mut self.rng);
        self.expire(now);
        self.expire_relays(now);
        // Idle sources go too, so a past flood does not keep the table full.
        let (burst, rate) = (self.config.source_burst, self.config.source_rate);
        self.sources.retain(|_, b| !b.is_full(now, burst, rate));
    }

    // ---- poll_* ----

    /// The next datagram to send, written into `buf` (cleared first).
    pub fn poll_transmit(&mut self, _now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let (destination, data) = self.queue.pop_front()?;
        buf.clear();
        buf.extend_from_slice(&data);
        Some(Transmit {
            destination,
            size: data.len(),
            segment_size: None,
            ecn: None,
            src_ip: None,
        })
    }

    // ---- internals ----

    /// Removes the records whose expiry has come.
    fn expire(&mut self, now: Instant) {
        while let Some(&(t, eid)) = self.by_expiry.first() {
            if t > now {
                break;
            }
            self.by_expiry.pop_first();
            if let Some(entry) = self.records.remove(&eid) {
                self.uncount_ip(entry.record.body.observed.ip());
                self.stats.expired += 1;
            }
        }
    }

    /// Ends the relay slots idle for [`RELAY_IDLE`].
    fn expire_relays(&mut self, now: Instant) {
        while let Some(&(t, id)) = self.relay_expiry.first() {
            if t > now {
                break;
            }
            self.relay_expiry.pop_first();
            let Some(slot) = self.relays.get(&id) else {
                continue;
            };
            let deadline = slot.last + RELAY_IDLE;
            if deadline > now {
                // Used since: check again at its real deadline.
                self.relay_expiry.insert((deadline, id));
                continue;
            }
            let ends = slot.ends;
            self.relays.remove(&id);
            self.relay_pairs.remove(&(ends[0].0, ends[1].0));
            for (eid, _) in ends {
                if let Some(n) = self.relays_per_host.get_mut(&eid) {
                    *n -= 1;
                    if *n == 0 {
                        self.relays_per_host.remove(&eid);
                    }
                }
            }
            self.stats.relays_expired += 1;
        }
    }

    fn push(&mut self, to: SocketAddr, msg: Message) {
        self.push_raw(to, msg.to_vec());
    }

    fn push_raw(&mut self, to: SocketAddr, data: Vec<u8>) {
        if self.queue.len() >= self.config.max_queued {
            self.stats.dropped_replies += 1;
            return;
        }
        self.queue.push_back((to, data));
    }

    fn send_cookie(&mut self, from: SocketAddr, request_id: RequestId) {
        self.stats.cookies += 1;
        let cookie = self.cookies.issue(from);
        self.push(
            from,
            Message::Cookie(CookieMsg {
                request_id,
                cookie,
                observed: from,
            }),
        );
    }

    fn send_error(&mut self, to: SocketAddr, request_id: RequestId, code: ErrorCode, value: u64) {
        self.stats.errors += 1;
        self.push(
            to,
            Message::Error(ErrorMsg {
                request_id,
                code,
                value,
            }),
        );
    }

    /// Takes one credit: from the record of `eid` if the request comes from its observed
    /// endpoint (the cookie proved the source), else from the source IP's bucket. Without
    /// credit, answers RATE_LIMITED and returns false.
    fn charge(&mut self, now: Instant, from: SocketAddr, request_id: RequestId, eid: Eid) -> bool {
        let (burst, rate) = (self.config.source_burst, self.config.source_rate);
        let ip = from.ip();
        let registered = self
            .records
            .get(&eid)
            .is_some_and(|e| e.record.body.observed == from);
        // A full table is swept for idle entries at most once per SWEEP_INTERVAL, so that a
        // flood of new sources does not make every request walk the whole table.
        if !registered
            && !self.sources.contains_key(&ip)
            && self.sources.len() >= self.config.max_sources
            && self
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_INTERVAL)
        {
            self.last_sweep = Some(now);
            self.sources.retain(|_, b| !b.is_full(now, burst, rate));
        }
        let bucket = if registered {
            match self.records.get_mut(&eid) {
                Some(e) => &mut e.credit,
                None => return false,
            }
        } else if let Some(b) = self.sources.get_mut(&ip) {
            b
        } else if self.sources.len() < self.config.max_sources {
            self.sources.entry(ip).or_insert(Bucket::full(now, burst))
        } else {
            &mut self.overflow
        };
        match bucket.take(now, burst, rate) {
            Ok(()) => true,
            Err(wait) => {
                let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                self.send_error(from, request_id, ErrorCode::RateLimited, ms);
                false
            }
        }
    }

    fn register(&mut self, now: Instant, from: SocketAddr, reg: Register) {
        let Register { request_id, record } = reg;
        let body = &record.body;
        if body.server != self.config.server_id || body.observed != from || !record.verify() {
            self.send_error(from, request_id, ErrorCode::BadRecord, 0);
            return;
        }
        let eid = body.eid;
        let ip = from.ip();
        let old_ip = match self.records.get(&eid) {
            Some(old) if old.record == record => {
                // A retransmitted REGISTER: acknowledge again, change nothing.
                let reply = Message::Registered(Registered {
                    request_id,
                    seq: old.record.body.seq,
                    lifetime: old.granted,
                });
                self.push(from, reply);
                return;
            }
            Some(old) if body.seq <= old.record.body.seq => {
                let seq = old.record.body.seq;
                self.send_error(from, request_id, ErrorCode::Stale, seq);
                return;
            }
            Some(old) => Some(old.record.body.observed.ip()),
            None => {
                if self.records.len() >= self.config.max_records {
                    self.send_error(from, request_id, ErrorCode::Full, 0);
                    return;
                }
                None
            }
        };
        if old_ip != Some(ip)
            && self.per_ip.get(&ip).copied().unwrap_or(0) >= self.config.max_records_per_ip
        {
            self.send_error(from, request_id, ErrorCode::Full, 0);
            return;
        }

        let asked = Duration::from_secs(u64::from(body.lifetime));
        let granted = asked.clamp(MIN_LIFETIME, MAX_LIFETIME);
        let granted_secs = granted.as_secs() as u32; // at most 3600
        let expiry = now + granted;
        let seq = body.seq;
        let (notify, credit) = match self.records.remove(&eid) {
            Some(old) => {
                self.by_expiry.remove(&(old.expiry, eid));
                self.uncount_ip(old.record.body.observed.ip());
                (old.notify, old.credit)
            }
            None => (
                Bucket::full(now, NOTIFY_BURST),
                Bucket::full(now, self.config.source_burst),
            ),
        };
        *self.per_ip.entry(ip).or_insert(0) += 1;
        self.by_expiry.insert((expiry, eid));
        self.records.insert(
            eid,
            Entry {
                record,
                expiry,
                granted: granted_secs,
                token: request_id,
                notify,
                credit,
            },
        );
        self.stats.registered += 1;
        self.push(
            from,
            Message::Registered(Registered {
                request_id,
                seq,
                lifetime: granted_secs,
            }),
        );
    }

    fn lookup(&mut self, now: Instant, from: SocketAddr, lookup: Lookup) {
        let Lookup {
            request_id,
            notify,
            caller,
            target,
            ..
        } = lookup;
        let caller_record = if notify {
            match self.records.get(&caller) {
                Some(e) if e.record.body.observed == from => Some(e.record.clone()),
                _ => {
                    self.send_error(from, request_id, ErrorCode::NotRegistered, 0);
                    return;
                }
            }
        } else {
            None
        };
        self.stats.lookups += 1;
        let found = self.records.get_mut(&target);
        let record = found.as_ref().map(|e| e.record.clone());
        let mut notify_to = None;
        if let (Some(entry), Some(caller_record)) = (found, caller_record) {
            if entry.notify.take(now, NOTIFY_BURST, NOTIFY_RATE).is_ok() {
                notify_to = Some((
                    entry.record.body.observed,
                    Message::Notify(Notify {
                        token: entry.token,
                        caller: caller_record,
                    }),
                ));
            } else {
                self.stats.notifies_limited += 1;
            }
        }
        self.push(
            from,
            Message::LookupReply(LookupReply {
                request_id,
                target,
                record,
            }),
        );
        if let Some((to, msg)) = notify_to {
            self.stats.notifies += 1;
            self.push(to, msg);
        }
    }

    /// RELAY_OPEN whose cookie and credit passed (spec/routing.md §6.2).
    fn relay_open(&mut self, now: Instant, from: SocketAddr, open: RelayOpen) {
        let RelayOpen {
            request_id,
            caller,
            target,
            ..
        } = open;
        if self
            .records
            .get(&caller)
            .is_none_or(|e| e.record.body.observed != from)
        {
            self.send_error(from, request_id, ErrorCode::NotRegistered, 0);
            return;
        }
        let Some(entry) = self.records.get_mut(&target).filter(|_| target != caller) else {
            self.send_error(from, request_id, ErrorCode::NoTarget, 0);
            return;
        };
        let (target_ep, token) = (entry.record.body.observed, entry.token);
        if target_ep == from {
            // Two EIDs behind one socket: a slot between them would send every datagram back
            // to its source (and they can reach each other without any server).
            self.send_error(from, request_id, ErrorCode::NoTarget, 0);
            return;
        }
        let key = pair(caller, target);
        let ends = if key.0 == caller {
            [(caller, from), (target, target_ep)]
        } else {
            [(target, target_ep), (caller, from)]
        };
        if let Some(&relay_id) = self.relay_pairs.get(&key) {
            // A retransmission, or the other host asking too: same slot, current endpoints.
            if let Some(slot) = self.relays.get_mut(&relay_id) {
                slot.ends = ends;
                slot.last = now;
            }
            self.stats.relays_refreshed += 1;
            // The target has the slot already: tell it again only if its credit allows.
            if entry.notify.take(now, NOTIFY_BURST, NOTIFY_RATE).is_ok() {
                self.send_opened(target_ep, token, relay_id, caller);
            }
            self.send_opened(from, request_id, relay_id, target);
            return;
        }
        let max = self.config.max_relays_per_host;
        let host_full = |eid: &Eid| self.relays_per_host.get(eid).copied().unwrap_or(0) >= max;
        if self.relays.len() >= self.config.max_relays || host_full(&caller) || host_full(&target) {
            self.send_error(from, request_id, ErrorCode::Full, 0);
            return;
        }
        let Some(entry) = self.records.get_mut(&target) else {
            return;
        };
        if let Err(wait) = entry.notify.take(now, NOTIFY_BURST, NOTIFY_RATE) {
            let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            self.send_error(from, request_id, ErrorCode::RateLimited, ms);
            return;
        }
        let relay_id = loop {
            let id = self.rng.next_u32();
            if id != 0 && !self.relays.contains_key(&id) {
                break id;
            }
        };
        self.relays.insert(
            relay_id,
            Slot {
                ends,
                last: now,
                budget: Bucket::full(now, self.config.relay_burst),
            },
        );
        self.relay_pairs.insert(key, relay_id);
        for eid in [caller, target] {
            *self.relays_per_host.entry(eid).or_insert(0) += 1;
        }
        self.relay_expiry.insert((now + RELAY_IDLE, relay_id));
        self.stats.relays_opened += 1;
        // The target first, so that it knows the slot before the caller's first datagram.
        self.send_opened(target_ep, token, relay_id, caller);
        self.send_opened(from, request_id, relay_id, target);
    }

    fn send_opened(&mut self, to: SocketAddr, request_id: RequestId, relay_id: u32, peer: Eid) {
        self.push(
            to,
            Message::RelayOpened(RelayOpened {
                request_id,
                relay_id,
                idle: RELAY_IDLE.as_secs() as u32,
                peer,
            }),
        );
    }

    fn uncount_ip(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

/// The key of an EID pair: the smaller EID first.
fn pair(a: Eid, b: Eid) -> (Eid, Eid) {
    if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    }
}
