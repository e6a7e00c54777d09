//! Channel internals that the public API cannot reach: the anti-amplification allowance and
//! the ACK deadline `poll_timeout` reports, key confirmation by the first data packet and when
//! path MTU probing starts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::transmit::MIN_SMALL_PACKET;
use super::{Channel, ChannelConfig, EcnState, Upper, UpperError};
use crate::endpoint::{DatagramEvent, Endpoint, EndpointConfig};
use crate::frame::{upper_header_len, write_upper_header, FrameType};
use crate::identity::Identity;
use crate::packet::{DataHeader, TAG_LEN};
use crate::EcnCodepoint;

const UNIX_NANOS: u64 = 1_700_000_000_000_000_000;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

fn endpoint(seed: u8, now: Instant) -> Endpoint {
    let identity = Identity::generate(&mut ChaCha20Rng::seed_from_u64(u64::from(seed)));
    let mut config = EndpointConfig::new([seed; 32]);
    // The initiator's first data packet is then its small key-confirming PING.
    let channel = ChannelConfig {
        mtu_discovery: false,
        ..ChannelConfig::default()
    };
    config.channel = Arc::new(channel);
    Endpoint::new(config, &identity, now, UNIX_NANOS)
}

/// An initiator at `addr(1)` and a responder at `addr(2)` that sent its response; the
/// initiator is established and `ping` is its first data packet, not yet delivered.
struct Handshaken {
    now: Instant,
    a: Channel<()>,
    b: Channel<()>,
    ping: Vec<u8>,
}

/// Runs the handshake from `ea` (at `addr(1)`) to `eb` (at `addr(2)`): the initiator is
/// established; the responder sent its response and nothing else.
fn establish(now: Instant, mut ea: Endpoint, mut eb: Endpoint) -> (Channel<()>, Channel<()>) {
    let (_, mut a) = ea
        .connect::<()>(now, eb.eid(), addr(2), "test", "none")
        .expect("connect");
    let mut buf = Vec::new();
    let t = a
        .poll_transmit(now, 1, &mut buf, &mut ())
        .expect("initiation");
    let b = answer(now, &mut eb, &mut a, &buf[..t.size]);
    assert!(a.is_established());
    (a, b)
}

/// Delivers `initiation` from `a` (at `addr(1)`) to `eb`, which accepts it, and `eb`'s
/// response back to `a`; returns the responder's channel.
fn answer(now: Instant, eb: &mut Endpoint, a: &mut Channel<()>, initiation: &[u8]) -> Channel<()> {
    let mut scratch = Vec::new();
    let Some(DatagramEvent::Incoming(incoming)) = eb.handle(now, addr(1), initiation, &mut scratch)
    else {
        panic!("the initiation must reach the application");
    };
    let (_, mut b) = eb.accept::<()>(now, incoming).expect("accept");
    let mut buf = Vec::new();
    let t = b
        .poll_transmit(now, 1, &mut buf, &mut ())
        .expect("response");
    a.handle_datagram(now, addr(2), &mut buf[..t.size], &mut ());
    b
}

fn handshake() -> Handshaken {
    let now = Instant::now();
    let (mut a, b) = establish(now, endpoint(1, now), endpoint(2, now));
    let mut buf = Vec::new();
    let t = a.poll_transmit(now, 1, &mut buf, &mut ()).expect("PING");
    Handshaken {
        now,
        a,
        b,
        ping: buf[..t.size].to_vec(),
    }
}

