//! The impairment relay on real loopback sockets: client -> relay -> target (and back).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sss_host::impair::{ImpairConfig, Relay, RelayConfig, RelayHandle};
use sss_host::udp::{RecvBatch, UdpSocket};
use sss_proto::Transmit;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const LOCAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
const SIZE: usize = 1200;

fn bind() -> Arc<UdpSocket> {
    Arc::new(UdpSocket::bind(LOCAL).unwrap())
}

/// Datagram `i`: its index, then bytes that depend on the index, so that any flipped bit
/// makes it differ from every datagram sent.
fn payload(i: u32) -> Vec<u8> {
    let mut data: Vec<u8> = (0..SIZE as u32)
        .map(|j| (i.wrapping_mul(2_654_435_761) ^ j.wrapping_mul(40_503)) as u8)
        .collect();
    data[..4].copy_from_slice(&i.to_be_bytes());
    data
}

fn index(data: &[u8]) -> u32 {
    u32::from_be_bytes(data[..4].try_into().unwrap())
}

async fn send_one(socket: &UdpSocket, to: SocketAddr, data: &[u8]) {
    let t = Transmit {
        destination: to,
        size: data.len(),
        segment_size: None,
        ecn: None,
        src_ip: None,
    };
    socket.send(&t, data).await.unwrap();
}

