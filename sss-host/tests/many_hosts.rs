//! Many hosts and streams at once on real loopback sockets: every host connects to every
//! other at the same moment (so handshakes cross), and each ordered pair carries several
//! top-level streams with substreams, data both ways, all verified byte for byte.

mod common;

use std::time::Instant;

use common::{host, within, write_pattern, Verifier};
use sss_host::{Eid, Host, Listener, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Hosts in the mesh.
const HOSTS: usize = 8;
/// Top-level streams each host opens to each other host.
const STREAMS: u64 = 3;
/// Substreams each of those opens.
const SUBS: u64 = 3;
// A stream's substreams take the seeds after its own, within its block of 8.
const _: () = assert!(SUBS < 8);
/// Bytes sent on a top-level stream, and answered.
const TOP_LEN: usize = 100_000;
const TOP_ANSWER: usize = 20_000;
/// Bytes sent on a substream, and answered.
const SUB_LEN: usize = 30_000;
const SUB_ANSWER: usize = 10_000;
/// The answer to the stream or substream with seed `s` is `Pattern(s ^ ANSWER)`.
const ANSWER: u64 = 0xA5A5_0000;

/// What a receiving host found on one stream or substream.
#[derive(Debug)]
struct Report {
    host: usize,
    from: Eid,
    seed: u64,
    result: Result<u64, String>,
}

/// The seed of top-level stream `t` from host `i` to host `j`; its substreams use the next
/// `SUBS` values.
fn seed(i: usize, j: usize, t: u64) -> u64 {
    1 + (((i * HOSTS + j) as u64 * STREAMS + t) * 8)
}

/// Reads an 8-byte seed, then the rest of `stream` into a verifier of that seed: the seed
/// and the number of bytes that matched, or what went wrong.
async fn receive(stream: &mut Stream, expected_len: usize) -> (u64, Result<u64, String>) {
    let mut seed = [0u8; 8];
    if let Err(e) = stream.read_exact(&mut seed).await {
        return (0, Err(format!("reading the seed: {e}")));
    }
    let seed = u64::from_be_bytes(seed);
    let mut sink = Verifier::new(seed);
    let result = match tokio::io::copy(stream, &mut sink).await {
        Ok(n) if n == expected_len as u64 && sink.checked == n => Ok(n),
        Ok(n) => Err(format!("{n} bytes, {} checked", sink.checked)),
        Err(e) => Err(e.to_string()),
    };
    (seed, result)
}

/// Answers a verified stream with `len` bytes of its answer pattern, then finishes it.
async fn answer(stream: &mut Stream, seed: u64, len: usize) {
    write_pattern(stream, seed ^ ANSWER, len).await;
    stream.shutdown().await.expect("finish");
}

/// Serves host `me`: for each incoming stream, takes its substreams (their number follows
/// the seed), checks everything and answers each stream and substream; reports every one.
async fn serve(me: usize, listener: Listener, reports: mpsc::UnboundedSender<Report>) {
    while let Ok(mut stream) = listener.accept().await {
        let reports = reports.clone();
        tokio::spawn(async move {
            let from = stream.remote_eid();
            let mut head = [0u8; 1];
            stream.read_exact(&mut head).await.expect("substream count");
            let mut subs = Vec::new();
            for _ in 0..head[0] {
                let mut sub = stream
                    .accept_substream()
                    .await
                    .expect("accept")
                    .expect("a substream");
                let reports = reports.clone();
                subs.push(tokio::spawn(async move {
                    let (seed, result) = receive(&mut sub, SUB_LEN).await;
                    if result.is_ok() {
                        answer(&mut sub, seed, SUB_ANSWER).await;
                    }
                    let _ = reports.send(Report {
                        host: me,
                        from,
                        seed,
                        result,
                    });
                }));
            }
            let (seed, result) = receive(&mut stream, TOP_LEN).await;
            if result.is_ok() {
                answer(&mut stream, seed, TOP_ANSWER).await;
            }
            let _ = reports.send(Report {
                host: me,
                from,
                seed,
                result,
            });
            for s in subs {
                s.await.expect("substream task");
            }
        });
    }
}

/// Reads `stream` to its end and checks it is the answer to `seed`.
async fn check_answer(stream: &mut Stream, seed: u64, len: usize) {
    let mut sink = Verifier::new(seed ^ ANSWER);
    let n = tokio::io::copy(stream, &mut sink).await.expect("answer");
    assert_eq!(
        (n, sink.checked),
        (len as u64, len as u64),
        "answer to {seed}"
    );
}

/// Host `i` opens top-level stream `t` to host `j` with its substreams, sends everything at
/// once and checks every answer.
async fn send(client: Host, i: usize, j: usize, server: (Eid, std::net::SocketAddr), t: u64) {
    let top = seed(i, j, t);
    let mut stream = client
        .connect(server.0, &[server.1], "mesh", "v1")
        .await
        .unwrap_or_else(|e| panic!("host {i} connecting to host {j}: {e}"));
    stream.write_all(&[SUBS as u8]).await.unwrap();
    let mut subs = Vec::new();
    for k in 0..SUBS {
        let mut sub = stream.open_substream().unwrap();
        let seed = top + 1 + k;
        subs.push(tokio::spawn(async move {
            sub.write_all(&seed.to_be_bytes()).await.unwrap();
            write_pattern(&mut sub, seed, SUB_LEN).await;
            sub.shutdown().await.unwrap();
            check_answer(&mut sub, seed, SUB_ANSWER).await;
        }));
    }
    stream.write_all(&top.to_be_bytes()).await.unwrap();
    write_pattern(&mut stream, top, TOP_LEN).await;
    stream.shutdown().await.unwrap();
    check_answer(&mut stream, top, TOP_ANSWER).await;
    for s in subs {
        s.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_connects_to_every_other_at_once() {
    let hosts: Vec<Host> = (0..HOSTS).map(|_| host()).collect();
    let (tx, mut rx) = mpsc::unbounded_channel();
    for (me, h) in hosts.iter().enumerate() {
        tokio::spawn(serve(me, h.listen("mesh", "v1").unwrap(), tx.clone()));
    }
    drop(tx);
    let start = Instant::now();
    within(30, async {
        // Every connect starts together: host i reaches j while j reaches i.
        let mut tasks = Vec::new();
        for (i, client) in hosts.iter().enumerate() {
            for (j, server) in hosts.iter().enumerate() {
                if i == j {
                    continue;
                }
                for t in 0..STREAMS {
                    let target = (server.eid(), server.loopback_addr());
                    tasks.push(tokio::spawn(send(client.clone(), i, j, target, t)));
                }
            }
        }
        for task in tasks {
            task.await.unwrap();
        }

        // Every stream and substream arrived whole at its host, from the right peer.
        let per_host = (HOSTS - 1) * STREAMS as usize * (1 + SUBS as usize);
        let mut seen = vec![Vec::new(); HOSTS];
        for _ in 0..HOSTS * per_host {
            let r = rx.recv().await.expect("a report");
            let len = if (r.seed - 1) % 8 == 0 {
                TOP_LEN
            } else {
                SUB_LEN
            };
            assert_eq!(r.result, Ok(len as u64), "{r:?}");
            let i = ((r.seed - 1) / 8 / STREAMS) as usize / HOSTS;
            let j = ((r.seed - 1) / 8 / STREAMS) as usize % HOSTS;
            assert_eq!(j, r.host, "{r:?} reached the host it was sent to");
            assert_eq!(r.from, hosts[i].eid(), "{r:?} came from its sender");
            seen[r.host].push(r.seed);
        }
        for (h, seeds) in seen.iter_mut().enumerate() {
            seeds.sort_unstable();
            seeds.dedup();
            assert_eq!(seeds.len(), per_host, "host {h} got each stream once");
        }
    })
    .await;
    let secs = start.elapsed().as_secs_f64();

    // One session per pair, each with an established channel.
    for (i, h) in hosts.iter().enumerate() {
        let mut peers = h.peers();
        peers.sort_by_key(|e| *e.as_bytes());
        let mut others: Vec<Eid> = hosts
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, o)| o.eid())
            .collect();
        others.sort_by_key(|e| *e.as_bytes());
        assert_eq!(peers, others, "host {i} has a session with every other");
        for o in &others {
            assert!(h.stats(*o).is_some(), "host {i} has a channel to {o}");
        }
    }
    let bytes = HOSTS
        * (HOSTS - 1)
        * STREAMS as usize
        * (TOP_LEN + TOP_ANSWER + SUBS as usize * (SUB_LEN + SUB_ANSWER));
    println!(
        "{HOSTS} hosts, {} channels (each pair connecting both ways at once), \
         {} streams and substreams, {:.1} MB verified in {secs:.2} s",
        HOSTS * (HOSTS - 1) / 2,
        HOSTS * (HOSTS - 1) * STREAMS as usize * (1 + SUBS as usize),
        bytes as f64 / 1e6
    );
}
