//! Regression tests for stream-layer bugs found by the `stream_ops` fuzz target, and for
//! behaviour its model once got wrong. Two sessions talk through the `Upper` trait directly;
//! each test drives the exact sequence that failed.

use std::time::{Duration, Instant};

use sss_proto::channel::Upper;
use sss_proto::frame::{Frame, Frames};
use sss_proto::handshake::TransportParams;
use sss_proto::stream::{
    Attach, ErrorCode, SentFrame, Session, SessionConfig, SessionEvent, StreamId,
};
use sss_proto::testkit;

/// One "packet": the frames a session wrote and what it must learn back about them.
struct Packet {
    bytes: Vec<u8>,
    metas: Vec<SentFrame>,
}

struct Pair {
    now: Instant,
    /// `s[0]` is A, `s[1]` is B.
    s: [Session; 2],
}

impl Pair {
    fn new() -> Self {
        Self::with(SessionConfig::default())
    }

    fn with(config: SessionConfig) -> Self {
        let now = Instant::now();
        let s = testkit::attached_sessions(config, now);
        Self { now, s }
    }

    /// A new channel: both sessions attach with the other's current parameters.
    fn attach(&mut self) -> [Attach; 2] {
        let params = |s: &Session| TransportParams {
            session_id: s.local_session_id(),
            initial_max_stream_data: s.layer_params().initial_max_stream_data,
            initial_max_data: s.layer_params().initial_max_data,
            initial_max_streams: s.layer_params().initial_max_streams,
            ..TransportParams::default()
        };
        let (pa, pb) = (params(&self.s[0]), params(&self.s[1]));
        [
            self.s[0].attach(self.now, &pb),
            self.s[1].attach(self.now, &pa),
        ]
    }

    /// A packet from side `from`, if it has anything to send.
    fn send(&mut self, from: usize) -> Option<Packet> {
        let mut bytes = Vec::new();
        let mut metas = Vec::new();
        self.s[from].write_frames(self.now, &mut bytes, 1200, &mut metas);
        (!bytes.is_empty()).then_some(Packet { bytes, metas })
    }

    fn deliver(&mut self, from: usize, p: &Packet) {
        for f in Frames::new(&p.bytes) {
            let Ok(Frame::Upper { ty, body }) = f else {
                panic!("bad framing")
            };
            self.s[1 - from]
                .handle_frame(self.now, ty, body)
                .expect("honest frames are accepted");
        }
    }

    fn ack(&mut self, from: usize, p: Packet) {
        for m in p.metas {
            self.s[from].on_acked(m);
        }
    }

    /// Sends, delivers and acknowledges everything both ways until nothing moves.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for from in 0..2 {
                while let Some(p) = self.send(from) {
                    self.deliver(from, &p);
                    self.ack(from, p);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn events(&mut self, side: usize) -> Vec<SessionEvent> {
        std::iter::from_fn(|| self.s[side].poll_event()).collect()
    }

    /// The top-level stream B was told about.
    fn incoming(&mut self) -> StreamId {
        self.incoming_at(1)
    }

    /// The top-level stream `side` was told about.
    fn incoming_at(&mut self, side: usize) -> StreamId {
        self.events(side)
            .into_iter()
            .find_map(|e| match e {
                SessionEvent::IncomingStream { id, .. } => Some(id),
                _ => None,
            })
            .expect("an incoming stream")
    }
}

/// A stream reset by the application while a received datagram waited on it was never
/// forgotten (nothing could read the datagram any more), holding the peer's stream credit.
#[test]
fn reset_stream_with_unread_datagram_is_forgotten() {
    let mut p = Pair::new();
    let id = p.s[0].open("nosvc", "p/1").unwrap();
    p.s[0].write_datagram(id, b"dgram", false).unwrap();
    // OPEN and the datagram leave in one packet, so both arrive before B's application sees
    // the stream.
    let pkt = p.send(0).unwrap();
    p.deliver(0, &pkt);
    p.ack(0, pkt);
    assert_eq!(p.incoming(), id);
    assert_eq!(p.s[1].pending_datagrams(id), Ok(1));
    p.s[1].reset(id, ErrorCode::UNKNOWN_SERVICE).unwrap();
    p.pump();
    assert_eq!(p.s[1].stream_count(), 0, "B forgets the reset stream");
    assert_eq!(p.s[0].stream_count(), 0, "A forgets the stream B reset");
}

/// Resetting a stream whose accept queue held substreams left those substreams alive and
/// unreachable for ever; they are now reset with NO_PARENT (and so are theirs).
#[test]
fn reset_parent_resets_unaccepted_substreams() {
    let mut p = Pair::new();
    let top = p.s[0].open("svc", "p/1").unwrap();
    let child = p.s[0].open_substream(top).unwrap();
    let grandchild = p.s[0].open_substream(child).unwrap();
    p.s[0].write(grandchild, b"x").unwrap();
    p.pump();
    assert_eq!(p.incoming(), top);
    assert_eq!(p.s[1].stream_count(), 3);
    p.s[1].reset(top, ErrorCode::APPLICATION_MIN).unwrap();
    p.pump();
    assert_eq!(
        p.s[1].stream_count(),
        0,
        "queued substreams go with the parent"
    );
    let resets: Vec<(StreamId, u64)> = p
        .events(0)
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::Reset { id, code } => Some((id, code)),
            _ => None,
        })
        .collect();
    assert!(resets.contains(&(top, ErrorCode::APPLICATION_MIN)));
    assert!(resets.contains(&(child, ErrorCode::NO_PARENT)));
    assert!(resets.contains(&(grandchild, ErrorCode::NO_PARENT)));
    assert_eq!(p.s[0].stream_count(), 0);
}