#[test]
fn an_ack_the_amplification_limit_holds_back_has_no_deadline_until_bytes_arrive() {
    let Handshaken {
        mut now,
        mut a,
        mut b,
        mut ping,
    } = handshake();
    let mut buf = Vec::new();
    // The responder spent all but a few bytes of its allowance, counting the PING it is
    // about to receive from a new address (the initiator's NAT rebound).
    let received = b.unvalidated_received + ping.len() as u64;
    b.unvalidated_sent = 3 * received - (MIN_SMALL_PACKET as u64 - 1);
    b.handle_datagram(now, addr(5000), &mut ping, &mut ());
    assert!(!b.validated);
    assert_eq!(
        b.amplification_allowance(),
        Some(MIN_SMALL_PACKET as u64 - 1)
    );
    let ack_at = b.received.deadline().expect("an ACK is owed for the PING");
    assert!(
        b.poll_timeout().expect("idle timer") > ack_at,
        "the held-back ACK's deadline must not be reported"
    );
    // Even at the ACK deadline nothing can go, and the deadline stays away.
    now = ack_at;
    b.handle_timeout(now, &mut ());
    assert!(b.poll_transmit(now, 64, &mut buf, &mut ()).is_none());
    assert!(b.poll_timeout().expect("idle timer") > now);

    // The initiator sends again, from yet another address: the allowance grows, the ACK is
    // due and goes out, cut to the allowance.
    now += Duration::from_millis(1);
    a.ping();
    let t = a
        .poll_transmit(now, 1, &mut buf, &mut ())
        .expect("second PING");
    let mut second = buf[..t.size].to_vec();
    b.handle_datagram(now, addr(5001), &mut second, &mut ());
    assert!(!b.validated);
    let allowance = b.amplification_allowance().expect("still limited");
    assert!(allowance >= MIN_SMALL_PACKET as u64);
    assert!(b.poll_timeout().expect("ACK deadline") <= now);
    let t = b
        .poll_transmit(now, 64, &mut buf, &mut ())
        .expect("the ACK fits the allowance");
    let mut ack = buf[..t.size].to_vec();
    assert!(t.size as u64 <= allowance);
    assert_eq!(t.destination, addr(5001));
    assert_eq!(b.stats.acks_sent, 1);
    assert!(b.poll_transmit(now, 64, &mut buf, &mut ()).is_none());
    assert!(b.poll_timeout().expect("idle timer") > now);
    assert!(b.unvalidated_sent <= 3 * b.unvalidated_received);

    // The initiator gets the ACK: its PINGs are acknowledged.
    a.handle_datagram(now, addr(2), &mut ack, &mut ());
    assert_eq!(a.stats.packets_received, 1);
    assert_eq!(a.bytes_in_flight, 0, "both PINGs acknowledged");
}

/// An upper layer that always has data and fills whatever room it is given.
#[derive(Default)]
struct Filler {
    frames: usize,
}

impl Upper for Filler {
    type Meta = ();

    fn has_pending(&self) -> bool {
        true
    }

    fn write_frames(&mut self, _: Instant, buf: &mut Vec<u8>, space: usize, metas: &mut Vec<()>) {
        let header = upper_header_len(FILL, space);
        if space <= header {
            return;
        }
        write_upper_header(buf, FILL, space - header);
        buf.resize(buf.len() + space - header, 0xab);
        metas.push(());
        self.frames += 1;
    }

    fn handle_frame(&mut self, _: Instant, _: FrameType, _: &[u8]) -> Result<(), UpperError> {
        Ok(())
    }

    fn on_acked(&mut self, _: ()) {}

    fn on_lost(&mut self, _: ()) {}
}

const FILL: FrameType = FrameType(0x20);

#[test]
fn under_the_amplification_limit_acks_and_pings_go_small_and_data_waits() {
    let Handshaken {
        now,
        mut a,
        mut b,
        mut ping,
    } = handshake();
    let mut buf = Vec::new();
    let mut upper = Filler::default();
    // Room for a small packet but not for a full one.
    let received = b.unvalidated_received + ping.len() as u64;
    b.unvalidated_sent = 3 * received - 600;
    b.handle_datagram(now, addr(5000), &mut ping, &mut upper);
    assert!(!b.validated);
    assert!(
        b.ping_pending,
        "a PING is queued to validate the new address"
    );
    // The PING goes at once with the ACK, in a small packet charged its real size; the data
    // waits for a full segment.
    let t = b
        .poll_transmit(now, 64, &mut buf, &mut upper)
        .expect("PING and ACK");
    let mut small = buf[..t.size].to_vec();
    assert!(t.size < 100 && t.segment_size.is_none(), "{t:?}");
    assert_eq!(upper.frames, 0, "no data under the limit");
    assert_eq!(b.stats.acks_sent, 1);
    assert_eq!(b.amplification_allowance(), Some(600 - t.size as u64));
    assert!(b.poll_transmit(now, 64, &mut buf, &mut upper).is_none());
    assert!(b.poll_timeout().expect("loss detection") > now);

    // The initiator acknowledges the PING from the address B now sends to, which validates
    // it: B's data flows in full segments.
    a.handle_datagram(now, addr(2), &mut small, &mut ());
    assert_eq!(a.bytes_in_flight, 0, "A's PING is acknowledged");
    let at = a.poll_timeout().expect("A owes an ACK");
    a.handle_timeout(at, &mut ());
    let mut from_a = Vec::new();
    let t = a.poll_transmit(at, 1, &mut from_a, &mut ()).expect("ACK");
    b.handle_datagram(at, addr(5000), &mut from_a[..t.size], &mut upper);
    assert!(b.validated);
    assert_eq!(b.bytes_in_flight, 0, "B's PING is acknowledged");
    let t = b
        .poll_transmit(at, 64, &mut buf, &mut upper)
        .expect("data once validated");
    assert_eq!(t.destination, addr(5000));
    assert!(upper.frames > 0);
    // A full segment (whole-block payloads may cut up to 15 bytes off it).
    assert!(
        (1185..=1200).contains(&t.segment_size.unwrap_or(t.size)),
        "{t:?}"
    );
}

