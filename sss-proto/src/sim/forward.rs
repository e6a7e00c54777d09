//! The datagram path: a node's transmit is split into datagrams, translated by the sender's
//! NAT, offered to a link, shown to the interceptor on arrival, translated by the receiver's
//! NAT and handed to the receiving node.

use std::net::SocketAddr;
use std::time::Instant;

use super::event::Packet;
use super::link::{Link, LinkFate, LinkId};
use super::network::Network;
use super::trace::{DropCause, Fate, TraceEvent};
use super::{Intercept, Node, NodeId, SimError, Verdict};
use crate::{EcnCodepoint, Transmit};

impl<N: Node> Network<N> {
    /// Splits a transmit into datagrams (GSO) and sends each.
    pub(crate) fn send_batch(&mut self, id: NodeId, transmit: &Transmit, buf: &[u8]) {
        let size = transmit.size.min(buf.len());
        let payload = &buf[..size];
        let src = self.source_address(id, transmit);
        let (dst, ecn) = (transmit.destination, transmit.ecn);
        match transmit.segment_size {
            Some(seg) if seg > 0 && size > seg => {
                for chunk in payload.chunks(seg) {
                    self.send_datagram(id, src, dst, ecn, chunk.to_vec());
                }
            }
            _ => self.send_datagram(id, src, dst, ecn, payload.to_vec()),
        }
    }

    fn source_address(&self, id: NodeId, transmit: &Transmit) -> Option<SocketAddr> {
        let addrs = &self.nodes[id.0].addrs;
        match transmit.src_ip {
            None => addrs.first().copied(),
            Some(ip) => addrs.iter().find(|a| a.ip() == ip).copied(),
        }
    }

    /// `src` is `None` when the node asked for a source IP it does not own.
    fn send_datagram(
        &mut self,
        origin: NodeId,
        src: Option<SocketAddr>,
        dst: SocketAddr,
        mut ecn: Option<EcnCodepoint>,
        mut data: Vec<u8>,
    ) {
        let len = data.len();
        let stats = &mut self.nodes[origin.0].stats;
        stats.sent += 1;
        stats.sent_bytes += len as u64;
        let from = src.unwrap_or(self.nodes[origin.0].addrs[0]);
        self.record(from, dst, len, Fate::Sent);
        let Some(src) = src else {
            // A real socket refuses to send from an address the host does not have.
            return self.drop_datagram(Some(origin), from, dst, len, DropCause::NoRoute);
        };

        let mut wire_src = src;
        if let Some(nat_id) = self.nodes[origin.0].nat {
            let same_lan = self
                .addrs
                .get(&dst)
                .is_some_and(|d| self.nodes[d.0].nat == Some(nat_id));
            if !same_lan {
                let nat = &mut self.nats[nat_id.0];
                let hairpin_refused = dst.ip() == nat.public_ip() && !nat.hairpinning();
                let mapped = if hairpin_refused {
                    None
                } else {
                    nat.outbound(self.now, src, dst, &mut self.rng)
                };
                match mapped {
                    Some(public) => wire_src = public,
                    None => return self.drop_datagram(Some(origin), src, dst, len, DropCause::Nat),
                }
            }
        }

        let link_id = self.link_for(wire_src, dst);
        let fate = self.links[link_id.0].send(self.now, &mut data, &mut ecn, &mut self.rng);
        match fate {
            LinkFate::Dropped(cause) => {
                self.drop_datagram(Some(origin), wire_src, dst, len, cause);
            }
            LinkFate::Arrives {
                at,
                reordered,
                duplicate,
            } => {
                let packet = Packet {
                    from: wire_src,
                    to: dst,
                    data,
                    ecn,
                    link: Some(link_id),
                    origin: Some(origin),
                    screened: false,
                };
                if let Some(dup_at) = duplicate {
                    self.queue.push_packet(dup_at, packet.clone());
                }
                if reordered {
                    self.queue.push_packet(at, packet);
                } else {
                    self.queue.push_in_order(at, link_id.0, packet);
                }
            }
        }
    }

    /// The route's link, creating a default one for a new address pair.
    fn link_for(&mut self, src: SocketAddr, dst: SocketAddr) -> LinkId {
        if let Some(id) = self.route(src, dst) {
            return id;
        }
        self.links
            .push(Link::new(self.default_link.clone(), self.now));
        let id = LinkId(self.links.len() - 1);
        self.auto_routes.insert((src, dst), id);
        id
    }

