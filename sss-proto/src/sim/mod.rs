//! The in-process network simulator: sans-IO nodes exchanging datagrams over simulated links,
//! in virtual time, deterministically.
//!
//! A [`Network`] owns the clock and a discrete-event queue. Nodes implement [`Node`] (the same
//! `handle_*`/`poll_*` contract as the protocol state machines); the simulator delivers
//! datagrams and timeouts to them and drains their output. Links ([`LinkConfig`]) add latency,
//! jitter, a bandwidth bottleneck with a drop-tail queue, loss, duplication, reordering,
//! corruption and an MTU; NAT boxes ([`NatKind`]) translate and filter like home routers. Every
//! random choice comes from one generator seeded by the caller, so a run is a pure function of
//! its seed: print [`Network::seed`] when a test fails. See `spec/simulator.md`.
//!
//! ```
//! # use std::time::{Duration, Instant};
//! # use sss_proto::sim::{LinkConfig, Network, Node};
//! # struct Quiet;
//! # impl Node for Quiet {
//! #     fn handle_datagram(&mut self, _: Instant, _: std::net::SocketAddr, _: std::net::SocketAddr, _: &mut [u8]) {}
//! #     fn poll_transmit(&mut self, _: Instant, _: &mut Vec<u8>) -> Option<sss_proto::Transmit> { None }
//! #     fn poll_timeout(&mut self) -> Option<Instant> { None }
//! #     fn handle_timeout(&mut self, _: Instant) {}
//! # }
//! let start = Instant::now();
//! let mut net = Network::new(42, start);
//! net.set_default_link(LinkConfig::with_latency(Duration::from_millis(20)));
//! let a = net.add_node("10.0.0.1:4433".parse().unwrap(), Quiet);
//! net.run_until(start + Duration::from_secs(1)).expect("no stall");
//! # let _ = a;
//! ```

mod event;
mod forward;
mod link;
mod nat;
mod network;
mod run;
mod trace;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::{EcnCodepoint, Transmit};

pub use link::{LinkConfig, LinkId};
pub use nat::{Nat, NatId, NatKind, DEFAULT_MAPPING_TIMEOUT};
pub use network::Network;
pub use trace::{DropCause, Drops, Fate, Stats, TraceEvent};

/// A participant of the simulation: anything that speaks the sans-IO contract.
pub trait Node {
    /// A datagram arrived at `local` (one of this node's addresses) from `from`.
    fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &mut [u8],
    );
    /// A datagram whose IP header carried the ECN codepoint `ecn` (`None`: Not-ECT) arrived.
    /// The simulator calls this; by default it ignores the codepoint and calls
    /// [`handle_datagram`](Node::handle_datagram).
    fn handle_datagram_with_ecn(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        ecn: Option<EcnCodepoint>,
        data: &mut [u8],
    ) {
        let _ = ecn;
        self.handle_datagram(now, local, from, data);
    }
    /// Next batch to send, written into `buf` (cleared by the simulator before the call).
    /// With `segment_size`, the buffer holds a GSO batch that the simulator splits.
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit>;
    /// When the node wants [`handle_timeout`](Node::handle_timeout) called; a time in the
    /// past means now.
    fn poll_timeout(&mut self) -> Option<Instant>;
    /// The time returned by [`poll_timeout`](Node::poll_timeout) has come.
    fn handle_timeout(&mut self, now: Instant);
}

impl<T: Node + ?Sized> Node for Box<T> {
    fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &mut [u8],
    ) {
        (**self).handle_datagram(now, local, from, data);
    }
    fn handle_datagram_with_ecn(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        ecn: Option<EcnCodepoint>,
        data: &mut [u8],
    ) {
        (**self).handle_datagram_with_ecn(now, local, from, ecn, data);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        (**self).poll_transmit(now, buf)
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        (**self).poll_timeout()
    }
    fn handle_timeout(&mut self, now: Instant) {
        (**self).handle_timeout(now);
    }
}

/// Identifies a node of a [`Network`].
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub(crate) usize);

impl NodeId {
    /// Index of the node in order of [`Network::add_node`] calls.
    pub fn index(self) -> usize {
        self.0
    }
}

/// Why a run stopped before its goal. These are bugs in the nodes (or a budget set too low),
/// reported instead of hanging the test.
#[derive(Debug, Clone, Eq, PartialEq, Error)]
#[non_exhaustive]
pub enum SimError {
    /// Virtual time stopped advancing: a node's timer kept firing at the same instant, or too
    /// many events happened at one instant.
    #[error("simulation stalled {elapsed:?} after start (node {node:?}): {reason}")]
    Stalled {
        /// The node whose timer spins, if the stall is attributable to one.
        node: Option<NodeId>,
        /// Virtual time of the stall, since the start.
        elapsed: Duration,
        /// What limit was hit.
        reason: &'static str,
    },
    /// A node's `poll_transmit` kept returning datagrams beyond
    /// [`Limits::max_transmits_per_poll`].
    #[error("node {node:?} produced more than {limit} transmits in one poll")]
    TransmitFlood {
        /// The node.
        node: NodeId,
        /// The limit it exceeded.
        limit: u64,
    },
    /// A `run_*` call processed more than [`Limits::step_budget`] events.
    #[error("step budget of {steps} events exceeded {elapsed:?} after start")]
    BudgetExceeded {
        /// The budget.
        steps: u64,
        /// Virtual time when it ran out, since the start.
        elapsed: Duration,
    },
}

/// Guards that turn runaway nodes into [`SimError`]s.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub struct Limits {
    /// Events one `run_*` call may process.
    pub step_budget: u64,
    /// Consecutive timer firings of one node at one instant.
    pub max_timer_spins: u64,
    /// Consecutive events at one instant, all nodes together.
    pub max_events_per_instant: u64,
    /// Transmits drained from a node after one input.
    pub max_transmits_per_poll: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            step_budget: 200_000_000,
            max_timer_spins: 1_000,
            max_events_per_instant: 2_000_000,
            max_transmits_per_poll: 1_000_000,
        }
    }
}

/// A datagram in flight, offered to the interceptor just before it reaches its destination
/// (after the link, before NAT translation at the receiving side).
#[derive(Debug)]
pub struct Intercept<'a> {
    /// Source address; may be rewritten (spoofing).
    pub from: SocketAddr,
    /// Destination address; may be rewritten (redirection).
    pub to: SocketAddr,
    /// Virtual time of arrival.
    pub time: Instant,
    /// The datagram; may be modified, truncated or extended.
    pub data: &'a mut Vec<u8>,
    /// ECN codepoint of its IP header (`None`: Not-ECT); may be rewritten.
    pub ecn: Option<EcnCodepoint>,
}

/// What the interceptor does with a datagram.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
#[non_exhaustive]
pub enum Verdict {
    /// Deliver it (as possibly modified).
    Deliver,
    /// Drop it (counted as [`DropCause::Intercepted`]).
    Drop,
    /// Deliver it now and a copy again after the given delay.
    DeliverAndReplayLater(Duration),
    /// Hold it back and deliver it after the given delay.
    Delay(Duration),
}

/// The interceptor callback type.
pub type Interceptor = Box<dyn FnMut(&mut Intercept<'_>) -> Verdict>;