#[test]
fn no_probe_timer_while_the_amplification_limit_blocks_the_probe() {
    let Handshaken {
        mut now,
        a: _,
        mut b,
        mut ping,
    } = handshake();
    let mut buf = Vec::new();
    let mut upper = Filler::default();
    // Room for exactly one full data packet and a few bytes more.
    let segment = 1200;
    b.unvalidated_sent = 3 * b.unvalidated_received - (segment + 40);
    let t = b
        .poll_transmit(now, 64, &mut buf, &mut upper)
        .expect("one full packet fits");
    // One full packet (whole-block payloads may cut up to 15 bytes off it).
    assert!(
        (segment as usize - 15..=segment as usize).contains(&t.size),
        "{t:?}"
    );
    assert_eq!(upper.frames, 1);
    assert!(b.bytes_in_flight > 0);
    assert!(b.amplification_blocked());
    let next = b.poll_timeout().expect("handshake timeout");
    assert!(
        next >= now + Duration::from_secs(1),
        "no PTO for a probe that cannot be sent: {:?}",
        next - now
    );
    // Long after the PTO would have fired, nothing is due and nothing is sent.
    now += Duration::from_secs(5);
    b.handle_timeout(now, &mut ());
    assert!(b.poll_transmit(now, 64, &mut buf, &mut upper).is_none());
    assert!(b.poll_timeout().expect("handshake timeout") > now);

    // Bytes from the peer (from a new address) re-arm the timer, and the PING and the probe
    // go out small.
    b.handle_datagram(now, addr(5000), &mut ping, &mut upper);
    assert!(!b.amplification_blocked());
    assert!(b.poll_timeout().expect("PTO and ACK") <= now);
    b.handle_timeout(now, &mut upper);
    let t = b
        .poll_transmit(now, 64, &mut buf, &mut upper)
        .expect("a small PING");
    assert!(t.size < 100);
    assert_eq!(upper.frames, 1, "still no data");
    assert!(b.poll_timeout().expect("PTO") > now);
}

/// `datagram` is a full data packet for an MTU of `mtu` under
/// [`ChannelConfig::whole_block_payloads`]: its payload is whole 16-byte AEAD blocks, and it is
/// the largest such packet, at most 15 bytes short of the MTU.
fn assert_whole_block_packet(datagram: &[u8], mtu: usize) {
    let (_, header_len) = DataHeader::parse(datagram).expect("a data packet");
    let payload = datagram.len() - header_len - TAG_LEN;
    assert_eq!(
        payload % 16,
        0,
        "payload of {payload} bytes is not whole blocks"
    );
    assert!(
        datagram.len() <= mtu && datagram.len() + 16 > mtu,
        "{} bytes is not the largest such packet for an MTU of {mtu}",
        datagram.len()
    );
}

