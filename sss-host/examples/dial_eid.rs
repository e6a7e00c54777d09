//! Dial by EID across real networks (e.g. the NAT lab of network namespaces): a minimal
//! regserver, a host that registers and echoes, and a host that dials it by EID alone.
//!
//! ```text
//! cargo run -p sss-host --example dial_eid -- regserver --bind 203.0.113.1:9669 --seed 3
//! cargo run -p sss-host --example dial_eid -- listen --regserver 203.0.113.1:9669 --seed 1
//! cargo run -p sss-host --example dial_eid -- dial --regserver 203.0.113.1:9669 --seed 2 --peer-seed 1
//! ```
//!
//! Keys come from `--seed` (32 bytes of that value: for tests only), so every side knows the
//! others' EIDs from their seeds (the regserver's is taken from `--regserver-seed`, default
//! 3). `dial` prints `connected_ms=`, `relayed=` (whether the channel runs through the
//! regserver's relay, spec/routing.md §6, or directly), `echo_ms=` (from the start of
//! `connect_eid` to the echo of a 5-byte message) and `relayed_datagrams=` (sent/received
//! through the relay), and exits 0, or prints the error and exits 1. `--no-relay` dials
//! without the relay fallback. `--bytes N` echoes N bytes instead of 5 and prints
//! `echo_mbit_s=` (both directions' bytes over the time from connected to the echo's end);
//! `--drop-direct` (both sides) ignores channel datagrams that do not come through a relay,
//! to measure the relay where a direct path exists (loopback). `--no-notify`
//! dials without asking the peer to punch (a control).
//!
//! `dial_eid_natlab.sh up` (next to this file, as root) builds the NAT lab: namespaces
//! `hr-wan` (203.0.113.1, the regserver), `hr-nat1`/`hr-nat2` (masquerading routers with
//! port-restricted filtering, or symmetric NAT with `RANDOM_NAT=1`) and `hr-h1`/`hr-h2`
//! (192.168.1.2, 192.168.2.2) behind them; run each side with `ip netns exec hr-<name>`;
//! `dial_eid_natlab.sh down` removes it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use sss_host::{Eid, Host, HostConfig, Identity};
use sss_routing::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Dial by EID: regserver, listener, dialer")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// A regserver on `bind`.
    Regserver {
        /// Address to listen on.
        #[arg(long)]
        bind: SocketAddr,
        /// Key seed.
        #[arg(long, default_value_t = 3)]
        seed: u8,
    },
    /// A host that registers and echoes ("echo", "v1") streams.
    Listen {
        /// The regserver's address.
        #[arg(long)]
        regserver: SocketAddr,
        /// The regserver's key seed.
        #[arg(long, default_value_t = 3)]
        regserver_seed: u8,
        /// Key seed.
        #[arg(long)]
        seed: u8,
        /// Socket address.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: SocketAddr,
        /// Ignore channel datagrams that do not come through a relay.
        #[arg(long)]
        drop_direct: bool,
    },
    /// A host that dials the peer of `peer_seed` by EID and checks the echo.
    Dial {
        /// The regserver's address.
        #[arg(long)]
        regserver: SocketAddr,
        /// The regserver's key seed.
        #[arg(long, default_value_t = 3)]
        regserver_seed: u8,
        /// Key seed.
        #[arg(long)]
        seed: u8,
        /// The peer's key seed.
        #[arg(long)]
        peer_seed: u8,
        /// Socket address.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: SocketAddr,
        /// Control: look the peer up without NOTIFY and `connect` to what is found, so the
        /// peer does not punch (through port-restricted NATs this should fail).
        #[arg(long)]
        no_notify: bool,
        /// Never fall back to the regserver's relay.
        #[arg(long)]
        no_relay: bool,
        /// Ignore channel datagrams that do not come through a relay.
        #[arg(long)]
        drop_direct: bool,
        /// Bytes to echo (0: the 5-byte "hello").
        #[arg(long, default_value_t = 0)]
        bytes: usize,
    },
}

fn identity(seed: u8) -> Identity {
    Identity::from_secret_bytes(&[seed; 32])
}

