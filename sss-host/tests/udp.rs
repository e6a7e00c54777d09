//! `sss_host::udp` on real loopback sockets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sss_host::udp::{RecvBatch, UdpSocket};
use sss_proto::{EcnCodepoint, Transmit};
use tokio::time::timeout;

const V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
const V6: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0);
const DUAL: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);

fn transmit(to: SocketAddr, size: usize, segment_size: Option<usize>) -> Transmit {
    Transmit {
        destination: to,
        size,
        segment_size,
        ecn: None,
        src_ip: None,
    }
}

/// Datagram `i` of a test: 4 bytes of index, then a pattern depending on the index.
fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut data: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
    data[..4].copy_from_slice(&(i as u32).to_be_bytes());
    data
}

/// Receives until `count` datagrams have arrived; returns (from, payload) in arrival order.
async fn receive(socket: &UdpSocket, count: usize) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut batch = RecvBatch::new();
    let mut out = Vec::new();
    while out.len() < count {
        timeout(Duration::from_secs(5), batch.recv(socket))
            .await
            .expect("datagrams did not arrive in time")
            .unwrap();
        out.extend(batch.datagrams().map(|d| (d.from, d.data.to_vec())));
    }
    out
}

fn has_ipv6_loopback() -> bool {
    std::net::UdpSocket::bind(V6).is_ok()
}

fn local(socket: &UdpSocket, ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, socket.local_addr().unwrap().port())
}

#[tokio::test]
async fn single_datagram_arrives_with_sender_address() {
    let a = UdpSocket::bind(V4).unwrap();
    let b = UdpSocket::bind(V4).unwrap();
    let data = payload(7, 1200);
    a.send(&transmit(b.local_addr().unwrap(), data.len(), None), &data)
        .await
        .unwrap();
    let got = receive(&b, 1).await;
    assert_eq!(got, vec![(a.local_addr().unwrap(), data)]);
}

#[tokio::test]
async fn socket_reports_offloads_and_buffers() {
    let a = UdpSocket::bind(V4).unwrap();
    // This is a Linux >= 4.18 box: GSO and GRO are both available.
    assert_eq!(a.max_gso_segments(), 64);
    assert_eq!(a.gro_segments(), 64);
    // Linux doubles the request; the cap is net.core.[rw]mem_max (4 MiB here, at least
    // 208 KiB anywhere).
    assert!(
        a.send_buffer_size() >= 200 << 10,
        "{}",
        a.send_buffer_size()
    );
    assert!(
        a.recv_buffer_size() >= 200 << 10,
        "{}",
        a.recv_buffer_size()
    );
}

async fn check_batch(a: &UdpSocket, b: &UdpSocket, count: usize, segment: usize, last: usize) {
    let mut contents = Vec::new();
    for i in 0..count {
        let len = if i + 1 == count { last } else { segment };
        contents.extend(payload(i, len));
    }
    let t = transmit(b.local_addr().unwrap(), contents.len(), Some(segment));
    assert_eq!(t.datagram_count(), count);
    a.send(&t, &contents).await.unwrap();
    let got = receive(b, count).await;
    assert_eq!(got.len(), count);
    for (i, (from, data)) in got.iter().enumerate() {
        let len = if i + 1 == count { last } else { segment };
        assert_eq!(*from, a.local_addr().unwrap());
        assert_eq!(*data, payload(i, len), "datagram {i}");
    }
}

#[tokio::test]
async fn gso_batch_of_64_arrives_as_64_datagrams_in_order() {
    let a = UdpSocket::bind(V4).unwrap();
    let b = UdpSocket::bind(V4).unwrap();
    // 64 x 1000 B fits one sendmsg; the last segment is shorter, as GSO allows.
    check_batch(&a, &b, 64, 1000, 321).await;
}

#[tokio::test]
async fn batch_above_the_gso_byte_limit_is_split_and_all_arrives() {
    let a = UdpSocket::bind(V4).unwrap();
    let b = UdpSocket::bind(V4).unwrap();
    // 64 x 1452 B = 92 KB is more than one UDP send can carry: two sendmsg calls.
    check_batch(&a, &b, 64, 1452, 1452).await;
}

#[tokio::test]
async fn batch_is_sent_as_single_datagrams_without_gso() {
    let a = UdpSocket::bind(V4).unwrap();
    let b = UdpSocket::bind(V4).unwrap();
    a.limit_gso_segments(1);
    assert_eq!(a.max_gso_segments(), 1);
    check_batch(&a, &b, 64, 1200, 17).await;
    a.limit_gso_segments(10);
    check_batch(&a, &b, 25, 1200, 1200).await;
}

#[tokio::test]
async fn dual_stack_socket_serves_ipv4_and_ipv6() {
    let dual = UdpSocket::bind(DUAL).unwrap();
    let v4 = UdpSocket::bind(V4).unwrap();
    let dual_v4 = local(&dual, Ipv4Addr::LOCALHOST.into());

    let data = payload(1, 100);
    v4.send(&transmit(dual_v4, 100, None), &data).await.unwrap();
    let got = receive(&dual, 1).await;
    // The IPv4 peer appears as IPv4, not as ::ffff:127.0.0.1.
    assert_eq!(got, vec![(v4.local_addr().unwrap(), data.clone())]);
    // ... and can be answered at that address, as a GSO batch too.
    let reply = [payload(2, 50), payload(3, 50)].concat();
    dual.send(&transmit(got[0].0, 100, Some(50)), &reply)
        .await
        .unwrap();
    let got = receive(&v4, 2).await;
    assert_eq!(got[0], (dual_v4, payload(2, 50)));
    assert_eq!(got[1], (dual_v4, payload(3, 50)));

    if !has_ipv6_loopback() {
        println!("no ::1 on this machine: IPv6 half of the dual-stack test skipped");
        return;
    }
    let v6 = UdpSocket::bind(V6).unwrap();
    let dual_v6 = local(&dual, Ipv6Addr::LOCALHOST.into());
    v6.send(&transmit(dual_v6, 100, None), &data).await.unwrap();
    let got = receive(&dual, 1).await;
    assert_eq!(got, vec![(v6.local_addr().unwrap(), data.clone())]);
    dual.send(&transmit(got[0].0, 100, None), &data)
        .await
        .unwrap();
    assert_eq!(receive(&v6, 1).await, vec![(dual_v6, data)]);
}