#[test]
fn whole_block_payloads_cut_data_packets_and_a_batch_keeps_one_segment_size() {
    let now = Instant::now();
    let identity = Identity::generate(&mut ChaCha20Rng::seed_from_u64(2));
    let mut config = EndpointConfig::new([2; 32]);
    config.channel = Arc::new(ChannelConfig {
        mtu_discovery: false,
        whole_block_payloads: true,
        ..ChannelConfig::default()
    });
    let eb = Endpoint::new(config, &identity, now, UNIX_NANOS);
    let (mut a, mut b) = establish(now, endpoint(1, now), eb);
    let mut buf = Vec::new();
    let t = a.poll_transmit(now, 1, &mut buf, &mut ()).expect("PING");
    let mut ping = buf[..t.size].to_vec();
    let mut upper = Filler::default();
    b.handle_datagram(now, addr(1), &mut ping, &mut upper);
    assert!(b.validated);
    let first = b.next_pn;
    let t = b
        .poll_transmit(now, 64, &mut buf, &mut upper)
        .expect("data");
    let segment = t.segment_size.expect("a batch of several datagrams");
    let datagrams: Vec<&[u8]> = buf[..t.size].chunks(segment).collect();
    assert!(datagrams.len() > 1, "{t:?}");
    for datagram in &datagrams[..datagrams.len() - 1] {
        assert_eq!(
            datagram.len(),
            segment,
            "all but the last have the batch's size"
        );
        assert_whole_block_packet(datagram, 1200);
    }
    // Path MTU discovery counts them in the size class they were cut from.
    let sent = b.sent.get(first).expect("outstanding");
    assert_eq!(usize::from(sent.size) + usize::from(sent.cut), 1200);
    assert!(sent.cut > 0);
}

/// An upper layer that accepts every frame and sends none.
struct Sink;

impl Upper for Sink {
    type Meta = ();

    fn has_pending(&self) -> bool {
        false
    }

    fn write_frames(&mut self, _: Instant, _: &mut Vec<u8>, _: usize, _: &mut Vec<()>) {}

    fn handle_frame(&mut self, _: Instant, _: FrameType, _: &[u8]) -> Result<(), UpperError> {
        Ok(())
    }

    fn on_acked(&mut self, _: ()) {}

    fn on_lost(&mut self, _: ()) {}
}

/// Upper-layer data of `left` bytes, written once.
#[derive(Default)]
struct Once {
    left: usize,
    frames: usize,
}

impl Upper for Once {
    type Meta = ();

    fn has_pending(&self) -> bool {
        self.left > 0
    }

    fn write_frames(&mut self, _: Instant, buf: &mut Vec<u8>, space: usize, metas: &mut Vec<()>) {
        if self.left == 0 || space <= upper_header_len(FILL, self.left) + self.left {
            return;
        }
        write_upper_header(buf, FILL, self.left);
        buf.resize(buf.len() + self.left, 0xab);
        self.left = 0;
        metas.push(());
        self.frames += 1;
    }

    fn handle_frame(&mut self, _: Instant, _: FrameType, _: &[u8]) -> Result<(), UpperError> {
        Ok(())
    }

    fn on_acked(&mut self, _: ()) {}

    fn on_lost(&mut self, _: ()) {}
}

/// Runs `rounds` steps of 5 ms: timers, then one batch `a` sends goes to `b` and everything
/// `b` sends goes back, each datagram with the ECN codepoint of its transmit. Returns the
/// codepoints of `a`'s transmits.
fn exchange(
    now: &mut Instant,
    a: &mut Channel<()>,
    b: &mut Channel<()>,
    upper: &mut Filler,
    rounds: usize,
) -> Vec<Option<EcnCodepoint>> {
    let mut buf = Vec::new();
    let mut marks = Vec::new();
    for _ in 0..rounds {
        *now += Duration::from_millis(5);
        if a.poll_timeout().is_some_and(|t| t <= *now) {
            a.handle_timeout(*now, upper);
        }
        if b.poll_timeout().is_some_and(|t| t <= *now) {
            b.handle_timeout(*now, &mut Sink);
        }
        // A link of ten datagrams per step: the window has nothing else to stop it.
        if let Some(t) = a.poll_transmit(*now, 10, &mut buf, upper) {
            marks.push(t.ecn);
            for d in buf[..t.size].chunks_mut(t.segment_size.unwrap_or(t.size)) {
                b.handle_datagram_with_ecn(*now, addr(1), t.ecn, d, &mut Sink);
            }
        }
        while let Some(t) = b.poll_transmit(*now, 64, &mut buf, &mut Sink) {
            for d in buf[..t.size].chunks_mut(t.segment_size.unwrap_or(t.size)) {
                a.handle_datagram_with_ecn(*now, addr(2), t.ecn, d, upper);
            }
        }
    }
    marks
}

