//! The quinn 0.11 stack, configured for parity with SSS (perf-anchors §7.2): rustls with the
//! ring provider and one chosen TLS 1.3 suite, CUBIC, 1200-byte initial MTU with discovery up
//! to `max_udp_payload` (1452), large stream and connection windows, 16 MiB socket buffers,
//! GSO/GRO as quinn-udp enables them by default.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::CubicConfig;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, Endpoint, EndpointConfig, MtuDiscoveryConfig, TokioRuntime, VarInt};

use crate::error::{PerfError, Result};
use crate::quinn_tls::{self, PinnedServer, ServerCert};
use crate::stack::{Conn, Dialer, Listener, Target};
use crate::tuning::Tuning;

/// Binds a UDP socket with the requested kernel buffers; returns it with the sizes the kernel
/// granted (Linux reports twice the request, capped by `net.core.[rw]mem_max`).
pub fn udp_socket(addr: SocketAddr, buffer: usize) -> Result<(std::net::UdpSocket, usize, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let io = |what: &str, e| PerfError::io(format!("{what} (UDP {addr})"), e);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| io("creating socket", e))?;
    // Best effort, exactly as the SSS host asks for its socket: an unprivileged process gets
    // at most the sysctl maximum, one with CAP_NET_ADMIN what it asks for.
    sss_host::udp::set_socket_buffers(&socket, buffer);
    socket.bind(&addr.into()).map_err(|e| io("binding", e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| io("setting non-blocking", e))?;
    let rcv = socket
        .recv_buffer_size()
        .map_err(|e| io("reading SO_RCVBUF", e))?;
    let snd = socket
        .send_buffer_size()
        .map_err(|e| io("reading SO_SNDBUF", e))?;
    Ok((socket.into(), rcv, snd))
}

fn transport_config(t: &Tuning) -> Result<quinn::TransportConfig> {
    let varint = |what: &str, v: u64| {
        VarInt::from_u64(v).map_err(|_| PerfError::Config(format!("{what} {v} exceeds 2^62")))
    };
    let mut mtud = MtuDiscoveryConfig::default();
    mtud.upper_bound(t.max_udp_payload);
    let mut c = quinn::TransportConfig::default();
    c.max_concurrent_bidi_streams(VarInt::from_u32(t.max_streams))
        .stream_receive_window(varint("stream window", t.stream_window)?)
        .receive_window(varint("connection window", t.conn_window)?)
        .send_window(t.conn_window)
        .initial_mtu(t.initial_mtu)
        .mtu_discovery_config(Some(mtud))
        .congestion_controller_factory(Arc::new(CubicConfig::default()));
    Ok(c)
}

fn endpoint(
    addr: SocketAddr,
    tuning: &Tuning,
    server: Option<quinn::ServerConfig>,
) -> Result<Endpoint> {
    let mut config = EndpointConfig::default();
    config
        .max_udp_payload_size(tuning.max_udp_payload)
        .map_err(|e| {
            PerfError::Config(format!("max UDP payload {}: {e}", tuning.max_udp_payload))
        })?;
    let (socket, rcv, snd) = udp_socket(addr, tuning.socket_buffer)?;
    tracing::info!(%addr, rcv, snd, "quinn socket buffers granted");
    Endpoint::new(config, server, socket, Arc::new(TokioRuntime))
        .map_err(|e| PerfError::io("creating quinn endpoint", e))
}

/// A quinn server endpoint.
pub struct QuinnListener {
    endpoint: Endpoint,
    identity: String,
}

