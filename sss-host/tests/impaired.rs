//! Transfers through the impairment relay (`sss_host::impair`): 5 % loss each way and 50 ms
//! of round-trip time, on real loopback sockets. The data arrives exactly.

mod common;

use std::time::{Duration, Instant};

use common::{host, within, write_pattern, Verifier};
use sss_host::{ImpairConfig, Relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_at_5_percent_loss_and_50ms_rtt_is_exact() {
    const LEN: usize = 500_000;
    let server = host();
    let client = host();
    let listener = server.listen("bulk", "v1").unwrap();
    let relay = Relay::start(
        common::loopback(),
        server.loopback_addr(),
        ImpairConfig {
            delay: Duration::from_millis(25),
            loss: 0.05,
            seed: 5,
            ..ImpairConfig::default()
        },
    )
    .unwrap();
    let start = Instant::now();
    within(20, async {
        let receiver = tokio::spawn(async move {
            let mut stream = listener.accept().await.unwrap();
            let mut sink = Verifier::new(11);
            let n = tokio::io::copy(&mut stream, &mut sink).await.unwrap();
            stream.write_all(&n.to_be_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
            sink.checked
        });
        let mut out = client
            .connect(server.eid(), &[relay.local_addr()], "bulk", "v1")
            .await
            .unwrap();
        let connected = start.elapsed();
        write_pattern(&mut out, 11, LEN).await;
        out.shutdown().await.unwrap();
        let mut answer = [0u8; 8];
        out.read_exact(&mut answer).await.unwrap();
        assert_eq!(u64::from_be_bytes(answer), LEN as u64);
        assert_eq!(receiver.await.unwrap(), LEN as u64);
        let secs = start.elapsed().as_secs_f64();
        let stats = client.stats(server.eid()).expect("channel");
        let relay_stats = relay.stats();
        println!(
            "500 kB through 5% loss / 50 ms RTT: connected in {connected:?}, done in {secs:.2} s \
             ({:.0} kB/s); client {stats:?}; relay {relay_stats:?}",
            LEN as f64 / secs / 1e3
        );
        assert!(stats.packets_lost > 0, "the relay did drop packets");
        assert!(stats.rtt >= Duration::from_millis(50));
    })
    .await;
}
