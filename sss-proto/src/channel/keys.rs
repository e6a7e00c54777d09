//! Packet protection keys of an established channel and their rotation (key update).
//!
//! Each direction has a secret; the packet key is made from it and the next secret is
//! `next_secret(secret)`. The key phase bit in every data packet says which generation
//! protected it. A sender may start a new phase once the peer has acknowledged a packet of the
//! current one; the receiver, on authenticating a packet of the next phase, rotates its
//! receive key, keeps the previous one for three probe timeouts (for reordered packets) and
//! rotates its own send key too if it had not already, so both directions stay in step.
//! Because the next receive key is made ahead of time, an update never stalls traffic.

use std::time::Instant;

use crate::crypto::aead::{next_secret, PacketKey, Secret, Suite};

pub(crate) struct KeySet {
    suite: Suite,
    send_secret: Secret,
    send: PacketKey,
    send_phase: bool,
    /// First packet number sent under the current send key.
    send_phase_first_pn: u64,
    /// Packets sent under the current send key.
    send_phase_packets: u64,
    send_phase_started: Instant,
    recv_secret: Secret,
    recv: PacketKey,
    recv_phase: bool,
    /// Smallest packet number authenticated under the current receive key.
    recv_phase_first_pn: Option<u64>,
    recv_next: PacketKey,
    recv_prev: Option<PacketKey>,
    /// Completed key updates (both initiated and followed).
    pub(crate) updates: u64,
}

/// Which receive key a packet must be opened with.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub(crate) enum RecvKey {
    Current,
    Next,
    Previous,
}

impl KeySet {
    pub(crate) fn new(
        suite: Suite,
        send_secret: Secret,
        recv_secret: Secret,
        now: Instant,
    ) -> Self {
        let recv_next = PacketKey::new(suite, &next_secret(&recv_secret));
        Self {
            suite,
            send: PacketKey::new(suite, &send_secret),
            send_secret,
            send_phase: false,
            send_phase_first_pn: 0,
            send_phase_packets: 0,
            send_phase_started: now,
            recv: PacketKey::new(suite, &recv_secret),
            recv_secret,
            recv_phase: false,
            recv_phase_first_pn: None,
            recv_next,
            recv_prev: None,
            updates: 0,
        }
    }

    pub(crate) fn suite(&self) -> Suite {
        self.suite
    }

    pub(crate) fn send_key(&self) -> (&PacketKey, bool) {
        (&self.send, self.send_phase)
    }

    pub(crate) fn on_packet_sent(&mut self) {
        self.send_phase_packets += 1;
    }

    /// Whether the send key is due for rotation and may be rotated: the peer has acknowledged
    /// a packet of the current phase (so it holds the current key) and has followed our last
    /// update (its packets use our phase).
    pub(crate) fn update_due(
        &self,
        now: Instant,
        largest_acked: Option<u64>,
        max_packets: u64,
        max_age: std::time::Duration,
    ) -> bool {
        let acked_in_phase = largest_acked.is_some_and(|l| l >= self.send_phase_first_pn);
        let in_step = self.recv_phase == self.send_phase;
        let due = self.send_phase_packets >= max_packets
            || now.saturating_duration_since(self.send_phase_started) >= max_age;
        due && acked_in_phase && in_step
    }

    /// Starts a new send phase; `next_pn` is the first packet number it protects.
    pub(crate) fn update_send(&mut self, now: Instant, next_pn: u64) {
        self.send_secret = next_secret(&self.send_secret);
        self.send = PacketKey::new(self.suite, &self.send_secret);
        self.send_phase = !self.send_phase;
        self.send_phase_first_pn = next_pn;
        self.send_phase_packets = 0;
        self.send_phase_started = now;
    }

    /// The key to try for a packet with key phase `phase` and packet number `pn`.
    pub(crate) fn select(&self, phase: bool, pn: u64) -> Option<(&PacketKey, RecvKey)> {
        if phase == self.recv_phase {
            return Some((&self.recv, RecvKey::Current));
        }
        match self.recv_phase_first_pn {
            // Older than the current phase: a reordered packet of the previous phase.
            Some(first) if pn < first => self.recv_prev.as_ref().map(|k| (k, RecvKey::Previous)),
            _ => Some((&self.recv_next, RecvKey::Next)),
        }
    }

