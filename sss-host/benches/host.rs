//! Loopback throughput of two hosts in one process: one stream, then many streams.
//!
//! `cargo bench -p sss-host --bench host [-- MB STREAMS]` prints Gbit/s for each case.
#![allow(missing_docs)]

use std::time::Instant;

use sss_host::{Host, HostConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mb: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(200);
    let many: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for streams in [1, many] {
            let secs = run(mb << 20, streams).await;
            println!(
                "{mb} MiB over {streams} stream(s): {secs:.3} s, {:.2} Gbit/s",
                (mb << 20) as f64 * 8.0 / secs / 1e9
            );
        }
    });
}

async fn run(total: usize, streams: usize) -> f64 {
    let bind = || HostConfig::bind("127.0.0.1:0".parse().unwrap());
    let server = Host::new(bind()).unwrap();
    let client = Host::new(bind()).unwrap();
    let listener = server.listen("bench", "v1").unwrap();
    let per = total / streams;
    let sink = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..streams {
            let mut s = listener.accept().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut n = 0;
                loop {
                    let k = s.read(&mut buf).await.unwrap();
                    if k == 0 {
                        break;
                    }
                    n += k;
                }
                s.write_all(&(n as u64).to_be_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let start = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..streams {
        let mut s = client
            .connect(server.eid(), &[server.loopback_addr()], "bench", "v1")
            .await
            .unwrap();
        senders.push(tokio::spawn(async move {
            let chunk = vec![0x5au8; 64 * 1024];
            let mut left = per;
            while left > 0 {
                let n = left.min(chunk.len());
                s.write_all(&chunk[..n]).await.unwrap();
                left -= n;
            }
            s.shutdown().await.unwrap();
            let mut ack = [0u8; 8];
            s.read_exact(&mut ack).await.unwrap();
            assert_eq!(u64::from_be_bytes(ack) as usize, per);
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    sink.await.unwrap();
    secs
}