fn host(
    bind: SocketAddr,
    seed: u8,
    regserver: SocketAddr,
    regserver_seed: u8,
    relay: bool,
    drop_direct: bool,
) -> Host {
    let mut config = HostConfig::bind(bind);
    if !relay {
        config.routing.relay_after = None;
    }
    config.routing.drop_direct = drop_direct;
    config.regservers = vec![(identity(regserver_seed).eid(), regserver)];
    Host::with_identity(&identity(seed), config).expect("host")
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Args::parse().mode {
        Mode::Regserver { bind, seed } => regserver(bind, identity(seed).eid()).await,
        Mode::Listen {
            regserver,
            regserver_seed,
            seed,
            bind,
            drop_direct,
        } => {
            let host = host(bind, seed, regserver, regserver_seed, true, drop_direct);
            let listener = host.listen("echo", "v1").expect("listen");
            let observed = host.registered().await.expect("registered");
            println!("eid={} observed={observed}", host.eid());
            while let Ok(stream) = listener.accept().await {
                // Echoes as it arrives.
                tokio::spawn(async move {
                    let (mut rd, mut wr) = tokio::io::split(stream);
                    tokio::io::copy(&mut rd, &mut wr).await?;
                    wr.shutdown().await?;
                    Ok::<_, std::io::Error>(())
                });
            }
        }
        Mode::Dial {
            regserver,
            regserver_seed,
            seed,
            peer_seed,
            bind,
            no_notify,
            no_relay,
            drop_direct,
            bytes,
        } => {
            let host = host(
                bind,
                seed,
                regserver,
                regserver_seed,
                !no_relay,
                drop_direct,
            );
            let message: Vec<u8> = if bytes == 0 {
                b"hello".to_vec()
            } else {
                (0..bytes).map(|i| (i % 251) as u8).collect()
            };
            let observed = host.registered().await.expect("registered");
            println!("eid={} observed={observed}", host.eid());
            let peer: Eid = identity(peer_seed).eid();
            let start = Instant::now();
            let result = async {
                let stream = if no_notify {
                    let addrs = host.lookup(peer).await?;
                    host.connect(peer, &addrs, "echo", "v1").await?
                } else {
                    host.connect_eid(peer, "echo", "v1").await?
                };
                println!("connected_ms={}", start.elapsed().as_millis());
                println!("relayed={}", host.is_relayed(peer).unwrap_or(false));
                let connected = Instant::now();
                let (mut rd, mut wr) = tokio::io::split(stream);
                let send = async {
                    wr.write_all(&message).await?;
                    wr.shutdown().await
                };
                let mut back = Vec::new();
                let (sent, got) = tokio::join!(send, rd.read_to_end(&mut back));
                sent?;
                got?;
                assert!(back == message, "the echo differs");
                if bytes > 0 {
                    let secs = connected.elapsed().as_secs_f64();
                    println!("echo_mbit_s={:.0}", (2 * bytes * 8) as f64 / secs / 1e6);
                }
                Ok::<_, std::io::Error>(())
            };
            match tokio::time::timeout(Duration::from_secs(30), result).await {
                Ok(Ok(())) => {
                    println!("echo_ms={}", start.elapsed().as_millis());
                    let (sent, received) = host.relayed_datagrams();
                    println!("relayed_datagrams={sent}/{received}");
                }
                Ok(Err(e)) => {
                    println!("error={e}");
                    std::process::exit(1);
                }
                Err(_) => {
                    println!("error=timed out");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// A regserver loop (the `regserver` binary does this properly).
async fn regserver(bind: SocketAddr, eid: Eid) {
    let socket = tokio::net::UdpSocket::bind(bind).await.expect("bind");
    let mut seed = [0u8; 32];
    seed[0] = 1;
    let mut server = Server::new(ServerConfig::new(eid, seed), Instant::now());
    println!("regserver eid={eid} addr={}", socket.local_addr().unwrap());
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::new();
    loop {
        let deadline = server.poll_timeout();
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                server.handle_datagram(Instant::now(), from, &buf[..n]);
            }
            () = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            } => server.handle_timeout(Instant::now()),
        }
        while let Some(t) = server.poll_transmit(Instant::now(), &mut out) {
            let _ = socket.send_to(&out[..t.size], t.destination).await;
        }
    }
}
