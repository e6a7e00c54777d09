//! Raw loopback throughput of `sss_host::udp::UdpSocket`: the I/O ceiling of this box.
//!
//! One sender thread and one receiver thread, each with its own current-thread tokio
//! runtime (like a host's driver), 1452-byte datagrams, GSO batches of 1, 10 and 64
//! datagrams (64 x 1452 B exceeds one UDP send, so it goes out as 45 + 19), GRO on.
//! The sender runs flat out; what the receiver counts is the figure that matters.
//!
//! Then the same through the impairment relay with no impairment (sender -> relay ->
//! receiver, three threads on two cores): the relay's own forwarding ceiling.
//!
//! `cargo bench -p sss-host --bench udp [-- SECONDS] [direct|relay]` (default 2 s per case).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use sss_host::impair::{ImpairConfig, Relay};
use sss_host::udp::{RecvBatch, UdpSocket};
use sss_proto::Transmit;

const SEGMENT: usize = 1452;

struct Side {
    datagrams: u64,
    bytes: u64,
    calls: u64,
    elapsed: Duration,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn receiver(addr_tx: mpsc::Sender<SocketAddr>, done: Arc<AtomicBool>) -> Side {
    runtime().block_on(async move {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0).into()).expect("bind");
        addr_tx
            .send(socket.local_addr().expect("addr"))
            .expect("send addr");
        let mut batch = RecvBatch::new();
        let (mut datagrams, mut bytes, mut calls) = (0u64, 0u64, 0u64);
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_millis(200), batch.recv(&socket)).await {
                Ok(Ok(_)) => {
                    last = Instant::now();
                    first.get_or_insert(last);
                    calls += 1;
                    datagrams += batch.datagram_count() as u64;
                    bytes += batch.byte_count() as u64;
                }
                Ok(Err(e)) => panic!("recv: {e}"),
                Err(_) if done.load(Ordering::Acquire) => break,
                Err(_) => {}
            }
        }
        Side {
            datagrams,
            bytes,
            calls,
            elapsed: last.duration_since(first.unwrap_or(last)),
        }
    })
}

fn sender(to: SocketAddr, segments: usize, duration: Duration) -> Side {
    runtime().block_on(async move {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0).into()).expect("bind");
        socket.limit_gso_segments(segments);
        let contents = vec![0xA5u8; SEGMENT * segments];
        let transmit = Transmit {
            destination: to,
            size: contents.len(),
            segment_size: (segments > 1).then_some(SEGMENT),
            ecn: None,
            src_ip: None,
        };
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed() < duration {
            for _ in 0..64 {
                socket.send(&transmit, &contents).await.expect("send");
                calls += 1;
            }
        }
        Side {
            datagrams: calls * segments as u64,
            bytes: calls * contents.len() as u64,
            calls,
            elapsed: start.elapsed(),
        }
    })
}

fn gbit(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64().max(1e-9) / 1e9
}

fn per_sec(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn main() {
    let seconds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<f64>().ok())
        .unwrap_or(2.0);
    let duration = Duration::from_secs_f64(seconds);
    println!("udp loopback, {SEGMENT}-byte datagrams, {seconds} s per case");
    // `direct` or `relay` on the command line runs only those cases.
    let only = std::env::args().find(|a| a == "direct" || a == "relay");
    let wanted = |case: &str| only.as_deref().is_none_or(|o| o == case);
    for segments in [1, 10, 64].into_iter().filter(|_| wanted("direct")) {
        run_case(
            &format!("direct gso={segments:>2}"),
            segments,
            duration,
            false,
        );
    }
    for segments in [10, 44].into_iter().filter(|_| wanted("relay")) {
        run_case(
            &format!("relay  gso={segments:>2}"),
            segments,
            duration,
            true,
        );
    }
}

fn run_case(name: &str, segments: usize, duration: Duration, through_relay: bool) {
    let done = Arc::new(AtomicBool::new(false));
    let (addr_tx, addr_rx) = mpsc::channel();
    let rx = {
        let done = done.clone();
        std::thread::spawn(move || receiver(addr_tx, done))
    };
    let receiver_addr = addr_rx.recv().expect("receiver address");
    let relay = through_relay.then(|| {
        Relay::start(
            (Ipv4Addr::LOCALHOST, 0).into(),
            receiver_addr,
            ImpairConfig::default(),
        )
        .expect("relay")
    });
    let to = relay.as_ref().map_or(receiver_addr, |r| r.local_addr());
    let tx = std::thread::spawn(move || sender(to, segments, duration))
        .join()
        .expect("sender thread");
    done.store(true, Ordering::Release);
    let rx = rx.join().expect("receiver thread");
    println!(
        "{name}: sent {:6.2} Gbit/s ({:>9.0} dgram/s, {:>7.0} send calls/s) | \
         received {:6.2} Gbit/s ({:>9.0} dgram/s, {:>7.0} recv calls/s, {:5.1} dgram/call) | \
         loss {:4.1}%",
        gbit(tx.bytes, tx.elapsed),
        per_sec(tx.datagrams, tx.elapsed),
        per_sec(tx.calls, tx.elapsed),
        gbit(rx.bytes, rx.elapsed),
        per_sec(rx.datagrams, rx.elapsed),
        per_sec(rx.calls, rx.elapsed),
        rx.datagrams as f64 / rx.calls.max(1) as f64,
        100.0 * (1.0 - rx.datagrams as f64 / tx.datagrams.max(1) as f64),
    );
    if let Some(relay) = relay {
        let s = relay.stats().forward;
        println!(
            "        relay: received {} forwarded {} dropped {}",
            s.received,
            s.forwarded,
            s.dropped_queue + s.send_errors
        );
    }
}