/// An established pair whose path was validated for ECN: `a` sends bulk data to `b`.
fn ecn_capable_pair() -> (Instant, Channel<()>, Channel<()>, Filler) {
    let Handshaken {
        mut now,
        mut a,
        mut b,
        mut ping,
    } = handshake();
    let mut upper = Filler::default();
    // The PING was the first packet of the ECN test, so it went out ECT(0).
    assert_eq!(a.stats().ecn_marked_sent, 1);
    b.handle_datagram_with_ecn(now, addr(1), Some(EcnCodepoint::Ect0), &mut ping, &mut Sink);
    exchange(&mut now, &mut a, &mut b, &mut upper, 40);
    assert_eq!(a.stats().ecn_state, EcnState::Capable);
    assert!(b.stats().ecn_ect0_received > 10);
    (now, a, b, upper)
}

#[test]
fn a_peer_reporting_decreasing_ecn_counts_disables_ecn() {
    let (mut now, mut a, mut b, mut upper) = ecn_capable_pair();
    // The peer starts reporting fewer ECT(0) packets than before.
    b.received.ecn.ect0 = 1;
    let marks = exchange(&mut now, &mut a, &mut b, &mut upper, 40);
    let s = a.stats();
    assert_eq!(s.ecn_state, EcnState::Failed);
    assert_eq!(s.ecn_failures, 1);
    assert!(
        a.is_established(),
        "bad ECN feedback never closes the channel"
    );
    // From the failure on, everything goes out Not-ECT.
    assert_eq!(marks.last(), Some(&None));
    let sent = a.stats().ecn_marked_sent;
    let marks = exchange(&mut now, &mut a, &mut b, &mut upper, 20);
    assert!(!marks.is_empty() && marks.iter().all(Option::is_none));
    assert_eq!(a.stats().ecn_marked_sent, sent);
}

#[test]
fn a_peer_reporting_impossible_ecn_counts_disables_ecn() {
    type Lie = fn(&mut crate::frame::EcnCounts);
    let lies: [Lie; 3] = [
        |c| c.ect0 = crate::codec::VARINT_MAX,
        |c| c.ce += 1_000_000,
        |c| c.ect1 += 1,
    ];
    for lie in lies {
        let (mut now, mut a, mut b, mut upper) = ecn_capable_pair();
        lie(&mut b.received.ecn);
        exchange(&mut now, &mut a, &mut b, &mut upper, 20);
        let s = a.stats();
        assert_eq!(s.ecn_state, EcnState::Failed);
        assert_eq!(s.ecn_failures, 1);
        assert_eq!(s.ecn_congestion_signals, 0, "a failed count is no signal");
        assert!(a.is_established());
    }
}

/// An initiator that just took the response (nothing sent since) and its responder, both
/// with path MTU discovery on.
fn established_with_mtu_discovery() -> (Instant, Channel<()>, Channel<()>) {
    let now = Instant::now();
    let with_discovery = |seed: u8| {
        let identity = Identity::generate(&mut ChaCha20Rng::seed_from_u64(u64::from(seed)));
        let mut config = EndpointConfig::new([seed; 32]);
        config.channel = Arc::new(ChannelConfig {
            mtu_discovery: true,
            ..ChannelConfig::default()
        });
        Endpoint::new(config, &identity, now, UNIX_NANOS)
    };
    let (a, b) = establish(now, with_discovery(1), with_discovery(2));
    (now, a, b)
}

#[test]
fn data_ready_at_establishment_confirms_the_keys_without_a_separate_ping() {
    let (now, mut a, mut b) = established_with_mtu_discovery();
    assert!(a.ping_pending, "key confirmation is queued");
    let mut upper = Once {
        left: 50,
        frames: 0,
    };
    let mut buf = Vec::new();
    let t = a
        .poll_transmit(now, 64, &mut buf, &mut upper)
        .expect("the first packet");
    assert_eq!(upper.frames, 1, "the data rides in the first packet");
    assert!(t.size < 200, "no MTU probe, no padding: {t:?}");
    assert!(!a.ping_pending, "the data packet confirmed the keys");
    let mut data = buf[..t.size].to_vec();
    assert!(
        a.poll_transmit(now, 64, &mut buf, &mut upper).is_none(),
        "no PING follows the data, and no MTU probe before an acknowledgement"
    );
    // The responder takes it as key confirmation: the initiator's address is validated.
    assert!(!b.validated);
    b.handle_datagram(now, addr(1), &mut data, &mut ());
    assert!(b.validated);
}

