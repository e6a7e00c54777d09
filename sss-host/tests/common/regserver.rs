//! A regserver for tests: `sss_routing::server::Server` in a small tokio loop on its own
//! loopback socket, which tests can restart (state lost) and watch (records stored).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand_core::{OsRng, RngCore};
use sss_host::{Eid, Identity};
use sss_routing::{Server, ServerConfig};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running regserver.
pub(crate) struct Regserver {
    /// Its EID.
    pub(crate) eid: Eid,
    /// Its address (127.0.0.1).
    pub(crate) addr: SocketAddr,
    server: Arc<Mutex<Server>>,
    /// Bumped after every datagram and timer: what a test awaits.
    changes: watch::Receiver<u64>,
    task: JoinHandle<()>,
    tweak: fn(&mut ServerConfig),
}

fn new_server(eid: Eid, tweak: fn(&mut ServerConfig)) -> Server {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let mut config = ServerConfig::new(eid, seed);
    tweak(&mut config);
    Server::new(config, Instant::now())
}

impl Regserver {
    /// Starts a regserver with a new identity on 127.0.0.1.
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Like [`Regserver::start`], with the configuration changed by `tweak`.
    pub(crate) async fn start_with(tweak: fn(&mut ServerConfig)) -> Self {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        let eid = Identity::from_secret_bytes(&secret).eid();
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().unwrap();
        let server = Arc::new(Mutex::new(new_server(eid, tweak)));
        let (tx, changes) = watch::channel(0u64);
        let task = tokio::spawn(run(socket, server.clone(), tx));
        Self {
            eid,
            addr,
            server,
            changes,
            task,
            tweak,
        }
    }

    /// `(eid, addr)` as `HostConfig::regservers` takes it.
    pub(crate) fn entry(&self) -> (Eid, SocketAddr) {
        (self.eid, self.addr)
    }

    /// Replaces the server's state with a fresh one (same EID and address, new cookie
    /// secret, no records): what a restart of the process does.
    pub(crate) fn restart(&self) {
        *self.server.lock().unwrap() = new_server(self.eid, self.tweak);
    }

    /// Whether a record of `eid` is stored.
    pub(crate) fn has_record(&self, eid: &Eid) -> bool {
        self.server.lock().unwrap().record(eid).is_some()
    }

    /// How many lookups the server answered.
    pub(crate) fn lookups(&self) -> u64 {
        self.server.lock().unwrap().stats().lookups
    }

    /// The server's counters.
    pub(crate) fn stats(&self) -> sss_routing::server::ServerStats {
        self.server.lock().unwrap().stats().clone()
    }

    /// How many NOTIFYs the server sent.
    pub(crate) fn notifies(&self) -> u64 {
        self.server.lock().unwrap().stats().notifies
    }

    /// Waits until a record of `eid` is stored.
    pub(crate) async fn wait_for_record(&self, eid: &Eid) {
        self.wait_until(|s| s.record(eid).is_some()).await;
    }

    /// Waits until `f` holds of the server.
    pub(crate) async fn wait_until(&self, mut f: impl FnMut(&Server) -> bool) {
        let mut changes = self.changes.clone();
        while !f(&self.server.lock().unwrap()) {
            changes.changed().await.expect("regserver running");
        }
    }
}

impl Drop for Regserver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(socket: UdpSocket, server: Arc<Mutex<Server>>, changes: watch::Sender<u64>) {
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::new();
    loop {
        let deadline = server.lock().unwrap().poll_timeout();
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let mut replies = Vec::new();
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let now = Instant::now();
                let mut s = server.lock().unwrap();
                s.handle_datagram(now, from, &buf[..n]);
                while let Some(t) = s.poll_transmit(now, &mut out) {
                    replies.push((out[..t.size].to_vec(), t.destination));
                }
            }
            () = sleep => {
                server.lock().unwrap().handle_timeout(Instant::now());
            }
        }
        for (data, to) in replies {
            let _ = socket.send_to(&data, to).await;
        }
        changes.send_modify(|n| *n += 1);
    }
}
