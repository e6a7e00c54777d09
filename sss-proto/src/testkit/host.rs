//! A simulated host: one endpoint and its channels, each with a [`Bulk`] upper layer.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use crate::channel::{Channel, ChannelEvent};
use crate::endpoint::{ChannelHandle, DatagramEvent, Endpoint, EndpointConfig};
use crate::handshake::RefuseCode;
use crate::identity::{Eid, Identity};
use crate::sim::Node;
use crate::{EcnCodepoint, Transmit};

use super::{Bulk, UNIX_NANOS};

/// A channel and its upper layer.
pub struct Slot {
    /// The channel.
    pub channel: Channel<(u64, u32)>,
    /// Its upper layer.
    pub upper: Bulk,
}

/// What a host does with incoming handshakes.
pub enum Policy {
    /// Accept, giving the new channel this upper layer.
    Accept(Box<dyn FnMut(&crate::endpoint::Incoming) -> Bulk>),
    /// Refuse with this code.
    Refuse(RefuseCode, String),
}

/// A simulated host: an endpoint and its channels.
pub struct TestHost {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Live channels.
    pub slots: BTreeMap<ChannelHandle, Slot>,
    /// What to do with incoming handshakes.
    pub policy: Policy,
    /// Every channel event so far.
    pub events: Vec<(ChannelHandle, ChannelEvent)>,
    /// Handshake initiations that reached the application.
    pub incoming: usize,
    /// Cookie replies sent.
    pub cookies_sent: usize,
    /// GSO batch size.
    pub max_datagrams: usize,
    out: VecDeque<(Vec<u8>, Transmit)>,
    rr: usize,
    scratch: Vec<u8>,
}

impl TestHost {
    /// A host with this identity and configuration.
    pub fn new(identity: &Identity, config: EndpointConfig, now: Instant) -> Self {
        Self {
            endpoint: Endpoint::new(config, identity, now, UNIX_NANOS),
            slots: BTreeMap::new(),
            policy: Policy::Accept(Box::new(|_| Bulk::default())),
            events: Vec::new(),
            incoming: 0,
            cookies_sent: 0,
            max_datagrams: 64,
            out: VecDeque::new(),
            rr: 0,
            scratch: Vec::new(),
        }
    }

    /// A host with a fixed identity seed and default configuration.
    pub fn seeded(seed: u64, now: Instant) -> (Self, Eid) {
        let id = super::identity(seed);
        let mut rng_seed = [0u8; 32];
        rng_seed[..8].copy_from_slice(&seed.to_le_bytes());
        let host = Self::new(&id, EndpointConfig::new(rng_seed), now);
        (host, id.eid())
    }

    /// Opens a channel to `remote` with `upper` on top.
    pub fn connect(
        &mut self,
        now: Instant,
        remote: Eid,
        addr: SocketAddr,
        upper: Bulk,
    ) -> ChannelHandle {
        let (handle, channel) = self
            .endpoint
            .connect(now, remote, addr, "test", "bulk/1")
            .expect("connect");
        self.slots.insert(handle, Slot { channel, upper });
        handle
    }

    /// A channel by handle.
    pub fn slot(&self, h: ChannelHandle) -> &Slot {
        &self.slots[&h]
    }

    /// A channel by handle, mutably.
    pub fn slot_mut(&mut self, h: ChannelHandle) -> &mut Slot {
        self.slots.get_mut(&h).expect("slot")
    }

    /// The only channel (panics if there is not exactly one).
    pub fn only(&self) -> &Slot {
        assert_eq!(self.slots.len(), 1, "expected exactly one channel");
        self.slots.values().next().expect("one channel")
    }

    /// Whether channel `h` reported `Connected`.
    pub fn connected(&self, h: ChannelHandle) -> bool {
        self.events
            .iter()
            .any(|(hh, e)| *hh == h && *e == ChannelEvent::Connected)
    }

    /// Why channel `h` closed, if it did.
    pub fn closed(&self, h: ChannelHandle) -> Option<&crate::channel::ChannelError> {
        self.events.iter().find_map(|(hh, e)| match e {
            ChannelEvent::Closed(err) if *hh == h => Some(err),
            _ => None,
        })
    }

    fn collect_events(&mut self) {
        let mut closed = Vec::new();
        for (h, slot) in &mut self.slots {
            while let Some(e) = slot.channel.poll_event() {
                self.events.push((*h, e));
            }
            if slot.channel.is_closed() {
                closed.push(*h);
            }
        }
        for h in closed {
            self.endpoint.forget(h);
        }
    }
}

impl Node for TestHost {
    fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &mut [u8],
    ) {
        self.handle_datagram_with_ecn(now, local, from, None, data);
    }

    fn handle_datagram_with_ecn(
        &mut self,
        now: Instant,
        _local: SocketAddr,
        from: SocketAddr,
        ecn: Option<EcnCodepoint>,
        data: &mut [u8],
    ) {
        let mut buf = std::mem::take(&mut self.scratch);
        match self.endpoint.handle(now, from, data, &mut buf) {
            Some(DatagramEvent::Channel(h)) => {
                if let Some(slot) = self.slots.get_mut(&h) {
                    slot.channel
                        .handle_datagram_with_ecn(now, from, ecn, data, &mut slot.upper);
                }
            }
            Some(DatagramEvent::Incoming(incoming)) => {
                self.incoming += 1;
                match &mut self.policy {
                    Policy::Accept(make) => {
                        let upper = make(&incoming);
                        match self.endpoint.accept(now, incoming) {
                            Ok((h, channel)) => {
                                self.slots.insert(h, Slot { channel, upper });
                            }
                            Err(e) => panic!("accept failed: {e}"),
                        }
                    }
                    Policy::Refuse(code, reason) => {
                        let (code, reason) = (*code, reason.clone());
                        let mut out = Vec::new();
                        if let Some(t) = self.endpoint.refuse(incoming, code, &reason, &mut out) {
                            out.truncate(t.size);
                            self.out.push_back((out, t));
                        }
                    }
                }
            }
            Some(DatagramEvent::Respond(t)) => {
                self.cookies_sent += 1;
                self.out.push_back((buf[..t.size].to_vec(), t));
            }
            None => {}
        }
        self.scratch = buf;
        self.collect_events();
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if let Some((bytes, t)) = self.out.pop_front() {
            buf.clear();
            buf.extend_from_slice(&bytes);
            return Some(t);
        }
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let handles: Vec<ChannelHandle> = self.slots.keys().copied().collect();
        for i in 0..n {
            let h = handles[(self.rr + i) % n];
            let slot = self.slots.get_mut(&h).expect("slot");
            if let Some(t) =
                slot.channel
                    .poll_transmit(now, self.max_datagrams, buf, &mut slot.upper)
            {
                self.rr = (self.rr + i + 1) % n;
                self.collect_events();
                return Some(t);
            }
        }
        self.collect_events();
        None
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.slots
            .values()
            .filter_map(|s| s.channel.poll_timeout())
            .min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        for slot in self.slots.values_mut() {
            if slot.channel.poll_timeout().is_some_and(|t| t <= now) {
                slot.channel.handle_timeout(now, &mut slot.upper);
            }
        }
        self.collect_events();
    }
}
