//! Dialing by EID on real loopback sockets, with regservers run in the test
//! (`common::regserver`): registration, lookup, `connect_eid`, the named lookup errors, a
//! regserver that restarts or is dead, and the PUNCH probes a NOTIFY makes a host send.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::regserver::Regserver;
use common::{host_with, loopback, within};
use rand_core::{OsRng, RngCore};
use sss_host::{Error, Host, HostConfig, Identity, RoutingConfig, PUNCH_PROBES, PUNCH_SCHEDULE};
use sss_routing::wire::Message;
use sss_routing::{Client, ClientConfig, Event, LookupOutcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

/// A host bound to `bind` that uses `regservers`, with `keepalive` between keepalives.
fn routed(bind: &str, regservers: &[&Regserver], keepalive: Duration) -> Host {
    let mut config = HostConfig::bind(bind.parse().unwrap());
    config.regservers = regservers.iter().map(|r| r.entry()).collect();
    config.routing.keepalive_interval = keepalive;
    host_with(config)
}

/// Echoes every stream accepted on ("echo", "v1") back to its writer.
fn serve_echo(host: &Host) {
    let listener = host.listen("echo", "v1").unwrap();
    tokio::spawn(async move {
        while let Ok(mut stream) = listener.accept().await {
            tokio::spawn(async move {
                let mut data = Vec::new();
                stream.read_to_end(&mut data).await?;
                stream.write_all(&data).await?;
                stream.shutdown().await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
}

/// Dials `target` by EID from `caller` and checks that the echo comes back.
async fn echo_by_eid(caller: &Host, target: &Host, text: &[u8]) {
    let mut stream = caller
        .connect_eid(target.eid(), "echo", "v1")
        .await
        .expect("connect_eid");
    stream.write_all(text).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, text);
}

fn random_eid() -> sss_host::Eid {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    Identity::from_secret_bytes(&secret).eid()
}

#[tokio::test]
async fn a_registered_host_is_dialed_by_eid_alone() {
    within(20, async {
        let reg = Regserver::start().await;
        // Wildcard bindings: the IPv4 host and the dual-stack one both reach the regserver
        // on 127.0.0.1 and each other at the endpoints it observed.
        let a = routed("0.0.0.0:0", &[&reg], Duration::from_secs(20));
        let b = routed("[::]:0", &[&reg], Duration::from_secs(20));
        serve_echo(&a);

        let observed = a.registered().await.unwrap();
        assert_eq!(
            observed,
            a.loopback_addr(),
            "the regserver saw A at 127.0.0.1"
        );
        assert!(reg.has_record(&a.eid()));
        b.registered().await.unwrap();
        let status = a.regservers();
        assert_eq!(status.len(), 1);
        assert_eq!((status[0].eid, status[0].addr), reg.entry());
        assert_eq!(status[0].registered_as, Some(observed));

        assert_eq!(b.lookup(a.eid()).await.unwrap()[0], a.loopback_addr());
        echo_by_eid(&b, &a, b"hello by EID").await;
        // B was registered, so its lookup asked the regserver to tell A to punch.
        assert_eq!(reg.notifies(), 1);
        // A channel is up now: the second stream opens on it without a lookup.
        echo_by_eid(&b, &a, b"again").await;
        assert_eq!(reg.notifies(), 1, "no lookup while a channel is up");
    })
    .await;
}

#[tokio::test]
async fn early_data_by_eid_reaches_the_peer() {
    within(20, async {
        let reg = Regserver::start().await;
        let a = routed("127.0.0.1:0", &[&reg], Duration::from_secs(20));
        let b = routed("127.0.0.1:0", &[&reg], Duration::from_secs(20));
        serve_echo(&a);
        a.registered().await.unwrap();
        let mut stream = b
            .connect_eid_early(a.eid(), "echo", "v1", b"early")
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"early");
    })
    .await;
}

#[tokio::test]
async fn looking_up_an_unknown_eid_fails_with_peer_not_found() {
    within(20, async {
        let reg = Regserver::start().await;
        let b = routed("127.0.0.1:0", &[&reg], Duration::from_secs(20));
        let stranger = random_eid();
        assert!(matches!(b.lookup(stranger).await, Err(Error::PeerNotFound)));
        // Before and after B registered (a NOTIFY-less lookup needs no registration).
        b.registered().await.unwrap();
        assert!(matches!(b.lookup(stranger).await, Err(Error::PeerNotFound)));
        let e = b.connect_eid(stranger, "echo", "v1").await.unwrap_err();
        assert!(matches!(e, Error::PeerNotFound), "{e}");
        assert_eq!(e.io_kind(), std::io::ErrorKind::NotFound);
    })
    .await;
}

#[tokio::test]
async fn without_a_regserver_dialing_by_eid_says_so() {
    within(20, async {
        let b = host_with(HostConfig::bind(loopback()));
        let peer = random_eid();
        assert!(matches!(b.lookup(peer).await, Err(Error::NoRegserver)));
        let e = b.connect_eid(peer, "echo", "v1").await.unwrap_err();
        assert!(matches!(e, Error::NoRegserver), "{e}");
        assert!(e.to_string().contains("no regserver configured"), "{e}");
        assert!(matches!(b.registered().await, Err(Error::NoRegserver)));
        assert!(b.regservers().is_empty());

        // One added later is used at once.
        let reg = Regserver::start().await;
        b.add_regserver(reg.eid, reg.addr).unwrap();
        assert_eq!(b.registered().await.unwrap(), b.local_addr());
        assert!(matches!(b.lookup(peer).await, Err(Error::PeerNotFound)));
    })
    .await;
}

#[tokio::test]
async fn a_lookup_nobody_answers_times_out() {
    within(20, async {
        // A socket that reads nothing: a dead regserver.
        let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut config = HostConfig::bind(loopback());
        config.regservers = vec![(random_eid(), dead.local_addr().unwrap())];
        config.routing = RoutingConfig::default();
        config.routing.lookup_timeout = Duration::from_millis(600);
        let b = host_with(config);
        let start = Instant::now();
        let e = b.lookup(random_eid()).await.unwrap_err();
        assert!(matches!(e, Error::LookupTimedOut), "{e}");
        assert!(start.elapsed() >= Duration::from_millis(500));
        assert_eq!(b.regservers()[0].registered_as, None);
    })
    .await;
}

#[tokio::test]
async fn after_a_regserver_restart_hosts_register_again_and_dialing_works_again() {
    within(30, async {
        let reg = Regserver::start().await;
        // Short keepalives: they are how a host learns that the regserver lost its record.
        let a = routed("127.0.0.1:0", &[&reg], Duration::from_secs(1));
        let b = routed("127.0.0.1:0", &[&reg], Duration::from_secs(1));
        serve_echo(&a);
        a.registered().await.unwrap();
        b.registered().await.unwrap();

        reg.restart();
        assert!(!reg.has_record(&a.eid()), "the restart lost the records");
        reg.wait_for_record(&a.eid()).await;
        echo_by_eid(&b, &a, b"after the restart").await;
        reg.wait_for_record(&b.eid()).await;
    })
    .await;
}

#[tokio::test]
async fn lookup_right_after_a_restart_re_registers_the_caller() {
    within(30, async {
        let reg = Regserver::start().await;
        let a = routed("127.0.0.1:0", &[&reg], Duration::from_secs(1));
        // B's keepalives are too rare to notice the restart (and its refresh is minutes
        // away): the refused NOTIFY lookup is what makes it register again.
        let b = routed("127.0.0.1:0", &[&reg], Duration::from_secs(600));
        serve_echo(&a);
        a.registered().await.unwrap();
        b.registered().await.unwrap();
        reg.restart();
        reg.wait_for_record(&a.eid()).await;
        assert!(!reg.has_record(&b.eid()));
        // B's lookup asks for a NOTIFY, which the server refuses (it forgot B): B registers
        // again and asks once more without NOTIFY, and the dial goes through.
        echo_by_eid(&b, &a, b"refused, then found").await;
        reg.wait_for_record(&b.eid()).await;
    })
    .await;
}

#[tokio::test]
async fn with_two_regservers_one_dead_dialing_still_works() {
    within(20, async {
        let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead = (random_eid(), dead.local_addr().unwrap());
        let live = Regserver::start().await;
        let config = |dead| {
            let mut c = HostConfig::bind(loopback());
            c.regservers = vec![dead, live.entry()];
            c
        };
        let a = host_with(config(dead));
        let b = host_with(config(dead));
        serve_echo(&a);
        a.registered().await.unwrap();
        b.registered().await.unwrap();
        let status = a.regservers();
        assert_eq!(status[0].registered_as, None, "the dead one never answers");
        assert_eq!(status[1].registered_as, Some(a.local_addr()));

        // The live regserver's answer wins without waiting for the dead one's timeout.
        let start = Instant::now();
        echo_by_eid(&b, &a, b"through the live one").await;
        assert!(start.elapsed() < Duration::from_secs(5));
    })
    .await;
}

#[tokio::test]
async fn a_failed_attempt_is_retried_after_a_new_lookup_that_finds_the_moved_peer() {
    within(30, async {
        let reg = Regserver::start().await;
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        let config = || {
            let mut c = HostConfig::bind(loopback());
            c.regservers = vec![reg.entry()];
            c
        };
        // The peer registers, then goes away: its record still names its old socket.
        let old = Host::with_identity(&Identity::from_secret_bytes(&secret), config()).unwrap();
        let old_addr = old.registered().await.unwrap();
        old.close().await;
        drop(old);

        let mut c = config();
        c.attempt_timeout = Duration::from_millis(300);
        c.backoff = sss_host::BackoffPolicy {
            delays_ms: vec![100],
            jitter_percent: 0,
            conceal: 3,
        };
        let b = host_with(c);
        b.registered().await.unwrap();
        let peer = Identity::from_secret_bytes(&secret).eid();
        let dial = {
            let b = b.clone();
            tokio::spawn(async move { b.connect_eid(peer, "echo", "v1").await })
        };
        // Once B's first lookup was answered (with the old socket), the peer comes back on
        // a new one; B's retry looks it up again and finds it there.
        reg.wait_until(|s| s.stats().lookups >= 1).await;
        let new = Host::with_identity(&Identity::from_secret_bytes(&secret), config()).unwrap();
        serve_echo(&new);
        let new_addr = new.registered().await.unwrap();
        assert_ne!(new_addr, old_addr);
        let mut stream = dial.await.unwrap().expect("connected on a retry");
        stream.write_all(b"moved").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"moved");
        assert!(reg.lookups() >= 2, "looked up again");
    })
    .await;
}

/// A bare routing client on its own socket, to see what a host sends to a caller.
struct RawCaller {
    socket: UdpSocket,
    client: Client,
}

impl RawCaller {
    async fn new(reg: &Regserver) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let config = ClientConfig::new(reg.addr, reg.eid, 1, seed);
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        let client = Client::new(config, Identity::from_secret_bytes(&secret));
        Self { socket, client }
    }

    /// Runs the client until `until` is true of an event, or of a datagram from another
    /// address than the regserver (handed to `other`).
    async fn run(
        &mut self,
        mut until: impl FnMut(&Event) -> bool,
        mut other: impl FnMut(SocketAddr, &[u8]),
    ) {
        let mut buf = vec![0u8; 2048];
        loop {
            let mut out = Vec::new();
            while let Some(t) = self.client.poll_transmit(Instant::now(), &mut out) {
                self.socket
                    .send_to(&out[..t.size], t.destination)
                    .await
                    .unwrap();
            }
            while let Some(e) = self.client.poll_event() {
                if until(&e) {
                    return;
                }
            }
            let deadline = self.client.poll_timeout();
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let (n, from) = r.unwrap();
                    if from == self.client.config().server_addr {
                        self.client.handle_datagram(Instant::now(), from, &buf[..n]);
                    } else {
                        other(from, &buf[..n]);
                    }
                }
                () = async {
                    match deadline {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                } => self.client.handle_timeout(Instant::now()),
            }
        }
    }
}

#[tokio::test]
async fn a_notify_makes_the_target_send_a_bounded_burst_of_punch_probes() {
    within(20, async {
        let reg = Regserver::start().await;
        let a = routed("127.0.0.1:0", &[&reg], Duration::from_secs(20));
        a.registered().await.unwrap();
        let mut caller = RawCaller::new(&reg).await;
        caller.client.register(Instant::now());
        caller
            .run(|e| matches!(e, Event::Registered { .. }), |_, _| {})
            .await;

        // Two lookups with NOTIFY in quick succession: the second NOTIFY joins the burst
        // the first started, so A probes the caller's one endpoint PUNCH_PROBES times.
        let mut probes = Vec::new();
        for _ in 0..2 {
            caller.client.lookup(Instant::now(), a.eid(), true).unwrap();
            caller
                .run(
                    |e| {
                        matches!(
                            e,
                            Event::LookupResult {
                                outcome: LookupOutcome::Found(_),
                                ..
                            }
                        )
                    },
                    |from, data| probes.push((from, data.to_vec())),
                )
                .await;
        }
        assert_eq!(reg.notifies(), 2);
        let a_addr = a.local_addr();
        let window =
            Instant::now() + PUNCH_SCHEDULE[PUNCH_SCHEDULE.len() - 1] + Duration::from_secs(1);
        let _ = tokio::time::timeout_at(
            window.into(),
            caller.run(|_| false, |from, data| probes.push((from, data.to_vec()))),
        )
        .await;
        assert_eq!(probes.len(), PUNCH_PROBES as usize, "{probes:?}");
        for (from, data) in &probes {
            assert_eq!(*from, a_addr);
            assert!(matches!(Message::decode(data), Ok(Message::Punch(_))));
        }
    })
    .await;
}

#[test]
fn the_blocking_facade_dials_by_eid_too() {
    use sss_host::blocking;
    use std::io::{Read, Write};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = rt.block_on(Regserver::start());
    let config = || {
        let mut c = HostConfig::bind(loopback());
        c.regservers = vec![reg.entry()];
        c
    };
    let a = blocking::Host::new(config()).unwrap();
    let listener = a.listen("echo", "v1").unwrap();
    assert_eq!(a.registered().unwrap(), a.local_addr());
    let b = blocking::Host::new(HostConfig::bind(loopback())).unwrap();
    assert!(matches!(b.lookup(a.eid()), Err(Error::NoRegserver)));
    b.add_regserver(reg.eid, reg.addr).unwrap();
    assert_eq!(b.lookup(a.eid()).unwrap(), vec![a.local_addr()]);
    let mut out = b.connect_eid(a.eid(), "echo", "v1").unwrap();
    out.write_all(b"blocking").unwrap();
    out.finish().unwrap();
    let mut incoming = listener.accept().unwrap();
    let mut got = Vec::new();
    incoming.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"blocking");
}