/// A best-effort datagram queued after the stream's FIN left, and sent after everything
/// else was acknowledged, kept the finished stream alive: nothing called for it to be
/// forgotten once the datagram was out.
#[test]
fn stream_whose_last_datagram_leaves_late_is_forgotten() {
    let mut p = Pair::new();
    let id = p.s[0].open("svc", "p/1").unwrap();
    p.s[0].finish(id).unwrap();
    let fin = p.send(0).unwrap();
    p.deliver(0, &fin);
    assert_eq!(p.incoming(), id);
    p.s[0].write_datagram(id, b"late", false).unwrap();
    p.ack(0, fin);
    // B ends its direction; A reads the end.
    p.s[1].finish(id).unwrap();
    let back = p.send(1).unwrap();
    p.deliver(1, &back);
    p.ack(1, back);
    assert_eq!(p.s[0].read(id, &mut [0u8; 8]), Ok(0));
    assert_eq!(p.s[0].at_end(id), Ok(true));
    assert_eq!(p.s[0].stream_count(), 1, "the datagram still waits");
    let dgram = p.send(0).unwrap();
    assert_eq!(p.s[0].stream_count(), 0, "forgotten once the datagram left");
    // B had ended the stream in both directions already: the datagram finds nothing.
    p.deliver(0, &dgram);
    assert_eq!(p.s[1].stream_count(), 0);
}

/// A reliable datagram whose parent was reset while the datagram was still arriving stayed
/// for ever (it looked like an orphan waiting for its parent to open); it is now reset with
/// NO_PARENT.
#[test]
fn reliable_datagram_of_a_reset_parent_is_refused() {
    let mut p = Pair::new();
    let top = p.s[0].open("nosvc", "p/1").unwrap();
    // Larger than the initial stream window: it needs a MAX_STREAM_DATA round trip.
    let big = vec![7u8; 300 * 1024];
    p.s[0].write_datagram(top, &big, true).unwrap();
    let first = p.send(0).unwrap();
    p.deliver(0, &first);
    p.ack(0, first);
    assert_eq!(p.incoming(), top);
    p.s[1].reset(top, ErrorCode::UNKNOWN_SERVICE).unwrap();
    p.pump();
    assert_eq!(
        p.s[1].stream_count(),
        0,
        "B keeps nothing of the refused tree"
    );
    assert_eq!(p.s[0].stream_count(), 0);
    let events = p.events(0);
    assert!(events.contains(&SessionEvent::Reset {
        id: top,
        code: ErrorCode::UNKNOWN_SERVICE
    }));
    // The datagram's own stream was never the application's: its refusal shows on the parent.
    assert!(events.contains(&SessionEvent::DatagramFailed {
        parent: top,
        code: ErrorCode::NO_PARENT
    }));
}

