//! The relay's thread and event loop, and the handle that controls it.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sss_proto::Transmit;
use tokio::sync::watch;

use super::lane::Lane;
use super::stats::{add, Counters};
use super::{RelayConfig, RelayStats};
use crate::udp::{canonical_addr, GroBuffer, RecvBatch, UdpSocket, GSO_MAX_BYTES};

/// Starts impairment relays; see the [module documentation](super).
#[derive(Debug)]
pub struct Relay;

/// Controls a running relay; dropping it stops the relay and closes its sockets.
#[derive(Debug)]
pub struct RelayHandle {
    local_addr: SocketAddr,
    target_side_addr: SocketAddr,
    client: Arc<OnceLock<SocketAddr>>,
    counters: [Arc<Counters>; 2],
    config: Option<watch::Sender<RelayConfig>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay listening on `listen` that forwards the first client's datagrams to
    /// `target` and the target's answers back, impaired as `config` says (an
    /// [`ImpairConfig`](super::ImpairConfig) applies to both directions).
    ///
    /// The relay runs on a thread of its own with a current-thread tokio runtime, so it
    /// needs no runtime from the caller and takes no time from the caller's.
    pub fn start(
        listen: SocketAddr,
        target: SocketAddr,
        config: impl Into<RelayConfig>,
    ) -> io::Result<RelayHandle> {
        let config = config.into();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (client_side, target_side) = {
            let _guard = runtime.enter();
            (
                UdpSocket::bind(listen)?,
                UdpSocket::bind(target_side_bind(listen, target))?,
            )
        };
        let local_addr = client_side.local_addr()?;
        let target_side_addr = target_side.local_addr()?;
        let client = Arc::new(OnceLock::new());
        let counters: [Arc<Counters>; 2] = Default::default();
        let (config_tx, config_rx) = watch::channel(config);
        let event_loop = EventLoop {
            client_side,
            target_side,
            target: canonical_addr(target),
            client: client.clone(),
            counters: counters.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("sss-impair".into())
            .spawn(move || runtime.block_on(event_loop.run(config_rx)))?;
        Ok(RelayHandle {
            local_addr,
            target_side_addr,
            client,
            counters,
            config: Some(config_tx),
            thread: Some(thread),
        })
    }
}

/// The relay's address on the target side: the listening IP when it suits the target,
/// else the unspecified address of the target's family.
fn target_side_bind(listen: SocketAddr, target: SocketAddr) -> SocketAddr {
    let ip = listen.ip();
    if !ip.is_unspecified() && ip.is_ipv4() == target.is_ipv4() {
        return SocketAddr::new(ip, 0);
    }
    match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

impl RelayHandle {
    /// Where clients send: the relay's listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The relay's address on the target side: what the target sees as its peer.
    pub fn target_side_addr(&self) -> SocketAddr {
        self.target_side_addr
    }

    /// The client the relay serves, once one has sent a datagram.
    pub fn client(&self) -> Option<SocketAddr> {
        self.client.get().copied()
    }

    /// What the relay has done so far.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            forward: self.counters[0].snapshot(),
            backward: self.counters[1].snapshot(),
        }
    }

    /// The impairments in force.
    pub fn config(&self) -> RelayConfig {
        match &self.config {
            Some(tx) => tx.borrow().clone(),
            None => RelayConfig::default(),
        }
    }

    /// Changes the impairments for datagrams arriving from now on; those already held keep
    /// their release times. A direction's random sequence restarts only if its seed
    /// changes. Cutting the link is `loss: 1.0`.
    pub fn set_config(&self, config: impl Into<RelayConfig>) {
        if let Some(tx) = &self.config {
            tx.send_replace(config.into());
        }
    }

    /// Stops the relay and waits for its thread to end (as dropping the handle does).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // Closing the config channel is the stop signal.
        self.config = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("impairment relay thread panicked");
            }
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The relay's sockets and shared state, moved onto its thread.
struct EventLoop {
    client_side: UdpSocket,
    target_side: UdpSocket,
    target: SocketAddr,
    client: Arc<OnceLock<SocketAddr>>,
    counters: [Arc<Counters>; 2],
}

/// What woke the event loop.
enum Wake {
    Config,
    FromClient(io::Result<usize>),
    FromTarget(io::Result<usize>),
    Timer,
}

