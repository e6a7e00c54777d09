//! Two-host setups on the simulator.

use std::time::{Duration, Instant};

use sss_proto::channel::ChannelConfig;
use sss_proto::endpoint::{ChannelHandle, EndpointConfig};
use sss_proto::identity::Eid;
use sss_proto::sim::{LinkConfig, Network, NodeId};

use super::{addr, identity, Bulk, TestHost, UNIX_NANOS};

pub struct Pair {
    pub net: Network<TestHost>,
    pub a: NodeId,
    pub b: NodeId,
    pub b_eid: Eid,
    pub start: Instant,
}

/// Endpoint configuration with the given channel settings and a seed-derived generator.
pub fn endpoint_config(seed: u64, channel: ChannelConfig) -> EndpointConfig {
    let mut rng_seed = [0u8; 32];
    rng_seed[..8].copy_from_slice(&seed.to_le_bytes());
    let mut c = EndpointConfig::new(rng_seed);
    c.channel = std::sync::Arc::new(channel);
    c
}

/// Hosts 1 (`a`) and 2 (`b`) joined by `link` in both directions.
pub fn pair(seed: u64, link: LinkConfig, channel: ChannelConfig) -> Pair {
    let start = Instant::now();
    let mut net = Network::new(seed, start);
    let ida = identity(seed.wrapping_mul(2).wrapping_add(1));
    let idb = identity(seed.wrapping_mul(2).wrapping_add(2));
    let ha = TestHost::new(&ida, endpoint_config(seed ^ 0xa, channel.clone()), start);
    let hb = TestHost::new(&idb, endpoint_config(seed ^ 0xb, channel), start);
    let _ = UNIX_NANOS;
    let a = net.add_node(addr(1), ha);
    let b = net.add_node(addr(2), hb);
    net.connect(addr(1), addr(2), link);
    Pair {
        net,
        a,
        b,
        b_eid: idb.eid(),
        start,
    }
}

impl Pair {
    /// `a` connects to `b` and will send `bytes` of bulk data; `b` accepts and expects them.
    pub fn start_transfer(&mut self, content_seed: u64, bytes: u64) -> ChannelHandle {
        let now = self.net.now();
        let b_eid = self.b_eid;
        self.net.node_mut(self.b).policy =
            super::host::Policy::Accept(Box::new(move |_| Bulk::receiver(content_seed, bytes)));
        let h = self.net.node_mut(self.a).connect(
            now,
            b_eid,
            addr(2),
            Bulk::sender(content_seed, bytes),
        );
        self.net.wake(self.a);
        h
    }

    /// The receiving side's channel that carried the transfer. (A lost handshake response
    /// leaves the responder an extra, unconfirmed channel until its handshake timeout.)
    pub fn receiver(&self) -> &super::host::Slot {
        self.net
            .node(self.b)
            .slots
            .values()
            .max_by_key(|s| s.upper.bytes_received)
            .expect("the receiver has a channel")
    }

    /// Runs until `b` holds every byte and `a` saw it all acknowledged, or `limit` passes.
    pub fn run_transfer(&mut self, h: ChannelHandle, limit: Duration) -> bool {
        let (a, b) = (self.a, self.b);
        let deadline = self.net.now() + limit;
        self.net
            .run_while(deadline, |net| {
                let done_b = net.node(b).slots.values().any(|s| s.upper.complete());
                let done_a = net
                    .node(a)
                    .slots
                    .get(&h)
                    .is_some_and(|s| s.upper.all_acked());
                !(done_a && done_b)
            })
            .unwrap_or_else(|e| panic!("simulation error (seed {}): {e}", self.net.seed()))
    }
}

/// A channel configuration with shorter timers for tests.
pub fn fast_config() -> ChannelConfig {
    let mut c = ChannelConfig::default();
    c.initial_rtt = Duration::from_millis(100);
    c
}
