//! Bad packets from a third socket (garbage, truncated, bit-flipped and replayed copies of
//! real packets, replayed handshakes) change nothing: a transfer running meanwhile completes
//! exactly, the channel keeps its path, and no session or channel appears.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{host, within, write_pattern, Pattern, Verifier};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

/// Datagrams a capturing proxy saw, per direction.
#[derive(Default)]
struct Captured {
    to_server: Vec<Vec<u8>>,
    to_client: Vec<Vec<u8>>,
}

const CAPTURE_LIMIT: usize = 3000;

/// A UDP proxy between one client and `server` that keeps copies of what it forwards.
/// Returns the client-facing address, the server-facing address and the captures.
async fn capturing_proxy(server: SocketAddr) -> (SocketAddr, SocketAddr, Arc<Mutex<Captured>>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let back_addr = back.local_addr().unwrap();
    let captured = Arc::new(Mutex::new(Captured::default()));
    let client = Arc::new(Mutex::new(None::<SocketAddr>));
    {
        let (front, back, captured, client) = (
            front.clone(),
            back.clone(),
            captured.clone(),
            client.clone(),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let (n, from) = front.recv_from(&mut buf).await.unwrap();
                *client.lock().unwrap() = Some(from);
                {
                    let mut c = captured.lock().unwrap();
                    if c.to_server.len() < CAPTURE_LIMIT {
                        c.to_server.push(buf[..n].to_vec());
                    }
                }
                let _ = back.send_to(&buf[..n], server).await;
            }
        });
    }
    {
        let (front, back, captured, client) = (
            front.clone(),
            back.clone(),
            captured.clone(),
            client.clone(),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let (n, _) = back.recv_from(&mut buf).await.unwrap();
                {
                    let mut c = captured.lock().unwrap();
                    if c.to_client.len() < CAPTURE_LIMIT {
                        c.to_client.push(buf[..n].to_vec());
                    }
                }
                let to = *client.lock().unwrap();
                if let Some(to) = to {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
    }
    (addr, back_addr, captured)
}

/// Sends every kind of bad datagram to `target`: random garbage (with every first byte
/// that selects a packet class), and truncated, bit-flipped and exact copies of `real`.
async fn spray(attacker: &UdpSocket, target: SocketAddr, real: &[Vec<u8>], seed: u64) -> usize {
    let mut sent = 0;
    let mut noise = Pattern::new(seed);
    for first in [0x00u8, 0x01, 0x02, 0x03, 0x10, 0x40, 0x55, 0x7f, 0x80, 0xff] {
        for len in [1usize, 2, 5, 16, 17, 33, 64, 148, 1200, 1452] {
            let mut d = vec![0u8; len];
            noise.fill(&mut d);
            d[0] = first;
            let _ = attacker.send_to(&d, target).await;
            sent += 1;
        }
    }
    for (i, p) in real.iter().enumerate() {
        // Exact replay.
        let _ = attacker.send_to(p, target).await;
        // Truncated.
        let cut = (i * 7919) % p.len().max(1);
        let _ = attacker.send_to(&p[..cut.max(1)], target).await;
        // One bit flipped.
        let mut f = p.clone();
        let bit = (i * 104_729) % (f.len() * 8);
        f[bit / 8] ^= 1 << (bit % 8);
        let _ = attacker.send_to(&f, target).await;
        sent += 3;
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packets_from_a_third_socket_change_nothing() {
    const LEN: usize = 4_000_000;
    let server = host();
    let client = host();
    let listener = server.listen("bulk", "v1").unwrap();
    let listener_again = server.listen("bulk", "again").unwrap();
    let (proxy, proxy_back, captured) = capturing_proxy(server.loopback_addr()).await;
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    within(20, async {
        let mut out = client
            .connect(server.eid(), &[proxy], "bulk", "v1")
            .await
            .unwrap();
        let receiver = tokio::spawn(async move {
            let mut stream = listener.accept().await.unwrap();
            let mut sink = Verifier::new(7);
            let n = tokio::io::copy(&mut stream, &mut sink).await.unwrap();
            stream.write_all(b"done").await.unwrap();
            stream.shutdown().await.unwrap();
            (n, sink.checked, stream.remote_addr())
        });
        let sender = async {
            write_pattern(&mut out, 7, LEN).await;
            out.shutdown().await.unwrap();
        };
        let attack = async {
            // Wait for some real traffic to copy, then attack both hosts while it flows.
            while captured.lock().unwrap().to_server.len() < 1000 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let (to_server, to_client) = {
                let c = captured.lock().unwrap();
                (c.to_server.clone(), c.to_client.clone())
            };
            let mut sent = spray(&attacker, server.loopback_addr(), &to_server, 1).await;
            sent += spray(&attacker, client.loopback_addr(), &to_client, 2).await;
            sent
        };
        let ((), sent) = tokio::join!(sender, attack);
        let (n, checked, seen_from) = receiver.await.unwrap();
        assert_eq!(
            (n, checked),
            (LEN as u64, LEN as u64),
            "the transfer is exact"
        );
        let mut done = [0u8; 4];
        out.read_exact(&mut done).await.unwrap();
        assert_eq!(&done, b"done");
        assert!(sent > 1000, "{sent} bad datagrams sent");

        // Replay everything once more, now that the transfer is over (the first packets
        // include the handshake initiation and response).
        let (to_server, to_client) = {
            let c = captured.lock().unwrap();
            (c.to_server.clone(), c.to_client.clone())
        };
        spray(&attacker, server.loopback_addr(), &to_server, 3).await;
        spray(&attacker, client.loopback_addr(), &to_client, 4).await;
        tokio::time::sleep(Duration::from_millis(100)).await;

        // The replays did not move the channel to the attacker's address, nor create
        // anything; the channel still carries new streams.
        assert_eq!(seen_from, Some(proxy_back));
        assert_eq!(out.remote_addr(), Some(proxy));
        assert_eq!(server.peers(), vec![client.eid()]);
        assert_eq!(client.peers(), vec![server.eid()]);
        let stats = server.stats(client.eid()).expect("the channel is up");
        println!("server stats after the attack: {stats:?}");
        assert!(stats.dropped_replayed > 0, "replays were seen and dropped");
        assert!(
            stats.dropped_unauthenticated > 0,
            "forgeries were seen and dropped"
        );
        let mut again = client
            .connect(server.eid(), &[proxy], "bulk", "again")
            .await
            .unwrap();
        again.write_all(b"still here").await.unwrap();
        again.finish().unwrap();
        let mut inc = listener_again.accept().await.unwrap();
        let mut text = String::new();
        inc.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "still here");
    })
    .await;
}