/// A host for the relay tests: registered with `reg`, relaying after `relay_after`, and
/// with `drop_direct` blind to every channel datagram that does not come through a relay.
fn relay_host(reg: &Regserver, drop_direct: bool, relay_after: Option<Duration>) -> Host {
    let mut config = HostConfig::bind(loopback());
    config.regservers = vec![reg.entry()];
    config.routing.relay_after = relay_after;
    config.routing.drop_direct = drop_direct;
    host_with(config)
}

/// With no direct path (both hosts drop direct channel datagrams), `connect_eid` asks the
/// regserver for a relay after `relay_after` and the channel runs through it: streams both
/// ways, a second stream and a larger transfer later, the listener side accepting as usual;
/// both hosts see the channel as relayed and the regserver counted what it relayed.
#[tokio::test]
async fn a_relay_carries_the_channel_when_no_direct_path_works() {
    within(30, async {
        let reg = Regserver::start().await;
        let a = relay_host(&reg, true, Some(Duration::from_millis(500)));
        let b = relay_host(&reg, true, Some(Duration::from_millis(500)));
        serve_echo(&a);
        a.registered().await.unwrap();
        b.registered().await.unwrap();

        let start = Instant::now();
        echo_by_eid(&b, &a, b"through the relay").await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(500),
            "not before relay_after: {took:?}"
        );
        assert_eq!(b.is_relayed(a.eid()), Some(true));
        assert_eq!(a.is_relayed(b.eid()), Some(true));
        let stats = reg.stats();
        assert_eq!(stats.relays_opened, 1);
        assert!(stats.relayed_packets >= 4, "{stats:?}");

        // The session lives on through the relay: another stream, 300 kB each way.
        let data = common::Pattern::bytes(7, 300_000);
        let mut stream = b.connect_eid(a.eid(), "echo", "v1").await.unwrap();
        let (mut rd, mut wr) = tokio::io::split(&mut stream);
        let send = async {
            wr.write_all(&data).await.unwrap();
            wr.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let recv = rd.read_to_end(&mut back);
        let (_, got) = tokio::join!(send, recv);
        got.unwrap();
        assert_eq!(back, data);
        assert_eq!(b.is_relayed(a.eid()), Some(true));
        let after = reg.stats();
        assert!(after.relayed_bytes > 600_000, "{after:?}");
        assert_eq!(after.relay_dropped, 0);
        assert_eq!(after.relays_opened, 1, "one slot for the session");
        let (sent, received) = b.relayed_datagrams();
        assert!(sent > 200 && received > 200, "{sent} {received}");
    })
    .await;
}

