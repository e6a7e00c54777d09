//! Rough load figure of an in-process regserver on loopback: `hosts` clients (each on its own
//! UDP socket, so each has its own observed endpoint) register at once, then each looks up
//! `lookups` other hosts one after the other. Prints registrations and lookups per second.
//!
//! ```text
//! cargo run --release -p regserver --example reg_load -- [hosts] [lookups]
//! ```
//!
//! The per-IP limits are raised (every client shares 127.0.0.1); everything else is the
//! default configuration. Client and server share the machine, so the figures are a floor.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use regserver::{server_config, RegServer};
use sss_proto::{Eid, Identity};
use sss_routing::{Client, ClientConfig, Event, LookupOutcome};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// Drives `client` on `socket` until `done` holds for an event, or panics after 30 s.
async fn drive(client: &mut Client, socket: &UdpSocket, mut done: impl FnMut(&Event) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::new();
    loop {
        let now = Instant::now();
        assert!(now < deadline, "no answer within 30 s");
        if client.poll_timeout().is_some_and(|t| t <= now) {
            client.handle_timeout(now);
        }
        while let Some(t) = client.poll_transmit(now, &mut out) {
            let _ = socket.send_to(&out[..t.size], t.destination).await;
        }
        while let Some(e) = client.poll_event() {
            if done(&e) {
                return;
            }
        }
        let wake = client.poll_timeout().unwrap_or(deadline).min(deadline);
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                if let Ok((len, from)) = r {
                    client.handle_datagram(Instant::now(), from, &buf[..len]);
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let hosts: usize = args.next().map_or(1000, |a| a.parse().expect("hosts"));
    let lookups: usize = args.next().map_or(20, |a| a.parse().expect("lookups"));

    let key = Identity::generate(&mut OsRng);
    let mut config = server_config(key.eid());
    config.max_records_per_ip = u32::MAX;
    config.source_burst = u32::MAX / 2;
    config.source_rate = u32::MAX / 2;
    config.max_queued = 1 << 20;
    let server = RegServer::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let server_addr: SocketAddr = server.local_addr();
    let server_eid = server.eid();

    let identities: Vec<Identity> = (0..hosts).map(|_| Identity::generate(&mut OsRng)).collect();
    let eids: Vec<Eid> = identities.iter().map(Identity::eid).collect();
    let (go_tx, go_rx) = watch::channel(false);
    let (reg_tx, mut reg_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    let t0 = Instant::now();
    for (i, identity) in identities.into_iter().enumerate() {
        let eids = eids.clone();
        let mut go = go_rx.clone();
        let reg_tx = reg_tx.clone();
        tasks.push(tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut seed = [0; 32];
            OsRng.fill_bytes(&mut seed);
            let mut client = Client::new(
                ClientConfig::new(server_addr, server_eid, 1, seed),
                identity,
            );
            client.register(Instant::now());
            drive(&mut client, &socket, |e| {
                matches!(e, Event::Registered { .. })
            })
            .await;
            let _ = reg_tx.send(());
            let _ = go.wait_for(|g| *g).await;
            for k in 1..=lookups {
                let target = eids[(i + k * 7919) % eids.len()];
                client.lookup(Instant::now(), target, false).unwrap();
                drive(&mut client, &socket, |e| {
                    matches!(
                        e,
                        Event::LookupResult {
                            outcome: LookupOutcome::Found(_),
                            ..
                        }
                    )
                })
                .await;
            }
        }));
    }
    // Wait for every registration, then start the lookups together.
    for _ in 0..hosts {
        reg_rx.recv().await.unwrap();
    }
    let registered = t0.elapsed();
    let t1 = Instant::now();
    go_tx.send_replace(true);
    for t in tasks {
        t.await.unwrap();
    }
    let looked = t1.elapsed();
    let stats = server.stats();
    println!(
        "hosts={hosts} registered in {:.3} s ({:.0} registrations/s, HELLO+REGISTER each); \
         {} lookups in {:.3} s ({:.0} lookups/s); server records={} in={} out={}",
        registered.as_secs_f64(),
        hosts as f64 / registered.as_secs_f64(),
        hosts * lookups,
        looked.as_secs_f64(),
        (hosts * lookups) as f64 / looked.as_secs_f64(),
        stats.records,
        stats.datagrams_in,
        stats.datagrams_out,
    );
    server.shutdown().await;
}
