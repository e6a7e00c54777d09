//! The SSS stack over `sss-host`.
//!
//! A "connection" is one top-level stream to ([`SERVICE`], [`PROTOCOL`]); every stream of the
//! workload is a substream of it, opened without a round trip (the hereditary structure SSS
//! offers and QUIC does not: quinn opens its streams flat on the connection). Both ends are
//! one [`Host`] each, with one UDP socket and one driver task.

use std::future::Ready;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sss_host::{Error as SssError, Host, HostConfig, SessionConfig, Stream};
use sss_proto::crypto::aead::Suite;
use sss_proto::Eid;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};

use crate::error::{PerfError, Result};
use crate::stack::{Conn, Dialer, Listener, Target};
use crate::tuning::{Cipher, Tuning};

/// The service the perf server listens on.
pub const SERVICE: &str = "perf";
/// The protocol of the perf workload.
pub const PROTOCOL: &str = "sss-perf/1";

fn io_err(context: &str, e: SssError) -> PerfError {
    PerfError::Io {
        context: context.to_owned(),
        source: e.into(),
    }
}

/// A host configuration from the shared tuning, so both stacks get the same windows, stream
/// credit, cipher and packet sizes.
fn host_config(bind: SocketAddr, tuning: &Tuning) -> HostConfig {
    let mut config = HostConfig::bind(bind);
    config.session = SessionConfig {
        initial_max_streams: u64::from(tuning.max_streams),
        // Fixed windows as large as quinn's (which does not auto-tune), growth allowed.
        initial_max_stream_data: tuning.stream_window,
        initial_max_data: tuning.conn_window,
        max_stream_window: tuning.stream_window,
        max_session_window: tuning.conn_window,
        send_buffer: tuning.stream_window as usize,
        // All streams together buffer at most the connection window, as quinn's
        // `send_window(conn_window)` does.
        session_send_buffer: tuning.conn_window as usize,
        ..config.session
    };
    let mut channel = (*config.endpoint.channel).clone();
    channel.suites = match tuning.cipher.resolve() {
        Cipher::Aes256 => Suite::Aes256Gcm.bit(),
        Cipher::Chacha20 => Suite::ChaCha20Poly1305.bit(),
    };
    channel.base_udp_payload = tuning.initial_mtu;
    channel.max_udp_payload = tuning.max_udp_payload;
    channel.hystart = !tuning.no_hystart;
    config.endpoint.channel = Arc::new(channel);
    config.linger = Duration::from_millis(500);
    config.socket_buffer = tuning.socket_buffer;
    config
}

/// A listening SSS host.
#[derive(Debug)]
pub struct SssListener {
    host: Host,
    listener: sss_host::Listener,
}

impl SssListener {
    /// Binds an SSS host on `addr` with the identity in `key_file` (a fresh one without).
    pub fn bind(addr: SocketAddr, key_file: Option<&Path>, tuning: &Tuning) -> Result<Self> {
        let config = host_config(addr, tuning);
        let host = match key_file {
            Some(path) => Host::from_key_file(path, config),
            None => Host::new(config),
        }
        .map_err(|e| io_err("binding the SSS host", e))?;
        let listener = host
            .listen(SERVICE, PROTOCOL)
            .map_err(|e| io_err("listening", e))?;
        Ok(Self { host, listener })
    }
}

/// A client SSS host.
#[derive(Debug)]
pub struct SssDialer {
    host: Host,
    /// The connect probe rides in the handshake (`--no-early-data` turns it off).
    early: bool,
}

impl SssDialer {
    /// Binds a client host on an ephemeral port of `target`'s address family.
    pub fn bind(target: &Target, tuning: &Tuning) -> Result<Self> {
        let bind = if target.addr.is_ipv4() {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        };
        let host = Host::new(host_config(bind, tuning))
            .map_err(|e| io_err("binding the SSS client host", e))?;
        Ok(Self {
            host,
            early: !tuning.no_early_data,
        })
    }
}

/// One connection: the top-level stream whose substreams carry the workload.
#[derive(Debug, Clone)]
pub struct SssConn {
    root: Arc<Stream>,
}