/// Sends datagrams `0..count` through `relay` in GSO batches of 10, waiting for the relay
/// to take in each chunk so that no socket buffer overflows.
async fn send_through(socket: &UdpSocket, relay: &RelayHandle, count: u32) {
    let mut contents = Vec::new();
    for first in (0..count).step_by(10) {
        contents.clear();
        let last = (first + 10).min(count);
        for i in first..last {
            contents.extend(payload(i));
        }
        let t = Transmit {
            destination: relay.local_addr(),
            size: contents.len(),
            segment_size: Some(SIZE),
            ecn: None,
            src_ip: None,
        };
        socket.send(&t, &contents).await.unwrap();
        if last % 200 == 0 || last == count {
            let deadline = Instant::now() + Duration::from_secs(5);
            while relay.stats().forward.received < u64::from(last) {
                assert!(Instant::now() < deadline, "relay stopped taking datagrams");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Collects what `socket` receives, with arrival times, until `done` is set and nothing
/// arrived for 300 ms.
fn sink(socket: Arc<UdpSocket>, done: Arc<AtomicBool>) -> JoinHandle<Vec<(Instant, Vec<u8>)>> {
    tokio::spawn(async move {
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        loop {
            match timeout(Duration::from_millis(300), batch.recv(&socket)).await {
                Ok(r) => {
                    r.unwrap();
                    let now = Instant::now();
                    got.extend(batch.datagrams().map(|d| (now, d.data.to_vec())));
                }
                Err(_) if done.load(Ordering::Acquire) => return got,
                Err(_) => {}
            }
        }
    })
}

/// Runs `count` datagrams from a fresh client through a relay with `config` to a fresh
/// target; returns what the target got and the relay (for its stats).
async fn run(config: impl Into<RelayConfig>, count: u32) -> (Vec<(Instant, Vec<u8>)>, RelayHandle) {
    let target = bind();
    let client = bind();
    let relay = Relay::start(LOCAL, target.local_addr().unwrap(), config).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let collected = sink(target, done.clone());
    send_through(&client, &relay, count).await;
    done.store(true, Ordering::Release);
    (collected.await.unwrap(), relay)
}

#[tokio::test]
async fn without_impairment_10000_datagrams_pass_unchanged_and_in_order() {
    let (got, relay) = run(ImpairConfig::default(), 10_000).await;
    assert_eq!(got.len(), 10_000);
    for (i, (_, data)) in got.iter().enumerate() {
        assert_eq!(*data, payload(i as u32), "datagram {i}");
    }
    let stats = relay.stats().forward;
    assert_eq!((stats.received, stats.forwarded), (10_000, 10_000));
    assert_eq!(stats.forwarded_bytes, 10_000 * SIZE as u64);
}

#[tokio::test]
async fn ten_percent_loss_drops_about_ten_percent() {
    let config = ImpairConfig {
        loss: 0.1,
        seed: 1,
        ..ImpairConfig::default()
    };
    let (got, relay) = run(config, 10_000).await;
    let stats = relay.stats().forward;
    let lost = 10_000 - got.len() as u64;
    assert_eq!(lost, stats.dropped_loss);
    assert!((800..=1200).contains(&lost), "{lost} of 10000 lost");
    // What survives is unchanged and in order.
    let indices: Vec<u32> = got.iter().map(|(_, d)| index(d)).collect();
    assert!(indices.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn same_seed_makes_the_same_drop_decisions() {
    let config = |seed| ImpairConfig {
        loss: 0.3,
        seed,
        ..ImpairConfig::default()
    };
    let kept = |got: Vec<(Instant, Vec<u8>)>| got.iter().map(|(_, d)| index(d)).collect::<Vec<_>>();
    let a = kept(run(config(42), 2000).await.0);
    let b = kept(run(config(42), 2000).await.0);
    let c = kept(run(config(43), 2000).await.0);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

/// Round trip of one datagram client -> relay -> echo server -> relay -> client.
async fn echo_rtt(client: &UdpSocket, relay: &RelayHandle) -> Duration {
    let mut batch = RecvBatch::new();
    let start = Instant::now();
    send_one(client, relay.local_addr(), b"ping").await;
    timeout(Duration::from_secs(2), batch.recv(client))
        .await
        .expect("echo lost")
        .unwrap();
    start.elapsed()
}

/// The smallest of a few round trips: scheduling noise only ever adds.
async fn min_rtt(client: &UdpSocket, relay: &RelayHandle) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..8 {
        best = best.min(echo_rtt(client, relay).await);
    }
    best
}

fn echo_server() -> (SocketAddr, JoinHandle<()>) {
    let socket = bind();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut batch = RecvBatch::new();
        let mut replies = Vec::new();
        loop {
            batch.recv(&socket).await.unwrap();
            replies.clear();
            replies.extend(batch.datagrams().map(|d| (d.from, d.data.to_vec())));
            for (from, data) in &replies {
                send_one(&socket, *from, data).await;
            }
        }
    });
    (addr, task)
}

/// `delay` is one-way, per direction: 20 ms both ways makes a 40 ms round trip.
#[tokio::test]
async fn delay_adds_to_the_round_trip_per_direction() {
    let (server, echo) = echo_server();
    let client = bind();
    let relay = Relay::start(LOCAL, server, ImpairConfig::default()).unwrap();
    let base = min_rtt(&client, &relay).await;
    assert!(base < Duration::from_millis(5), "undelayed rtt {base:?}");

    let delayed = ImpairConfig {
        delay: Duration::from_millis(20),
        ..ImpairConfig::default()
    };
    relay.set_config(delayed.clone());
    let rtt = min_rtt(&client, &relay).await;
    assert!(
        rtt >= Duration::from_millis(40) && rtt < Duration::from_millis(46),
        "20 ms each way gave a {rtt:?} round trip"
    );

    relay.set_config(RelayConfig {
        forward: delayed,
        backward: ImpairConfig::default(),
    });
    let rtt = min_rtt(&client, &relay).await;
    assert!(
        rtt >= Duration::from_millis(20) && rtt < Duration::from_millis(26),
        "20 ms forward only gave a {rtt:?} round trip"
    );
    echo.abort();
}

#[tokio::test]
async fn rate_limit_caps_throughput() {
    const RATE: u64 = 20_000_000;
    let target = bind();
    let client = bind();
    let config = ImpairConfig {
        rate_bps: Some(RATE),
        queue_bytes: 64 << 10,
        ..ImpairConfig::default()
    };
    let relay = Relay::start(LOCAL, target.local_addr().unwrap(), config).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let collected = sink(target, done.clone());

    // Offer twice the rate for one second.
    let start = Instant::now();
    let mut sent = 0u32;
    while start.elapsed() < Duration::from_secs(1) {
        let due = (start.elapsed().as_secs_f64() * 2.0 * RATE as f64 / 8.0 / SIZE as f64) as u32;
        while sent < due {
            send_one(&client, relay.local_addr(), &payload(sent)).await;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    done.store(true, Ordering::Release);
    let got = collected.await.unwrap();
    let (first, last) = (got[0].0, got[got.len() - 1].0);
    let bits = ((got.len() - 1) * SIZE * 8) as f64;
    let rate = bits / last.duration_since(first).as_secs_f64();
    assert!(
        (0.9 * RATE as f64..=1.1 * RATE as f64).contains(&rate),
        "delivered {:.1} Mbit/s through a 20 Mbit/s bottleneck",
        rate / 1e6
    );
    let stats = relay.stats().forward;
    assert!(
        stats.dropped_queue > 0,
        "offered twice the rate, nothing dropped"
    );
    assert_eq!(stats.forwarded, got.len() as u64);
}

#[tokio::test]
async fn duplication_and_corruption_are_applied_and_counted() {
    let config = ImpairConfig {
        duplicate: 0.1,
        corrupt: 0.1,
        seed: 3,
        ..ImpairConfig::default()
    };
    let (got, relay) = run(config, 5000).await;
    let stats = relay.stats().forward;
    assert!((400..=600).contains(&stats.duplicated), "{stats:?}");
    assert!((400..=600).contains(&stats.corrupted), "{stats:?}");
    assert_eq!(got.len() as u64, 5000 + stats.duplicated);
    // A corrupted datagram matches no datagram sent; its duplicate (if any) carries the
    // same corruption, since corruption comes first.
    let corrupted = got.iter().filter(|(_, d)| *d != payload(index(d))).count() as u64;
    let mut indices: Vec<u32> = got.iter().map(|(_, d)| index(d)).collect();
    indices.sort_unstable();
    let duplicates = indices.windows(2).filter(|w| w[0] == w[1]).count() as u64;
    assert!(
        corrupted >= stats.corrupted,
        "{corrupted} < {}",
        stats.corrupted
    );
    assert!(corrupted <= stats.corrupted * 2);
    // Duplicates are visible as repeated indices (a flipped index bit can hide a few).
    assert!(
        duplicates + 20 >= stats.duplicated,
        "{duplicates} vs {stats:?}"
    );
}

#[tokio::test]
async fn reorder_makes_later_datagrams_overtake() {
    let config = ImpairConfig {
        reorder: 0.1,
        reorder_delay: Duration::from_millis(5),
        seed: 9,
        ..ImpairConfig::default()
    };
    let (got, relay) = run(config, 3000).await;
    assert_eq!(got.len(), 3000, "reordering must not lose datagrams");
    let indices: Vec<u32> = got.iter().map(|(_, d)| index(d)).collect();
    // A datagram is late if one sent after it arrived before it.
    let mut highest = 0;
    let mut late = 0u64;
    for &i in &indices {
        if i < highest {
            late += 1;
        }
        highest = highest.max(i);
    }
    let stats = relay.stats().forward;
    assert!((210..=390).contains(&stats.reordered), "{stats:?}");
    assert!(
        late >= stats.reordered * 3 / 4 && late <= stats.reordered,
        "{late} late arrivals for {} held back",
        stats.reordered
    );
}

#[tokio::test]
async fn cutting_the_link_at_run_time_and_restoring_it() {
    let (server, echo) = echo_server();
    let client = bind();
    let relay = Relay::start(LOCAL, server, ImpairConfig::default()).unwrap();
    echo_rtt(&client, &relay).await;
    relay.set_config(ImpairConfig {
        loss: 1.0,
        ..ImpairConfig::default()
    });
    send_one(&client, relay.local_addr(), b"lost").await;
    let mut batch = RecvBatch::new();
    assert!(timeout(Duration::from_millis(200), batch.recv(&client))
        .await
        .is_err());
    assert_eq!(relay.stats().forward.dropped_loss, 1);
    relay.set_config(ImpairConfig::default());
    echo_rtt(&client, &relay).await;
    echo.abort();
}

#[tokio::test]
async fn only_the_first_client_is_served() {
    let (server, echo) = echo_server();
    let client = bind();
    let intruder = bind();
    let relay = Relay::start(LOCAL, server, ImpairConfig::default()).unwrap();
    echo_rtt(&client, &relay).await;
    assert_eq!(relay.client(), Some(client.local_addr().unwrap()));
    send_one(&intruder, relay.local_addr(), b"hi").await;
    let mut batch = RecvBatch::new();
    assert!(timeout(Duration::from_millis(200), batch.recv(&intruder))
        .await
        .is_err());
    assert_eq!(relay.stats().forward.dropped_foreign, 1);
    echo.abort();
    relay.shutdown();
}
