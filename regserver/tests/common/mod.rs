//! Helpers: `sss_routing` clients driven over real UDP sockets, and scratch directories.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sss_proto::{Eid, Identity};
use sss_routing::{Client, ClientConfig, Event};
use tokio::net::UdpSocket;

/// A fresh, empty directory for one test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("regserver-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A deterministic identity.
pub fn identity(seed: u64) -> Identity {
    Identity::generate(&mut ChaCha20Rng::seed_from_u64(seed))
}

/// A routing client on its own loopback UDP socket, with the events it emitted.
pub struct UdpHost {
    pub client: Client,
    pub socket: UdpSocket,
    pub events: Vec<Event>,
}

impl UdpHost {
    pub async fn new(server: SocketAddr, server_eid: Eid, seed: u64) -> Self {
        Self::with_config(server, server_eid, seed, |_| {}).await
    }

    /// Like [`UdpHost::new`], with the client configuration changed by `edit`.
    pub async fn with_config(
        server: SocketAddr,
        server_eid: Eid,
        seed: u64,
        edit: impl FnOnce(&mut ClientConfig),
    ) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut rng_seed = [0; 32];
        rng_seed[..8].copy_from_slice(&seed.to_be_bytes());
        let mut config = ClientConfig::new(server, server_eid, 1, rng_seed);
        edit(&mut config);
        Self {
            client: Client::new(config, identity(seed)),
            socket,
            events: Vec::new(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    pub fn eid(&self) -> Eid {
        self.client.eid()
    }

    /// Drives the client (its timers, its transmits, datagrams from its socket) until
    /// `done(events)` holds; false if it does not within `timeout`.
    pub async fn run_until(&mut self, timeout: Duration, done: impl Fn(&[Event]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 2048];
        let mut out = Vec::new();
        loop {
            let now = Instant::now();
            if self.client.poll_timeout().is_some_and(|t| t <= now) {
                self.client.handle_timeout(now);
            }
            while let Some(t) = self.client.poll_transmit(now, &mut out) {
                self.socket
                    .send_to(&out[..t.size], t.destination)
                    .await
                    .unwrap();
            }
            while let Some(e) = self.client.poll_event() {
                self.events.push(e);
            }
            if done(&self.events) {
                return true;
            }
            if now >= deadline {
                return false;
            }
            let wake = self
                .client
                .poll_timeout()
                .map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let (len, from) = r.unwrap();
                    self.client.handle_datagram(Instant::now(), from, &buf[..len]);
                }
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// Registers; the observed endpoint the server reported.
    pub async fn register(&mut self) -> SocketAddr {
        self.client.register(Instant::now());
        assert!(
            self.run_until(Duration::from_secs(5), |ev| ev
                .iter()
                .any(|e| matches!(e, Event::Registered { .. })))
                .await,
            "registration did not complete: {:?}",
            self.events
        );
        self.events
            .iter()
            .find_map(|e| match e {
                Event::Registered { observed } => Some(*observed),
                _ => None,
            })
            .unwrap()
    }

    /// Looks `target` up and returns the outcome.
    pub async fn lookup(&mut self, target: Eid, notify: bool) -> sss_routing::LookupOutcome {
        self.client.lookup(Instant::now(), target, notify).unwrap();
        let found = |ev: &[Event]| {
            ev.iter()
                .any(|e| matches!(e, Event::LookupResult { eid, .. } if *eid == target))
        };
        assert!(self.run_until(Duration::from_secs(5), found).await);
        self.events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::LookupResult { eid, outcome } if *eid == target => Some(outcome.clone()),
                _ => None,
            })
            .unwrap()
    }

    /// Waits for a PunchRequest from `peer` and returns its endpoints.
    pub async fn punch_request(&mut self, peer: Eid) -> Option<Vec<SocketAddr>> {
        let got = |ev: &[Event]| {
            ev.iter()
                .any(|e| matches!(e, Event::PunchRequest { peer: p, .. } if *p == peer))
        };
        if !self.run_until(Duration::from_secs(5), got).await {
            return None;
        }
        self.events.iter().find_map(|e| match e {
            Event::PunchRequest { peer: p, endpoints } if *p == peer => Some(endpoints.clone()),
            _ => None,
        })
    }
}

/// Registers two hosts, then the second looks the first up with NOTIFY: the lookup finds the
/// first host's socket address and the first host is asked to punch toward the second's.
pub async fn register_lookup_notify(server: SocketAddr, server_eid: Eid) {
    let mut a = UdpHost::new(server, server_eid, 11).await;
    let mut b = UdpHost::new(server, server_eid, 12).await;
    assert_eq!(a.register().await, a.addr());
    assert_eq!(b.register().await, b.addr());
    assert_eq!(
        b.lookup(a.eid(), true).await,
        sss_routing::LookupOutcome::Found(vec![a.addr()])
    );
    assert_eq!(a.punch_request(b.eid()).await, Some(vec![b.addr()]));
    let stranger = identity(99).eid();
    assert_eq!(
        b.lookup(stranger, false).await,
        sss_routing::LookupOutcome::NotFound
    );
}