impl Listener for SssListener {
    type Conn = SssConn;
    type Incoming = Ready<Result<SssConn>>;

    fn identity(&self) -> String {
        self.host.eid().to_string()
    }

    fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.host.local_addr())
    }

    async fn accept(&self) -> Option<Self::Incoming> {
        let stream = self.listener.accept().await.ok()?;
        Some(std::future::ready(Ok(SssConn {
            root: Arc::new(stream),
        })))
    }
}

impl Dialer for SssDialer {
    type Conn = SssConn;

    async fn connect(&self, target: &Target) -> Result<SssConn> {
        let eid: Eid = target
            .eid
            .parse()
            .map_err(|e| PerfError::Config(format!("bad EID {:?}: {e}", target.eid)))?;
        let root = self
            .host
            .connect(eid, &[target.addr], SERVICE, PROTOCOL)
            .await
            .map_err(|e| io_err(&format!("connecting to {target}"), e))?;
        Ok(SssConn {
            root: Arc::new(root),
        })
    }

    /// The probe rides in the handshake: its substream is opened and written before the
    /// handshake starts, so the server's host gets it with the initiation (early data).
    async fn connect_probe(
        &self,
        target: &Target,
        probe: &[u8],
    ) -> Result<(SssConn, WriteHalf<Stream>, ReadHalf<Stream>)> {
        let io = |e| PerfError::io("probe", e);
        if !self.early {
            let conn = self.connect(target).await?;
            let (mut w, r) = conn.open_bi().await?;
            w.write_all(probe).await.map_err(io)?;
            w.shutdown().await.map_err(io)?;
            return Ok((conn, w, r));
        }
        let eid: Eid = target
            .eid
            .parse()
            .map_err(|e| PerfError::Config(format!("bad EID {:?}: {e}", target.eid)))?;
        let (root, (sub, written)) = self
            .host
            .connect_early_with(eid, &[target.addr], SERVICE, PROTOCOL, |root| {
                let sub = root.open_substream()?;
                let written = sub.try_write(probe)?;
                if written == probe.len() {
                    sub.finish()?;
                }
                Ok((sub, written))
            })
            .await
            .map_err(|e| io_err(&format!("connecting to {target}"), e))?;
        let (r, mut w) = tokio::io::split(sub);
        if written < probe.len() {
            w.write_all(&probe[written..]).await.map_err(io)?;
            w.shutdown().await.map_err(io)?;
        }
        Ok((
            SssConn {
                root: Arc::new(root),
            },
            w,
            r,
        ))
    }

    async fn shutdown(&self) {
        // Diagnostics for comparing the stacks' recovery (losses, PTOs, congestion events).
        if std::env::var_os("SSS_PERF_STATS").is_some() {
            for peer in self.host.peers() {
                if let Some(stats) = self.host.stats(peer) {
                    eprintln!("sss-perf stats: {stats:?}");
                }
            }
        }
        self.host.close().await;
    }
}

impl Conn for SssConn {
    type Send = WriteHalf<Stream>;
    type Recv = ReadHalf<Stream>;

    async fn open_bi(&self) -> Result<(Self::Send, Self::Recv)> {
        let s = self
            .root
            .open_substream()
            .map_err(|e| io_err("opening a substream", e))?;
        let (r, w) = tokio::io::split(s);
        Ok((w, r))
    }

    async fn accept_bi(&self) -> Result<Option<(Self::Send, Self::Recv)>> {
        match self.root.accept_substream().await {
            Ok(Some(s)) => {
                let (r, w) = tokio::io::split(s);
                Ok(Some((w, r)))
            }
            Ok(None) => Ok(None),
            // The connection ended: the root stream was finished, reset or its link is gone.
            Err(SssError::Reset(_)) | Err(SssError::HostClosed) => Ok(None),
            Err(e) => Err(io_err("accepting a substream", e)),
        }
    }

    fn close(&self) {
        // Like closing a QUIC connection: the peer's accept loop ends (its root stream is
        // reset with code 0); substreams are independent and were all finished already.
        let _ = self.root.reset(0);
    }
}