#[test]
fn path_mtu_probing_waits_for_the_first_acknowledgement() {
    let (mut now, mut a, mut b) = established_with_mtu_discovery();
    let mut buf = Vec::new();
    // The key-confirming PING, alone: the probe does not go with it.
    let t = a.poll_transmit(now, 64, &mut buf, &mut ()).expect("PING");
    assert!(t.size < 100, "{t:?}");
    let mut ping = buf[..t.size].to_vec();
    assert!(a.poll_transmit(now, 64, &mut buf, &mut ()).is_none());
    now += Duration::from_millis(10);
    b.handle_datagram(now, addr(1), &mut ping, &mut ());
    // The responder has seen nothing of its own acknowledged either: at its ACK deadline it
    // sends the ACK, and no probe.
    assert!(b.poll_transmit(now, 64, &mut buf, &mut ()).is_none());
    now = b.received.deadline().expect("an ACK is owed for the PING");
    b.handle_timeout(now, &mut ());
    let t = b.poll_transmit(now, 64, &mut buf, &mut ()).expect("ACK");
    assert!(t.size < 100, "{t:?}");
    let mut ack = buf[..t.size].to_vec();
    now += Duration::from_millis(10);
    a.handle_datagram(now, addr(2), &mut ack, &mut ());
    // Acknowledged: the search starts.
    let t = a
        .poll_transmit(now, 64, &mut buf, &mut ())
        .expect("an MTU probe");
    assert!(t.size > 1200, "a probe is larger than the base size: {t:?}");
}

/// An upper layer that sends `total` numbered frames, one per packet, and records the fate the
/// channel reports for each.
#[derive(Default)]
struct Tracker {
    total: u64,
    next: u64,
    acked: Vec<u64>,
    lost: Vec<u64>,
}

impl Upper for Tracker {
    type Meta = u64;

    fn has_pending(&self) -> bool {
        self.next < self.total
    }

    fn write_frames(&mut self, _: Instant, buf: &mut Vec<u8>, space: usize, metas: &mut Vec<u64>) {
        let header = upper_header_len(FILL, space);
        if self.next >= self.total || space <= header {
            return;
        }
        write_upper_header(buf, FILL, space - header);
        buf.resize(buf.len() + space - header, 0xab);
        metas.push(self.next);
        self.next += 1;
    }

    fn handle_frame(&mut self, _: Instant, _: FrameType, _: &[u8]) -> Result<(), UpperError> {
        Ok(())
    }

    fn on_acked(&mut self, meta: u64) {
        self.acked.push(meta);
    }

    fn on_lost(&mut self, meta: u64) {
        self.lost.push(meta);
    }
}

/// An established initiator with `config`, its handshake's responder left behind, that sent
/// its key-confirming PING and then `frames` data packets, one frame each, all at `now`.
/// Returns it, the upper layer and the data packets' numbers.
fn sender_with(
    config: ChannelConfig,
    now: Instant,
    frames: u64,
) -> (Channel<u64>, Tracker, Vec<u64>) {
    let endpoint = |seed: u8| {
        let identity = Identity::generate(&mut ChaCha20Rng::seed_from_u64(u64::from(seed)));
        let mut c = EndpointConfig::new([seed; 32]);
        c.channel = Arc::new(config.clone());
        Endpoint::new(c, &identity, now, UNIX_NANOS)
    };
    let (mut ea, mut eb) = (endpoint(1), endpoint(2));
    let mut upper = Tracker::default();
    let (_, mut a) = ea
        .connect::<u64>(now, eb.eid(), addr(2), "test", "none")
        .expect("connect");
    let mut buf = Vec::new();
    let t = a
        .poll_transmit(now, 1, &mut buf, &mut upper)
        .expect("initiation");
    let mut scratch = Vec::new();
    let Some(DatagramEvent::Incoming(incoming)) =
        eb.handle(now, addr(1), &buf[..t.size], &mut scratch)
    else {
        panic!("the initiation must reach the application");
    };
    let (_, mut b) = eb.accept::<u64>(now, incoming).expect("accept");
    let t = b
        .poll_transmit(now, 1, &mut buf, &mut Tracker::default())
        .expect("response");
    a.handle_datagram(now, addr(2), &mut buf[..t.size], &mut upper);
    assert!(a.is_established());
    let _ping = a.poll_transmit(now, 1, &mut buf, &mut upper).expect("PING");
    upper.total = frames;
    let mut pns = Vec::new();
    while a.poll_transmit(now, 1, &mut buf, &mut upper).is_some() {
        pns.push(a.next_pn - 1);
    }
    assert_eq!(
        pns.len() as u64,
        frames,
        "the initial window holds them all"
    );
    (a, upper, pns)
}

