//! Checks NAT hole punching through a regserver on real sockets (used by `scripts/nat-lab.sh`).
//!
//! Two copies run, one per site, each with its own key and the other's EID:
//!
//! ```text
//! punch_check keygen --key a.key                 # prints the EID (creates the key if missing)
//! punch_check run --server 203.0.113.2:9669 --server-eid <EID> --key a.key --peer <EID of b> --role target
//! punch_check run --server 203.0.113.2:9669 --server-eid <EID> --key b.key --peer <EID of a> --role caller
//! ```
//!
//! Both register with the regserver (an `sss_routing::client::Client` on one UDP socket). The
//! caller then looks the target up with NOTIFY and probes the endpoints it gets; the target
//! waits for the PunchRequest that the NOTIFY brings and probes the caller's endpoints. A side
//! answers every probe of its peer with an acknowledgement, and the check passes on a side once
//! one of its probes was acknowledged from the peer's side of the internet: a direct UDP round
//! trip without the regserver. Probes carry the sender's EID and a nonce but are not
//! authenticated (this is a lab check of NAT behaviour, not of the handshake).
//!
//! Prints `registered observed=...`, `peer endpoints=...` and finally `result=direct via=...`
//! (exit 0) or `result=no-direct` (exit 3, registration and signalling worked but no probe
//! came back); anything else that fails exits 1. A listener (`--role listener`, the control
//! experiment: it never sends toward the peer) prints `result=listened probes=N` and exits 0
//! if a probe of the peer reached it, else 3.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use rand_core::{OsRng, RngCore};
use sss_proto::Eid;
use sss_routing::{Client, ClientConfig, Event, LookupOutcome};
use tokio::net::UdpSocket;

/// Probe datagrams start with this (its first byte is outside the routing types 0x10-0x1f).
const MAGIC: &[u8; 8] = b"SSSPROBE";
const PROBE: u8 = 1;
const ACK: u8 = 2;
const PROBE_LEN: usize = 8 + 1 + 32 + 8;
/// Interval between two rounds of probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Delay before looking the peer up again when it is not registered yet.
const RELOOKUP: Duration = Duration::from_millis(300);
/// How long a side keeps answering probes after its own round trip worked, so that the peer
/// completes its own.
const LINGER: Duration = Duration::from_secs(1);