    /// Records that packet `pn` authenticated under `which`. Returns true when this rotated
    /// the receive key (the caller arms the timer that discards the previous key).
    pub(crate) fn on_authenticated(
        &mut self,
        which: RecvKey,
        pn: u64,
        now: Instant,
        next_pn: u64,
    ) -> bool {
        match which {
            RecvKey::Current => {
                if self.recv_phase_first_pn.is_none_or(|f| pn < f) {
                    self.recv_phase_first_pn = Some(pn);
                }
                false
            }
            RecvKey::Previous => false,
            RecvKey::Next => {
                self.recv_secret = next_secret(&self.recv_secret);
                let next = PacketKey::new(self.suite, &next_secret(&self.recv_secret));
                let current = std::mem::replace(&mut self.recv_next, next);
                self.recv_prev = Some(std::mem::replace(&mut self.recv, current));
                self.recv_phase = !self.recv_phase;
                self.recv_phase_first_pn = Some(pn);
                self.updates += 1;
                if self.send_phase != self.recv_phase {
                    // The peer started this update: follow it.
                    self.update_send(now, next_pn);
                }
                true
            }
        }
    }

    pub(crate) fn discard_previous(&mut self) {
        self.recv_prev = None;
    }
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("suite", &self.suite)
            .field("send_phase", &self.send_phase)
            .field("recv_phase", &self.recv_phase)
            .field("updates", &self.updates)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use zeroize::Zeroizing;

    fn pair(now: Instant) -> (KeySet, KeySet) {
        let a = Zeroizing::new([1u8; 32]);
        let b = Zeroizing::new([2u8; 32]);
        (
            KeySet::new(Suite::ChaCha20Poly1305, a.clone(), b.clone(), now),
            KeySet::new(Suite::ChaCha20Poly1305, b, a, now),
        )
    }

    fn transfer(from: &mut KeySet, to: &mut KeySet, pn: u64, now: Instant) -> Result<RecvKey, ()> {
        let (key, phase) = from.send_key();
        let mut payload = b"data".to_vec();
        let tag = key.seal(pn, b"h", &mut payload);
        payload.extend_from_slice(&tag);
        from.on_packet_sent();
        let (key, which) = to.select(phase, pn).ok_or(())?;
        key.open(pn, b"h", &mut payload).map_err(|_| ())?;
        to.on_authenticated(which, pn, now, pn);
        Ok(which)
    }

    #[test]
    fn update_is_followed_and_old_packets_still_open() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        assert_eq!(transfer(&mut a, &mut b, 0, now), Ok(RecvKey::Current));
        assert_eq!(transfer(&mut b, &mut a, 0, now), Ok(RecvKey::Current));
        assert!(!a.update_due(now, Some(0), 1 << 20, Duration::from_secs(100)));
        assert!(a.update_due(now, Some(0), 1, Duration::from_secs(100)));
        // `a` seals packet 5 under the old key, then updates and seals 6 under the new one.
        let (old_key, old_phase) = a.send_key();
        let mut late = b"late".to_vec();
        let tag = old_key.seal(5, b"h", &mut late);
        late.extend_from_slice(&tag);
        a.update_send(now, 6);
        assert_eq!(transfer(&mut a, &mut b, 6, now), Ok(RecvKey::Next));
        assert_eq!(b.updates, 1);
        // `b` followed: its packets now use the new phase, which `a` opens with its next key.
        assert_eq!(transfer(&mut b, &mut a, 1, now), Ok(RecvKey::Next));
        // The reordered packet 5 still opens with b's previous key.
        let (key, which) = b.select(old_phase, 5).unwrap();
        assert_eq!(which, RecvKey::Previous);
        assert!(key.open(5, b"h", &mut late).is_ok());
        b.discard_previous();
        assert!(b.select(old_phase, 5).is_none());
        // And traffic keeps flowing under the new keys.
        assert_eq!(transfer(&mut a, &mut b, 7, now), Ok(RecvKey::Current));
        assert_eq!(transfer(&mut b, &mut a, 2, now), Ok(RecvKey::Current));
    }

    #[test]
    fn no_second_update_before_the_peer_follows() {
        let now = Instant::now();
        let (mut a, _b) = pair(now);
        a.update_send(now, 10);
        // The peer has not sent anything under the new phase yet.
        assert!(!a.update_due(now, Some(20), 0, Duration::ZERO));
    }
}
