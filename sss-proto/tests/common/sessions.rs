//! Two hosts with stream-layer sessions on the simulator: A dials, B listens on one
//! (service, protocol). Test files add their own methods to [`World`].

use std::sync::Arc;
use std::time::Duration;

use sss_proto::sim::{LinkConfig, Network, NodeId};
use sss_proto::stream::{Session, SessionConfig, StreamId};
use sss_proto::testkit::addr;
use sss_proto::testkit::session_host::{SessionHost, SessionPair};
use sss_proto::Eid;

pub struct World {
    pub net: Network<SessionHost>,
    pub a: NodeId,
    pub b: NodeId,
    pub a_eid: Eid,
    pub b_eid: Eid,
    /// The (service, protocol) B listens on and A's streams open.
    pub service: (&'static str, &'static str),
}

/// A and B joined by `link`, with their own session configurations (channels start from a
/// 100 ms RTT estimate).
pub fn world(
    seed: u64,
    link: LinkConfig,
    a: SessionConfig,
    b: SessionConfig,
    service: (&'static str, &'static str),
) -> World {
    let mut channel = sss_proto::ChannelConfig::default();
    channel.initial_rtt = Duration::from_millis(100);
    let SessionPair {
        mut net,
        a: na,
        b: nb,
        a_eid,
        b_eid,
    } = SessionPair::new(seed, link, a, channel, service);
    net.node_mut(nb).session_config = Arc::new(b);
    World {
        net,
        a: na,
        b: nb,
        a_eid,
        b_eid,
        service,
    }
}

impl World {
    pub fn a_session(&mut self) -> &mut Session {
        let b_eid = self.b_eid;
        self.net.node_mut(self.a).sessions.get_mut(&b_eid).unwrap()
    }

    pub fn b_session(&mut self) -> &mut Session {
        let a_eid = self.a_eid;
        self.net.node_mut(self.b).sessions.get_mut(&a_eid).unwrap()
    }

    /// Opens a top-level stream from A (creating the channel if needed).
    pub fn open(&mut self) -> StreamId {
        let (now, b_eid, (service, protocol)) = (self.net.now(), self.b_eid, self.service);
        let id = self
            .net
            .node_mut(self.a)
            .open(now, b_eid, addr(2), service, protocol)
            .unwrap();
        self.net.wake(self.a);
        id
    }
}

/// `len` seeded pseudo-random bytes (xorshift).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