    /// A datagram reaches the far end of its link (or its injection time came).
    pub(crate) fn arrive(&mut self, mut packet: Packet) -> Result<(), SimError> {
        if let Some(link) = packet.link {
            let stats = &mut self.links[link.0].stats;
            stats.delivered += 1;
            stats.delivered_bytes += packet.data.len() as u64;
        }
        if !packet.screened {
            if let Some(interceptor) = self.interceptor.as_mut() {
                let mut view = Intercept {
                    from: packet.from,
                    to: packet.to,
                    time: self.now,
                    data: &mut packet.data,
                    ecn: packet.ecn,
                };
                let verdict = interceptor(&mut view);
                packet.from = view.from;
                packet.to = view.to;
                packet.ecn = view.ecn;
                packet.screened = true;
                match verdict {
                    Verdict::Deliver => {}
                    Verdict::Drop => {
                        let len = packet.data.len();
                        self.drop_datagram(
                            packet.origin,
                            packet.from,
                            packet.to,
                            len,
                            DropCause::Intercepted,
                        );
                        return Ok(());
                    }
                    Verdict::DeliverAndReplayLater(delay) => {
                        let copy = packet.clone();
                        self.queue
                            .push_packet(self.now + delay, Packet { link: None, ..copy });
                    }
                    Verdict::Delay(delay) => {
                        packet.link = None; // already counted as delivered by the link
                        self.queue.push_packet(self.now + delay, packet);
                        return Ok(());
                    }
                }
            }
        }
        self.route_to_node(packet)
    }

    /// Finds the node behind the destination address, through a NAT if needed.
    fn route_to_node(&mut self, mut packet: Packet) -> Result<(), SimError> {
        let len = packet.data.len();
        if let Some(&id) = self.addrs.get(&packet.to) {
            if let Some(nat) = self.nodes[id.0].nat {
                // A private address is only reachable from its own LAN.
                let from_lan = self
                    .addrs
                    .get(&packet.from)
                    .is_some_and(|s| self.nodes[s.0].nat == Some(nat));
                if !from_lan {
                    self.drop_datagram(
                        packet.origin,
                        packet.from,
                        packet.to,
                        len,
                        DropCause::NoRoute,
                    );
                    return Ok(());
                }
            }
            return self.hand_to_node(id, packet);
        }
        if let Some(&nat_id) = self.nat_ips.get(&packet.to.ip()) {
            let private = self.nats[nat_id.0].inbound(self.now, packet.from, packet.to.port());
            let target = private.and_then(|p| self.addrs.get(&p).map(|&id| (p, id)));
            return match target {
                Some((p, id)) => {
                    packet.to = p;
                    self.hand_to_node(id, packet)
                }
                None => {
                    self.drop_datagram(packet.origin, packet.from, packet.to, len, DropCause::Nat);
                    Ok(())
                }
            };
        }
        self.drop_datagram(
            packet.origin,
            packet.from,
            packet.to,
            len,
            DropCause::NoRoute,
        );
        Ok(())
    }

    fn hand_to_node(&mut self, id: NodeId, mut packet: Packet) -> Result<(), SimError> {
        let len = packet.data.len() as u64;
        let fate = match packet.origin {
            Some(origin) => {
                let stats = &mut self.nodes[origin.0].stats;
                stats.delivered += 1;
                stats.delivered_bytes += len;
                Fate::Delivered
            }
            None => Fate::Injected,
        };
        self.record(packet.from, packet.to, packet.data.len(), fate);
        let now = self.now;
        let slot = &mut self.nodes[id.0];
        slot.stats.received += 1;
        slot.stats.received_bytes += len;
        slot.node.handle_datagram_with_ecn(
            now,
            packet.to,
            packet.from,
            packet.ecn,
            &mut packet.data,
        );
        if slot.batch_receive {
            // Polled once, after the other datagrams of this instant (queued before the
            // wake-up) have arrived too.
            self.wake(id);
            return Ok(());
        }
        self.drain(id)
    }

    fn drop_datagram(
        &mut self,
        origin: Option<NodeId>,
        from: SocketAddr,
        to: SocketAddr,
        len: usize,
        cause: DropCause,
    ) {
        if let Some(origin) = origin {
            self.nodes[origin.0].stats.dropped.add(cause);
        }
        self.record(from, to, len, Fate::Dropped(cause));
    }

    fn record(&mut self, from: SocketAddr, to: SocketAddr, len: usize, fate: Fate) {
        if let Some(trace) = self.trace.as_mut() {
            let time: Instant = self.now;
            trace.record(TraceEvent {
                time,
                from,
                to,
                len,
                fate,
            });
        }
    }
}
