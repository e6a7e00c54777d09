//! Connecting: the retry policy on a peer that does not answer, a peer that comes up during
//! the retries, several candidate addresses, concurrent connects (also both ways at once), key
//! files and argument errors.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{host, host_with, loopback, within};
use sss_host::{BackoffPolicy, Error, Host, HostConfig, Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(attempt_ms: u64, policy: BackoffPolicy) -> HostConfig {
    let mut c = HostConfig::bind(loopback());
    c.attempt_timeout = Duration::from_millis(attempt_ms);
    c.backoff = policy;
    c
}

/// A socket that swallows everything and counts handshake initiations (first byte 1).
async fn black_hole() -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = socket.recv_from(&mut buf).await {
            if n > 0 && buf[0] == 1 {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (addr, count)
}

fn some_eid() -> sss_host::Eid {
    Identity::generate(&mut rand_chacha::rand_core::OsRng).eid()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_policy_then_time_out() {
    let policy = BackoffPolicy {
        delays_ms: vec![100, 200],
        jitter_percent: 0,
        conceal: 2,
    };
    let client = host_with(config(300, policy));
    let (addr, initiations) = black_hole().await;
    let start = Instant::now();
    let e = within(5, client.connect(some_eid(), &[addr], "svc", "v1"))
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    assert!(matches!(e, Error::TimedOut), "{e:?}");
    // Three attempts of 300 ms (two failures concealed), 100 + 200 ms apart.
    assert!(elapsed >= Duration::from_millis(1200), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    assert_eq!(
        initiations.load(Ordering::Relaxed),
        3,
        "one handshake per attempt"
    );
    assert_eq!(std::io::Error::from(e).kind(), std::io::ErrorKind::TimedOut);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_comes_up_during_the_retries_is_reached() {
    let policy = BackoffPolicy {
        delays_ms: vec![50],
        jitter_percent: 10,
        conceal: 20,
    };
    let client = host_with(config(200, policy));
    let identity = Identity::generate(&mut rand_chacha::rand_core::OsRng);
    // Reserve a port, free it, and start the server there a little later.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let server_identity = Identity::from_secret_bytes(&identity.secret_bytes());
    let server = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let server = Host::with_identity(&server_identity, HostConfig::bind(addr)).unwrap();
        let listener = server.listen("late", "v1").unwrap();
        let mut s = listener.accept().await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    });
    let start = Instant::now();
    let mut s = within(5, client.connect(identity.eid(), &[addr], "late", "v1"))
        .await
        .expect("the failures before the server started are concealed");
    assert!(start.elapsed() >= Duration::from_millis(600));
    s.write_all(b"made it").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(within(5, server).await.unwrap(), "made it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_that_answers_wins() {
    let server = host();
    let listener = server.listen("multi", "v1").unwrap();
    let client = host_with(config(2000, BackoffPolicy::never()));
    let (dead, _) = black_hole().await;
    let start = Instant::now();
    let mut s = within(
        5,
        client.connect(server.eid(), &[dead, server.loopback_addr()], "multi", "v1"),
    )
    .await
    .unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "handshakes run in parallel"
    );
    s.write_all(b"x").await.unwrap();
    let inc = within(5, listener.accept()).await.unwrap();
    assert_eq!(inc.remote_eid(), client.eid());
    assert_eq!(s.remote_addr(), Some(server.loopback_addr()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_share_one_session() {
    let server = host();
    let listener = server.listen("many", "v1").unwrap();
    let client = host();
    let addr = [server.loopback_addr()];
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let client = client.clone();
        let eid = server.eid();
        tasks.push(tokio::spawn(async move {
            let mut s = client.connect(eid, &addr, "many", "v1").await.unwrap();
            s.write_all(&[i]).await.unwrap();
            s.shutdown().await.unwrap();
            s
        }));
    }
    let mut seen = Vec::new();
    within(5, async {
        for _ in 0..20 {
            let mut s = listener.accept().await.unwrap();
            let mut b = Vec::new();
            s.read_to_end(&mut b).await.unwrap();
            seen.extend(b);
        }
    })
    .await;
    for t in tasks {
        t.await.unwrap();
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<u8>>());
    assert_eq!(server.peers(), vec![client.eid()]);
}

/// Two hosts that connect to each other at the same moment: their handshakes cross, each
/// side is responder of one channel and initiator of the other. Both must settle on the same
/// channel (a host that dropped its own handshake for the peer's, while the peer did the
/// opposite, would leave each side on a channel the other had abandoned, and every stream
/// would hang). Repeated, since the interleaving varies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_connecting_to_each_other_at_once_share_one_working_channel() {
    for round in 0..10u8 {
        let hosts = [host(), host()];
        for h in &hosts {
            let listener = h.listen("both", "v1").unwrap();
            tokio::spawn(async move {
                while let Ok(mut s) = listener.accept().await {
                    tokio::spawn(async move {
                        let mut b = Vec::new();
                        s.read_to_end(&mut b).await.unwrap();
                        s.write_all(&b).await.unwrap();
                        s.shutdown().await.unwrap();
                    });
                }
            });
        }
        let mut tasks = Vec::new();
        for (me, other) in [(0, 1), (1, 0)] {
            let from = hosts[me].clone();
            let (eid, addr) = (hosts[other].eid(), hosts[other].loopback_addr());
            tasks.push(tokio::spawn(async move {
                let mut s = from.connect(eid, &[addr], "both", "v1").await.unwrap();
                let msg = [round, me as u8];
                s.write_all(&msg).await.unwrap();
                s.shutdown().await.unwrap();
                let mut echo = Vec::new();
                s.read_to_end(&mut echo).await.unwrap();
                assert_eq!(echo, msg, "round {round}: host {me}'s stream was echoed");
            }));
        }
        within(5, async {
            for t in tasks {
                t.await.unwrap();
            }
        })
        .await;
        assert_eq!(hosts[0].peers(), vec![hosts[1].eid()]);
        assert_eq!(hosts[1].peers(), vec![hosts[0].eid()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argument_errors_are_typed() {
    let client = host();
    let other = some_eid();
    let addr = [client.loopback_addr()];
    assert!(matches!(
        client.connect(client.eid(), &addr, "s", "p").await,
        Err(Error::SelfConnect)
    ));
    assert!(matches!(
        client.connect(other, &addr, "", "p").await,
        Err(Error::BadName)
    ));
    assert!(matches!(
        client.connect(other, &addr, &"x".repeat(256), "p").await,
        Err(Error::BadName)
    ));
    assert!(matches!(
        client.connect(other, &[], "s", "p").await,
        Err(Error::NoAddress)
    ));
    let _l = client.listen("s", "p").unwrap();
    assert!(matches!(
        client.listen("s", "p"),
        Err(Error::AlreadyListening)
    ));
    client.close().await;
    assert!(matches!(client.listen("t", "p"), Err(Error::HostClosed)));
    assert!(matches!(
        client.connect(other, &addr, "s", "p").await,
        Err(Error::HostClosed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_file_keeps_the_identity() {
    let dir = std::env::temp_dir().join(format!("sss-host-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("host.key");
    let _ = std::fs::remove_file(&path);
    let first = Host::from_key_file(&path, HostConfig::bind(loopback())).unwrap();
    let eid = first.eid();
    first.close().await;
    let second = Host::from_key_file(&path, HostConfig::bind(loopback())).unwrap();
    assert_eq!(second.eid(), eid, "the key file was created, then loaded");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_addresses_of_the_same_host_give_one_working_channel() {
    // Dual-stack hosts (the default binding); 127.0.0.1 and 127.0.0.2 both reach the server.
    let server = host_with(HostConfig::default());
    let client = host_with(HostConfig::default());
    let listener = server.listen("dual", "v1").unwrap();
    let port = server.local_addr().port();
    let addrs: [SocketAddr; 2] = [([127, 0, 0, 1], port).into(), ([127, 0, 0, 2], port).into()];
    within(10, async {
        let mut s = client
            .connect(server.eid(), &addrs, "dual", "v1")
            .await
            .unwrap();
        s.write_all(b"one").await.unwrap();
        let mut inc = listener.accept().await.unwrap();
        let mut buf = [0u8; 3];
        inc.read_exact(&mut buf).await.unwrap();
        // Later traffic still flows: the session did not lose its channel to a duplicate.
        tokio::time::sleep(Duration::from_millis(600)).await;
        s.write_all(b"two").await.unwrap();
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        inc.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"two");
        assert_eq!(*s.link_status().borrow(), sss_host::LinkStatus::Up);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_beyond_the_limit_are_refused_as_busy() {
    let mut config = HostConfig::bind(loopback());
    config.max_peers = 1;
    let server = host_with(config);
    let _listener = server.listen("svc", "v1").unwrap();
    let addr = [server.loopback_addr()];
    let first = host();
    let second = host();
    within(5, async {
        let _s = first
            .connect(server.eid(), &addr, "svc", "v1")
            .await
            .unwrap();
        match second.connect(server.eid(), &addr, "svc", "v1").await {
            Err(Error::Refused { code, .. }) => assert_eq!(code, sss_host::RefuseCode::BUSY),
            other => panic!("expected a BUSY refusal, got {other:?}"),
        }
        // The known peer still gets new channels and streams.
        let _again = first
            .connect(server.eid(), &addr, "svc", "v1")
            .await
            .unwrap();
        assert_eq!(server.peers(), vec![first.eid()]);
    })
    .await;
}
