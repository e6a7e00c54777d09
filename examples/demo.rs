//! The local end-to-end demo: a regserver and two SSS hosts on real UDP sockets over
//! loopback — the hosts register, one dials the other by its EID alone (looked up at the
//! regserver), a Noise IK handshake, a 50 MB transfer checked byte for byte,
//! request/response round trips on substreams, records and datagrams, a transfer through a
//! lossy relay, and the channel's statistics — with what happened printed for a human. Exits
//! non-zero if anything does not verify.
//!
//! `cargo run --release --example demo`

use std::error::Error;
use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use regserver::RegServer;
use sss_host::{Host, HostConfig, ImpairConfig, Relay, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type BoxError = Box<dyn Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

/// Bytes of the bulk transfer.
const BULK: usize = 50_000_000;
/// Seed of the bulk transfer's content.
const BULK_SEED: u64 = 2026;
/// Bytes sent through the lossy relay.
const LOSSY: usize = 1_000_000;
/// Request sizes of the sequential request/response round trips.
const REQUESTS: [usize; 6] = [16, 16, 1_000, 10_000, 100_000, 1_000_000];
/// Concurrent request/response round trips, each on its own substream.
const CONCURRENT: usize = 100;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let start = Instant::now();
    match run().await {
        Ok(()) => {
            println!();
            println!(
                "demo OK in {:.1} s: every byte, record, datagram and answer verified",
                start.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!();
            println!("demo FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    println!("SSS demo: hosts talking over real UDP sockets on loopback");

    // ------------------------------------------------------------------ hosts
    step(
        1,
        "a regserver, and two hosts, each an Ed25519 identity (its EID) and one UDP socket",
    );
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let reg_identity = sss_proto::identity::Identity::generate(&mut rand_core::OsRng);
    let reg = RegServer::bind(loopback, regserver::server_config(reg_identity.eid())).await?;
    println!("  regserver eid {}  at {}", reg.eid(), reg.local_addr());
    let config = || {
        let mut config = HostConfig::bind(loopback);
        config.regservers = vec![(reg.eid(), reg.local_addr())];
        config
    };
    let server = Host::new(config())?;
    let client = Host::new(config())?;
    let bulk = server.listen("demo", "bulk/1")?;
    let rpc = server.listen("demo", "rpc/1")?;
    println!("  server  eid {}  at {}", server.eid(), server.local_addr());
    println!("  client  eid {}  at {}", client.eid(), client.local_addr());
    println!("  server listens for (\"demo\", \"bulk/1\") and (\"demo\", \"rpc/1\")");
    let t = Instant::now();
    let (seen_server, seen_client) = within(10, "registering with the regserver", async {
        Ok::<_, BoxError>((server.registered().await?, client.registered().await?))
    })
    .await?;
    println!(
        "  both registered (cookie round trip, then a record signed with their key) in {}; \
         the regserver sees them at {seen_server} and {seen_client}",
        ms(t.elapsed())
    );
    check(
        seen_server.port() == server.local_addr().port(),
        "the regserver saw the server at its own port",
    )?;

    // The server's side runs in tasks of its own.
    let bulk_server = tokio::spawn(serve_bulk(bulk));
    let rpc_server = tokio::spawn(serve_rpc(rpc));

    // ------------------------------------------------------------------ connect
    step(2, "connect by EID");
    let t = Instant::now();
    let mut out = within(
        10,
        "connecting",
        client.connect_eid(server.eid(), "demo", "bulk/1"),
    )
    .await?;
    let connect = t.elapsed();
    println!(
        "  the client knew only the server's EID: looked it up at the regserver (which told the \
         server to punch toward the client), then the handshake (Noise IK, one round trip); \
         first stream open in {}; link {:?}",
        ms(connect),
        *out.link_status().borrow()
    );
    let t = Instant::now();
    let mut control = client.connect_eid(server.eid(), "demo", "rpc/1").await?;
    println!(
        "  a second stream, for another service, opened on the same channel in {} (no handshake)",
        ms(t.elapsed())
    );
    check(
        out.remote_eid() == server.eid(),
        "the client reached the EID it asked for",
    )?;

    // ------------------------------------------------------------------ bulk transfer
    step(3, "bulk transfer, verified byte for byte");
    println!(
        "  client sends {} of seeded pseudo-random bytes; the server checks every one",
        mb(BULK)
    );
    let t = Instant::now();
    within(60, "the bulk transfer", async {
        let mut pattern = Pattern::new(BULK_SEED);
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = BULK;
        while left > 0 {
            let n = left.min(buf.len());
            pattern.fill(&mut buf[..n]);
            out.write_all(&buf[..n]).await?;
            left -= n;
        }
        out.shutdown().await?;
        Ok::<_, std::io::Error>(())
    })
    .await?;
    let mut answer = [0u8; 17];
    within(30, "the server's verdict", out.read_exact(&mut answer)).await?;
    let secs = t.elapsed().as_secs_f64();
    let report = within(10, "the bulk server", bulk_server).await??;
    println!(
        "  server: {report}; it authenticated the sender as the client: {}",
        yes(report.peer == client.eid())
    );
    let checked = u64::from_be_bytes(answer[..8].try_into()?);
    let correct = answer[16] == 1;
    println!(
        "  client: the server's answer says {} bytes checked, all correct: {}",
        thousands(checked),
        yes(correct)
    );
    println!(
        "  {} in {secs:.2} s = {:.0} MB/s ({:.2} Gbit/s)",
        mb(BULK),
        BULK as f64 / secs / 1e6,
        BULK as f64 * 8.0 / secs / 1e9
    );
    check(
        report.verified == BULK as u64
            && report.first_wrong.is_none()
            && report.peer == client.eid(),
        "the server received exactly what was sent",
    )?;
    check(
        correct && checked == BULK as u64,
        "the server's answer matches",
    )?;

    // ------------------------------------------------------------------ records, datagrams
    step(
        4,
        "records and datagrams on the rpc stream (echoed by the server)",
    );
    let records: [Vec<u8>; 3] = [
        b"hello, a record".to_vec(),
        Pattern::bytes(3, 1_500),
        Pattern::bytes(4, 100_000),
    ];
    within(10, "the records", async {
        for r in &records {
            control.write_record(r).await?;
        }
        for (i, sent) in records.iter().enumerate() {
            let got = control
                .read_record(1 << 20)
                .await?
                .ok_or("the rpc stream ended early")?;
            let ok = !got.truncated && got.data == *sent;
            println!(
                "  record {}: {:>7} B sent, {:>7} B came back as one record, same bytes: {}",
                i + 1,
                sent.len(),
                got.data.len(),
                yes(ok)
            );
            check(ok, "a record comes back whole, with its boundary")?;
        }
        Ok::<_, BoxError>(())
    })
    .await?;
    // Datagrams: the first byte says reliable (1) or best-effort (0); the server echoes each
    // the same way. Both are larger than a packet: datagrams of any size.
    let reliable = tagged(1, Pattern::bytes(5, 200_000));
    let best_effort = tagged(0, Pattern::bytes(6, 5_000));
    control.send_datagram(&reliable, true)?;
    control.send_datagram(&best_effort, false)?;
    let t = Instant::now();
    let (mut got_reliable, mut got_best_effort) = (false, false);
    while !got_reliable || !got_best_effort {
        // A best-effort datagram may be lost (never here, unless the machine drops UDP): wait
        // a while for it, but do not fail without it.
        let wait = if got_reliable {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(10)
        };
        let Ok(d) = tokio::time::timeout(wait, control.recv_datagram()).await else {
            break;
        };
        let d = d?.ok_or("the rpc stream ended early")?;
        if d == reliable {
            got_reliable = true;
            println!(
                "  reliable datagram of {} B echoed back whole after {}",
                reliable.len(),
                ms(t.elapsed())
            );
        } else if d == best_effort {
            got_best_effort = true;
            println!(
                "  best-effort datagram of {} B echoed back whole after {}",
                best_effort.len(),
                ms(t.elapsed())
            );
        } else {
            return Err(
                format!("a datagram of {} B that was never sent came back", d.len()).into(),
            );
        }
    }
    check(got_reliable, "the reliable datagram came back")?;
    if !got_best_effort {
        println!("  best-effort datagram lost (allowed: best-effort datagrams are never re-sent)");
    }

    // ------------------------------------------------------------------ request/response
    step(
        5,
        "request/response, each on a new substream of the rpc stream",
    );
    println!("  a substream opens with its first packet (no round trip); the server answers");
    println!("  with the request's bytes reversed, and the client checks the answer");
    for (i, &size) in REQUESTS.iter().enumerate() {
        let request = Pattern::bytes(100 + i as u64, size);
        let (answer, rtt) = within(10, "a request", round_trip(&control, &request)).await?;
        let ok = is_reversed(&request, &answer);
        println!(
            "  request {}: {:>9} -> {:>9} answer, round trip {:>9}, correct: {}",
            i + 1,
            bytes(size),
            bytes(answer.len()),
            ms(rtt),
            yes(ok)
        );
        check(ok, "the answer is the request reversed")?;
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CONCURRENT {
        let request = Pattern::bytes(1000 + i as u64, 1_000);
        let sub = control.open_substream()?;
        tasks.push(tokio::spawn(async move {
            let (answer, rtt) = exchange(sub, &request).await?;
            Ok::<_, BoxError>((is_reversed(&request, &answer), rtt))
        }));
    }
    let mut rtts = Vec::new();
    let mut all_ok = true;
    for task in tasks {
        let (ok, rtt) = within(20, "a concurrent request", task).await??;
        all_ok &= ok;
        rtts.push(rtt);
    }
    rtts.sort();
    println!(
        "  {CONCURRENT} requests of 1 kB at once on {CONCURRENT} substreams: all correct: {}; \
         round trips median {}, slowest {}, all done in {}",
        yes(all_ok),
        ms(rtts[rtts.len() / 2]),
        ms(rtts[rtts.len() - 1]),
        ms(t.elapsed())
    );
    check(all_ok, "every concurrent answer is its request reversed")?;
    // Tell the server we are done (a reliable datagram, tag 2), then finish the stream.
    control.send_datagram(&[2], true)?;
    control.shutdown().await?;
    let served = within(10, "the rpc server", rpc_server).await??;
    check(
        served == REQUESTS.len() + CONCURRENT,
        "the server answered every substream",
    )?;

    // ------------------------------------------------------------------ stats
    step(6, "the channel's statistics, as each side sees them");
    for (name, host, peer) in [
        ("client", &client, server.eid()),
        ("server", &server, client.eid()),
    ] {
        let s = host.stats(peer).ok_or("no channel")?;
        println!(
            "  {name}: rtt {}, cwnd {}, path MTU {} B, GSO batches up to {} datagrams",
            ms(s.rtt),
            bytes(s.cwnd as usize),
            s.mtu,
            s.max_batch
        );
        println!(
            "          sent {} packets ({}), received {} ({}), {} declared lost, {} ACK frames",
            thousands(s.packets_sent),
            bytes(s.bytes_sent as usize),
            thousands(s.packets_received),
            bytes(s.bytes_received as usize),
            s.packets_lost,
            s.acks_sent
        );
    }

    // ------------------------------------------------------------------ lossy relay
    step(
        7,
        "through an impairment relay: 2% loss each way, 10 ms round trip",
    );
    lossy(&server).await?;

    step(8, "close");
    let t = Instant::now();
    client.close().await;
    within(5, "the server noticing the close", async {
        while server.stats(client.eid()).is_some() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok::<_, BoxError>(())
    })
    .await?;
    println!(
        "  the client closed its host; the server saw the channel end {} later",
        ms(t.elapsed())
    );
    server.close().await;
    let stats = reg.stats();
    println!(
        "  regserver: {} hosts registered, {} lookup(s), {} notify; {} datagrams in ({} B), {} out ({} B)",
        stats.server.registered,
        stats.server.lookups,
        stats.server.notifies,
        stats.datagrams_in,
        stats.bytes_in,
        stats.datagrams_out,
        stats.bytes_out
    );
    check(
        stats.server.registered >= 2 && stats.server.lookups >= 1,
        "both hosts registered and the client's dial was a lookup at the regserver",
    )?;
    reg.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------- the server's side

/// What the bulk receiver found.
struct BulkReport {
    peer: sss_host::Eid,
    verified: u64,
    first_wrong: Option<u64>,
    secs: f64,
}

impl Display for BulkReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "received {} bytes in {:.2} s, ",
            thousands(self.verified),
            self.secs
        )?;
        match self.first_wrong {
            None => write!(f, "every byte as expected (0 wrong, 0 missing)"),
            Some(at) => write!(f, "byte {at} WRONG"),
        }
    }
}

/// Accepts one stream, checks its bytes against the seeded pattern, answers with the count
/// checked (8 bytes), the offset of the first wrong byte or `u64::MAX` (8 bytes) and 1 if all
/// `BULK` bytes were right.
async fn serve_bulk(listener: sss_host::Listener) -> Result<BulkReport> {
    let mut stream = listener.accept().await?;
    let t = Instant::now();
    let mut pattern = Pattern::new(BULK_SEED);
    let mut buf = vec![0u8; 256 * 1024];
    let mut expected = vec![0u8; buf.len()];
    let mut verified = 0u64;
    let mut first_wrong = None;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        pattern.fill(&mut expected[..n]);
        if first_wrong.is_none() && buf[..n] != expected[..n] {
            let i = (0..n).find(|&i| buf[i] != expected[i]).unwrap_or(0);
            first_wrong = Some(verified + i as u64);
        }
        verified += n as u64;
    }
    let ok = first_wrong.is_none() && verified == BULK as u64;
    stream.write_all(&verified.to_be_bytes()).await?;
    stream
        .write_all(&first_wrong.unwrap_or(u64::MAX).to_be_bytes())
        .await?;
    stream.write_all(&[u8::from(ok)]).await?;
    stream.shutdown().await?;
    Ok(BulkReport {
        peer: stream.remote_eid(),
        verified,
        first_wrong,
        secs: t.elapsed().as_secs_f64(),
    })
}

/// Accepts one stream: echoes its first three records, then echoes datagrams and answers
/// every substream with its request reversed, until the client's datagram `[2]`. Returns
/// the number of substreams answered.
async fn serve_rpc(listener: sss_host::Listener) -> Result<usize> {
    let mut stream = listener.accept().await?;
    for _ in 0..3 {
        let record = stream
            .read_record(1 << 20)
            .await?
            .ok_or("the rpc stream ended before its records")?;
        stream.write_record(&record.data).await?;
    }
    let mut answers = Vec::new();
    loop {
        tokio::select! {
            sub = stream.accept_substream() => match sub? {
                Some(sub) => answers.push(tokio::spawn(answer(sub))),
                None => break,
            },
            d = stream.recv_datagram() => match d?.as_deref() {
                // The client is done (it has all its answers, so every substream is here).
                Some([2]) | None => break,
                Some(d) => stream.send_datagram(d, d.first() == Some(&1))?,
            },
        }
    }
    let mut served = 0;
    for a in answers {
        a.await??;
        served += 1;
    }
    Ok(served)
}

/// Reads a request to its end and answers with its bytes reversed.
async fn answer(mut sub: Stream) -> Result<()> {
    let mut request = Vec::new();
    sub.read_to_end(&mut request).await?;
    request.reverse();
    sub.write_all(&request).await?;
    sub.shutdown().await?;
    Ok(())
}

// ---------------------------------------------------------------------- the client's side

/// One request on a new substream of `parent`: the answer and the round-trip time.
async fn round_trip(parent: &Stream, request: &[u8]) -> Result<(Vec<u8>, Duration)> {
    let sub = parent.open_substream()?;
    exchange(sub, request).await
}

/// Sends `request` on `sub`, finishes it and reads the answer to its end.
async fn exchange(mut sub: Stream, request: &[u8]) -> Result<(Vec<u8>, Duration)> {
    let t = Instant::now();
    sub.write_all(request).await?;
    sub.shutdown().await?;
    let mut answer = Vec::with_capacity(request.len());
    sub.read_to_end(&mut answer).await?;
    Ok((answer, t.elapsed()))
}

/// A fresh client host sends `LOSSY` bytes to `server` through a relay that drops 2% of the
/// datagrams each way and delays each by 5 ms; the server checks every byte.
async fn lossy(server: &Host) -> Result<()> {
    let relay = Relay::start(
        "127.0.0.1:0".parse()?,
        server.loopback_addr(),
        ImpairConfig {
            delay: Duration::from_millis(5),
            loss: 0.02,
            seed: 7,
            ..ImpairConfig::default()
        },
    )?;
    let listener = server.listen("demo", "lossy/1")?;
    let receiver = tokio::spawn(async move {
        let mut stream = listener.accept().await?;
        let mut data = Vec::with_capacity(LOSSY);
        stream.read_to_end(&mut data).await?;
        let ok = data == Pattern::bytes(9, LOSSY);
        stream.write_all(&[u8::from(ok)]).await?;
        stream.shutdown().await?;
        Ok::<_, BoxError>((data.len(), ok))
    });
    let roamer = Host::new(HostConfig::bind("127.0.0.1:0".parse()?))?;
    println!(
        "  a third host (eid {}...) sends {} to the server via the relay at {}",
        &roamer.eid().to_string()[..12],
        mb(LOSSY),
        relay.local_addr()
    );
    let t = Instant::now();
    let (received, ok, verdict) = within(30, "the transfer through the relay", async {
        let mut stream = roamer
            .connect(server.eid(), &[relay.local_addr()], "demo", "lossy/1")
            .await?;
        println!("  connected through the relay in {}", ms(t.elapsed()));
        stream.write_all(&Pattern::bytes(9, LOSSY)).await?;
        stream.shutdown().await?;
        let mut verdict = [0u8; 1];
        stream.read_exact(&mut verdict).await?;
        let (received, ok) = receiver.await??;
        Ok::<_, BoxError>((received, ok, verdict[0] == 1))
    })
    .await?;
    let secs = t.elapsed().as_secs_f64();
    let relay_stats = relay.stats();
    let stats = roamer
        .stats(server.eid())
        .ok_or("no channel through the relay")?;
    println!(
        "  the relay dropped {} of {} datagrams towards the server and {} of {} back",
        relay_stats.forward.dropped_loss,
        relay_stats.forward.received,
        relay_stats.backward.dropped_loss,
        relay_stats.backward.received
    );
    println!(
        "  the sender declared {} packets lost and re-sent their data; rtt {}, cwnd {}",
        stats.packets_lost,
        ms(stats.rtt),
        bytes(stats.cwnd as usize)
    );
    println!(
        "  server received {} bytes, every byte as sent: {}; done in {secs:.2} s ({:.1} MB/s)",
        thousands(received as u64),
        yes(ok && verdict),
        LOSSY as f64 / secs / 1e6
    );
    check(
        ok && verdict && received == LOSSY,
        "the transfer through the lossy relay is exact",
    )?;
    roamer.close().await;
    relay.shutdown();
    Ok(())
}

// ---------------------------------------------------------------------- helpers

/// Seeded pseudo-random bytes (xorshift64*), as a byte stream: any split of the output into
/// `fill` calls gives the same bytes.
struct Pattern {
    state: u64,
    /// Bytes of the last word not handed out yet.
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes()
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut buf = buf;
        let n = buf.len().min(8 - self.used);
        buf[..n].copy_from_slice(&self.word[self.used..self.used + n]);
        self.used += n;
        buf = &mut buf[n..];
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_word());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            self.word = self.next_word();
            rest.copy_from_slice(&self.word[..rest.len()]);
            self.used = rest.len();
        }
    }

    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        Self::new(seed).fill(&mut v);
        v
    }
}

fn tagged(tag: u8, mut data: Vec<u8>) -> Vec<u8> {
    data[0] = tag;
    data
}

fn is_reversed(request: &[u8], answer: &[u8]) -> bool {
    request.len() == answer.len() && request.iter().rev().eq(answer.iter())
}

/// Fails the demo with `what` unless `ok`.
fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}

/// Runs `f`, failing the demo if it takes longer than `secs` (nothing should hang).
async fn within<T, E>(secs: u64, what: &str, f: impl Future<Output = Result<T, E>>) -> Result<T>
where
    E: Into<Box<dyn Error + Send + Sync>>,
{
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(format!("{what} took longer than {secs} s").into()),
    }
}

fn step(n: u32, title: &str) {
    println!();
    println!("[{n}] {title}");
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "NO"
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1e3)
    } else {
        format!("{ms:.1} ms")
    }
}

fn mb(n: usize) -> String {
    format!("{} MB", n as f64 / 1e6)
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(n: usize) -> String {
    match n {
        0..=9_999 => format!("{n} B"),
        10_000..=999_999 => format!("{:.1} kB", n as f64 / 1e3),
        _ => format!("{:.1} MB", n as f64 / 1e6),
    }
}