/// Where the direct path works, nothing is relayed: the handshake completes long before
/// `relay_after`, and no slot is asked for.
#[tokio::test]
async fn a_direct_path_is_not_relayed() {
    within(20, async {
        let reg = Regserver::start().await;
        let a = relay_host(&reg, false, Some(Duration::from_millis(300)));
        let b = relay_host(&reg, false, Some(Duration::from_millis(300)));
        serve_echo(&a);
        a.registered().await.unwrap();
        b.registered().await.unwrap();
        echo_by_eid(&b, &a, b"direct").await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(b.is_relayed(a.eid()), Some(false));
        let stats = reg.stats();
        assert_eq!((stats.relays_opened, stats.relayed_packets), (0, 0));
        assert_eq!(b.relayed_datagrams(), (0, 0));
    })
    .await;
}

/// Without a direct path: a regserver that refuses to relay makes `connect_eid` fail with
/// the typed refusal; a host with relaying disabled times out as before.
#[tokio::test]
async fn a_refused_or_disabled_relay_fails_the_dial() {
    within(30, async {
        let reg = Regserver::start_with(|c| c.max_relays = 0).await;
        let dial = |relay_after| {
            let mut config = HostConfig::bind(loopback());
            config.regservers = vec![reg.entry()];
            config.routing.relay_after = relay_after;
            config.routing.drop_direct = true;
            config.attempt_timeout = Duration::from_millis(1500);
            config.backoff = sss_host::BackoffPolicy::never();
            host_with(config)
        };
        let a = relay_host(&reg, true, None);
        serve_echo(&a);
        a.registered().await.unwrap();
        let b = dial(Some(Duration::from_millis(300)));
        b.registered().await.unwrap();
        let e = b.connect_eid(a.eid(), "echo", "v1").await.unwrap_err();
        assert!(
            matches!(e, Error::RelayRefused(sss_routing::wire::ErrorCode::Full)),
            "{e:?}"
        );
        let c = dial(None);
        c.registered().await.unwrap();
        let e = c.connect_eid(a.eid(), "echo", "v1").await.unwrap_err();
        assert!(matches!(e, Error::TimedOut), "{e:?}");
    })
    .await;
}

