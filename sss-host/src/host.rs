//! [`Host`]: an identity, one UDP socket and the driver task; the entry point of the API.

use std::future::poll_fn;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand_chacha::rand_core::{OsRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sss_proto::channel::ChannelError;
use sss_proto::stream::DatagramStats;
use sss_proto::{ChannelStats, Eid, Endpoint, Identity};

use crate::config::HostConfig;
use crate::driver::Driver;
use crate::error::Error;
use crate::listener::Listener;
use crate::routing::{reachable, LookupResult, RegserverStatus, Routing};
use crate::state::{Shared, State};
use crate::stream::Stream;
use crate::udp::UdpSocket;

/// A host: one identity, one UDP socket, and a driver task that runs every channel and
/// stream of the host.
///
/// Cloning a `Host` gives another handle to the same host. The driver runs as long as a
/// handle exists (a `Host`, a [`Stream`] or a [`Listener`]); when the last one is dropped it
/// keeps delivering written data for [`HostConfig::linger`], then closes every channel.
/// [`Host::close`] closes at once.
///
/// Constructors must be called inside a tokio runtime (they spawn the driver); the
/// [`blocking`](crate::blocking) module brings its own.
#[derive(Debug)]
pub struct Host {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("eid", &self.eid)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Host {
    /// A host with a freshly generated identity.
    pub fn new(config: HostConfig) -> Result<Self, Error> {
        Self::with_identity(&Identity::generate(&mut OsRng), config)
    }

    /// A host with the identity stored in `path`, which is created (readable by the owner
    /// only) with a new identity if it does not exist.
    pub fn from_key_file(path: impl AsRef<Path>, config: HostConfig) -> Result<Self, Error> {
        let path = path.as_ref();
        let identity = if path.exists() {
            Identity::load(path)?
        } else {
            let identity = Identity::generate(&mut OsRng);
            identity.save(path)?;
            identity
        };
        Self::with_identity(&identity, config)
    }

    /// A host with the given identity.
    pub fn with_identity(identity: &Identity, mut config: HostConfig) -> Result<Self, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Io(std::io::Error::other(
                "sss_host::Host must be created inside a tokio runtime",
            ))
        })?;
        let socket = {
            let _guard = runtime.enter();
            bind(config.bind, config.socket_buffer)?
        };
        let local_addr = socket.local_addr()?;
        if config.endpoint.rng_seed == [0; 32] {
            OsRng.fill_bytes(&mut config.endpoint.rng_seed);
        }
        let unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let endpoint = Endpoint::new(
            config.endpoint.clone(),
            identity,
            Instant::now(),
            unix_nanos,
        );
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let rng = ChaCha20Rng::from_seed(seed);
        let routing = Routing::new(identity, config.routing.clone(), local_addr);
        let regservers = config.regservers.clone();
        let mut state = State::new(endpoint, config, rng, routing);
        let now = Instant::now();
        for (eid, addr) in regservers {
            state.routing.add(now, eid, addr, &mut state.rng);
        }
        state.add_ref();
        let eid = identity.eid();
        let shared = Arc::new(Shared::new(state, eid, local_addr));
        tracing::info!(%eid, %local_addr, "host started");
        runtime.spawn(Driver::new(shared.clone(), socket));
        Ok(Self { shared })
    }

    /// This host's EID (its public key: what peers connect to).
    pub fn eid(&self) -> Eid {
        self.shared.eid
    }

    /// The address the socket is bound to. With the default `[::]:0` binding this is
    /// `[::]:port`; peers on this machine reach it at `127.0.0.1:port` or `[::1]:port`.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The loopback address of this host's socket (`127.0.0.1:port` unless it is bound to
    /// an IPv6-only address), handy for tests and local demos.
    pub fn loopback_addr(&self) -> SocketAddr {
        let addr = self.shared.local_addr;
        match addr {
            SocketAddr::V6(v6) if !v6.ip().is_unspecified() => {
                SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), addr.port())
            }
            _ => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        }
    }

    /// Accepts incoming top-level streams for (`service`, `protocol`). A host can listen on
    /// many pairs; a peer asking for a pair nobody listens on is refused in the handshake
    /// (its `connect` fails with [`Error::Refused`]) or, on a channel that already exists,
    /// its stream is reset ([`Error::UnknownService`]).
    pub fn listen(&self, service: &str, protocol: &str) -> Result<Listener, Error> {
        check_names(service, protocol)?;
        let key = (service.to_owned(), protocol.to_owned());
        let mut st = self.shared.lock();
        if st.closed {
            return Err(Error::HostClosed);
        }
        if st.listeners.contains_key(&key) {
            return Err(Error::AlreadyListening);
        }
        st.listeners.insert(key.clone(), Default::default());
        st.add_ref();
        tracing::info!(service, protocol, "listening");
        Ok(Listener::new(self.shared.clone(), key))
    }

    /// Opens a top-level stream to `peer` for (`service`, `protocol`).
    ///
    /// When a channel to the peer exists, the stream opens on it at once (no round trip).
    /// Otherwise a handshake starts to the first address of `addrs`, and to the next one
    /// every 250 ms while none has answered (or at once when all started so far failed); the
    /// first to complete carries the session (the others are abandoned), and this returns
    /// once it is established. Transient failures (no answer within
    /// [`HostConfig::attempt_timeout`]) are retried as [`HostConfig::backoff`] says; a
    /// refusal ([`Error::Refused`]) is returned at once.
    pub async fn connect(
        &self,
        peer: Eid,
        addrs: &[SocketAddr],
        service: &str,
        protocol: &str,
    ) -> Result<Stream, Error> {
        self.connect_to(peer, Dial::Addrs(addrs), service, protocol)
            .await
    }

    async fn connect_to(
        &self,
        peer: Eid,
        dial: Dial<'_>,
        service: &str,
        protocol: &str,
    ) -> Result<Stream, Error> {
        check_names(service, protocol)?;
        let stream = self
            .establish(peer, dial, service, protocol, true, false)
            .await?;
        Ok(stream.expect("asked to open a stream"))
    }

    /// [`connect`](Self::connect), then writes `first` to the stream, sending as much of it
    /// as fits (about 900 bytes, less with long service and protocol names) inside the
    /// handshake initiation: the peer's application gets the stream and those bytes with the
    /// handshake, and its answer comes back in the handshake's round trip instead of one
    /// round trip later ("early data", `spec/handshake.md` §3.4).
    ///
    /// Early data can be replayed by someone who captured the initiation, to a peer that
    /// restarted since, as long as the peer's clock has not yet passed the initiation's
    /// timestamp (about the clock skew between the two hosts; `spec/handshake.md` §9). Use
    /// it for requests whose replay does no harm (a read, an idempotent or authenticated
    /// command), as with TLS 0-RTT. Without a new session to the peer (a channel is up, or a
    /// session waits for a new channel) the stream opens as with `connect` and `first` goes
    /// as ordinary data.
    ///
    /// ```no_run
    /// # async fn demo(host: &sss_host::Host, peer: sss_host::Eid, addr: std::net::SocketAddr)
    /// # -> Result<(), sss_host::Error> {
    /// use tokio::io::AsyncReadExt;
    ///
    /// let mut stream = host
    ///     .connect_early(peer, &[addr], "kv", "get/1", b"GET greeting\n")
    ///     .await?;
    /// stream.finish()?;
    /// let mut answer = Vec::new();
    /// stream.read_to_end(&mut answer).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_early(
        &self,
        peer: Eid,
        addrs: &[SocketAddr],
        service: &str,
        protocol: &str,
        first: &[u8],
    ) -> Result<Stream, Error> {
        use tokio::io::AsyncWriteExt;

        let (mut stream, written) = self
            .connect_early_with(peer, addrs, service, protocol, |s| s.try_write(first))
            .await?;
        stream.write_all(&first[written..]).await?;
        Ok(stream)
    }

    /// The general form of [`connect_early`](Self::connect_early): opens the stream, runs
    /// `prepare` on it before the handshake starts, then connects. What `prepare` writes with
    /// non-blocking calls ([`Stream::try_write`], [`Stream::finish`],
    /// [`Stream::open_substream`] and writes to those substreams, datagrams) rides in the
    /// handshake initiation as far as it fits, as early data, and the rest follows once
    /// connected. The same replay caveat applies. Returns the stream and what `prepare`
    /// returned; if the connection fails, the stream is reset.
    ///
    /// ```no_run
    /// # async fn demo(host: &sss_host::Host, peer: sss_host::Eid, addr: std::net::SocketAddr)
    /// # -> Result<(), sss_host::Error> {
    /// // A request on a substream of the connection's root stream, sent with the handshake.
    /// let (root, request) = host
    ///     .connect_early_with(peer, &[addr], "kv", "get/1", |root| {
    ///         let request = root.open_substream()?;
    ///         request.try_write(b"GET greeting\n")?;
    ///         request.finish()?;
    ///         Ok(request)
    ///     })
    ///     .await?;
    /// # drop((root, request));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_early_with<T>(
        &self,
        peer: Eid,
        addrs: &[SocketAddr],
        service: &str,
        protocol: &str,
        prepare: impl FnOnce(&Stream) -> Result<T, Error>,
    ) -> Result<(Stream, T), Error> {
        self.connect_early_to(peer, Dial::Addrs(addrs), service, protocol, prepare)
            .await
    }

    async fn connect_early_to<T>(
        &self,
        peer: Eid,
        dial: Dial<'_>,
        service: &str,
        protocol: &str,
        prepare: impl FnOnce(&Stream) -> Result<T, Error>,
    ) -> Result<(Stream, T), Error> {
        check_names(service, protocol)?;
        if peer == self.shared.eid {
            return Err(Error::SelfConnect);
        }
        let (stream, early) = {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(Error::HostClosed);
            }
            // Early data only for a new session: see `Session::is_new`.
            let early =
                !st.is_connected(peer) && st.peers.get(&peer).is_none_or(|p| p.session.is_new());
            if early {
                let id = open_top_level(&mut st, peer, service, protocol)?;
                let stream = st
                    .new_handle(&self.shared, peer, id)
                    .ok_or(Error::HostClosed)?;
                (Some(stream), true)
            } else {
                (None, false)
            }
        };
        let Some(stream) = stream else {
            let stream = self.connect_to(peer, dial, service, protocol).await?;
            let value = prepare(&stream)?;
            return Ok((stream, value));
        };
        let value = match prepare(&stream) {
            Ok(v) => v,
            Err(e) => {
                let _ = stream.reset(crate::ErrorCode::LINK_DOWN);
                return Err(e);
            }
        };
        if let Err(e) = self
            .establish(peer, dial, service, protocol, false, early)
            .await
        {
            let _ = stream.reset(crate::ErrorCode::LINK_DOWN);
            return Err(e);
        }
        Ok((stream, value))
    }

    /// Establishes a new channel to `peer` for the session that already exists with it,
    /// without opening a stream: streams that waited since their channel died (link
    /// [`Down`](crate::LinkStatus::Down)) resume where they were. Uses the (service, protocol)
    /// of the last channel to the peer, so it suits the side that connected first. Returns
    /// at once if a channel is up; retries as [`connect`](Self::connect) does.
    pub async fn reconnect(&self, peer: Eid, addrs: &[SocketAddr]) -> Result<(), Error> {
        let names = self
            .shared
            .lock()
            .peers
            .get(&peer)
            .and_then(|p| p.names.clone());
        let Some((service, protocol)) = names else {
            return Err(Error::NoSession);
        };
        self.establish(peer, Dial::Addrs(addrs), &service, &protocol, false, false)
            .await
            .map(|_| ())
    }

    /// Attempts with retries until a channel is up, then opens a stream if `open`. With
    /// `early`, handshakes of a new session carry its first frames as early data.
    async fn establish(
        &self,
        peer: Eid,
        dial: Dial<'_>,
        service: &str,
        protocol: &str,
        open: bool,
        early: bool,
    ) -> Result<Option<Stream>, Error> {
        if peer == self.shared.eid {
            return Err(Error::SelfConnect);
        }
        let mut failures = 0u32;
        loop {
            // By EID, every attempt looks the peer up again with NOTIFY: the peer punches
            // anew (its regserver may have withheld the last NOTIFY under its rate limit,
            // or the probes were lost) and moved peers are found where they are now.
            let found;
            let addrs = match dial {
                Dial::Addrs(addrs) => addrs,
                Dial::Eid => {
                    found = self.candidates(peer).await?;
                    &found[..]
                }
            };
            let relay = matches!(dial, Dial::Eid);
            let error = match self
                .attempt(peer, addrs, service, protocol, open, early, relay)
                .await
            {
                Ok(stream) => return Ok(stream),
                Err(e @ (Error::TimedOut | Error::ConnectFailed(_))) => e,
                Err(e) => return Err(e),
            };
            failures += 1;
            let delay = {
                let mut st = self.shared.lock();
                let policy = st.config.backoff.clone();
                policy.after_failure(failures, &mut st.rng)
            };
            let Some(delay) = delay else {
                tracing::info!(%peer, failures, error = %error, "giving up connecting");
                return Err(error);
            };
            tracing::debug!(%peer, failures, error = %error, ?delay, "connection attempt failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// One connection attempt (see [`connect`](Self::connect)). With `relay`, if no
    /// handshake answered within [`RoutingConfig::relay_after`](crate::RoutingConfig), the
    /// regserver is asked for a relay, which joins the attempt as one more address.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        peer: Eid,
        addrs: &[SocketAddr],
        service: &str,
        protocol: &str,
        open: bool,
        early: bool,
        relay: bool,
    ) -> Result<Option<Stream>, Error> {
        let (id, timeout, relay_after) = {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(Error::HostClosed);
            }
            if st.is_connected(peer) {
                return self.open_connected(&mut st, peer, service, protocol, open);
            }
            let id = st.start_attempt(Instant::now(), peer, addrs, service, protocol, early)?;
            let relay_after = st.config.routing.relay_after.filter(|_| relay);
            (id, st.config.attempt_timeout, relay_after)
        };
        let guard = AttemptGuard {
            shared: &self.shared,
            id,
        };
        let wait = poll_fn(|cx| {
            let mut st = self.shared.lock();
            if st.closed {
                return Poll::Ready(Err(Error::HostClosed));
            }
            let Some(a) = st.attempts.get_mut(&id) else {
                return Poll::Ready(Err(Error::HostClosed));
            };
            match &a.outcome {
                Some(Ok(())) => Poll::Ready(Ok(())),
                Some(Err(e)) => Poll::Ready(Err(attempt_error(e.clone()))),
                None => {
                    a.waiters.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        });
        // The relay fallback (spec/routing.md §6.3): runs beside the handshakes, never ends.
        let relay_refused = std::sync::Mutex::new(None);
        let relay = async {
            if let Some(after) = relay_after {
                tokio::time::sleep(after).await;
                match self.open_relay(peer).await {
                    Ok(addr) => {
                        tracing::info!(%peer, %addr, "no direct answer: connecting through the relay");
                        self.shared
                            .lock()
                            .add_attempt_address(Instant::now(), id, addr);
                    }
                    Err(e) => {
                        tracing::info!(%peer, error = %e, "no relay");
                        if let Error::RelayRefused(_) = e {
                            *relay_refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        }
                    }
                }
            }
            std::future::pending::<()>().await
        };
        let wait = async {
            tokio::select! {
                outcome = wait => outcome,
                () = relay => unreachable!("the relay branch never ends"),
            }
        };
        let outcome = match tokio::time::timeout(timeout, wait).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let mut st = self.shared.lock();
                st.fail_attempt(Instant::now(), id, ChannelError::HandshakeTimeout(timeout));
                let refused = relay_refused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                Err(refused.unwrap_or(Error::TimedOut))
            }
        };
        drop(guard);
        outcome?;
        let mut st = self.shared.lock();
        if !st.is_connected(peer) {
            // Connected, then closed before we got here.
            return Err(Error::ConnectFailed(ChannelError::LocallyClosed));
        }
        self.open_connected(&mut st, peer, service, protocol, open)
    }

    /// Asks a regserver for a relay slot to `peer` and returns the synthetic address the
    /// channel is to use (spec/routing.md §6.3).
    async fn open_relay(&self, peer: Eid) -> Result<SocketAddr, Error> {
        use crate::routing::RelayFailure;
        let (mut result, mut done) = {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(Error::HostClosed);
            }
            let rx = st.routing.open_relay(Instant::now(), peer)?;
            st.wake_driver();
            (rx, self.shared.done.subscribe())
        };
        let outcome = tokio::select! {
            r = result.wait_for(Option::is_some) => r.ok().and_then(|r| *r),
            _ = done.wait_for(|d| *d) => None,
        };
        match outcome {
            Some(Ok(addr)) => Ok(addr),
            Some(Err(RelayFailure::Refused(code))) => Err(Error::RelayRefused(code)),
            Some(Err(RelayFailure::NoServer)) => Err(Error::NoRegserver),
            Some(Err(RelayFailure::TimedOut | RelayFailure::Full)) => Err(Error::TimedOut),
            None => Err(Error::HostClosed),
        }
    }

    /// Whether the established channel to `peer` goes through a regserver's relay
    /// (spec/routing.md §6) rather than directly; `None` without a channel.
    pub fn is_relayed(&self, peer: Eid) -> Option<bool> {
        let st = self.shared.lock();
        st.channel_to(peer)
            .map(|c| crate::routing::is_relay_addr(c.remote_address()))
    }

    /// Testing aid: drop (or stop dropping) channel datagrams that arrive directly, not
    /// through a relay ([`RoutingConfig::drop_direct`](crate::RoutingConfig)).
    #[doc(hidden)]
    pub fn set_drop_direct(&self, drop: bool) {
        self.shared.lock().config.routing.drop_direct = drop;
    }

    /// Datagrams this host has sent and received through regserver relays so far.
    pub fn relayed_datagrams(&self) -> (u64, u64) {
        self.shared.lock().routing.relayed()
    }

    /// Opens a stream on the established channel to `peer` if `open`.
    fn open_connected(
        &self,
        st: &mut State,
        peer: Eid,
        service: &str,
        protocol: &str,
        open: bool,
    ) -> Result<Option<Stream>, Error> {
        if !open {
            return Ok(None);
        }
        let id = open_top_level(st, peer, service, protocol)?;
        let stream = st.new_handle(&self.shared, peer, id);
        st.wake_driver();
        tracing::debug!(%peer, stream = %id, service, protocol, "opened stream");
        Ok(stream)
    }

    /// Adds a regserver (its EID and address) to those of
    /// [`HostConfig::regservers`]: the host registers with it at once and keeps the
    /// registration alive, and looks peers up in it too. Adding an address twice changes
    /// nothing.
    pub fn add_regserver(&self, eid: Eid, addr: SocketAddr) -> Result<(), Error> {
        let mut st = self.shared.lock();
        if st.closed {
            return Err(Error::HostClosed);
        }
        let st = &mut *st;
        st.routing.add(Instant::now(), eid, addr, &mut st.rng);
        st.wake_driver();
        Ok(())
    }

    /// Where this host stands with each of its regservers.
    pub fn regservers(&self) -> Vec<RegserverStatus> {
        self.shared.lock().routing.status().borrow().clone()
    }

    /// Waits until at least one regserver stores our record (at once if one does), and
    /// returns our endpoint as that regserver observed it (behind a NAT: the NAT's public
    /// address and port). Fails with [`Error::NoRegserver`] without regservers, and with
    /// [`Error::HostClosed`] when the host closes first. Registration goes on in the
    /// background whether or not anyone waits; it is retried forever while regservers do
    /// not answer, so bound the wait with a timeout if that matters.
    pub async fn registered(&self) -> Result<SocketAddr, Error> {
        let (mut status, mut done) = {
            let st = self.shared.lock();
            if st.closed {
                return Err(Error::HostClosed);
            }
            if !st.routing.has_servers() {
                return Err(Error::NoRegserver);
            }
            (st.routing.status(), self.shared.done.subscribe())
        };
        let first = |s: &Vec<RegserverStatus>| s.iter().find_map(|r| r.registered_as);
        tokio::select! {
            r = status.wait_for(|s| first(s).is_some()) => {
                r.ok().and_then(|s| first(&s)).ok_or(Error::HostClosed)
            }
            _ = done.wait_for(|d| *d) => Err(Error::HostClosed),
        }
    }

    /// Looks `peer` up in every regserver and returns its endpoints (the one its regserver
    /// observed first, then those it reports), from the first regserver that knows it.
    /// Only a record signed by the peer's key counts, so a regserver cannot invent
    /// endpoints (and the handshake authenticates the peer wherever it answers).
    ///
    /// Errors: [`Error::NoRegserver`] without regservers; [`Error::PeerNotFound`] when the
    /// regservers that answered hold no record of it; [`Error::LookupTimedOut`] when none
    /// answered within [`RoutingConfig::lookup_timeout`](crate::RoutingConfig::lookup_timeout);
    /// [`Error::LookupRefused`] when they refused.
    pub async fn lookup(&self, peer: Eid) -> Result<Vec<SocketAddr>, Error> {
        self.lookup_inner(peer, false).await
    }

    async fn lookup_inner(&self, peer: Eid, notify: bool) -> Result<Vec<SocketAddr>, Error> {
        let (mut result, mut done) = {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(Error::HostClosed);
            }
            let rx = st.routing.lookup(Instant::now(), peer, notify)?;
            st.wake_driver();
            (rx, self.shared.done.subscribe())
        };
        let outcome: LookupResult = tokio::select! {
            r = result.wait_for(Option::is_some) => r.ok().and_then(|r| r.clone()),
            _ = done.wait_for(|d| *d) => None,
        };
        match outcome {
            Some(Ok(endpoints)) => Ok(endpoints),
            Some(Err(failure)) => Err(failure.into_error()),
            None => Err(Error::HostClosed),
        }
    }

    /// Opens a top-level stream to `peer` for (`service`, `protocol`), knowing only its EID.
    ///
    /// With a channel to the peer up, the stream opens on it at once. Otherwise the host
    /// looks the peer up in its regservers as [`lookup`](Self::lookup) does, asking those
    /// it is registered with to tell the peer to punch toward us (the peer then sends a few
    /// probes to our endpoints, which opens its NAT toward us), and connects to the
    /// endpoints found as [`connect`](Self::connect) does: the first handshake to complete
    /// wins. Failed attempts are retried as [`HostConfig::backoff`] says, each after a new
    /// lookup (so the peer punches again). Lookup errors are returned as they are ([`Error::NoRegserver`],
    /// [`Error::PeerNotFound`], [`Error::LookupTimedOut`], [`Error::LookupRefused`]);
    /// connection errors as with `connect`.
    ///
    /// ```no_run
    /// # async fn demo(regserver: sss_host::Eid, addr: std::net::SocketAddr, peer: sss_host::Eid)
    /// # -> Result<(), sss_host::Error> {
    /// use sss_host::{Host, HostConfig};
    ///
    /// let mut config = HostConfig::default();
    /// config.regservers = vec![(regserver, addr)];
    /// let host = Host::new(config)?;
    /// host.registered().await?; // so that the peer can be asked to punch toward us
    /// let stream = host.connect_eid(peer, "chat", "v1").await?;
    /// # drop(stream);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_eid(
        &self,
        peer: Eid,
        service: &str,
        protocol: &str,
    ) -> Result<Stream, Error> {
        self.connect_to(peer, Dial::Eid, service, protocol).await
    }

    /// [`connect_eid`](Self::connect_eid) with early data, as
    /// [`connect_early`](Self::connect_early) sends it (same replay caveat).
    pub async fn connect_eid_early(
        &self,
        peer: Eid,
        service: &str,
        protocol: &str,
        first: &[u8],
    ) -> Result<Stream, Error> {
        use tokio::io::AsyncWriteExt;

        let (mut stream, written) = self
            .connect_early_to(peer, Dial::Eid, service, protocol, |s| s.try_write(first))
            .await?;
        stream.write_all(&first[written..]).await?;
        Ok(stream)
    }

    /// The endpoints to dial `peer` at: none when a channel is up (the stream opens on
    /// it), else a lookup with NOTIFY, keeping the endpoints our socket can send to, in the
    /// order found except that those at our own public IP (same NAT) go last.
    async fn candidates(&self, peer: Eid) -> Result<Vec<SocketAddr>, Error> {
        if peer == self.shared.eid {
            return Err(Error::SelfConnect);
        }
        if self.shared.lock().is_connected(peer) {
            return Ok(Vec::new());
        }
        let found = self.lookup_inner(peer, true).await?;
        let local = self.shared.local_addr;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for a in found {
            let a = crate::udp::canonical_addr(a);
            if reachable(local, a) && !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        if addrs.is_empty() {
            return Err(Error::NoAddress);
        }
        // Behind the same NAT as the peer (a regserver sees us both at one public IP), its
        // public endpoint needs hairpinning, which many NATs lack: its LAN addresses first.
        let ours: Vec<IpAddr> = self
            .regservers()
            .iter()
            .filter_map(|r| r.registered_as.map(|a| a.ip()))
            .collect();
        addrs.sort_by_key(|a| ours.contains(&a.ip()));
        tracing::debug!(%peer, ?addrs, "dialing by EID");
        Ok(addrs)
    }

    /// Statistics of the established channel to `peer` (RTT, congestion window, bytes and
    /// packets sent, received, lost), or `None` without one.
    pub fn stats(&self, peer: Eid) -> Option<ChannelStats> {
        self.shared.lock().channel_to(peer).map(|c| c.stats())
    }

    /// Datagram counters of the session with `peer` (refused as too large for the peer,
    /// reliable datagrams that failed, fragments dropped…), or `None` without a session.
    pub fn datagram_stats(&self, peer: Eid) -> Option<DatagramStats> {
        self.shared
            .lock()
            .peers
            .get(&peer)
            .map(|p| p.session.datagram_stats())
    }

    /// The peers this host has a session with (connected or waiting for a new channel).
    pub fn peers(&self) -> Vec<Eid> {
        self.shared.lock().peers.keys().copied().collect()
    }

    /// Closes the host at once: every channel is closed (the peers are told), pending
    /// operations fail with [`Error::HostClosed`], and the driver ends. Resolves when it has.
    pub async fn close(&self) {
        self.shared.lock().close();
        let mut done = self.shared.done.subscribe();
        let _ = done.wait_for(|d| *d).await;
    }

    /// Whether the host is closed (explicitly, or its driver ended).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }
}