#[derive(Debug, Parser)]
#[command(about = "NAT hole-punch check through a regserver")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints the EID of the key file, creating the key if missing.
    Keygen {
        /// Key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Registers, gets the peer's endpoints and probes them.
    Run {
        /// The regserver's address.
        #[arg(long)]
        server: SocketAddr,
        /// The regserver's EID.
        #[arg(long)]
        server_eid: Eid,
        /// Our key file (created if missing).
        #[arg(long)]
        key: PathBuf,
        /// The peer's EID.
        #[arg(long)]
        peer: Eid,
        /// Caller: looks the peer up (with NOTIFY) and probes it. Target: waits to be notified
        /// and probes the caller. Listener: only answers probes, for `--wait-secs`.
        #[arg(long, value_enum)]
        role: Role,
        /// Caller: look up without NOTIFY (so the peer does not punch toward us).
        #[arg(long)]
        no_notify: bool,
        /// Local UDP address.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: SocketAddr,
        /// Seconds to get registered and learn the peer's endpoints.
        #[arg(long, default_value_t = 10)]
        wait_secs: u64,
        /// Seconds to probe before concluding that no direct path works.
        #[arg(long, default_value_t = 3)]
        punch_secs: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    Caller,
    Target,
    Listener,
}

fn main() -> ExitCode {
    match Args::parse().command {
        Command::Keygen { key } => match regserver::load_or_create_identity(&key) {
            Ok((identity, _)) => {
                println!("{}", identity.eid());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("punch_check: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            server,
            server_eid,
            key,
            peer,
            role,
            no_notify,
            bind,
            wait_secs,
            punch_secs,
        } => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("punch_check: runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let check = Check {
                server,
                server_eid,
                key,
                peer,
                role,
                notify: !no_notify,
                bind,
                wait: Duration::from_secs(wait_secs),
                punch: Duration::from_secs(punch_secs),
            };
            match runtime.block_on(check.run()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(3),
                Err(e) => {
                    eprintln!("punch_check ({role:?}): {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

struct Check {
    server: SocketAddr,
    server_eid: Eid,
    key: PathBuf,
    peer: Eid,
    role: Role,
    notify: bool,
    bind: SocketAddr,
    wait: Duration,
    punch: Duration,
}

fn probe(kind: u8, eid: &Eid, nonce: u64) -> [u8; PROBE_LEN] {
    let mut p = [0; PROBE_LEN];
    p[..8].copy_from_slice(MAGIC);
    p[8] = kind;
    p[9..41].copy_from_slice(eid.as_bytes());
    p[41..].copy_from_slice(&nonce.to_be_bytes());
    p
}

/// `(kind, sender, nonce)` of a probe datagram, or `None` for anything else.
fn parse_probe(data: &[u8]) -> Option<(u8, Eid, u64)> {
    if data.len() != PROBE_LEN || &data[..8] != MAGIC {
        return None;
    }
    let eid = Eid::from_bytes(data[9..41].try_into().ok()?).ok()?;
    let nonce = u64::from_be_bytes(data[41..].try_into().ok()?);
    Some((data[8], eid, nonce))
}

impl Check {
    /// `Ok(true)`: a direct round trip worked; `Ok(false)`: registration and signalling
    /// worked but no probe came back.
    async fn run(self) -> Result<bool, String> {
        let (identity, _) =
            regserver::load_or_create_identity(&self.key).map_err(|e| e.to_string())?;
        let me = identity.eid();
        let socket = UdpSocket::bind(self.bind)
            .await
            .map_err(|e| format!("bind {}: {e}", self.bind))?;
        let first_seq = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let mut seed = [0; 32];
        OsRng.fill_bytes(&mut seed);
        let config = ClientConfig::new(self.server, self.server_eid, first_seq, seed);
        let mut client = Client::new(config, identity);
        let nonce = OsRng.next_u64();

        let start = Instant::now();
        client.register(start);
        let mut next_lookup: Option<Instant> = None;
        let mut peer_endpoints: Option<Vec<SocketAddr>> = None;
        let mut punch_started = start;
        let mut next_probe = start;
        let mut acked: Option<(SocketAddr, Instant)> = None;
        let mut probes_received = 0u64;
        let mut buf = vec![0u8; 2048];
        let mut out = Vec::new();
        loop {
            let now = Instant::now();
            if client.poll_timeout().is_some_and(|t| t <= now) {
                client.handle_timeout(now);
            }
            if self.role == Role::Caller
                && peer_endpoints.is_none()
                && next_lookup.is_some_and(|t| t <= now)
            {
                next_lookup = None;
                client
                    .lookup(now, self.peer, self.notify)
                    .map_err(|e| format!("lookup: {e}"))?;
            }
            while let Some(event) = client.poll_event() {
                match event {
                    Event::Registered { observed } => {
                        let local = socket.local_addr().map_err(|e| e.to_string())?;
                        println!("registered observed={observed} local={local}");
                        if self.role == Role::Caller && peer_endpoints.is_none() {
                            next_lookup.get_or_insert(now);
                        }
                    }
                    Event::RegistrationLost => eprintln!("punch_check: registration lost"),
                    Event::LookupResult { eid, outcome } if eid == self.peer => match outcome {
                        LookupOutcome::Found(endpoints) => {
                            if peer_endpoints.is_none() {
                                println!("peer endpoints={endpoints:?} (lookup)");
                                peer_endpoints = Some(endpoints);
                                punch_started = now;
                            }
                        }
                        // Not registered yet, or the answer got lost: ask again.
                        other => {
                            tracing_note(&format!("lookup: {other:?}, again"));
                            next_lookup = Some(now + RELOOKUP);
                        }
                    },
                    Event::PunchRequest { peer, endpoints } if peer == self.peer => {
                        if peer_endpoints.is_none() {
                            println!("peer endpoints={endpoints:?} (punch request)");
                            peer_endpoints = Some(endpoints);
                            punch_started = now;
                        }
                    }
                    // punch_check tests punching only; the relay is dial_eid's (sss-host).
                    Event::LookupResult { .. }
                    | Event::PunchRequest { .. }
                    | Event::RelayResult { .. }
                    | Event::RelayOffered { .. } => {}
                }
            }
            while let Some(t) = client.poll_transmit(now, &mut out) {
                // A lost send is retried by the client's own timers.
                let _ = socket.send_to(&out[..t.size], t.destination).await;
            }
            if let Some(endpoints) = &peer_endpoints {
                if acked.is_none() && now >= next_probe {
                    for ep in endpoints {
                        let _ = socket.send_to(&probe(PROBE, &me, nonce), ep).await;
                    }
                    next_probe = now + PROBE_INTERVAL;
                }
            }

            // Verdicts.
            if self.role == Role::Listener {
                if now >= start + self.wait {
                    if client.registered_as().is_none() {
                        return Err("not registered".into());
                    }
                    println!("result=listened probes={probes_received}");
                    return Ok(probes_received > 0);
                }
            } else if let Some((via, at)) = acked {
                if now >= at + LINGER {
                    let mapping = peer_endpoints.as_ref().and_then(|e| e.first());
                    println!(
                        "result=direct via={via} peer_mapping={}",
                        mapping.map_or("?".into(), |m| m.to_string())
                    );
                    return Ok(true);
                }
            } else if peer_endpoints.is_some() {
                if now >= punch_started + self.punch {
                    println!("result=no-direct");
                    return Ok(false);
                }
            } else if now >= start + self.wait {
                let state = match client.registered_as() {
                    None => "not registered",
                    Some(_) if self.role == Role::Caller => "registered, peer not found",
                    Some(_) => "registered, no punch request came",
                };
                return Err(format!("{state} within {:?}", self.wait));
            }

            // Sleep until the next thing to do, or a datagram.
            let mut wake = client.poll_timeout().unwrap_or(now + PROBE_INTERVAL);
            wake = wake.min(now + PROBE_INTERVAL);
            if let Some(t) = next_lookup {
                wake = wake.min(t);
            }
            tokio::select! {
                received = socket.recv_from(&mut buf) => {
                    let (len, from) = received.map_err(|e| format!("receive: {e}"))?;
                    let now = Instant::now();
                    let data = &buf[..len];
                    if from == self.server {
                        client.handle_datagram(now, from, data);
                    } else if let Some((kind, sender, n)) = parse_probe(data) {
                        if sender != self.peer {
                            continue;
                        }
                        if kind == PROBE {
                            probes_received += 1;
                            let _ = socket.send_to(&probe(ACK, &me, n), from).await;
                        } else if kind == ACK && n == nonce && acked.is_none() {
                            println!("probe acknowledged from {from}");
                            acked = Some((from, now));
                        }
                    }
                }
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }
}

/// Progress notes go to standard error, so that standard output holds only the results.
fn tracing_note(msg: &str) {
    eprintln!("punch_check: {msg}");
}
