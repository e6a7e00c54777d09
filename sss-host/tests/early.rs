//! Early data on loopback: `connect_early`'s first bytes ride in the handshake initiation,
//! the listener gets the stream with them, and everything arrives intact whether it fits in
//! the initiation or not, and whether a channel exists already or not.

mod common;

use common::{host, within, Pattern};
use sss_host::Host;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves one stream per accept: reads the request to its end, answers with its length and
/// its first byte, and finishes.
fn echo_len_server(server: &Host) {
    let listener = server.listen("early", "len/1").unwrap();
    tokio::spawn(async move {
        while let Ok(mut stream) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                stream.read_to_end(&mut request).await.unwrap();
                let mut answer = (request.len() as u64).to_be_bytes().to_vec();
                answer.push(request.first().copied().unwrap_or(0));
                stream.write_all(&answer).await.unwrap();
                stream.finish().unwrap();
            });
        }
    });
}

async fn ask(client: &Host, server: &Host, request: &[u8]) -> Vec<u8> {
    let mut stream = client
        .connect_early(
            server.eid(),
            &[server.loopback_addr()],
            "early",
            "len/1",
            request,
        )
        .await
        .unwrap();
    stream.finish().unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    answer
}

fn expected(request: &[u8]) -> Vec<u8> {
    let mut v = (request.len() as u64).to_be_bytes().to_vec();
    v.push(request.first().copied().unwrap_or(0));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_bytes_ride_in_the_initiation() {
    let server = host();
    echo_len_server(&server);
    let client = host();
    let request = Pattern::bytes(1, 300);
    let answer = within(10, ask(&client, &server, &request)).await;
    assert_eq!(answer, expected(&request));
    let sent = client.stats(server.eid()).unwrap().early_data_sent;
    let taken = server.stats(client.eid()).unwrap().early_data_received;
    assert!(sent > 300, "the request went early ({sent} bytes)");
    assert_eq!(sent, taken, "and the server took it");

    // A second stream on the channel that is up now: ordinary data.
    let request = Pattern::bytes(2, 100);
    let answer = within(10, ask(&client, &server, &request)).await;
    assert_eq!(answer, expected(&request));
    assert_eq!(client.stats(server.eid()).unwrap().early_data_sent, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_bytes_larger_than_the_initiation_arrive_whole() {
    let server = host();
    echo_len_server(&server);
    let client = host();
    let request = Pattern::bytes(3, 200_000);
    let answer = within(10, ask(&client, &server, &request)).await;
    assert_eq!(answer, expected(&request));
    let sent = client.stats(server.eid()).unwrap().early_data_sent;
    assert!(
        (500..1064).contains(&(sent as usize)),
        "the initiation carried the first {sent} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reads_the_first_bytes_without_writing_back() {
    // The server reads the request before the client sends anything after the handshake:
    // the client does not finish, so only the first bytes are there to read.
    let server = host();
    let listener = server.listen("early", "peek/1").unwrap();
    let client = host();
    let request = Pattern::bytes(4, 64);
    let _stream = client
        .connect_early(
            server.eid(),
            &[server.loopback_addr()],
            "early",
            "peek/1",
            &request,
        )
        .await
        .unwrap();
    let mut incoming = within(10, listener.accept()).await.unwrap();
    let mut got = vec![0u8; request.len()];
    within(10, incoming.read_exact(&mut got)).await.unwrap();
    assert_eq!(got, request);
}

#[test]
fn the_blocking_facade_sends_early_data_too() {
    use sss_host::blocking;
    use std::io::{Read, Write};
    let config = || sss_host::HostConfig::bind(common::loopback());
    let server = blocking::Host::new(config()).unwrap();
    let listener = server.listen("early", "blocking/1").unwrap();
    let (eid, addr) = (server.eid(), server.loopback_addr());
    let echo = std::thread::spawn(move || {
        let mut s = listener.accept().unwrap();
        let mut data = Vec::new();
        s.read_to_end(&mut data).unwrap();
        s.write_all(&data).unwrap();
        s.finish().unwrap();
        server
    });
    let client = blocking::Host::new(config()).unwrap();
    let request = Pattern::bytes(6, 5000);
    let mut s = client
        .connect_early(eid, &[addr], "early", "blocking/1", &request)
        .unwrap();
    s.finish().unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert!(back == request);
    let sent = client.stats(eid).unwrap().early_data_sent;
    assert!(sent > 500, "{sent} bytes went early");
    drop(echo.join().unwrap());
}
