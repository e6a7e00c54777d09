//! The in-process `RegServer` on loopback: hosts register and look each other up through it,
//! it survives garbage, counts what it does, reports bind errors and stops on request.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use regserver::{load_or_create_identity, server_config, Error, RegServer};
use tokio::net::UdpSocket;

async fn start(seed: u64) -> RegServer {
    let key = common::identity(seed);
    RegServer::bind("127.0.0.1:0".parse().unwrap(), server_config(key.eid()))
        .await
        .unwrap()
}

#[tokio::test]
async fn in_process_server_registers_looks_up_and_notifies() {
    let server = start(1).await;
    assert_eq!(server.eid(), common::identity(1).eid());
    common::register_lookup_notify(server.local_addr(), server.eid()).await;

    let stats = server.stats();
    assert_eq!(stats.records, 2);
    assert_eq!(stats.server.registered, 2);
    assert_eq!(stats.server.lookups, 2);
    assert_eq!(stats.server.notifies, 1);
    // 2 x (HELLO, REGISTER) + 2 LOOKUPs (with the cookie B got for its REGISTER) in; a
    // reply to each plus the NOTIFY out.
    assert_eq!(stats.datagrams_in, 6);
    assert_eq!(stats.datagrams_out, 7);
    assert_eq!(stats.send_errors, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn garbage_gets_no_reply_and_the_server_keeps_serving() {
    let server = start(2).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Empty; a HELLO shorter than 64 bytes; server-to-client types (never answered: no
    // reflection); planned and reserved types; unknown types; longer than any message.
    let cases: [(u8, usize); 9] = [
        (0x10, 0),
        (0x10, 63),
        (0x11, 44),
        (0x15, 90),
        (0x16, 300),
        (0x19, 18),
        (0x1a, 90),
        (0x1f, 64),
        (0xff, 9000),
    ];
    for (kind, len) in cases {
        let mut junk: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        if let Some(first) = junk.first_mut() {
            *first = kind;
        }
        sock.send_to(&junk, server.local_addr()).await.unwrap();
    }
    let mut buf = [0u8; 2048];
    let reply = tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await;
    assert!(reply.is_err(), "garbage got a reply: {reply:?}");
    let stats = server.stats();
    assert_eq!(stats.datagrams_in, 9);
    assert_eq!(stats.server.malformed, 9);
    assert_eq!(stats.datagrams_out, 0);

    common::register_lookup_notify(server.local_addr(), server.eid()).await;
}

#[tokio::test]
async fn shutdown_handle_stops_the_server_and_frees_its_port() {
    let mut server = start(3).await;
    let addr = server.local_addr();
    let handle = server.shutdown_handle();
    assert!(!handle.is_shutdown());
    handle.shutdown();
    assert!(handle.is_shutdown());
    tokio::time::timeout(Duration::from_secs(2), server.closed())
        .await
        .expect("the task ends after shutdown");
    // The socket is closed: the address can be bound again.
    let again = RegServer::bind(addr, server_config(common::identity(3).eid()))
        .await
        .unwrap();
    assert_eq!(again.local_addr(), addr);
    drop(again);
    drop(server);
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let server = start(4).await;
    let addr = server.local_addr();
    drop(server);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        if UdpSocket::bind(addr).await.is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "socket still open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn binding_an_address_in_use_is_a_bind_error_naming_it() {
    let taken = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let err = RegServer::bind(addr, server_config(common::identity(5).eid()))
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Bind { addr: a, .. } if *a == addr));
    let text = err.to_string();
    assert!(
        text.contains(&addr.to_string()) && text.contains("in use"),
        "{text}"
    );
}

#[test]
fn key_file_is_created_owner_only_then_loaded_and_never_overwritten() {
    let dir = common::scratch_dir("lib-key");
    let path = dir.join("k");
    let (created, was_new) = load_or_create_identity(&path).unwrap();
    assert!(was_new);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let (loaded, was_new) = load_or_create_identity(&path).unwrap();
    assert!(!was_new);
    assert_eq!(loaded.eid(), created.eid());

    let bad = dir.join("bad");
    std::fs::write(&bad, "sss-ed25519-secret-v1 !!!\n").unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = load_or_create_identity(&bad).unwrap_err();
    assert!(err.to_string().contains("base32"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&bad).unwrap(),
        "sss-ed25519-secret-v1 !!!\n"
    );
}

/// Records are soft state: after the server restarts (same key, same address, empty tables,
/// new cookie secret), a registered host finds out with its next keepalive and registers again.
#[tokio::test]
async fn a_host_registers_again_after_the_server_restarts() {
    let server = start(6).await;
    let (addr, eid) = (server.local_addr(), server.eid());
    let mut host = common::UdpHost::with_config(addr, eid, 21, |c| {
        c.keepalive_interval = Duration::from_secs(1);
    })
    .await;
    host.register().await;
    server.shutdown().await;

    let server = RegServer::bind(addr, server_config(common::identity(6).eid()))
        .await
        .unwrap();
    assert_eq!(server.stats().records, 0);
    let back = host
        .run_until(Duration::from_secs(5), |_| server.stats().records == 1)
        .await;
    let stats = server.stats();
    assert!(back, "{stats:?}");
    assert_eq!(stats.records, 1, "{stats:?}");
    assert_eq!(stats.server.registered, 1);
    assert_eq!(host.client.registered_as(), Some(host.addr()));
}

/// A burst of requests (hosts registering at once after an outage) is queued whole by the
/// server's enlarged socket buffer, not dropped: 600 HELLOs sent while the server cannot run
/// (this test's runtime has one thread) all get their COOKIE. The default buffer (~200 kB)
/// holds about 270 such datagrams.
#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_hellos_is_queued_whole_and_answered() {
    const BURST: usize = 600;
    let server = start(7).await;
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    sock.set_recv_buffer_size(4 << 20).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    let sock: std::net::UdpSocket = sock.into();
    let mut hello = vec![0u8; sss_routing::wire::HELLO_LEN];
    hello[0] = 0x10;
    for i in 0..BURST {
        hello[1..9].copy_from_slice(&(i as u64).to_be_bytes());
        sock.send_to(&hello, server.local_addr()).unwrap();
    }
    sock.set_nonblocking(true).unwrap();
    let sock = UdpSocket::from_std(sock).unwrap();
    let mut buf = [0u8; 2048];
    let mut cookies = 0;
    while cookies < BURST {
        match tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await {
            Ok(Ok((len, _))) if buf[0] == 0x11 && len > 9 => cookies += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    let stats = server.stats();
    assert_eq!(cookies, BURST, "{stats:?}");
    assert_eq!(stats.datagrams_in, BURST as u64);
}
