//! Bulk transfers between two hosts on real loopback sockets, verified byte for byte.

mod common;

use std::time::Instant;

use common::{host, within, write_pattern, Verifier};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// 20 MB one way, received through `tokio::io::copy` into a sink that checks every byte;
/// the receiver answers with the count it verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_is_exact() {
    const LEN: usize = 20_000_000;
    let server = host();
    let client = host();
    let listener = server.listen("bulk", "v1").unwrap();
    let receiver = tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        let mut sink = Verifier::new(42);
        let copied = tokio::io::copy(&mut stream, &mut sink).await.unwrap();
        stream.write_all(&copied.to_be_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        (copied, sink.checked)
    });
    within(30, async {
        let start = Instant::now();
        let mut stream = client
            .connect(server.eid(), &[server.loopback_addr()], "bulk", "v1")
            .await
            .unwrap();
        write_pattern(&mut stream, 42, LEN).await;
        stream.shutdown().await.unwrap();
        let mut answer = [0u8; 8];
        stream.read_exact(&mut answer).await.unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(u64::from_be_bytes(answer), LEN as u64);
        let (copied, checked) = receiver.await.unwrap();
        assert_eq!((copied, checked), (LEN as u64, LEN as u64));
        let stats = client.stats(server.eid()).expect("channel stats");
        println!(
            "20 MB in {secs:.3} s = {:.2} Gbit/s; client stats: {stats:?}",
            LEN as f64 * 8.0 / secs / 1e9
        );
        assert!(stats.bytes_sent >= LEN as u64);
        assert!(stats.packets_sent > 0 && stats.rtt > std::time::Duration::ZERO);
    })
    .await;
}

/// 50 streams of 200 KB each at once, each with its own content; the server checks each and
/// answers on the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_at_once() {
    const STREAMS: u64 = 50;
    const LEN: usize = 200_000;
    let server = host();
    let client = host();
    let listener = server.listen("bulk", "many").unwrap();
    let acceptor = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..STREAMS {
            let mut stream = listener.accept().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let mut seed = [0u8; 8];
                stream.read_exact(&mut seed).await.unwrap();
                let seed = u64::from_be_bytes(seed);
                let mut sink = Verifier::new(seed);
                let n = tokio::io::copy(&mut stream, &mut sink).await.unwrap();
                stream.write_all(&seed.to_be_bytes()).await.unwrap();
                stream.write_all(&n.to_be_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    within(30, async {
        let start = Instant::now();
        let mut senders = Vec::new();
        for seed in 1..=STREAMS {
            let mut stream = client
                .connect(server.eid(), &[server.loopback_addr()], "bulk", "many")
                .await
                .unwrap();
            senders.push(tokio::spawn(async move {
                stream.write_all(&seed.to_be_bytes()).await.unwrap();
                write_pattern(&mut stream, seed, LEN).await;
                stream.shutdown().await.unwrap();
                let mut answer = [0u8; 16];
                stream.read_exact(&mut answer).await.unwrap();
                assert_eq!(&answer[..8], &seed.to_be_bytes());
                assert_eq!(
                    u64::from_be_bytes(answer[8..].try_into().unwrap()),
                    LEN as u64
                );
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty());
            }));
        }
        for s in senders {
            s.await.unwrap();
        }
        acceptor.await.unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{STREAMS} x {LEN} B in {secs:.3} s = {:.2} Gbit/s",
            (STREAMS as usize * LEN) as f64 * 8.0 / secs / 1e9
        );
        assert_eq!(
            server.peers(),
            vec![client.eid()],
            "one session carries all streams"
        );
    })
    .await;
}
