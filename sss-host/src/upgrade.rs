//! Upgrading a relayed channel to a direct one (spec/routing.md §6.3).
//!
//! While a peer we dialed is reachable only through a regserver's relay, the host tries a
//! direct path every [`RoutingConfig::relay_upgrade_interval`](crate::RoutingConfig): a
//! lookup with NOTIFY (the peer punches toward us again) and a handshake to the peer's first
//! usable endpoint, outside any connection attempt. If it completes, the new channel is the
//! session's newest and supersedes the relayed one (streams move over as after any channel
//! change); if not, it times out on its own and the relay carries on. The responder's side of
//! such a channel only counts as connected once the initiator's first packet arrived over
//! it, so a path that works one way only never takes the session off the relay.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use sss_proto::Eid;
use tokio::sync::watch;

use crate::routing::{is_relay_addr, reachable, LookupResult};
use crate::state::{ChannelSlot, State};

/// One peer whose channel runs through a relay.
pub(crate) struct Upgrade {
    /// When to try next.
    next: Instant,
    /// The lookup under way, if any.
    lookup: Option<watch::Receiver<LookupResult>>,
}

impl State {
    /// A channel to `peer` connected at `addr`: if through a relay (and we dialed, so we
    /// know the names to dial with), schedule attempts at a direct path.
    pub(crate) fn on_relayed_connected(&mut self, now: Instant, peer: Eid, addr: SocketAddr) {
        let Some(interval) = self.config.routing.relay_upgrade_interval else {
            return;
        };
        let dialed = self.peers.get(&peer).is_some_and(|p| p.names.is_some());
        if is_relay_addr(addr) && dialed {
            self.upgrades.entry(peer).or_insert(Upgrade {
                next: now + interval,
                lookup: None,
            });
        }
    }

    /// The next upgrade attempt due.
    pub(crate) fn upgrade_timeout(&self) -> Option<Instant> {
        self.upgrades
            .values()
            .filter(|u| u.lookup.is_none())
            .map(|u| u.next)
            .min()
    }

    /// Starts the lookups of due upgrades, and the direct handshakes of those whose lookup
    /// answered; forgets peers that are no longer relayed. Entries neither due nor answered
    /// cost nothing (this runs every driver round).
    pub(crate) fn advance_upgrades(&mut self, now: Instant) {
        if self.upgrades.is_empty() {
            return;
        }
        let Some(interval) = self.config.routing.relay_upgrade_interval else {
            self.upgrades.clear();
            return;
        };
        let mut work = Vec::new();
        for (&peer, u) in &mut self.upgrades {
            match &u.lookup {
                Some(rx) => {
                    let result = rx.borrow().clone();
                    if let Some(result) = result {
                        // A failed lookup waits for the next interval.
                        u.lookup = None;
                        if let Ok(addrs) = result {
                            work.push((peer, Some(addrs)));
                        }
                    }
                }
                None if u.next <= now => {
                    u.next = now + interval;
                    work.push((peer, None));
                }
                None => {}
            }
        }
        for (peer, found) in work {
            let relayed = self
                .channel_to(peer)
                .is_some_and(|c| is_relay_addr(c.remote_address()));
            if !relayed {
                self.upgrades.remove(&peer);
                continue;
            }
            match found {
                Some(addrs) => self.dial_direct(now, peer, &addrs),
                None => {
                    let lookup = self.routing.lookup(now, peer, true).ok();
                    if let Some(u) = self.upgrades.get_mut(&peer) {
                        u.lookup = lookup;
                    }
                }
            }
        }
    }

    /// A handshake to the first usable endpoint of `peer` (our own public IP's last, as in
    /// `Host::connect_eid`), outside any connection attempt.
    fn dial_direct(&mut self, now: Instant, peer: Eid, found: &[SocketAddr]) {
        let local = self.routing.local_addr();
        let ours: Vec<IpAddr> = self.routing.observed_ips();
        let mut addrs: Vec<SocketAddr> = found
            .iter()
            .map(|&a| crate::udp::canonical_addr(a))
            .filter(|&a| reachable(local, a) && !is_relay_addr(a))
            .collect();
        addrs.sort_by_key(|a| ours.contains(&a.ip()));
        let Some(&addr) = addrs.first() else {
            return;
        };
        let handshaking = self
            .channels
            .values()
            .any(|c| c.peer == peer && !c.channel.is_established() && !c.channel.is_closing());
        if handshaking {
            // The last try (or a connect call's) is still going.
            return;
        }
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        let Some((service, protocol)) = p.names.clone() else {
            return;
        };
        let layer = p.session.layer_params();
        match self.endpoint.connect_with::<sss_proto::stream::SentFrame>(
            now, peer, addr, &service, &protocol, &layer,
        ) {
            Ok((h, channel)) => {
                tracing::info!(%peer, %addr, "relayed: trying a direct path");
                self.channels.insert(h, ChannelSlot { channel, peer });
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.channels += 1;
                }
                self.wake_driver();
            }
            Err(e) => tracing::debug!(%peer, %addr, error = %e, "cannot try a direct path"),
        }
    }
}