/// A reliable datagram larger than the receiver's `max_datagram_size` stalled for ever: the
/// receiver granted a window of its limit and never more (it reads such a stream only whole),
/// the sender waited for window, and neither side was told. A sender that predates the
/// `max_datagram_size` handshake parameter (here: one told a larger limit than the receiver
/// has) still sends it; the receiver now grants one byte beyond its limit, refuses the stream
/// with DATAGRAM_TOO_LARGE at the first byte beyond, and the sender reports the failure on
/// the parent. Both sides forget the datagram, and B's session window is whole again.
#[test]
fn an_oversized_reliable_datagram_from_an_old_sender_is_refused() {
    let now = Instant::now();
    let (ea, eb) = (testkit::identity(1).eid(), testkit::identity(2).eid());
    let config = |max| {
        std::sync::Arc::new(SessionConfig {
            max_datagram_size: max,
            ..SessionConfig::default()
        })
    };
    let limit = 64 * 1024;
    let mut s = [
        Session::new(config(4 << 20), ea, eb, 11),
        Session::new(config(limit), eb, ea, 22),
    ];
    for (i, peer_limit) in [(0, 4 << 20), (1, 4 << 20)] {
        let peer = TransportParams {
            session_id: s[1 - i].local_session_id(),
            // What A believes (an old peer would not know B's limit at all).
            max_datagram_size: peer_limit,
            ..TransportParams::default()
        };
        s[i].attach(now, &peer);
    }
    let mut p = Pair { now, s };
    let top = p.s[0].open("svc", "p/1").unwrap();
    // Larger than B's stream window (256 KiB): A waits for window and hears of the refusal.
    // Within it (limit + 1), A may have all of it acknowledged, and forget it, before the
    // refusal arrives: nothing waits, but it is not told (a sender that knows the peer's
    // limit refuses such a datagram itself).
    for size in [300 * 1024, 2 << 20, limit as usize + 1] {
        p.s[0].write_datagram(top, &vec![3u8; size], true).unwrap();
        p.pump();
        let failed: Vec<SessionEvent> = p
            .events(0)
            .into_iter()
            .filter(|e| matches!(e, SessionEvent::DatagramFailed { .. }))
            .collect();
        let told = size > 256 * 1024;
        assert_eq!(
            failed,
            vec![
                SessionEvent::DatagramFailed {
                    parent: top,
                    code: ErrorCode::DATAGRAM_TOO_LARGE
                };
                usize::from(told)
            ],
            "size {size}"
        );
        assert_eq!(
            p.s[0].stream_count(),
            1,
            "size {size}: A forgets the datagram"
        );
        assert_eq!(
            p.s[1].stream_count(),
            1,
            "size {size}: B forgets the datagram"
        );
        assert_eq!(p.s[1].buffered_bytes(), 0, "size {size}");
        assert!(p.s[0].is_quiescent(), "size {size}");
    }
    assert_eq!(p.s[0].datagram_stats().reliable_failed, 2);
    assert_eq!(p.s[1].datagram_stats().incoming_too_large, 3);
    // B's session window came back: a datagram of the limit and 900 KiB of stream data pass.
    p.s[0]
        .write_datagram(top, &vec![4u8; limit as usize], true)
        .unwrap();
    assert_eq!(p.s[0].write(top, &vec![5u8; 900 * 1024]), Ok(900 * 1024));
    let mut got = 0;
    for _ in 0..100 {
        p.pump();
        got += drain(&mut p, 1, top).len();
    }
    assert_eq!(got, 900 * 1024);
    assert_eq!(
        p.s[1].read_datagram(top),
        Ok(Some(vec![4u8; limit as usize]))
    );
}

fn small_session_window() -> SessionConfig {
    SessionConfig {
        initial_max_data: 16 * 1024,
        ..SessionConfig::default()
    }
}