/// A relayed channel is upgraded once a direct path appears: the caller keeps trying one
/// (every `relay_upgrade_interval`), the direct channel supersedes the relayed one, and a
/// stream opened over the relay carries on over the direct path.
#[tokio::test]
async fn a_relayed_channel_moves_to_a_direct_path_when_one_appears() {
    within(30, async {
        let reg = Regserver::start().await;
        let host = || {
            let mut config = HostConfig::bind(loopback());
            config.regservers = vec![reg.entry()];
            config.routing.relay_after = Some(Duration::from_millis(300));
            config.routing.relay_upgrade_interval = Some(Duration::from_millis(700));
            config.routing.drop_direct = true;
            host_with(config)
        };
        let (a, b) = (host(), host());
        // A streaming echo: every byte goes back as it arrives.
        let listener = a.listen("copy", "v1").unwrap();
        tokio::spawn(async move {
            while let Ok(stream) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut rd, mut wr) = tokio::io::split(stream);
                    tokio::io::copy(&mut rd, &mut wr).await?;
                    wr.shutdown().await
                });
            }
        });
        a.registered().await.unwrap();
        b.registered().await.unwrap();
        let mut stream = b.connect_eid(a.eid(), "copy", "v1").await.unwrap();
        assert_eq!(b.is_relayed(a.eid()), Some(true));
        let mut buf = [0u8; 6];
        stream.write_all(b"relay1").await.unwrap();
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"relay1");
        // Still relayed while no direct path exists (attempts fail quietly).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(b.is_relayed(a.eid()), Some(true));

        a.set_drop_direct(false);
        b.set_drop_direct(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.is_relayed(a.eid()) != Some(false) || a.is_relayed(b.eid()) != Some(false) {
            assert!(Instant::now() < deadline, "no upgrade to the direct path");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The same stream, now direct.
        // The relayed channel's last datagrams (its CLOSE each way) may still be on their
        // way; after that, nothing more goes through the relay.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let relayed_before = reg.stats().relayed_packets;
        stream.write_all(b"direct").await.unwrap();
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"direct");
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(
            reg.stats().relayed_packets,
            relayed_before,
            "nothing relayed after the upgrade"
        );
        assert!(relayed_before < 200, "{relayed_before} datagrams relayed");
    })
    .await;
}

