//! Host configuration and the connection retry policy.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use rand_core::RngCore;
use sss_proto::stream::SessionConfig;
use sss_proto::{Eid, EndpointConfig};

/// Configuration of a [`Host`](crate::Host).
///
/// `HostConfig::default()` suits the public Internet; tests usually only change `bind`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HostConfig {
    /// Where the host's one UDP socket binds. Default `[::]:0`: any free port, dual-stack
    /// (IPv4 and IPv6 peers on the same socket). Where IPv6 is unavailable the host falls back
    /// to `0.0.0.0` with the same port.
    pub bind: SocketAddr,
    /// Stream-layer limits of every session (windows, stream credit, datagram sizes, how long
    /// streams survive without a channel). Default: [`SessionConfig::default`] with
    /// [`HOST_MAX_UNSENT`] unsent bytes per stream.
    pub session: SessionConfig,
    /// Endpoint and channel settings (congestion control, timers, cookie threshold). An
    /// all-zero `rng_seed` (the default) is replaced by one from the operating system; a
    /// non-zero seed is used as given (reproducible runs).
    pub endpoint: EndpointConfig,
    /// Retry policy of [`Host::connect`](crate::Host::connect).
    pub backoff: BackoffPolicy,
    /// How long one connection attempt (a handshake to the given addresses) may take before
    /// it counts as a failure. Default 5 s: with the channel's handshake retries at 1 s and
    /// 3 s, that is three initiations.
    pub attempt_timeout: Duration,
    /// Most peers the host keeps sessions with. A handshake from a new peer beyond it is
    /// refused with [`RefuseCode::BUSY`](sss_proto::handshake::RefuseCode::BUSY), so that
    /// strangers cannot make the host hold unbounded state. Default 4096.
    pub max_peers: usize,
    /// When the last handle ([`Host`](crate::Host), [`Stream`](crate::Stream),
    /// [`Listener`](crate::Listener)) is dropped, the driver keeps delivering written data for
    /// up to this long, then closes every channel. Default 2 s.
    pub linger: Duration,
    /// Send and receive buffer size asked of the kernel for the host's socket, in bytes.
    /// Default [`SOCKET_BUFFER_SIZE`](crate::udp::SOCKET_BUFFER_SIZE) (4 MiB). Linux caps a
    /// request at `net.core.{r,w}mem_max`; a process allowed to (`CAP_NET_ADMIN`) gets the
    /// size asked for beyond that cap.
    pub socket_buffer: usize,
    /// Regservers (EID, address) the host registers with at start, so that peers can dial
    /// it by EID ([`Host::connect_eid`](crate::Host::connect_eid)), and looks peers up in.
    /// More can be added with [`Host::add_regserver`](crate::Host::add_regserver). Default
    /// none.
    pub regservers: Vec<(Eid, SocketAddr)>,
    /// Timers of the regserver clients.
    pub routing: RoutingConfig,
}

/// Default [`RoutingConfig::relay_after`].
pub const DEFAULT_RELAY_AFTER: Duration = Duration::from_secs(2);

/// Timers of a host's regserver clients (spec/routing.md §5.3) and of the relay fallback
/// (§6.3).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoutingConfig {
    /// Lifetime the host asks for its records (a regserver keeps 30 s to 1 h; the host
    /// refreshes at half of what it grants). Default 600 s.
    pub lifetime: Duration,
    /// Interval of keepalives to each regserver, which keep the NAT mapping open and notice
    /// a regserver that lost our record (it then gets a new one at once). Default 20 s,
    /// below the 30 s UDP mapping timeout of many NATs; at least 1 s is used.
    pub keepalive_interval: Duration,
    /// How long a lookup waits for a regserver's answer. Default 10 s.
    pub lookup_timeout: Duration,
    /// How long [`Host::connect_eid`](crate::Host::connect_eid)'s direct handshakes may go
    /// unanswered before the host asks its regserver to relay the channel (spec/routing.md
    /// §6.3). Default 2 s: after the initiation's first retransmission (1 s) had time to get
    /// through a punched hole. `None` never relays.
    pub relay_after: Option<Duration>,
    /// While a channel we dialed runs through a relay, how often the host tries a direct
    /// path (a lookup with NOTIFY and one handshake; a direct channel that completes takes
    /// over). Default 30 s; `None` never tries.
    pub relay_upgrade_interval: Option<Duration>,
    /// Testing aid: channel and handshake datagrams that arrive directly (not through a
    /// relay) are dropped, as if no direct path existed. Default `false`.
    #[doc(hidden)]
    pub drop_direct: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            lifetime: sss_routing::client::DEFAULT_LIFETIME,
            keepalive_interval: sss_routing::client::KEEPALIVE_INTERVAL,
            lookup_timeout: sss_routing::client::LOOKUP_TIMEOUT,
            relay_after: Some(DEFAULT_RELAY_AFTER),
            relay_upgrade_interval: Some(Duration::from_secs(30)),
            drop_direct: false,
        }
    }
}

/// Bytes a stream of a host buffers beyond what it has sent
/// ([`SessionConfig::max_unsent`]) by default: less than the stream layer's own default,
/// because the driver wakes a waiting writer as soon as its stream has room again (each
/// round), so a short backlog keeps the network busy, and what a writer adds is still in the
/// CPU caches when the driver copies it into packets (256 KiB sent 1 stream 20-25 % faster on
/// loopback than an unbounded backlog).
pub const HOST_MAX_UNSENT: usize = 256 * 1024;

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
            session: SessionConfig {
                max_unsent: HOST_MAX_UNSENT,
                ..SessionConfig::default()
            },
            endpoint: EndpointConfig::new([0; 32]),
            backoff: BackoffPolicy::default(),
            attempt_timeout: Duration::from_secs(5),
            max_peers: 4096,
            linger: Duration::from_secs(2),
            socket_buffer: crate::udp::SOCKET_BUFFER_SIZE,
            regservers: Vec::new(),
            routing: RoutingConfig::default(),
        }
    }
}