/// Reads everything `id` holds at `side`; returns the bytes.
fn drain(p: &mut Pair, side: usize, id: StreamId) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = p.s[side].read(id, &mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// A stream that filled the session window and was then reset by its reader without reading
/// gave the window back silently: no MAX_DATA followed, and every other stream of the
/// session stayed blocked for ever.
#[test]
fn resetting_an_unread_stream_reopens_the_session_window() {
    let mut p = Pair::with(small_session_window());
    let first = p.s[0].open("svc", "p/1").unwrap();
    assert_eq!(p.s[0].write(first, &[1; 20 * 1024]), Ok(20 * 1024));
    p.pump();
    assert_eq!(p.incoming(), first);
    p.s[1].reset(first, ErrorCode::APPLICATION_MIN).unwrap();
    p.pump();
    let second = p.s[0].open("svc", "p/1").unwrap();
    p.s[0].write(second, &[2; 12 * 1024]).unwrap();
    p.pump();
    assert_eq!(p.incoming(), second);
    assert_eq!(drain(&mut p, 1, second), vec![2; 12 * 1024]);
}

/// Bytes sent on a stream and lost before it was reset counted against the session window
/// at the sender but never at the receiver: every such reset shrank the window for good. The
/// receiver now counts the final size of RESET_STREAM (and frames that arrive after its own
/// reset).
#[test]
fn bytes_lost_before_a_reset_do_not_shrink_the_session_window() {
    let mut p = Pair::with(small_session_window());
    let keep = p.s[0].open("svc", "p/1").unwrap();
    p.pump();
    assert_eq!(p.incoming(), keep);
    for _ in 0..8 {
        // 8 KiB leave and are lost; then the stream is reset.
        let s = p.s[0].open_substream(keep).unwrap();
        p.s[0].write(s, &[3; 8 * 1024]).unwrap();
        let mut lost = Vec::new();
        while let Some(pkt) = p.send(0) {
            lost.push(pkt);
        }
        for pkt in lost {
            for m in pkt.metas {
                p.s[0].on_lost(m);
            }
        }
        p.s[0].reset(s, ErrorCode::APPLICATION_MIN).unwrap();
        p.pump();
    }
    // Reading side too: B resets a stream while A's bytes are still on their way.
    let s = p.s[0].open_substream(keep).unwrap();
    p.s[0].write(s, &[4; 4 * 1024]).unwrap();
    let first = p.send(0).unwrap();
    p.deliver(0, &first);
    p.ack(0, first);
    p.s[1].accept_substream(keep).unwrap();
    p.s[1].reset(s, ErrorCode::APPLICATION_MIN).unwrap();
    p.pump();
    assert_eq!(p.s[0].write(keep, &[5; 14 * 1024]), Ok(14 * 1024));
    p.pump();
    assert_eq!(drain(&mut p, 1, keep), vec![5; 14 * 1024]);
    assert_eq!(p.s[0].stream_count(), 1);
    assert_eq!(p.s[1].stream_count(), 1);
}

/// A reliable datagram refused on its first frame (its parent was already forgotten) ignored
/// that frame's bytes and FIN; the sender, fully acknowledged, forgot the stream, and the
/// receiver waited for a final size that never came, keeping the stream for ever. Orphans of
/// a refused stream were likewise never refused.
#[test]
fn stream_refused_on_its_first_frame_learns_its_final_size() {
    let mut p = Pair::with(SessionConfig {
        initial_max_streams: 2,
        ..SessionConfig::default()
    });
    let top = p.s[0].open("svc", "p/1").unwrap();
    // Counter 2 is beyond the credit: the datagram waits until `top` ends.
    p.s[0].write_datagram(top, &[9u8; 1000], true).unwrap();
    p.pump();
    assert_eq!(p.incoming(), top);
    for side in 0..2 {
        p.s[side].finish(top).unwrap();
    }
    p.pump();
    for side in 0..2 {
        // Reading the end forgets the stream (it may be forgotten already).
        let _ = p.s[side].read(top, &mut [0u8; 8]);
    }
    p.pump();
    assert_eq!(p.s[0].stream_count(), 0);
    assert_eq!(p.s[1].stream_count(), 0);
}

/// A stream reset while it waited for stream credit sent RESET_STREAM at once; the peer
/// ignored it (beyond the credit), then the stream's OPEN announcement went out anyway once
/// credit came, and the peer created a stream that waited for a final size never re-sent.
/// Now RESET_STREAM and STOP_SENDING of such a stream wait for the credit, and a reset stream
/// announces nothing.
#[test]
fn stream_reset_while_waiting_for_credit_is_reset_at_the_peer_too() {
    let mut p = Pair::with(SessionConfig {
        initial_max_streams: 3,
        ..SessionConfig::default()
    });
    let top = p.s[1].open("nosvc", "p/1").unwrap();
    let sub = p.s[1].open_substream(top).unwrap();
    let waiting = p.s[1].open_substream(sub).unwrap();
    p.s[1].reset(waiting, ErrorCode::APPLICATION_MIN).unwrap();
    p.pump();
    assert_eq!(p.incoming_at(0), top);
    // Refusing `top` refuses `sub` (queued, never accepted); credit returns and `waiting`
    // can be named to A at last.
    p.s[0].reset(top, ErrorCode::UNKNOWN_SERVICE).unwrap();
    p.pump();
    assert!(
        p.s[1].accept_substream(sub).is_err(),
        "B learnt that A refused {sub}"
    );
    assert_eq!(p.s[0].stream_count(), 0);
    assert_eq!(p.s[1].stream_count(), 0);
}

/// A stream whose frame header filled the rest of a packet exactly (room for the header, not
/// one data byte) ended its scheduler turn as if it had nothing more to send, and its data
/// stayed unsent until the application wrote again. Found by the memory benchmark (stream
/// counters from 8192 up have 4-byte ids).
#[test]
fn data_is_not_stranded_when_only_a_header_fits() {
    let mut p = Pair::with(SessionConfig {
        initial_max_streams: 10_000,
        ..SessionConfig::default()
    });
    let top = p.s[0].open("svc", "p/1").unwrap();
    let mut id = top;
    while id.counter() < 9000 {
        id = p.s[0].open_substream(top).unwrap();
    }
    p.pump();
    p.s[0].write(id, b"hello").unwrap();
    // type 1, length 1, id 4, flags 1, offset 1: 8 bytes, no room for data.
    let mut buf = Vec::new();
    let mut metas = Vec::new();
    p.s[0].write_frames(p.now, &mut buf, 8, &mut metas);
    assert!(buf.is_empty());
    assert!(p.s[0].has_pending(), "the data still waits to be sent");
    p.pump();
    let mut got = Vec::new();
    while let Ok(Some(child)) = p.s[1].accept_substream(top) {
        let mut b = [0u8; 16];
        if child == id {
            let n = p.s[1].read(child, &mut b).unwrap();
            got.extend_from_slice(&b[..n]);
        }
    }
    assert_eq!(got, b"hello");
}

/// The fuzz input that found it (the model forgot the new session's stream): both sessions
/// detach; only B holds a stream at the detached timeout, so only B gives its session up
/// (LINK_DOWN, new session id); A, without streams, keeps its session and opens a stream while
/// still detached; B opens a stream in its new session, reusing its first id. At the next
/// attach A sees B restarted: it resets its own stream (it belongs to the old session) with
/// PEER_RESTARTED, and then accepts B's new stream like any other.
#[test]
fn lone_detached_timeout_restarts_the_peer_at_the_next_attach() {
    let mut p = Pair::new();
    p.pump();
    let _ = (p.events(0), p.events(1));
    for s in &mut p.s {
        s.detach(p.now);
    }
    let old = p.s[1].open("nosvc", "p/1").unwrap();
    p.now += SessionConfig::default().detached_timeout + Duration::from_secs(1);
    let b_session = p.s[1].local_session_id();
    for s in &mut p.s {
        s.handle_timeout(p.now);
    }
    assert_ne!(
        p.s[1].local_session_id(),
        b_session,
        "B starts a new session"
    );
    assert!(p.events(1).iter().any(|e| matches!(
        e,
        SessionEvent::Reset { id, code: ErrorCode::LINK_DOWN } if *id == old
    )));
    assert_eq!(p.s[1].stream_count(), 0);
    let new = p.s[1].open("svc", "p/1").unwrap();
    assert_eq!(new, old, "stream ids restart in the new session");
    let mine = p.s[0].open("svc", "p/1").unwrap();
    assert_eq!(p.attach(), [Attach::PeerRestarted, Attach::Fresh]);
    assert!(p.events(0).iter().any(|e| matches!(
        e,
        SessionEvent::Reset { id, code: ErrorCode::PEER_RESTARTED } if *id == mine
    )));
    assert_eq!(p.s[0].stream_count(), 0, "A's old-session stream is gone");
    p.s[1].write(new, b"new session").unwrap();
    p.pump();
    assert_eq!(p.incoming_at(0), new);
    p.s[0].accept(new).unwrap();
    let mut buf = [0u8; 32];
    let n = p.s[0].read(new, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"new session");
}
