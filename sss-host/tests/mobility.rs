//! A peer that changes address mid-transfer keeps its channel; a channel that dies is
//! replaced and the streams resume; a peer that is killed and restarted is noticed (link
//! down, then its old streams fail with `PeerRestarted`) and can be reached again.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{host, host_with, loopback, within, write_pattern, Verifier};
use sss_host::{ChannelConfig, Error, Host, HostConfig, Identity, ImpairConfig, LinkStatus, Relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// A NAT-like forwarder for one client: the server sees its `back` socket, which
/// [`Rebinder::rebind`] replaces by a new one (a new port), as a NAT that lost its mapping.
struct Rebinder {
    front: Arc<UdpSocket>,
    back: Mutex<Arc<UdpSocket>>,
    client: Arc<Mutex<Option<SocketAddr>>>,
}

impl Rebinder {
    async fn start(server: SocketAddr) -> Arc<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let this = Arc::new(Self {
            front: front.clone(),
            back: Mutex::new(back.clone()),
            client: Arc::default(),
        });
        this.spawn_back(back);
        let me = this.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let (n, from) = front.recv_from(&mut buf).await.unwrap();
                *me.client.lock().unwrap() = Some(from);
                let back = me.back.lock().unwrap().clone();
                let _ = back.send_to(&buf[..n], server).await;
            }
        });
        this
    }

    fn spawn_back(&self, back: Arc<UdpSocket>) {
        let (front, client) = (self.front.clone(), self.client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let (n, _) = back.recv_from(&mut buf).await.unwrap();
                let to = *client.lock().unwrap();
                if let Some(to) = to {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
    }

    /// Moves to a new server-facing port.
    async fn rebind(&self) -> SocketAddr {
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = back.local_addr().unwrap();
        self.spawn_back(back.clone());
        *self.back.lock().unwrap() = back;
        addr
    }

    fn addr(&self) -> SocketAddr {
        self.front.local_addr().unwrap()
    }

    fn back_addr(&self) -> SocketAddr {
        self.back.lock().unwrap().local_addr().unwrap()
    }
}

/// Records every link status a stream reports.
fn record_link(mut link: watch::Receiver<LinkStatus>) -> Arc<Mutex<Vec<LinkStatus>>> {
    let seen = Arc::new(Mutex::new(vec![*link.borrow_and_update()]));
    let s = seen.clone();
    tokio::spawn(async move {
        while link.changed().await.is_ok() {
            s.lock().unwrap().push(*link.borrow_and_update());
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_moving_to_a_new_port_keeps_its_streams() {
    const LEN: usize = 6_000_000;
    let server = host();
    let client = host();
    let listener = server.listen("bulk", "v1").unwrap();
    let nat = Rebinder::start(server.loopback_addr()).await;
    let first_back = nat.back_addr();
    within(20, async {
        let mut out = client
            .connect(server.eid(), &[nat.addr()], "bulk", "v1")
            .await
            .unwrap();
        let links = record_link(out.link_status());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let receiver = tokio::spawn(async move {
            let mut stream = listener.accept().await.unwrap();
            let before = stream.remote_addr();
            // Read a third, let the test move the client, read the rest.
            let mut head = vec![0u8; LEN / 3];
            stream.read_exact(&mut head).await.unwrap();
            tx.send(()).unwrap();
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap();
            head.extend(rest);
            stream.write_all(b"ok").await.unwrap();
            stream.shutdown().await.unwrap();
            (head, before, stream.remote_addr())
        });
        let writer = async {
            write_pattern(&mut out, 3, LEN).await;
            out.shutdown().await.unwrap();
        };
        let mover = async {
            rx.await.unwrap();
            nat.rebind().await
        };
        let ((), new_back) = tokio::join!(writer, mover);
        let mut ok = [0u8; 2];
        out.read_exact(&mut ok).await.unwrap();
        let (data, before, after) = receiver.await.unwrap();
        let mut check = Verifier::new(3);
        check.write_all(&data).await.unwrap();
        assert_eq!(check.checked, LEN as u64, "every byte, in order");
        assert_eq!(before, Some(first_back));
        assert_eq!(
            after,
            Some(new_back),
            "the server follows the client to its new port"
        );
        assert!(
            !links.lock().unwrap().contains(&LinkStatus::Down),
            "the streams never lost their channel: {:?}",
            links.lock().unwrap()
        );
    })
    .await;
}

/// A host whose channels give up after one second of silence.
fn quick_config(bind: SocketAddr) -> HostConfig {
    let mut channel = ChannelConfig::default();
    channel.idle_timeout = Duration::from_secs(1);
    let mut c = HostConfig::bind(bind);
    c.endpoint.channel = Arc::new(channel);
    c.attempt_timeout = Duration::from_millis(500);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_resume_on_a_new_channel_after_the_old_one_died() {
    const LEN: usize = 3_000_000;
    let server = host_with(quick_config(loopback()));
    let client = host_with(quick_config(loopback()));
    let listener = server.listen("bulk", "v1").unwrap();
    let relay = Relay::start(loopback(), server.loopback_addr(), ImpairConfig::default()).unwrap();
    within(20, async {
        let mut out = client
            .connect(server.eid(), &[relay.local_addr()], "bulk", "v1")
            .await
            .unwrap();
        let mut link = out.link_status();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let receiver = tokio::spawn(async move {
            let mut stream = listener.accept().await.unwrap();
            let mut head = vec![0u8; LEN / 3];
            stream.read_exact(&mut head).await.unwrap();
            tx.send(()).unwrap();
            let mut sink = Verifier::new(8);
            sink.write_all(&head).await.unwrap();
            tokio::io::copy(&mut stream, &mut sink).await.unwrap();
            stream.write_all(b"ok").await.unwrap();
            stream.shutdown().await.unwrap();
            sink.checked
        });
        let writer = async {
            write_pattern(&mut out, 8, LEN).await;
            out.shutdown().await.unwrap();
        };
        let breaker = async {
            rx.await.unwrap();
            // Cut the path until the channel times out on both sides.
            relay.set_config(ImpairConfig {
                loss: 1.0,
                ..ImpairConfig::default()
            });
            link.wait_for(|s| *s == LinkStatus::Down).await.unwrap();
            assert!(client.stats(server.eid()).is_none(), "the channel is gone");
            tokio::time::sleep(Duration::from_millis(500)).await;
            relay.set_config(ImpairConfig::default());
            // The application brings a new channel; the session (and its streams) resume.
            client
                .reconnect(server.eid(), &[relay.local_addr()])
                .await
                .unwrap();
            link.wait_for(|s| *s == LinkStatus::Up).await.unwrap();
        };
        tokio::join!(writer, breaker);
        let mut ok = [0u8; 2];
        out.read_exact(&mut ok).await.unwrap();
        assert_eq!(&ok, b"ok");
        assert_eq!(
            receiver.await.unwrap(),
            LEN as u64,
            "nothing lost, nothing twice"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_noticed_and_reachable_again() {
    let identity = Identity::generate(&mut rand_chacha::rand_core::OsRng);
    let addr = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    // The server runs on a runtime of its own, so that it can be killed without a word.
    let start_server = |identity: &Identity| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = {
            let _guard = rt.enter();
            Host::with_identity(identity, quick_config(addr)).unwrap()
        };
        let listener = server.listen("svc", "v1").unwrap();
        rt.spawn(async move {
            while let Ok(mut s) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (rt, server)
    };
    let client = host_with(quick_config(loopback()));
    let (rt, server) = start_server(&identity);
    within(20, async {
        let mut old = client
            .connect(identity.eid(), &[addr], "svc", "v1")
            .await
            .unwrap();
        old.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        old.read_exact(&mut buf).await.unwrap();

        // Kill: the driver stops without sending anything.
        rt.shutdown_background();
        drop(server);
        old.write_all(b"anyone?").await.unwrap();
        let mut link = old.link_status();
        link.wait_for(|s| *s == LinkStatus::Down).await.unwrap();

        // The same identity comes back on the same port, with a fresh session.
        let (rt2, server2) = start_server(&identity);
        let mut new = client
            .connect(identity.eid(), &[addr], "svc", "v1")
            .await
            .unwrap();
        new.write_all(b"again").await.unwrap();
        let mut buf = [0u8; 5];
        new.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"again");
        let e = old.read(&mut buf).await.unwrap_err();
        let typed = e.get_ref().and_then(|e| e.downcast_ref::<Error>());
        assert!(matches!(typed, Some(Error::PeerRestarted)), "{e}");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
        drop(server2);
        rt2.shutdown_background();
    })
    .await;
}