impl Clone for Host {
    fn clone(&self) -> Self {
        self.shared.lock().add_ref();
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shared.lock().release_ref();
    }
}

/// Where `connect` finds the peer.
#[derive(Debug, Clone, Copy)]
enum Dial<'a> {
    /// At these addresses.
    Addrs(&'a [SocketAddr]),
    /// Through the regservers, looked up before every attempt.
    Eid,
}

/// Leaves an attempt when `connect` finishes or is cancelled.
struct AttemptGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for AttemptGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().leave_attempt(Instant::now(), self.id);
    }
}

/// What a failed handshake means for `connect`.
fn attempt_error(e: ChannelError) -> Error {
    match e {
        ChannelError::Refused { code, reason } => Error::Refused { code, reason },
        ChannelError::HandshakeTimeout(_) | ChannelError::TimedOut(_) => Error::TimedOut,
        e => Error::ConnectFailed(e),
    }
}

pub(crate) fn check_names(service: &str, protocol: &str) -> Result<(), Error> {
    let ok = |s: &str| (1..=255).contains(&s.len());
    if ok(service) && ok(protocol) {
        Ok(())
    } else {
        Err(Error::BadName)
    }
}

/// Binds the host's socket; an unspecified IPv6 address falls back to IPv4 where IPv6 is
/// unavailable.
fn bind(addr: SocketAddr, buffer: usize) -> Result<UdpSocket, Error> {
    match UdpSocket::bind_with_buffers(addr, buffer) {
        Ok(s) => Ok(s),
        Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() => {
            tracing::debug!("cannot bind {addr} ({e}); falling back to IPv4");
            Ok(UdpSocket::bind_with_buffers(
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()),
                buffer,
            )?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens a top-level stream to `peer` in its session (made if needed), listening for its
/// substreams.
fn open_top_level(
    st: &mut State,
    peer: Eid,
    service: &str,
    protocol: &str,
) -> Result<sss_proto::stream::StreamId, Error> {
    let p = st.peer_entry(peer);
    let id = p
        .session
        .open(service, protocol)
        .map_err(Error::from_stream)?;
    let _ = p.session.listen(id, true);
    Ok(id)
}