fn ack_of(ranges: &[std::ops::RangeInclusive<u64>]) -> crate::frame::AckFrame {
    crate::frame::AckFrame {
        largest: *ranges[0].end(),
        delay_micros: 0,
        ranges: ranges.to_vec(),
        ecn: None,
    }
}

/// A packet delayed past the time threshold is declared lost: its frame is reported lost and
/// the window reduced. When its acknowledgement comes after all, the loss was spurious: the
/// reduction is undone (with `spurious_loss_undo`), the time threshold rises past the delay
/// seen, and the upper layer hears nothing more about the frame (it already re-sent it): every
/// frame has exactly one fate.
#[test]
fn a_late_acknowledgement_of_a_lost_packet_undoes_its_congestion_event() {
    for undo in [true, false] {
        let config = ChannelConfig {
            mtu_discovery: false,
            ecn: false,
            spurious_loss_undo: undo,
            ..ChannelConfig::default()
        };
        let t0 = Instant::now();
        let (mut a, mut upper, pns) = sender_with(config, t0, 8);
        let late = pns[2];
        // 50 ms later everything up to two packets past it is acknowledged, but it.
        let mut now = t0 + Duration::from_millis(50);
        let first = ack_of(&[late + 1..=late + 2, 0..=late - 1]);
        a.on_ack_received(now, &first, &mut upper)
            .expect("valid ACK");
        assert!(upper.lost.is_empty(), "two packets later is not enough");
        let window = a.cc.window();
        // At 9/8 of the round trip it is declared lost by time.
        now = a.loss_time.expect("the time threshold is armed");
        assert_eq!(now, t0 + Duration::from_micros(56_250));
        a.handle_timeout(now, &mut upper);
        assert_eq!(upper.lost, vec![2]);
        assert!(a.cc.window() < window, "a congestion event");
        let reduced = a.cc.window();
        // 5 ms later (61.25 ms after it was sent) its acknowledgement arrives.
        now += Duration::from_millis(5);
        let second = ack_of(&[0..=late + 2]);
        a.on_ack_received(now, &second, &mut upper)
            .expect("valid ACK");
        let s = a.stats();
        assert_eq!(
            (
                s.packets_lost,
                s.spurious_losses,
                s.spurious_congestion_events
            ),
            (1, 1, 1)
        );
        assert_eq!(s.congestion_events, 1);
        if undo {
            assert_eq!(a.cc.window(), window, "the reduction is undone");
            // 61.25 ms is 9.8 eighths of the 50 ms round trip: the threshold becomes 10/8.
            assert_eq!((s.packet_threshold, s.time_threshold_eighths), (3, 10));
        } else {
            assert_eq!(a.cc.window(), reduced);
            assert_eq!((s.packet_threshold, s.time_threshold_eighths), (3, 9));
        }
        // The same ACK again, and the rest acknowledged: each frame has one fate.
        a.on_ack_received(now, &second, &mut upper)
            .expect("valid ACK");
        let all = ack_of(&[0..=*pns.last().unwrap()]);
        a.on_ack_received(now + Duration::from_millis(1), &all, &mut upper)
            .expect("valid ACK");
        assert_eq!(a.stats().spurious_losses, 1, "counted once");
        assert_eq!(upper.lost, vec![2]);
        let mut fates: Vec<u64> = upper.acked.iter().chain(&upper.lost).copied().collect();
        fates.sort_unstable();
        assert_eq!(fates, (0..8).collect::<Vec<_>>(), "acked {:?}", upper.acked);
    }
}