#[tokio::test]
async fn ecn_and_destination_ip_are_reported() {
    for (bind, to_ip) in [
        (V4, IpAddr::V4(Ipv4Addr::LOCALHOST)),
        (DUAL, Ipv4Addr::LOCALHOST.into()),
    ] {
        let a = UdpSocket::bind(bind).unwrap();
        let b = UdpSocket::bind(bind).unwrap();
        let to = local(&b, to_ip);
        for ecn in [EcnCodepoint::Ect0, EcnCodepoint::Ect1, EcnCodepoint::Ce] {
            let t = Transmit {
                ecn: Some(ecn),
                src_ip: Some(to_ip),
                ..transmit(to, 10, None)
            };
            a.send(&t, &[9; 10]).await.unwrap();
            let mut batch = RecvBatch::new();
            batch.recv(&b).await.unwrap();
            let d = batch.datagrams().next().unwrap();
            assert_eq!(d.ecn, Some(ecn), "bound to {bind}");
            assert_eq!(d.dst_ip, Some(to_ip), "bound to {bind}");
            assert_eq!(d.from, local(&a, to_ip), "bound to {bind}");
        }
    }
}

#[tokio::test]
async fn oversized_transmit_size_is_an_error_not_a_panic() {
    let a = UdpSocket::bind(V4).unwrap();
    let err = a
        .send(&transmit(a.local_addr().unwrap(), 100, None), &[0; 10])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

/// A burst of 40 MB in GSO batches with at most 1 MiB in flight (well under the socket
/// buffer): every datagram arrives, in order, with GRO merging them on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_with_bounded_inflight_loses_nothing() {
    const SEGMENT: usize = 1452;
    const PER_BATCH: usize = 40;
    const BATCHES: usize = 700;
    const WINDOW: usize = 1 << 20;
    let a = UdpSocket::bind(V4).unwrap();
    let b = Arc::new(UdpSocket::bind(V4).unwrap());
    let to = b.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));

    let receiver = {
        let (b, received) = (b.clone(), received.clone());
        tokio::spawn(async move {
            let mut batch = RecvBatch::new();
            let (mut next, mut buffers) = (0u32, 0usize);
            while (next as usize) < PER_BATCH * BATCHES {
                timeout(Duration::from_secs(5), batch.recv(&b))
                    .await
                    .expect("burst stalled: datagrams lost")
                    .unwrap();
                buffers += batch.meta().len();
                for d in batch.datagrams() {
                    assert_eq!(d.data.len(), SEGMENT);
                    let index = u32::from_be_bytes(d.data[..4].try_into().unwrap());
                    assert_eq!(index, next, "out of order or lost");
                    next += 1;
                }
                received.fetch_add(batch.byte_count(), Ordering::Release);
            }
            buffers
        })
    };

    let mut contents = vec![0u8; SEGMENT * PER_BATCH];
    let t = transmit(to, contents.len(), Some(SEGMENT));
    let mut sent = 0;
    for batch in 0..BATCHES {
        for (i, d) in contents.chunks_mut(SEGMENT).enumerate() {
            d[..4].copy_from_slice(&((batch * PER_BATCH + i) as u32).to_be_bytes());
        }
        while sent - received.load(Ordering::Acquire) > WINDOW {
            tokio::task::yield_now().await;
        }
        a.send(&t, &contents).await.unwrap();
        sent += contents.len();
    }
    let buffers = receiver.await.unwrap();
    assert!(
        buffers < PER_BATCH * BATCHES,
        "GRO never merged datagrams ({buffers} buffers)"
    );
}

#[tokio::test]
async fn gro_buffers_keep_a_gso_batch_whole() {
    let a = UdpSocket::bind(V4).unwrap();
    let b = UdpSocket::bind(V4).unwrap();
    let contents: Vec<u8> = (0..10).flat_map(|i| payload(i, 1000)).collect();
    a.send(
        &transmit(b.local_addr().unwrap(), 10_000, Some(1000)),
        &contents,
    )
    .await
    .unwrap();
    let mut batch = RecvBatch::new();
    let mut seen = Vec::new();
    while seen.len() < contents.len() {
        timeout(Duration::from_secs(5), batch.recv(&b))
            .await
            .unwrap()
            .unwrap();
        for buffer in batch.buffers() {
            assert_eq!(buffer.from, a.local_addr().unwrap());
            assert_eq!(buffer.stride, 1000);
            assert_eq!(buffer.datagram_count(), buffer.data.len() / 1000);
            seen.extend_from_slice(buffer.data);
        }
    }
    // On loopback the GSO batch is not segmented: GRO hands it over in one piece.
    assert_eq!(seen, contents);
}