impl HostConfig {
    /// The default configuration, bound to `bind`.
    pub fn bind(bind: SocketAddr) -> Self {
        Self {
            bind,
            ..Self::default()
        }
    }
}

/// When and how often [`Host::connect`](crate::Host::connect) retries, after the
/// libwebsockets Secure Streams retry policy (`backoff`, `jitterpc`, `conceal`).
///
/// A connection attempt that fails for a transient reason (no answer within the attempt
/// timeout, the channel dying during the handshake) is retried after a delay; the first
/// `conceal` failures are hidden from the application, the next one is returned as the
/// error. A refusal by the peer is final and returned at once.
///
/// Defaults: delays `[100, 200, 500, 1000, 2000]` ms, jitter 20 %, conceal 3 (so at most four
/// attempts, with about 0.1, 0.2 and 0.5 s between them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay before the retry that follows the n-th failure, in milliseconds; the last entry
    /// repeats. An empty list retries at once.
    pub delays_ms: Vec<u64>,
    /// Up to this percentage of each delay is added at random (uniformly), so that many
    /// clients that failed together do not retry together.
    pub jitter_percent: u8,
    /// Failures concealed (retried) before the next one is reported.
    pub conceal: u32,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            delays_ms: vec![100, 200, 500, 1000, 2000],
            jitter_percent: 20,
            conceal: 3,
        }
    }
}

impl BackoffPolicy {
    /// No retries: the first failure is reported.
    pub fn never() -> Self {
        Self {
            delays_ms: Vec::new(),
            jitter_percent: 0,
            conceal: 0,
        }
    }

    /// What to do after `failures` failed attempts (1 after the first): `Some(delay)` to
    /// retry after `delay`, `None` to report the failure.
    pub fn after_failure(&self, failures: u32, rng: &mut impl RngCore) -> Option<Duration> {
        if failures == 0 || failures > self.conceal {
            return None;
        }
        let index = (failures as usize - 1).min(self.delays_ms.len().saturating_sub(1));
        let base = self.delays_ms.get(index).copied().unwrap_or(0);
        let jitter_max = base.saturating_mul(u64::from(self.jitter_percent)) / 100;
        let jitter = if jitter_max == 0 {
            0
        } else {
            rng.next_u64() % (jitter_max + 1)
        };
        Some(Duration::from_millis(base.saturating_add(jitter)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(7)
    }

    #[test]
    fn conceal_bounds_the_retries() {
        let p = BackoffPolicy::default();
        let mut r = rng();
        assert!(p.after_failure(1, &mut r).is_some());
        assert!(p.after_failure(2, &mut r).is_some());
        assert!(p.after_failure(3, &mut r).is_some());
        assert_eq!(
            p.after_failure(4, &mut r),
            None,
            "the fourth failure is reported"
        );
        assert_eq!(BackoffPolicy::never().after_failure(1, &mut r), None);
    }

    #[test]
    fn delays_follow_the_table_and_the_last_repeats() {
        let p = BackoffPolicy {
            delays_ms: vec![100, 200, 500],
            jitter_percent: 0,
            conceal: 10,
        };
        let mut r = rng();
        let got: Vec<u64> = (1..=5)
            .map(|n| p.after_failure(n, &mut r).unwrap().as_millis() as u64)
            .collect();
        assert_eq!(got, vec![100, 200, 500, 500, 500]);
        let empty = BackoffPolicy {
            delays_ms: Vec::new(),
            jitter_percent: 50,
            conceal: 1,
        };
        assert_eq!(empty.after_failure(1, &mut r), Some(Duration::ZERO));
    }

    #[test]
    fn jitter_stays_within_the_percentage_and_varies() {
        let p = BackoffPolicy {
            delays_ms: vec![1000],
            jitter_percent: 20,
            conceal: u32::MAX,
        };
        let mut r = rng();
        let mut seen = std::collections::BTreeSet::new();
        for n in 1..=1000 {
            let d = p.after_failure(n, &mut r).unwrap().as_millis() as u64;
            assert!((1000..=1200).contains(&d), "{d} ms");
            seen.insert(d);
        }
        assert!(
            seen.len() > 100,
            "jitter should spread the delays: {}",
            seen.len()
        );
        assert!(seen.iter().next().unwrap() < &1020 && seen.iter().last().unwrap() > &1180);
    }

    #[test]
    fn defaults_are_as_documented() {
        let p = BackoffPolicy::default();
        assert_eq!(p.delays_ms, vec![100, 200, 500, 1000, 2000]);
        assert_eq!((p.jitter_percent, p.conceal), (20, 3));
        let c = HostConfig::default();
        assert!(c.bind.is_ipv6() && c.bind.ip().is_unspecified() && c.bind.port() == 0);
        assert_eq!(c.attempt_timeout, Duration::from_secs(5));
        assert!(c.regservers.is_empty());
        assert_eq!(c.routing.keepalive_interval, Duration::from_secs(20));
        assert_eq!(c.routing.lookup_timeout, Duration::from_secs(10));
    }
}