/// Both sides close at once (each superseding the channel): each gets the other's CLOSE
/// while closing, drains, and the exchange stops after one CLOSE each way instead of
/// answering CLOSE with CLOSE for the whole closing period.
#[test]
fn simultaneous_closes_do_not_ping_pong() {
    let Handshaken {
        mut now,
        mut a,
        mut b,
        mut ping,
    } = handshake();
    b.handle_datagram(now, addr(1), &mut ping, &mut ());
    assert!(b.is_established());
    a.close(now, 0, b"superseded", &mut ());
    b.close(now, 0, b"superseded", &mut ());
    let mut buf = Vec::new();
    let mut sent = 0;
    for _ in 0..200 {
        now += Duration::from_millis(1);
        let mut to_b = Vec::new();
        while let Some(t) = a.poll_transmit(now, 1, &mut buf, &mut ()) {
            to_b.push(buf[..t.size].to_vec());
        }
        let mut to_a = Vec::new();
        while let Some(t) = b.poll_transmit(now, 1, &mut buf, &mut ()) {
            to_a.push(buf[..t.size].to_vec());
        }
        sent += to_a.len() + to_b.len();
        for mut d in to_b {
            b.handle_datagram(now, addr(1), &mut d, &mut ());
        }
        for mut d in to_a {
            a.handle_datagram(now, addr(2), &mut d, &mut ());
        }
    }
    assert_eq!(sent, 2, "one CLOSE each way");
}

/// A hole-punching probe from the peer's address makes an initiator whose first initiation
/// died at the peer's NAT send it again at once (once per retry interval), instead of waiting
/// for the timed retry.
#[test]
fn retry_handshake_now_resends_the_initiation_once_per_retry_interval() {
    let mut now = Instant::now();
    let (mut ea, mut eb) = (endpoint(1, now), endpoint(2, now));
    let (_, mut a) = ea
        .connect::<()>(now, eb.eid(), addr(2), "test", "none")
        .expect("connect");
    // Nothing sent yet: there is nothing to send again.
    assert!(!a.retry_handshake_now(now));
    let mut buf = Vec::new();
    let _sent = a
        .poll_transmit(now, 1, &mut buf, &mut ())
        .expect("first initiation (lost at the peer's NAT)");
    let retry_at = a.poll_timeout().expect("the handshake retry timer");
    assert!(retry_at >= now + Duration::from_millis(500));

    // The peer's PUNCH arrives 30 ms later: the initiation goes again, now.
    now += Duration::from_millis(30);
    assert!(a.retry_handshake_now(now));
    let t = a
        .poll_transmit(now, 1, &mut buf, &mut ())
        .expect("the initiation, sent again at once");
    // A second probe within the same retry interval does nothing more.
    assert!(!a.retry_handshake_now(now + Duration::from_millis(10)));
    assert!(a
        .poll_transmit(now + Duration::from_millis(10), 1, &mut Vec::new(), &mut ())
        .is_none());
    // The timed retry keeps its schedule.
    assert_eq!(a.poll_timeout(), Some(retry_at));

    answer(now, &mut eb, &mut a, &buf[..t.size]);
    assert!(
        a.is_established(),
        "established 30 ms in, not at the timed retry"
    );
    // After the handshake a probe changes nothing.
    assert!(!a.retry_handshake_now(now));
}

/// The timed retry renews the allowance of [`Channel::retry_handshake_now`].
#[test]
fn retry_handshake_now_is_allowed_again_after_each_timed_retry() {
    let mut now = Instant::now();
    let eb = endpoint(2, now);
    let mut ea = endpoint(1, now);
    let (_, mut a) = ea
        .connect::<()>(now, eb.eid(), addr(2), "test", "none")
        .expect("connect");
    let mut buf = Vec::new();
    let _sent = a
        .poll_transmit(now, 1, &mut buf, &mut ())
        .expect("first initiation");
    assert!(a.retry_handshake_now(now));
    let _sent = a
        .poll_transmit(now, 1, &mut buf, &mut ())
        .expect("early retry");
    assert!(!a.retry_handshake_now(now));
    now = a.poll_timeout().expect("retry timer");
    a.handle_timeout(now, &mut ());
    let _sent = a
        .poll_transmit(now, 1, &mut buf, &mut ())
        .expect("timed retry");
    assert!(a.retry_handshake_now(now));
    let _sent = a
        .poll_transmit(now, 1, &mut buf, &mut ())
        .expect("early retry after the timed one");
}
