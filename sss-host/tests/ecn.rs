//! ECN on real sockets: packets leave marked ECT(0) through quinn-udp, arrive marked on
//! loopback (Linux keeps the ECN bits on IPv4 and IPv6 loopback), the receiver counts and
//! echoes them, and the sender validates the path. The impairment relay, which forwards
//! Not-ECT, is a bleaching middlebox: ECN turns off and the transfer stays exact.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{host, host_with, within, write_pattern, Verifier};
use sss_host::{Host, HostConfig, ImpairConfig, Relay};
use sss_proto::channel::{ChannelStats, EcnState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LEN: usize = 2_000_000;

/// Sends `LEN` bytes from `client` to `server` at `addr` and returns both sides' channel
/// statistics once the server has verified every byte.
async fn transfer(client: &Host, server: &Host, addr: SocketAddr) -> (ChannelStats, ChannelStats) {
    let listener = server.listen("bulk", "ecn").unwrap();
    let receiver = tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        let mut sink = Verifier::new(7);
        let n = tokio::io::copy(&mut stream, &mut sink).await.unwrap();
        stream.write_all(&n.to_be_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        sink.checked
    });
    let mut out = client
        .connect(server.eid(), &[addr], "bulk", "ecn")
        .await
        .unwrap();
    write_pattern(&mut out, 7, LEN).await;
    out.shutdown().await.unwrap();
    let mut answer = [0u8; 8];
    out.read_exact(&mut answer).await.unwrap();
    assert_eq!(u64::from_be_bytes(answer), LEN as u64);
    assert_eq!(receiver.await.unwrap(), LEN as u64);
    // Let the last ACKs arrive, so that both sides have seen the other's latest counts.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sent = client.stats(server.eid()).expect("client channel");
    let received = server.stats(client.eid()).expect("server channel");
    (sent, received)
}

async fn loopback_validates_ecn(bind: &str) {
    let bind: SocketAddr = bind.parse().unwrap();
    let server = host_with(HostConfig::bind(bind));
    let client = host_with(HostConfig::bind(bind));
    let addr = server.local_addr();
    within(20, async {
        let (sent, received) = transfer(&client, &server, addr).await;
        println!("{bind}: client {sent:?}\nserver {received:?}");
        // The packets arrived marked ECT(0): the receiver counted them from the IP header.
        assert!(received.ecn_ect0_received > 1000, "{received:?}");
        assert_eq!(received.ecn_ce_received, 0);
        assert_eq!(received.ecn_ect1_received, 0);
        // Nearly all of them: only the pause after the ten test packets goes out unmarked.
        assert!(
            sent.ecn_marked_sent * 10 >= sent.packets_sent * 9,
            "{sent:?}"
        );
        assert_eq!(sent.ecn_state, EcnState::Capable, "{sent:?}");
        assert_eq!(sent.ecn_failures, 0);
        // The other way too: the server's ACKs were marked, counted and validated.
        assert_eq!(received.ecn_state, EcnState::Capable, "{received:?}");
        assert!(sent.ecn_ect0_received > 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_loopback_packets_carry_ect0_and_ecn_is_validated() {
    loopback_validates_ecn("127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_loopback_packets_carry_ect0_and_ecn_is_validated() {
    loopback_validates_ecn("[::1]:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_bleaches_ecn_turns_it_off_and_the_transfer_stays_exact() {
    let server = host();
    let client = host();
    let relay = Relay::start(
        common::loopback(),
        server.loopback_addr(),
        ImpairConfig {
            delay: Duration::from_millis(5),
            seed: 3,
            ..ImpairConfig::default()
        },
    )
    .unwrap();
    within(20, async {
        let (sent, received) = transfer(&client, &server, relay.local_addr()).await;
        println!("client {sent:?}\nserver {received:?}");
        assert_eq!(received.ecn_ect0_received, 0, "the relay forwards Not-ECT");
        assert_eq!(sent.ecn_state, EcnState::Failed, "{sent:?}");
        assert_eq!(sent.ecn_failures, 1);
        assert!(
            sent.ecn_marked_sent <= 64,
            "only the test packets were marked"
        );
    })
    .await;
}
