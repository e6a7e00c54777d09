//! Connection attempts: handshakes to a peer's candidate addresses, started a little apart
//! (as in "Happy Eyeballs", RFC 8305), decided by the first to connect, waited for by one or
//! more `connect` calls.
//!
//! Starting every address at once would be faster when the first is dead, but when two of
//! them reach the same host (its IPv4 and IPv6 addresses) both handshakes complete there,
//! the responder keeps the newer channel and the initiator the older one, and the session
//! loses both. Spacing them by [`STAGGER`] makes that unlikely; the spacing is cut short
//! when every handshake started so far has failed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::task::Waker;
use std::time::{Duration, Instant};

use sss_proto::channel::ChannelError;
use sss_proto::endpoint::{ChannelHandle, ConnectError};
use sss_proto::Eid;

use crate::error::Error;
use crate::state::{ChannelSlot, State};

/// Delay before the next candidate address is tried while earlier ones have not answered.
pub(crate) const STAGGER: Duration = Duration::from_millis(250);

/// One connection attempt.
#[derive(Debug)]
pub(crate) struct Attempt {
    pub(crate) peer: Eid,
    pub(crate) service: String,
    pub(crate) protocol: String,
    /// Whether its handshakes carry the session's first frames as early data.
    early: bool,
    /// Handshaking channels of this attempt.
    pub(crate) channels: Vec<ChannelHandle>,
    /// Addresses not tried yet, and when the next one starts.
    pending: VecDeque<SocketAddr>,
    next_start: Option<Instant>,
    /// `Some` once decided: a channel connected, or every handshake failed.
    pub(crate) outcome: Option<Result<(), ChannelError>>,
    pub(crate) waiters: Vec<Waker>,
    /// `connect` calls waiting on it.
    pub(crate) refs: usize,
}

impl Attempt {
    /// When the next address should be tried, while undecided.
    pub(crate) fn next_start(&self) -> Option<Instant> {
        self.outcome.is_none().then_some(self.next_start).flatten()
    }
}

impl State {
    /// Starts a handshake to the first address of `peer`, or joins an attempt already under
    /// way for the same (service, protocol). Returns the attempt's id. With `early`, the
    /// handshakes of a new session carry its first frames as early data.
    pub(crate) fn start_attempt(
        &mut self,
        now: Instant,
        peer: Eid,
        addrs: &[SocketAddr],
        service: &str,
        protocol: &str,
        early: bool,
    ) -> Result<u64, Error> {
        if let Some((&id, a)) = self.attempts.iter_mut().find(|(_, a)| {
            a.peer == peer && a.outcome.is_none() && a.service == service && a.protocol == protocol
        }) {
            a.refs += 1;
            return Ok(id);
        }
        if addrs.is_empty() {
            return Err(Error::NoAddress);
        }
        self.peer_entry(peer).names = Some((service.to_owned(), protocol.to_owned()));
        let id = self.next_attempt;
        self.next_attempt += 1;
        self.attempts.insert(
            id,
            Attempt {
                peer,
                service: service.to_owned(),
                protocol: protocol.to_owned(),
                early,
                channels: Vec::new(),
                pending: addrs.iter().copied().collect(),
                next_start: None,
                outcome: None,
                waiters: Vec::new(),
                refs: 1,
            },
        );
        if let Err(e) = self.start_next(now, id) {
            self.attempts.remove(&id);
            return Err(match e {
                ConnectError::SelfConnect => Error::SelfConnect,
                ConnectError::BadName => Error::BadName,
                e => Error::ConnectFailed(ChannelError::HandshakeFailed(e.to_string())),
            });
        }
        self.wake_driver();
        Ok(id)
    }

