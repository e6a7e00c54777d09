//! The in-process `RegServer` relays (spec/routing.md §6) between two hosts on loopback:
//! datagrams go through unchanged both ways, only from the slot's two endpoints, and the
//! counters say what was relayed and dropped.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::UdpHost;
use regserver::{server_config, RegServer};
use sss_routing::wire::{relay_header, ErrorCode};
use sss_routing::{Event, RelayOutcome};
use tokio::net::UdpSocket;

async fn start(seed: u64, tweak: impl FnOnce(&mut sss_routing::ServerConfig)) -> RegServer {
    let key = common::identity(seed);
    let mut config = server_config(key.eid());
    tweak(&mut config);
    RegServer::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

/// A opens a relay to B; both learn the same relay_id.
async fn open(a: &mut UdpHost, b: &mut UdpHost) -> u32 {
    let target = b.eid();
    a.client.open_relay(Instant::now(), target).unwrap();
    let opened = |ev: &[Event]| {
        ev.iter()
            .any(|e| matches!(e, Event::RelayResult { peer, .. } if *peer == target))
    };
    assert!(a.run_until(Duration::from_secs(5), opened).await);
    let id = a
        .events
        .iter()
        .find_map(|e| match e {
            Event::RelayResult {
                outcome: RelayOutcome::Opened { relay_id, .. },
                ..
            } => Some(*relay_id),
            _ => None,
        })
        .expect("opened");
    let caller = a.eid();
    let offered = |ev: &[Event]| {
        ev.iter()
            .any(|e| matches!(e, Event::RelayOffered { peer, .. } if *peer == caller))
    };
    assert!(b.run_until(Duration::from_secs(5), offered).await);
    assert!(b.events.iter().any(
        |e| matches!(e, Event::RelayOffered { peer, relay_id, .. } if *peer == caller && *relay_id == id)
    ));
    id
}

async fn recv(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 2048];
    let r = tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await;
    r.ok().map(|r| {
        let (n, from) = r.unwrap();
        (buf[..n].to_vec(), from)
    })
}

#[tokio::test]
async fn the_regserver_relays_both_ways_and_counts() {
    let server = start(21, |_| {}).await;
    let (addr, eid) = (server.local_addr(), server.eid());
    let mut a = UdpHost::new(addr, eid, 31).await;
    let mut b = UdpHost::new(addr, eid, 32).await;
    a.register().await;
    b.register().await;
    let id = open(&mut a, &mut b).await;

    let mut bytes = 0;
    for i in 0..50u8 {
        for (from, to) in [(&a, &b), (&b, &a)] {
            let mut d = relay_header(id).to_vec();
            d.extend_from_slice(&[0x80, i]);
            d.resize(100 + 20 * usize::from(i), i);
            from.socket.send_to(&d, addr).await.unwrap();
            bytes += d.len() as u64;
            let (got, src) = recv(&to.socket).await.expect("relayed");
            assert_eq!((got, src), (d, addr), "unchanged, from the regserver");
        }
    }
    // A stranger with the relay_id, and A's IP with another port: dropped.
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut d = relay_header(id).to_vec();
    d.extend_from_slice(b"spoofed");
    stranger.send_to(&d, addr).await.unwrap();
    assert!(recv(&a.socket).await.is_none() && recv(&b.socket).await.is_none());

    let stats = server.stats();
    assert_eq!(stats.relays, 1);
    assert_eq!(stats.server.relays_opened, 1);
    assert_eq!(stats.server.relayed_packets, 100);
    assert_eq!(stats.server.relayed_bytes, bytes);
    assert_eq!(stats.server.relay_dropped, 1);
    assert_eq!(stats.send_errors, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_regserver_without_relay_slots_refuses_with_full() {
    let server = start(22, |c| c.max_relays = 0).await;
    let (addr, eid) = (server.local_addr(), server.eid());
    let mut a = UdpHost::new(addr, eid, 41).await;
    let mut b = UdpHost::new(addr, eid, 42).await;
    a.register().await;
    b.register().await;
    let target = b.eid();
    a.client.open_relay(Instant::now(), target).unwrap();
    let done = |ev: &[Event]| ev.iter().any(|e| matches!(e, Event::RelayResult { .. }));
    assert!(a.run_until(Duration::from_secs(5), done).await);
    assert!(a.events.iter().any(|e| matches!(
        e,
        Event::RelayResult {
            outcome: RelayOutcome::Refused(ErrorCode::Full),
            ..
        }
    )));
    assert_eq!(server.stats().relays, 0);
    server.shutdown().await;
}
