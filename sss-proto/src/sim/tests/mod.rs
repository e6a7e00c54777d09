//! Tests of the simulator, driven by one configurable test node, [`Probe`]: a constant-rate
//! sender that stamps sequence numbers, send times and a checksum into its datagrams, a
//! recorder of what it receives, optionally an echo server, plus raw scripted transmits and
//! deliberately broken behaviours for the stall guards.

mod control;
mod links;
mod nat;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::{Network, Node};
use crate::Transmit;

/// Header: sequence number, send time (ns since start); trailer: FNV-1a of everything before.
const HEADER: usize = 16;
const TRAILER: usize = 8;

pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Appends a stamped datagram of `size` bytes (at least header + trailer).
fn stamp(buf: &mut Vec<u8>, seq: u64, sent: Duration, size: usize) {
    let begin = buf.len();
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&(sent.as_nanos() as u64).to_be_bytes());
    let body = size.max(HEADER + TRAILER) - HEADER - TRAILER;
    buf.extend((0..body).map(|i| (seq as usize + i) as u8));
    let sum = fnv(&buf[begin..]);
    buf.extend_from_slice(&sum.to_be_bytes());
}

/// What a probe received.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Rx {
    pub(super) seq: u64,
    /// Send time of the stamped datagram, since start.
    pub(super) sent: Duration,
    /// Arrival time, since start.
    pub(super) at: Duration,
    pub(super) from: SocketAddr,
    pub(super) local: SocketAddr,
    pub(super) len: usize,
    /// Whether the checksum matches: false after corruption.
    pub(super) intact: bool,
}

/// The test node.
#[derive(Debug)]
pub(super) struct Probe {
    start: Instant,
    /// Where stamped datagrams go.
    pub(super) target: Option<SocketAddr>,
    pub(super) interval: Duration,
    pub(super) size: usize,
    /// Stamped datagrams still to send.
    pub(super) remaining: u64,
    pub(super) next_send: Option<Instant>,
    pub(super) seq: u64,
    /// Stamped datagrams per transmit (GSO batch) when several are due.
    pub(super) gso: usize,
    /// Reply to every datagram with the same bytes.
    pub(super) echo: bool,
    /// Raw transmits to send at the next poll: (destination, segment size, bytes).
    pub(super) script: VecDeque<(SocketAddr, Option<usize>, Vec<u8>)>,
    /// Source IP named in scripted transmits.
    pub(super) script_src_ip: Option<IpAddr>,
    /// Broken behaviours: a timer stuck in the past, a transmit that never ends.
    pub(super) spin: bool,
    pub(super) flood: bool,
    /// An idle timer, pushed back by every received datagram (like a connection's).
    pub(super) idle: Option<Duration>,
    /// When the idle timer fired, since start.
    pub(super) idle_fired: Vec<Duration>,
    idle_armed: Option<Instant>,
    pub(super) rx: Vec<Rx>,
    due: u64,
    echoes: VecDeque<(SocketAddr, IpAddr, Vec<u8>)>,
}

impl Probe {
    /// A silent node that records what it receives.
    pub(super) fn sink(start: Instant) -> Self {
        Self {
            start,
            target: None,
            interval: ms(1),
            size: 100,
            remaining: 0,
            next_send: None,
            seq: 0,
            gso: 1,
            echo: false,
            script: VecDeque::new(),
            script_src_ip: None,
            spin: false,
            flood: false,
            idle: None,
            idle_fired: Vec::new(),
            idle_armed: None,
            rx: Vec::new(),
            due: 0,
            echoes: VecDeque::new(),
        }
    }

    /// An echo server.
    pub(super) fn echo(start: Instant) -> Self {
        Self {
            echo: true,
            ..Self::sink(start)
        }
    }

    /// Sends `count` datagrams of `size` bytes to `target`, one per `interval`, from `start`.
    pub(super) fn sender(
        start: Instant,
        target: SocketAddr,
        count: u64,
        interval: Duration,
        size: usize,
    ) -> Self {
        Self {
            target: Some(target),
            interval,
            size,
            remaining: count,
            next_send: Some(start),
            ..Self::sink(start)
        }
    }

    /// Restarts sending `count` datagrams to `target` from `now`.
    pub(super) fn send_more(&mut self, now: Instant, target: SocketAddr, count: u64) {
        self.target = Some(target);
        self.remaining = count;
        self.next_send = Some(now);
    }

    /// Bytes received with arrival in `[from, to)` (times since start).
    pub(super) fn bytes_between(&self, from: Duration, to: Duration) -> u64 {
        self.rx
            .iter()
            .filter(|r| r.at >= from && r.at < to)
            .map(|r| r.len as u64)
            .sum()
    }
}

impl Node for Probe {
    fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &mut [u8],
    ) {
        let word = |r: std::ops::Range<usize>| {
            data.get(r)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes)
        };
        let split = data.len().saturating_sub(TRAILER);
        let intact =
            data.len() >= HEADER + TRAILER && fnv(&data[..split]) == word(split..data.len());
        self.rx.push(Rx {
            seq: word(0..8),
            sent: Duration::from_nanos(word(8..16)),
            at: now - self.start,
            from,
            local,
            len: data.len(),
            intact,
        });
        self.idle_armed = self.idle.map(|d| now + d);
        if self.echo {
            self.echoes.push_back((from, local.ip(), data.to_vec()));
        }
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let transmit = |destination, size, segment_size, src_ip| Transmit {
            destination,
            size,
            segment_size,
            ecn: None,
            src_ip,
        };
        if self.flood {
            buf.push(0);
            return Some(transmit(addr("192.0.2.1:1"), 1, None, None));
        }
        if let Some((to, src_ip, data)) = self.echoes.pop_front() {
            buf.extend_from_slice(&data);
            return Some(transmit(to, data.len(), None, Some(src_ip)));
        }
        if let Some((to, seg, data)) = self.script.pop_front() {
            buf.extend_from_slice(&data);
            return Some(transmit(to, data.len(), seg, self.script_src_ip));
        }
        let target = self.target?;
        if self.due == 0 {
            return None;
        }
        let n = self.due.min(self.gso.max(1) as u64);
        for _ in 0..n {
            stamp(buf, self.seq, now - self.start, self.size);
            self.seq += 1;
        }
        self.due -= n;
        let seg = (n > 1).then_some(self.size.max(HEADER + TRAILER));
        Some(transmit(target, buf.len(), seg, None))
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        if self.spin {
            return Some(self.start);
        }
        let send = self.next_send.filter(|_| self.remaining > 0);
        match (send, self.idle_armed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.spin {
            return;
        }
        if self.idle_armed.is_some_and(|t| t <= now) {
            self.idle_armed = None;
            self.idle_fired.push(now - self.start);
        }
        while let Some(t) = self.next_send {
            if t > now || self.remaining == 0 {
                break;
            }
            self.due += 1;
            self.remaining -= 1;
            self.next_send = Some(t + self.interval);
        }
    }
}

/// A network of probes starting now, with the given seed.
pub(super) fn network(seed: u64) -> (Network<Probe>, Instant) {
    let start = Instant::now();
    (Network::new(seed, start), start)
}