    /// Starts a handshake to the attempt's next address (skipping those that cannot even
    /// start). Fails only if none could.
    fn start_next(&mut self, now: Instant, id: u64) -> Result<(), ConnectError> {
        let Some(a) = self.attempts.get_mut(&id) else {
            return Ok(());
        };
        let (peer, service, protocol) = (a.peer, a.service.clone(), a.protocol.clone());
        let early = a.early;
        let session = &self.peer_entry(peer).session;
        // Only the first channel of a session: see `Session::is_new`.
        let early = early && session.is_new();
        let layer = session.layer_params();
        let mut failure = None;
        loop {
            let Some(a) = self.attempts.get_mut(&id) else {
                return Ok(());
            };
            let Some(addr) = a.pending.pop_front() else {
                a.next_start = None;
                return match failure {
                    Some(e) if a.channels.is_empty() => Err(e),
                    _ => Ok(()),
                };
            };
            match self
                .endpoint
                .connect_with(now, peer, addr, &service, &protocol, &layer)
            {
                Ok((h, mut channel)) => {
                    channel.set_early_data(early);
                    tracing::info!(%peer, %addr, service, protocol, early, "connecting");
                    a.channels.push(h);
                    a.next_start = (!a.pending.is_empty()).then(|| now + STAGGER);
                    self.channels.insert(h, ChannelSlot { channel, peer });
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.channels += 1;
                    }
                    self.wake_driver();
                    return Ok(());
                }
                Err(e) => failure = Some(e),
            }
        }
    }

    /// Adds `addr` to attempt `id` (still undecided) and starts a handshake to it at once:
    /// the relay's synthetic address, once the regserver opened a slot (spec/routing.md
    /// §6.3).
    pub(crate) fn add_attempt_address(&mut self, now: Instant, id: u64, addr: SocketAddr) {
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        if a.outcome.is_some() {
            return;
        }
        a.pending.push_front(addr);
        let _ = self.start_next(now, id);
    }

    /// Starts the next address of attempts whose earlier handshakes have not answered.
    pub(crate) fn advance_attempts(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .attempts
            .iter()
            .filter(|(_, a)| a.next_start().is_some_and(|t| t <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            let _ = self.start_next(now, id);
        }
    }

    /// Gives up an attempt for everyone waiting on it (its time ran out).
    pub(crate) fn fail_attempt(&mut self, now: Instant, id: u64, error: ChannelError) {
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        if a.outcome.is_some() {
            return;
        }
        tracing::info!(peer = %a.peer, %error, "connection attempt failed");
        a.outcome = Some(Err(error));
        self.wake.append(&mut a.waiters);
        let handles = std::mem::take(&mut a.channels);
        self.close_handshakes(now, &handles);
    }

    /// A `connect` call stopped waiting on attempt `id` (done or cancelled). The last one
    /// to leave an undecided attempt abandons its handshakes.
    pub(crate) fn leave_attempt(&mut self, now: Instant, id: u64) {
        let Some(a) = self.attempts.get_mut(&id) else {
            return;
        };
        a.refs = a.refs.saturating_sub(1);
        if a.refs > 0 {
            return;
        }
        let a = self.attempts.remove(&id).expect("present");
        if a.outcome.is_none() {
            self.close_handshakes(now, &a.channels);
        }
    }

    /// Channel `h` connected: the attempts it belongs to succeed, and their other
    /// handshakes are abandoned.
    pub(crate) fn on_attempt_channel_connected(&mut self, now: Instant, h: ChannelHandle) {
        let mut abandon = Vec::new();
        for a in self.attempts.values_mut() {
            if a.outcome.is_none() && a.channels.contains(&h) {
                a.outcome = Some(Ok(()));
                self.connect_woken |= !a.waiters.is_empty();
                self.wake.append(&mut a.waiters);
                abandon.extend(a.channels.drain(..).filter(|&c| c != h));
            }
        }
        self.close_handshakes(now, &abandon);
    }

    /// A channel from `peer` was accepted while our own handshakes to it go on (crossing
    /// handshakes, kept because ours win): the attempts to the peer succeed now, over that
    /// channel; their handshakes carry on and take over when they complete.
    pub(crate) fn on_attempt_peer_connected(&mut self, peer: Eid) {
        for a in self.attempts.values_mut() {
            if a.outcome.is_none() && a.peer == peer {
                a.outcome = Some(Ok(()));
                self.wake.append(&mut a.waiters);
            }
        }
    }

    /// Channel `h` closed (`connected`: another channel to the peer is up). An attempt
    /// whose last handshake failed tries its next address, or fails; a refusal fails it at
    /// once (the peer's answer does not depend on the address).
    pub(crate) fn on_attempt_channel_closed(
        &mut self,
        now: Instant,
        h: ChannelHandle,
        error: &ChannelError,
        connected: bool,
    ) {
        let mut decided = Vec::new();
        let mut next = Vec::new();
        for (&id, a) in &mut self.attempts {
            if !a.channels.contains(&h) {
                continue;
            }
            a.channels.retain(|&c| c != h);
            if a.outcome.is_some() {
                continue;
            }
            let refused = matches!(error, ChannelError::Refused { .. });
            if a.channels.is_empty() && connected && !refused {
                // Superseded by a channel that connected meanwhile (e.g. the peer's own).
                a.outcome = Some(Ok(()));
                self.wake.append(&mut a.waiters);
            } else if refused || (a.channels.is_empty() && a.pending.is_empty()) {
                a.outcome = Some(Err(error.clone()));
                self.wake.append(&mut a.waiters);
                decided.push(id);
            } else if a.channels.is_empty() {
                next.push(id);
            }
        }
        for id in decided {
            let handles = self
                .attempts
                .get_mut(&id)
                .map(|a| std::mem::take(&mut a.channels))
                .unwrap_or_default();
            self.close_handshakes(now, &handles);
        }
        for id in next {
            if let Err(e) = self.start_next(now, id) {
                if let Some(a) = self.attempts.get_mut(&id) {
                    a.outcome = Some(Err(ChannelError::HandshakeFailed(e.to_string())));
                    self.wake.append(&mut a.waiters);
                }
            }
        }
    }

    /// Abandons channels still in their handshake.
    fn close_handshakes(&mut self, now: Instant, handles: &[ChannelHandle]) {
        if handles.is_empty() {
            return;
        }
        for h in handles {
            if let Some(slot) = self.channels.get_mut(h) {
                if !slot.channel.is_established() {
                    if let Some(p) = self.peers.get_mut(&slot.peer) {
                        slot.channel.close(now, 0, b"abandoned", &mut p.session);
                    }
                }
            }
        }
        self.wake_driver();
    }
}
