//! The channel's timers: one deadline per kind, the earliest is reported by `poll_timeout`.

use std::time::Instant;

/// Kinds of channel timers.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub(crate) enum Timer {
    /// Time-threshold loss detection or probe timeout (RFC 9002 §6).
    LossDetection = 0,
    /// Delayed acknowledgement.
    Ack = 1,
    /// Idle timeout: the channel is dead.
    Idle = 2,
    /// Keepalive PING.
    KeepAlive = 3,
    /// The pacer allows the next packet.
    Pacing = 4,
    /// Closing or draining ends; the channel is then closed for good.
    Close = 5,
    /// Retransmit the handshake initiation.
    HandshakeRetry = 6,
    /// Give up the handshake.
    HandshakeTimeout = 7,
    /// Forget the previous receive key after a key update.
    KeyDiscard = 8,
    /// Next path MTU probe or re-search.
    Mtu = 9,
    /// Re-send a PATH_CHALLENGE, or give up validating a new peer address.
    PathValidation = 10,
}

const COUNT: usize = 11;
const ALL: [Timer; COUNT] = [
    Timer::LossDetection,
    Timer::Ack,
    Timer::Idle,
    Timer::KeepAlive,
    Timer::Pacing,
    Timer::Close,
    Timer::HandshakeRetry,
    Timer::HandshakeTimeout,
    Timer::KeyDiscard,
    Timer::Mtu,
    Timer::PathValidation,
];

/// Deadlines of all timers.
#[derive(Debug, Default, Clone)]
pub(crate) struct TimerTable {
    data: [Option<Instant>; COUNT],
}

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.data[timer as usize] = Some(at);
    }

    pub(crate) fn is_set(&self, timer: Timer) -> bool {
        self.data[timer as usize].is_some()
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.data[timer as usize] = None;
    }

    pub(crate) fn stop_all(&mut self) {
        self.data = [None; COUNT];
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.data.iter().flatten().min().copied()
    }

    /// Timers whose deadline is at or before `now`, clearing them. The result does not
    /// borrow the table, so the caller can act on each while changing timers.
    pub(crate) fn expire(&mut self, now: Instant) -> Expired {
        let mut due = 0u16;
        for t in ALL {
            if matches!(self.data[t as usize], Some(at) if at <= now) {
                self.data[t as usize] = None;
                due |= 1 << t as u16;
            }
        }
        Expired(due)
    }
}

/// The timers one [`TimerTable::expire`] found due, in [`ALL`] order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expired(u16);

impl Iterator for Expired {
    type Item = Timer;

    fn next(&mut self) -> Option<Timer> {
        if self.0 == 0 {
            return None;
        }
        let i = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(ALL[i])
    }
}