/// With several regservers, a relay is asked of each in turn: the first one the caller is
/// registered with does not know the target (NO_TARGET), the second opens the slot.
#[tokio::test]
async fn a_relay_refused_by_one_regserver_is_asked_of_the_next() {
    within(30, async {
        let (reg1, reg2) = (Regserver::start().await, Regserver::start().await);
        let host = |regs: &[&Regserver]| {
            let mut config = HostConfig::bind(loopback());
            config.regservers = regs.iter().map(|r| r.entry()).collect();
            config.routing.relay_after = Some(Duration::from_millis(300));
            config.routing.drop_direct = true;
            host_with(config)
        };
        let a = host(&[&reg2]);
        let b = host(&[&reg1, &reg2]);
        serve_echo(&a);
        a.registered().await.unwrap();
        reg1.wait_for_record(&b.eid()).await;
        reg2.wait_for_record(&b.eid()).await;
        echo_by_eid(&b, &a, b"second regserver").await;
        assert_eq!(b.is_relayed(a.eid()), Some(true));
        assert_eq!(reg1.stats().relays_opened, 0);
        assert!(reg1.stats().errors >= 1, "reg1 refused");
        assert_eq!(reg2.stats().relays_opened, 1);
        assert!(reg2.stats().relayed_packets > 0);
    })
    .await;
}