impl QuinnListener {
    /// Binds `addr` with a self-signed certificate (key from `key_file` if given).
    pub fn bind(addr: SocketAddr, key_file: Option<&Path>, tuning: &Tuning) -> Result<Self> {
        let cert = ServerCert::load_or_generate(key_file)?;
        let tls_err = |e: rustls::Error| PerfError::Config(format!("TLS configuration: {e}"));
        let mut tls = rustls::ServerConfig::builder_with_provider(quinn_tls::provider(
            tuning.cipher.resolve(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert], cert.key)
        .map_err(tls_err)?;
        tls.alpn_protocols = vec![quinn_tls::ALPN.to_vec()];
        let crypto = QuicServerConfig::with_initial(Arc::new(tls), quinn_tls::initial_suite())
            .map_err(|e| PerfError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport_config(tuning)?));
        Ok(Self {
            endpoint: endpoint(addr, tuning, Some(server))?,
            identity: cert.identity,
        })
    }
}

impl Listener for QuinnListener {
    type Conn = QuinnConn;
    type Incoming = Pin<Box<dyn Future<Output = Result<QuinnConn>> + Send>>;

    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint
            .local_addr()
            .map_err(|e| PerfError::io("reading local address", e))
    }

    async fn accept(&self) -> Option<Self::Incoming> {
        let incoming = self.endpoint.accept().await?;
        Some(Box::pin(async move {
            let conn = incoming
                .await
                .map_err(|e| PerfError::io("quinn handshake", e))?;
            Ok(QuinnConn(conn))
        }))
    }
}

/// A quinn client endpoint holding the configuration for one target.
pub struct QuinnDialer {
    endpoint: Endpoint,
}

impl QuinnDialer {
    /// Binds an ephemeral local port and prepares a client configuration pinned to
    /// `target.eid` (or accepting any server if it is `quinn`).
    pub fn bind(target: &Target, tuning: &Tuning) -> Result<Self> {
        let provider = quinn_tls::provider(tuning.cipher.resolve());
        let verifier = Arc::new(PinnedServer::new(&target.eid, &provider)?);
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PerfError::Config(format!("TLS configuration: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        tls.alpn_protocols = vec![quinn_tls::ALPN.to_vec()];
        let crypto = QuicClientConfig::with_initial(Arc::new(tls), quinn_tls::initial_suite())
            .map_err(|e| PerfError::Config(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(transport_config(tuning)?));
        let local: SocketAddr = if target.addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = endpoint(local, tuning, None)?;
        endpoint.set_default_client_config(client);
        Ok(Self { endpoint })
    }
}

impl Dialer for QuinnDialer {
    type Conn = QuinnConn;

    async fn connect(&self, target: &Target) -> Result<QuinnConn> {
        let connecting = self
            .endpoint
            .connect(target.addr, quinn_tls::SERVER_NAME)
            .map_err(|e| PerfError::Config(format!("connecting to {target}: {e}")))?;
        let conn = connecting
            .await
            .map_err(|e| PerfError::io(format!("connecting to {target}"), e))?;
        Ok(QuinnConn(conn))
    }

    async fn shutdown(&self) {
        // Lets the CONNECTION_CLOSE leave before the process exits; bounded because a
        // draining connection can linger for three PTOs.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }
}

/// A quinn connection handle.
#[derive(Clone)]
pub struct QuinnConn(quinn::Connection);

impl Conn for QuinnConn {
    type Send = quinn::SendStream;
    type Recv = quinn::RecvStream;

    async fn open_bi(&self) -> Result<(Self::Send, Self::Recv)> {
        self.0
            .open_bi()
            .await
            .map_err(|e| PerfError::io("opening stream", e))
    }

    async fn accept_bi(&self) -> Result<Option<(Self::Send, Self::Recv)>> {
        match self.0.accept_bi().await {
            Ok(pair) => Ok(Some(pair)),
            Err(ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed) => Ok(None),
            Err(e) => Err(PerfError::io("accepting stream", e)),
        }
    }

    fn close(&self) {
        // Diagnostics for comparing the stacks' recovery (losses, congestion events, RTT).
        if std::env::var_os("SSS_PERF_STATS").is_some() {
            eprintln!("sss-perf stats: {:?}", self.0.stats());
        }
        self.0.close(VarInt::from_u32(0), b"done");
    }
}