impl EventLoop {
    async fn run(self, mut config_rx: watch::Receiver<RelayConfig>) {
        let config = config_rx.borrow_and_update().clone();
        let [fwd_counters, bwd_counters] = &self.counters;
        let mut forward = Lane::new(&config.forward, fwd_counters.clone());
        let mut backward = Lane::new(&config.backward, bwd_counters.clone());
        let mut from_client = RecvBatch::new();
        let mut from_target = RecvBatch::new();
        let mut out = Vec::with_capacity(GSO_MAX_BYTES);
        loop {
            let now = Instant::now();
            let client = self.client.get().copied();
            send_due(
                &mut forward,
                now,
                &self.target_side,
                Some(self.target),
                &mut out,
                fwd_counters,
            )
            .await;
            send_due(
                &mut backward,
                now,
                &self.client_side,
                client,
                &mut out,
                bwd_counters,
            )
            .await;
            let next = match (forward.next_release(), backward.next_release()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timer = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                _ = config_rx.changed() => Wake::Config,
                r = from_client.recv(&self.client_side) => Wake::FromClient(r),
                r = from_target.recv(&self.target_side) => Wake::FromTarget(r),
                () = timer => Wake::Timer,
            };
            // A configuration set before a datagram was sent applies to that datagram,
            // whichever branch `select!` happened to pick first.
            // (`changed()` marks the new value seen, hence the `Wake::Config` test.)
            match config_rx.has_changed() {
                Ok(changed) if changed || matches!(wake, Wake::Config) => {
                    let config = config_rx.borrow_and_update().clone();
                    forward.set_config(&config.forward);
                    backward.set_config(&config.backward);
                }
                Ok(_) => {}
                Err(_) => return,
            }
            match wake {
                Wake::Config | Wake::Timer => {}
                Wake::FromClient(r) => {
                    if recv_failed(r).await {
                        continue;
                    }
                    let now = Instant::now();
                    for buffer in from_client.buffers() {
                        let client = *self.client.get_or_init(|| buffer.from);
                        if buffer.from != client {
                            add(
                                &fwd_counters.dropped_foreign,
                                buffer.datagram_count() as u64,
                            );
                        } else if forward.is_transparent() {
                            forward.pass_through(buffer.datagram_count(), buffer.data.len());
                            send_buffer(&self.target_side, self.target, &buffer, fwd_counters)
                                .await;
                        } else {
                            for data in buffer.data.chunks(buffer.stride) {
                                forward.ingest(now, data);
                            }
                        }
                    }
                }
                Wake::FromTarget(r) => {
                    if recv_failed(r).await {
                        continue;
                    }
                    let now = Instant::now();
                    let client = self.client.get().copied();
                    for buffer in from_target.buffers() {
                        let Some(client) = client.filter(|_| buffer.from == self.target) else {
                            add(
                                &bwd_counters.dropped_foreign,
                                buffer.datagram_count() as u64,
                            );
                            continue;
                        };
                        if backward.is_transparent() {
                            backward.pass_through(buffer.datagram_count(), buffer.data.len());
                            send_buffer(&self.client_side, client, &buffer, bwd_counters).await;
                        } else {
                            for data in buffer.data.chunks(buffer.stride) {
                                backward.ingest(now, data);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Forwards a received GRO buffer as it is, as one GSO batch.
async fn send_buffer(
    socket: &UdpSocket,
    destination: SocketAddr,
    buffer: &GroBuffer<'_>,
    counters: &Counters,
) {
    let count = buffer.datagram_count();
    let transmit = Transmit {
        destination,
        size: buffer.data.len(),
        segment_size: (count > 1).then_some(buffer.stride),
        ecn: None,
        src_ip: None,
    };
    sent(
        socket.send(&transmit, buffer.data).await,
        destination,
        count,
        buffer.data.len(),
        counters,
    );
}

/// Counts the outcome of sending `count` datagrams of `bytes` in total.
fn sent(
    result: io::Result<()>,
    destination: SocketAddr,
    count: usize,
    bytes: usize,
    counters: &Counters,
) {
    match result {
        Ok(()) => {
            add(&counters.forwarded, count as u64);
            add(&counters.forwarded_bytes, bytes as u64);
        }
        Err(e) => {
            tracing::debug!("impairment relay: send to {destination} failed: {e}");
            add(&counters.send_errors, count as u64);
        }
    }
}

/// Logs a receive error and pauses briefly so that a persistent one cannot spin the loop.
async fn recv_failed(result: io::Result<usize>) -> bool {
    match result {
        Ok(_) => false,
        Err(e) => {
            tracing::debug!("impairment relay: receive failed: {e}");
            tokio::time::sleep(Duration::from_millis(1)).await;
            true
        }
    }
}

/// Sends every datagram of `lane` due at `now`, in GSO batches.
async fn send_due(
    lane: &mut Lane,
    now: Instant,
    socket: &UdpSocket,
    destination: Option<SocketAddr>,
    out: &mut Vec<u8>,
    counters: &Counters,
) {
    while let Some(batch) = lane.poll_batch(now, out) {
        let Some(destination) = destination else {
            add(&counters.dropped_foreign, batch.count as u64);
            continue;
        };
        let transmit = Transmit {
            destination,
            size: out.len(),
            segment_size: (batch.count > 1).then_some(batch.segment),
            ecn: None,
            src_ip: None,
        };
        sent(
            socket.send(&transmit, out).await,
            destination,
            batch.count,
            out.len(),
            counters,
        );
    }
}
