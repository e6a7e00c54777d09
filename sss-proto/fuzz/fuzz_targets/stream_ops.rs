//! Operation sequences on two stream-layer sessions joined by a fuzz-controlled "channel".
//!
//! Sessions A and B talk through the `Upper` trait directly: a `Send` op asks one session to
//! fill a packet of fuzz-chosen size, and the fuzzer decides what becomes of every packet
//! (delivered, delivered again, acknowledged, declared lost — after delivery too, as when an
//! ACK is lost — or delivered late after being declared lost). On top, both applications open
//! top-level streams and substreams at random depths, write bytes, records and datagrams
//! (reliable and best-effort), finish, reset, change priorities, read bytes, records and
//! datagrams, accept or refuse substreams; the channel can die (every frame in flight is
//! lost, both sessions detach) and come back (both re-attach and resume), and time advances
//! (reassembly deadlines, the detached timeout).
//!
//! Checked on every run (a model keeps what each side wrote on each stream):
//! - no panic; an honest peer's frames never make a session report a protocol violation, and
//!   every frame a session writes passes the channel framing, decodes and fits its space;
//! - every byte read is the byte written at that offset on that stream (prefix-consistent), a
//!   plain read never crosses a record boundary, a record read is exactly the bytes up to the
//!   next boundary (cut to `max`, with the flag), nothing is read twice;
//! - every datagram read is one that the peer wrote on that stream, whole and once;
//! - an accepted substream is one the peer opened under that parent, accepted once;
//! - memory: a session never holds more streams than the credit it grants plus its own;
//! - liveness: at the end the channel turns clean and both applications accept and read
//!   everything: every byte and reliable datagram of a stream nobody reset arrives; then both
//!   finish every stream, and once quiescent both sessions have forgotten every stream.
//!
//! With `Setup::hostile`, `Hostile` ops also feed fuzz-built stream-layer frames (valid and
//! malformed, on known and unknown streams, beyond windows and credit) to B as if A sent
//! them; the content checks are then off (B cannot tell them from A's), and what remains is:
//! no panic and bounded stream counts.
#![no_main]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sss_proto::channel::Upper;
use sss_proto::frame::{Frame, FrameType, Frames};
use sss_proto::handshake::TransportParams;
use sss_proto::stream::frames::{DatagramFrame, OpenInfo, StreamFrame, StreamLayerFrame};
use sss_proto::stream::{
    Attach, ErrorCode, SentFrame, Session, SessionConfig, SessionEvent, StreamError, StreamId,
};
use sss_proto::{testkit, Eid};

/// Most ops applied from one input.
const MAX_OPS: usize = 300;
/// Most packets in flight per direction; older ones are declared lost past this.
const MAX_IN_FLIGHT: usize = 64;
/// Rounds of the clean phase before a run counts as stalled.
const CLEAN_ROUNDS: usize = 2000;
const SERVICE: &str = "svc";
const PROTOCOL: &str = "p/1";

#[derive(Arbitrary, Debug)]
struct Setup {
    max_streams: u8,
    stream_window: u8,
    session_window: u8,
    send_buffer: u8,
    max_datagram: u8,
    reassembly: u8,
    outgoing_dgram: u8,
    detached_secs: u8,
    hostile: bool,
}

type Side = bool; // false: A, true: B

#[derive(Arbitrary, Debug)]
enum Op {
    Open {
        b: Side,
        unknown_service: bool,
    },
    OpenSub {
        b: Side,
        parent: u8,
    },
    Write {
        b: Side,
        s: u8,
        len: u16,
    },
    WriteRecord {
        b: Side,
        s: u8,
        len: u16,
    },
    WriteDatagram {
        b: Side,
        s: u8,
        len: u16,
        reliable: bool,
    },
    Finish {
        b: Side,
        s: u8,
    },
    Reset {
        b: Side,
        s: u8,
        code: u8,
    },
    SetPriority {
        b: Side,
        s: u8,
        p: i8,
    },
    Read {
        b: Side,
        s: u8,
        max: u16,
    },
    ReadRecord {
        b: Side,
        s: u8,
        max: u16,
    },
    ReadDatagram {
        b: Side,
        s: u8,
    },
    Listen {
        b: Side,
        s: u8,
        on: bool,
    },
    Accept {
        b: Side,
        s: u8,
    },
    /// One packet from this side (if attached and it has something), of `space % 1500 + 1`.
    Send {
        b: Side,
        space: u16,
    },
    /// Deliver packet `i` of direction `dir` (it stays in flight: deliver it again and the
    /// receiver sees a duplicate).
    Deliver {
        dir: Side,
        i: u8,
    },
    /// Deliver packet `i` if not yet delivered, then acknowledge it.
    Ack {
        dir: Side,
        i: u8,
    },
    /// Declare packet `i` lost (delivered or not); its bytes may still arrive late.
    Lose {
        dir: Side,
        i: u8,
    },
    /// Deliver a packet declared lost earlier.
    Late {
        dir: Side,
        i: u8,
    },
    /// Send, deliver and acknowledge everything for a few rounds.
    Flush {
        rounds: u8,
    },
    Advance {
        ms: u16,
    },
    Kill,
    Reattach,
    Hostile(Hostile),
}

#[derive(Arbitrary, Debug)]
enum Hostile {
    Raw {
        ty: u8,
        body: Vec<u8>,
    },
    Stream {
        id: u16,
        flags: u8,
        parent: u16,
        offset: u32,
        len: u16,
    },
    Datagram {
        id: u16,
        dgram: u8,
        total: u32,
        frag: u32,
        len: u16,
    },
    Reset {
        id: u16,
        code: u16,
        final_size: u32,
    },
    Stop {
        id: u16,
        code: u16,
    },
    MaxData(u64),
    MaxStreamData {
        id: u16,
        max: u64,
    },
    MaxStreams(u64),
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

/// What one side wrote in one direction of a stream, and what the other side read of it.
#[derive(Default, Debug)]
struct Flow {
    data: Vec<u8>,
    /// Record boundaries (offsets), increasing.
    marks: Vec<u64>,
    fin: bool,
    /// Bytes the receiver consumed (read, or skipped as the cut tail of a record).
    read: u64,
    at_end: bool,
}

impl Flow {
    /// End of the record the receiver is in: the next boundary after `read`, or the end.
    fn record_end(&self) -> Option<u64> {
        let m = self.marks.iter().copied().find(|&m| m > self.read);
        match (m, self.fin) {
            (Some(m), _) => Some(m),
            (None, true) if (self.data.len() as u64) > self.read => Some(self.data.len() as u64),
            _ => None,
        }
    }
}

/// A datagram one side sent on a stream.
#[derive(Debug)]
struct SentDatagram {
    data: Vec<u8>,
    /// Must arrive (reliable, sent while the stream's direction was open).
    required: bool,
    delivered: bool,
}

/// The model of one stream (ids are session-wide; each side writes one direction).
#[derive(Default, Debug)]
struct Model {
    opener: bool,
    parent: Option<StreamId>,
    /// `flows[0]`: A to B; `flows[1]`: B to A.
    flows: [Flow; 2],
    /// Datagrams sent by A (`[0]`) and B (`[1]`) on this stream, by tag.
    dgrams: [BTreeMap<u32, SentDatagram>; 2],
    reset: bool,
    /// Whether the side that did not open it knows it (accepted or announced).
    known_by_peer: bool,
}

struct Packet {
    bytes: Vec<u8>,
    metas: Vec<SentFrame>,
    delivered: bool,
}

struct World {
    now: Instant,
    cfg: Arc<SessionConfig>,
    s: [Session; 2],
    /// Packets in flight from A (`[0]`) and from B (`[1]`).
    wire: [VecDeque<Packet>; 2],
    /// Bytes of packets declared lost, which may still arrive.
    late: [VecDeque<Vec<u8>>; 2],
    attached: bool,
    model: BTreeMap<StreamId, Model>,
    /// Streams each application knows (opened or accepted), in order.
    known: [Vec<StreamId>; 2],
    /// Streams each side opened in all.
    opened: [usize; 2],
    /// Content checks are off (hostile frames were fed to B).
    tainted: bool,
    /// How many times each session reset every stream and started afresh (a detached
    /// timeout, or a peer restart seen at attach).
    restarts: [u32; 2],
    /// `restarts` of the peer when each session last attached: while equal, the peer's
    /// session is the one this session knows.
    synced: [u32; 2],
    next_tag: u32,
    salt: u8,
}

thread_local! {
    static EIDS: (Eid, Eid) = (testkit::identity(1).eid(), testkit::identity(2).eid());
    static START: Instant = Instant::now();
}

fn pick(list: &[StreamId], i: u8) -> Option<StreamId> {
    (!list.is_empty()).then(|| list[usize::from(i) % list.len()])
}

fn config(s: &Setup) -> SessionConfig {
    let session = 4096 * (u64::from(s.session_window % 64) + 1);
    SessionConfig {
        initial_max_streams: u64::from(s.max_streams % 32) + 2,
        initial_max_stream_data: 1024 * (u64::from(s.stream_window % 64) + 1),
        initial_max_data: session,
        max_stream_window: 256 * 1024,
        max_session_window: 1024 * 1024,
        send_buffer: 1024 * (usize::from(s.send_buffer % 64) + 1),
        // Twice one stream's buffer: binds when several streams write at once.
        session_send_buffer: 2048 * (usize::from(s.send_buffer % 64) + 1),
        max_unsent: 512 * (usize::from(s.stream_window % 16) + 1),
        // At most a quarter of the session window, so a reliable datagram can complete.
        max_datagram_size: (256 * (u64::from(s.max_datagram) + 1)).min(session / 4),
        datagram_reassembly_limit: 2048 * (usize::from(s.reassembly % 32) + 1),
        outgoing_datagram_limit: 2048 * (usize::from(s.outgoing_dgram % 32) + 1),
        // Small, so that fragments overtaking their stream's OPEN also meet evictions.
        unopened_datagram_limit: 1024 * (usize::from(s.reassembly / 32 % 8) + 1),
        detached_timeout: Duration::from_secs(u64::from(s.detached_secs % 10) + 1),
    }
}

fn params(of: &Session, cfg: &SessionConfig) -> TransportParams {
    TransportParams {
        session_id: of.local_session_id(),
        initial_max_stream_data: cfg.initial_max_stream_data,
        initial_max_data: cfg.initial_max_data,
        initial_max_streams: cfg.initial_max_streams,
        max_datagram_size: cfg.max_datagram_size,
        ..TransportParams::default()
    }
}

fn ix(b: Side) -> usize {
    usize::from(b)
}

impl World {
    fn new(setup: &Setup) -> Self {
        let cfg = Arc::new(config(setup));
        let now = START.with(|s| *s);
        let (ea, eb) = EIDS.with(|e| *e);
        let a = Session::new(cfg.clone(), ea, eb, 0x1111);
        let b = Session::new(cfg.clone(), eb, ea, 0x2222);
        let mut w = Self {
            now,
            cfg,
            s: [a, b],
            wire: [VecDeque::new(), VecDeque::new()],
            late: [VecDeque::new(), VecDeque::new()],
            attached: false,
            model: BTreeMap::new(),
            known: [Vec::new(), Vec::new()],
            opened: [0, 0],
            tainted: false,
            restarts: [0, 0],
            synced: [0, 0],
            next_tag: 0,
            salt: 0,
        };
        w.reattach();
        w
    }

    fn reattach(&mut self) {
        if self.attached {
            return;
        }
        let pa = params(&self.s[0], &self.cfg);
        let pb = params(&self.s[1], &self.cfg);
        let outcome = [
            self.s[0].attach(self.now, &pb),
            self.s[1].attach(self.now, &pa),
        ];
        for b in [false, true] {
            if outcome[ix(b)] == Attach::PeerRestarted {
                self.restarted(b);
            }
        }
        self.synced = [self.restarts[1], self.restarts[0]];
        self.attached = true;
        self.events();
    }

    fn kill(&mut self) {
        if !self.attached {
            return;
        }
        for d in 0..2 {
            for p in std::mem::take(&mut self.wire[d]) {
                for m in p.metas {
                    self.s[d].on_lost(m);
                }
            }
            self.late[d].clear();
        }
        for s in &mut self.s {
            s.detach(self.now);
        }
        self.attached = false;
        self.events();
    }

    fn fill(&mut self, len: usize) -> Vec<u8> {
        self.salt = self.salt.wrapping_add(1);
        let salt = self.salt;
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
            .collect()
    }

    // ---------------------------------------------------------------- application

    fn open(&mut self, b: Side, unknown: bool) {
        let service = if unknown { "nosvc" } else { SERVICE };
        let id = self.s[ix(b)]
            .open(service, PROTOCOL)
            .expect("valid names open");
        self.opened[ix(b)] += 1;
        assert!(!self.model.contains_key(&id), "stream id {id} reused");
        self.model.insert(
            id,
            Model {
                opener: b,
                ..Model::default()
            },
        );
        self.known[ix(b)].push(id);
    }

    fn open_sub(&mut self, b: Side, parent: u8) {
        let Some(parent) = pick(&self.known[ix(b)], parent) else {
            return;
        };
        match self.s[ix(b)].open_substream(parent) {
            Ok(id) => {
                self.opened[ix(b)] += 1;
                assert!(!self.model.contains_key(&id), "stream id {id} reused");
                self.model.insert(
                    id,
                    Model {
                        opener: b,
                        parent: Some(parent),
                        ..Model::default()
                    },
                );
                self.known[ix(b)].push(id);
            }
            Err(StreamError::UnknownStream | StreamError::Reset(_)) => self.gone(parent),
            Err(e) => panic!("open_substream: unexpected {e:?}"),
        }
    }

    /// The application learnt that `id` is reset or forgotten.
    fn gone(&mut self, id: StreamId) {
        if let Some(m) = self.model.get_mut(&id) {
            m.reset = true;
        }
    }

    fn write(&mut self, b: Side, s: u8, len: u16, record: bool) {
        let Some(id) = pick(&self.known[ix(b)], s) else {
            return;
        };
        let data = self.fill(usize::from(len % 4096));
        let r = if record {
            self.s[ix(b)].write_record(id, &data).map(|()| data.len())
        } else {
            self.s[ix(b)].write(id, &data)
        };
        let Some(m) = self.model.get_mut(&id) else {
            return;
        };
        let flow = &mut m.flows[ix(b)];
        match r {
            Ok(n) => {
                assert!(!flow.fin, "write to {id} accepted after finish");
                flow.data.extend_from_slice(&data[..n]);
                if record {
                    assert_eq!(n, data.len(), "write_record takes everything");
                    let end = flow.data.len() as u64;
                    assert!(flow.marks.last() != Some(&end) && end > 0);
                    flow.marks.push(end);
                }
            }
            Err(StreamError::EmptyRecord) => {
                let end = flow.data.len() as u64;
                assert!(
                    record && data.is_empty() && (end == 0 || flow.marks.last() == Some(&end)),
                    "EmptyRecord with bytes to end a record"
                );
            }
            Err(StreamError::Finished) => assert!(flow.fin || m.reset, "Finished while open"),
            Err(StreamError::UnknownStream | StreamError::Reset(_) | StreamError::Stopped) => {
                self.gone(id)
            }
            Err(e) => panic!("write: unexpected {e:?}"),
        }
    }

    fn write_datagram(&mut self, b: Side, s: u8, len: u16, reliable: bool) {
        let Some(id) = pick(&self.known[ix(b)], s) else {
            return;
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let mut data = tag.to_be_bytes().to_vec();
        data.extend(self.fill(usize::from(len % 8192)));
        let r = self.s[ix(b)].write_datagram(id, &data, reliable);
        if r.is_ok() {
            // A reliable datagram is a stream of its own, whatever its parent (also one a
            // hostile peer opened, which the model does not track).
            self.opened[ix(b)] += usize::from(reliable);
        }
        let Some(m) = self.model.get_mut(&id) else {
            return;
        };
        match r {
            Ok(()) => {
                let required = reliable && !m.flows[ix(b)].fin && !m.reset;
                m.dgrams[ix(b)].insert(
                    tag,
                    SentDatagram {
                        data,
                        required,
                        delivered: false,
                    },
                );
            }
            Err(StreamError::DatagramTooLarge) => {
                assert!(
                    data.len() as u64 > self.cfg.max_datagram_size
                        || (!reliable && data.len() > self.cfg.outgoing_datagram_limit),
                    "a datagram of {} bytes refused as too large",
                    data.len()
                );
            }
            Err(StreamError::UnknownStream | StreamError::Reset(_)) => self.gone(id),
            Err(e) => panic!("write_datagram: unexpected {e:?}"),
        }
    }

    fn finish(&mut self, b: Side, id: StreamId) {
        match self.s[ix(b)].finish(id) {
            Ok(()) => {
                if let Some(m) = self.model.get_mut(&id) {
                    m.flows[ix(b)].fin = true;
                }
            }
            Err(StreamError::UnknownStream | StreamError::Reset(_)) => self.gone(id),
            Err(e) => panic!("finish: unexpected {e:?}"),
        }
    }

    fn reset(&mut self, b: Side, s: u8, code: u8) {
        let Some(id) = pick(&self.known[ix(b)], s) else {
            return;
        };
        let code = ErrorCode::APPLICATION_MIN + u64::from(code);
        match self.s[ix(b)].reset(id, code) {
            Ok(()) | Err(StreamError::UnknownStream) => self.gone(id),
            Err(e) => panic!("reset: unexpected {e:?}"),
        }
    }

    /// The flow `id` carries towards side `b` (written by the other side).
    fn inbound(&mut self, b: Side, id: StreamId) -> Option<&mut Flow> {
        self.model.get_mut(&id).map(|m| &mut m.flows[ix(!b)])
    }

    fn read(&mut self, b: Side, id: StreamId, max: usize) -> usize {
        let mut buf = vec![0u8; max];
        let r = self.s[ix(b)].read(id, &mut buf);
        let tainted = self.tainted;
        match r {
            Ok(n) => {
                if tainted {
                    return n;
                }
                let flow = self.inbound(b, id).expect("a known stream has a model");
                let from = flow.read as usize;
                assert!(
                    from + n <= flow.data.len(),
                    "read {n} bytes at {from} of {id}: only {} written",
                    flow.data.len()
                );
                assert!(
                    buf[..n] == flow.data[from..from + n],
                    "read wrong bytes of {id}"
                );
                if n > 0 {
                    if let Some(end) = flow.record_end() {
                        assert!(
                            flow.read + n as u64 <= end,
                            "read crossed the record boundary at {end}"
                        );
                    }
                }
                flow.read += n as u64;
                n
            }
            Err(StreamError::UnknownStream | StreamError::Reset(_)) => {
                self.gone(id);
                0
            }
            Err(e) => panic!("read: unexpected {e:?}"),
        }
    }

    fn read_record(&mut self, b: Side, id: StreamId, max: usize) -> bool {
        let r = self.s[ix(b)].read_record(id, max);
        let tainted = self.tainted;
        match r {
            Ok(got) => {
                if tainted {
                    return got.is_some();
                }
                let flow = self.inbound(b, id).expect("a known stream has a model");
                let Some((data, cut)) = got else {
                    return false;
                };
                let end = flow
                    .record_end()
                    .expect("a record read where the model has none");
                let from = flow.read as usize;
                let len = end as usize - from;
                assert!(end as usize <= flow.data.len(), "record beyond the data");
                assert_eq!(cut, len > max, "truncation flag");
                assert_eq!(data.len(), len.min(max), "record length");
                assert!(
                    data[..] == flow.data[from..from + data.len()],
                    "record bytes"
                );
                flow.read = end;
                true
            }
            Err(StreamError::UnknownStream | StreamError::Reset(_)) => {
                self.gone(id);
                false
            }
            Err(e) => panic!("read_record: unexpected {e:?}"),
        }
    }

    fn read_datagram(&mut self, b: Side, id: StreamId) -> bool {
        let r = self.s[ix(b)].read_datagram(id);
        let tainted = self.tainted;
        match r {
            Ok(Some(d)) => {
                if tainted {
                    return true;
                }
                assert!(d.len() >= 4, "datagram without its tag");
                let tag = u32::from_be_bytes(d[..4].try_into().expect("4 bytes"));
                let m = self.model.get_mut(&id).expect("model");
                let sent = m.dgrams[ix(!b)]
                    .get_mut(&tag)
                    .unwrap_or_else(|| panic!("datagram {tag} was never sent on {id}"));
                assert!(!sent.delivered, "datagram {tag} delivered twice");
                assert!(sent.data == d, "datagram {tag} altered");
                sent.delivered = true;
                true
            }
            Ok(None) => false,
            Err(StreamError::UnknownStream | StreamError::Reset(_)) => {
                self.gone(id);
                false
            }
            Err(e) => panic!("read_datagram: unexpected {e:?}"),
        }
    }

    fn accept(&mut self, b: Side, parent: StreamId) -> bool {
        match self.s[ix(b)].accept_substream(parent) {
            Ok(Some(child)) => {
                if !self.tainted {
                    let m = self
                        .model
                        .get_mut(&child)
                        .unwrap_or_else(|| panic!("accepted {child}, never opened"));
                    assert_eq!(m.opener, !b, "accepted one of our own streams");
                    assert_eq!(m.parent, Some(parent), "accepted under the wrong parent");
                    assert!(!m.known_by_peer, "substream {child} accepted twice");
                    m.known_by_peer = true;
                }
                if !self.known[ix(b)].contains(&child) {
                    self.known[ix(b)].push(child);
                }
                true
            }
            Ok(None) => false,
            Err(StreamError::UnknownStream | StreamError::Reset(_)) => {
                self.gone(parent);
                false
            }
            Err(e) => panic!("accept_substream: unexpected {e:?}"),
        }
    }

    /// Drains both sessions' events as the applications would.
    fn events(&mut self) {
        for b in [false, true] {
            while let Some(e) = self.s[ix(b)].poll_event() {
                match e {
                    SessionEvent::IncomingStream {
                        id,
                        service,
                        protocol,
                    } => {
                        if service == SERVICE && protocol == PROTOCOL {
                            self.s[ix(b)].accept(id).expect("a new stream is live");
                            if !self.tainted {
                                let m = self.model.get_mut(&id).expect("opened by the peer");
                                assert_eq!(m.opener, !b);
                                assert!(!m.known_by_peer, "stream {id} announced twice");
                                m.known_by_peer = true;
                            }
                            if !self.known[ix(b)].contains(&id) {
                                self.known[ix(b)].push(id);
                            }
                        } else {
                            self.s[ix(b)]
                                .reset(id, ErrorCode::UNKNOWN_SERVICE)
                                .expect("a new stream is live");
                            self.gone(id);
                        }
                    }
                    // LINK_DOWN and PEER_RESTARTED come from a session starting afresh, which
                    // `restarted` already accounted for (and `id` may by now name a stream of
                    // the new session).
                    SessionEvent::Reset { id, code }
                        if code != ErrorCode::LINK_DOWN && code != ErrorCode::PEER_RESTARTED =>
                    {
                        self.gone(id)
                    }
                    _ => {}
                }
            }
        }
    }

    /// Session `b` reset every stream and started afresh (spec/streams.md, "Session
    /// identity" and "Link status"): its application lost every stream, and its stream ids
    /// start again from the first, so the streams it opened leave the model (and the peer's
    /// application drops them: the peer's session resets them when it meets the new session,
    /// and the ids will name new streams). The peer's streams that this session knew are
    /// doomed too (the peer resets them at the next attach) — unless the peer has itself
    /// restarted since this session last attached: then its streams belong to its new
    /// session, which this one never met, and they reach it on the next attach as usual.
    fn restarted(&mut self, b: Side) {
        let peer_same = self.restarts[ix(!b)] == self.synced[ix(b)];
        self.restarts[ix(b)] += 1;
        let mut dropped = Vec::new();
        self.model.retain(|&id, m| {
            if m.opener == b {
                dropped.push(id);
            }
            m.opener != b
        });
        if peer_same {
            for m in self.model.values_mut() {
                m.reset = true;
            }
        }
        self.known[ix(b)].clear();
        self.known[ix(!b)].retain(|id| !dropped.contains(id));
    }

    // ---------------------------------------------------------------- network

    fn send(&mut self, b: Side, space: usize) -> bool {
        if !self.attached || !self.s[ix(b)].has_pending() {
            return false;
        }
        let mut buf = Vec::new();
        let mut metas = Vec::new();
        self.s[ix(b)].write_frames(self.now, &mut buf, space, &mut metas);
        assert!(buf.len() <= space, "wrote {} bytes into {space}", buf.len());
        for f in Frames::new(&buf) {
            let Frame::Upper { ty, body } = f.expect("the session's frames pass the channel")
            else {
                panic!("a session wrote a channel frame");
            };
            StreamLayerFrame::decode(ty, body).expect("the session's frames decode");
        }
        if buf.is_empty() {
            assert!(metas.is_empty());
            return false;
        }
        let q = &mut self.wire[ix(b)];
        if q.len() >= MAX_IN_FLIGHT {
            let old = q.pop_front().expect("full");
            for m in old.metas {
                self.s[ix(b)].on_lost(m);
            }
        }
        self.wire[ix(b)].push_back(Packet {
            bytes: buf,
            metas,
            delivered: false,
        });
        true
    }

    /// Hands packet bytes sent by `from` to the other session.
    fn deliver_bytes(&mut self, from: Side, bytes: &[u8]) {
        let to = ix(!from);
        for f in Frames::new(bytes) {
            let Ok(Frame::Upper { ty, body }) = f else {
                unreachable!("checked when sent")
            };
            if let Err(e) = self.s[to].handle_frame(self.now, ty, body) {
                if !self.tainted {
                    panic!("honest frame refused: {e:?}");
                }
            }
        }
        self.events();
    }

    fn deliver(&mut self, dir: Side, i: u8) {
        let q = &mut self.wire[ix(dir)];
        if q.is_empty() {
            return;
        }
        let i = usize::from(i) % q.len();
        q[i].delivered = true;
        let bytes = q[i].bytes.clone();
        self.deliver_bytes(dir, &bytes);
    }

    fn ack(&mut self, dir: Side, i: u8) {
        let q = &mut self.wire[ix(dir)];
        if q.is_empty() {
            return;
        }
        let i = usize::from(i) % q.len();
        let p = q.remove(i).expect("in range");
        if !p.delivered {
            self.deliver_bytes(dir, &p.bytes);
        }
        for m in p.metas {
            self.s[ix(dir)].on_acked(m);
        }
        self.events();
    }

    fn lose(&mut self, dir: Side, i: u8) {
        let q = &mut self.wire[ix(dir)];
        if q.is_empty() {
            return;
        }
        let i = usize::from(i) % q.len();
        let p = q.remove(i).expect("in range");
        for m in p.metas {
            self.s[ix(dir)].on_lost(m);
        }
        let late = &mut self.late[ix(dir)];
        if late.len() >= MAX_IN_FLIGHT {
            late.pop_front();
        }
        late.push_back(p.bytes);
        self.events();
    }

    fn late(&mut self, dir: Side, i: u8) {
        let q = &mut self.late[ix(dir)];
        if q.is_empty() {
            return;
        }
        let i = usize::from(i) % q.len();
        let bytes = q.remove(i).expect("in range");
        self.deliver_bytes(dir, &bytes);
    }

    /// Sends, delivers and acknowledges everything once; returns whether anything moved.
    fn flush_round(&mut self) -> bool {
        let mut moved = false;
        for _ in 0..64 {
            let a = self.send(false, 1400);
            let b = self.send(true, 1400);
            if !a && !b {
                break;
            }
            moved = true;
        }
        for dir in [false, true] {
            while !self.wire[ix(dir)].is_empty() {
                self.ack(dir, 0);
                moved = true;
            }
        }
        moved
    }

    fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        // Both sessions have the same detached timeout and detach together, but one without
        // streams keeps its session at the timeout: then it sees the other restarted at the
        // next attach (`Attach::PeerRestarted`) and resets what it opened meanwhile.
        for b in [false, true] {
            let s = &mut self.s[ix(b)];
            if s.poll_timeout().is_some_and(|t| t <= self.now) {
                let id = s.local_session_id();
                s.handle_timeout(self.now);
                if s.local_session_id() != id {
                    self.restarted(b);
                }
            }
        }
        self.events();
    }

    fn hostile(&mut self, h: Hostile) {
        self.tainted = true;
        let id = |n: u16| StreamId(u64::from(n));
        let mut body_buf = Vec::new();
        let data = vec![0x5a; 2048];
        let frame = match h {
            Hostile::Raw { ty, body } => {
                let ty = FrameType(0x1e + u64::from(ty % 12));
                let _ = self.s[1].handle_frame(self.now, ty, &body);
                self.events();
                return;
            }
            Hostile::Stream {
                id: n,
                flags,
                parent,
                offset,
                len,
            } => {
                let open = if flags & 4 == 0 {
                    None
                } else if flags & 8 != 0 {
                    Some(OpenInfo::Top {
                        service: SERVICE,
                        protocol: PROTOCOL,
                    })
                } else {
                    Some(OpenInfo::Sub {
                        parent: id(parent),
                        datagram: flags & 16 != 0,
                    })
                };
                StreamLayerFrame::Stream(StreamFrame {
                    id: id(n),
                    offset: u64::from(offset),
                    data: &data[..usize::from(len) % data.len()],
                    fin: flags & 1 != 0,
                    record: flags & 2 != 0,
                    open,
                })
            }
            Hostile::Datagram {
                id: n,
                dgram,
                total,
                frag,
                len,
            } => {
                let n_data = usize::from(len) % data.len();
                let total = u64::from(total).max(u64::from(frag) + n_data as u64);
                StreamLayerFrame::Datagram(DatagramFrame {
                    stream: id(n),
                    datagram_id: u64::from(dgram),
                    total_len: total,
                    frag_offset: u64::from(frag),
                    data: &data[..n_data],
                })
            }
            Hostile::Reset {
                id: n,
                code,
                final_size,
            } => StreamLayerFrame::ResetStream {
                id: id(n),
                code: u64::from(code),
                final_size: u64::from(final_size),
            },
            Hostile::Stop { id: n, code } => StreamLayerFrame::StopSending {
                id: id(n),
                code: u64::from(code),
            },
            Hostile::MaxData(m) => StreamLayerFrame::MaxData(m >> 2),
            Hostile::MaxStreamData { id: n, max } => StreamLayerFrame::MaxStreamData {
                id: id(n),
                max: max >> 2,
            },
            Hostile::MaxStreams(m) => StreamLayerFrame::MaxStreams(m >> 3),
        };
        frame.encode(&mut body_buf);
        for f in Frames::new(&body_buf) {
            if let Ok(Frame::Upper { ty, body }) = f {
                let _ = self.s[1].handle_frame(self.now, ty, body);
            }
        }
        self.events();
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Open { b, unknown_service } => self.open(b, unknown_service),
            Op::OpenSub { b, parent } => self.open_sub(b, parent),
            Op::Write { b, s, len } => self.write(b, s, len, false),
            Op::WriteRecord { b, s, len } => self.write(b, s, len, true),
            Op::WriteDatagram {
                b,
                s,
                len,
                reliable,
            } => self.write_datagram(b, s, len, reliable),
            Op::Finish { b, s } => {
                if let Some(id) = pick(&self.known[ix(b)], s) {
                    self.finish(b, id);
                }
            }
            Op::Reset { b, s, code } => self.reset(b, s, code),
            Op::SetPriority { b, s, p } => {
                if let Some(id) = pick(&self.known[ix(b)], s) {
                    match self.s[ix(b)].set_priority(id, i32::from(p)) {
                        Ok(()) | Err(StreamError::UnknownStream) => {}
                        Err(e) => panic!("set_priority: unexpected {e:?}"),
                    }
                }
            }
            Op::Read { b, s, max } => {
                if let Some(id) = pick(&self.known[ix(b)], s) {
                    self.read(b, id, usize::from(max % 8192));
                }
            }
            Op::ReadRecord { b, s, max } => {
                if let Some(id) = pick(&self.known[ix(b)], s) {
                    self.read_record(b, id, usize::from(max % 8192));
                }
            }
            Op::ReadDatagram { b, s } => {
                if let Some(id) = pick(&self.known[ix(b)], s) {
                    self.read_datagram(b, id);
                }
            }
            Op::Listen { b, s, on } => {
                if let Some(id) = pick(&self.known[ix(b)], s) {
                    match self.s[ix(b)].listen(id, on) {
                        Ok(()) => {}
                        Err(StreamError::UnknownStream | StreamError::Reset(_)) => self.gone(id),
                        Err(e) => panic!("listen: unexpected {e:?}"),
                    }
                }
            }
            Op::Accept { b, s } => {
                if let Some(id) = pick(&self.known[ix(b)], s) {
                    self.accept(b, id);
                }
            }
            Op::Send { b, space } => {
                self.send(b, usize::from(space % 1500) + 1);
            }
            Op::Deliver { dir, i } => self.deliver(dir, i),
            Op::Ack { dir, i } => self.ack(dir, i),
            Op::Lose { dir, i } => self.lose(dir, i),
            Op::Late { dir, i } => self.late(dir, i),
            Op::Flush { rounds } => {
                for _ in 0..rounds % 4 + 1 {
                    self.flush_round();
                }
            }
            Op::Advance { ms } => self.advance(u64::from(ms)),
            Op::Kill => self.kill(),
            Op::Reattach => self.reattach(),
            Op::Hostile(h) => self.hostile(h),
        }
        self.events();
        self.check_bounds();
    }

    /// A session never holds more streams than the credit it grants plus its own.
    fn check_bounds(&self) {
        for b in [false, true] {
            let n = self.s[ix(b)].stream_count();
            let bound = self.cfg.initial_max_streams as usize + self.opened[ix(b)];
            assert!(n <= bound, "{n} streams alive, bound {bound}");
        }
    }

    /// The application at `b` accepts, reads and drains everything it can; returns whether
    /// anything happened.
    fn consume_all(&mut self, b: Side) -> bool {
        let mut moved = false;
        let mut i = 0;
        while i < self.known[ix(b)].len() {
            let id = self.known[ix(b)][i];
            while self.accept(b, id) {
                moved = true;
            }
            while self.read_datagram(b, id) {
                moved = true;
            }
            loop {
                if self.read_record(b, id, 1 << 20) || self.read(b, id, 1 << 20) > 0 {
                    moved = true;
                } else {
                    break;
                }
            }
            if let Ok(true) = self.s[ix(b)].at_end(id) {
                if let Some(f) = self.inbound(b, id) {
                    f.at_end = true;
                }
            }
            i += 1;
        }
        self.events();
        moved
    }

    /// Runs the clean link until nothing moves; with `finish`, both applications also finish
    /// every stream they know. Returns whether both sessions ended quiescent.
    fn settle(&mut self, finish: bool) -> bool {
        self.reattach();
        for _ in 0..CLEAN_ROUNDS {
            let mut moved = false;
            if finish {
                for b in [false, true] {
                    for id in self.known[ix(b)].clone() {
                        let open = self
                            .model
                            .get(&id)
                            .is_some_and(|m| !m.flows[ix(b)].fin && !m.reset);
                        if open || (self.tainted && !self.model.contains_key(&id)) {
                            self.finish(b, id);
                            moved |= open;
                        }
                    }
                }
            }
            moved |= self.consume_all(false);
            moved |= self.consume_all(true);
            moved |= self.flush_round();
            if !moved {
                let quiescent = self.s.iter().all(Session::is_quiescent);
                // A writer's hold (`WRITER_HOLD`, 1 ms) keeps lower priorities waiting until
                // its deadline: let it pass, as a driver honouring `poll_timeout` would.
                let held = self.s.iter().any(|s| {
                    s.poll_timeout()
                        .is_some_and(|t| t <= self.now + sss_proto::stream::WRITER_HOLD)
                });
                if quiescent || !held {
                    return quiescent;
                }
                self.advance(1);
            }
        }
        panic!("the clean link never settles");
    }

    /// Whether the side that reads direction `d` of `m` knows the stream.
    fn receiver_knows(m: &Model, d: usize) -> bool {
        usize::from(m.opener) != d || m.known_by_peer
    }

    /// The end: a clean link, then everything arrives; then every stream is finished and
    /// every stream is forgotten.
    fn run_clean(&mut self) {
        // Late copies of lost packets still on their way.
        for dir in [false, true] {
            while !self.late[ix(dir)].is_empty() {
                self.late(dir, 0);
            }
        }
        let quiescent = self.settle(false);
        if self.tainted {
            self.settle(true);
            return;
        }
        for (id, m) in &self.model {
            if m.reset {
                continue;
            }
            for (d, flow) in m.flows.iter().enumerate() {
                if Self::receiver_knows(m, d) {
                    assert_eq!(
                        flow.read,
                        flow.data.len() as u64,
                        "stream {id} direction {d}: not everything arrived"
                    );
                }
            }
            // A reliable datagram may wait for stream credit (it is a stream), and then find
            // its parent closed: check them only when nothing waits.
            if !quiescent {
                continue;
            }
            for (d, dgrams) in m.dgrams.iter().enumerate() {
                for (tag, dg) in dgrams {
                    if dg.required && Self::receiver_knows(m, d) {
                        assert!(dg.delivered, "reliable datagram {tag} on {id} lost");
                    }
                }
            }
        }
        // Both finish everything; once quiescent, every stream is over and forgotten.
        assert!(
            self.settle(true),
            "not quiescent after finishing everything"
        );
        for (id, m) in &self.model {
            if m.reset {
                continue;
            }
            assert!(
                m.known_by_peer,
                "stream {id} never reached the peer's application"
            );
            for (d, flow) in m.flows.iter().enumerate() {
                assert_eq!(
                    flow.read,
                    flow.data.len() as u64,
                    "stream {id} direction {d}"
                );
                assert!(flow.at_end, "stream {id} direction {d} did not end");
            }
        }
        for b in [false, true] {
            assert_eq!(
                self.s[ix(b)].stream_count(),
                0,
                "side {} keeps streams after everything ended",
                u8::from(b)
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let mut world = World::new(&input.setup);
    let hostile = input.setup.hostile;
    for op in input.ops.into_iter().take(MAX_OPS) {
        if matches!(op, Op::Hostile(_)) && !hostile {
            continue;
        }
        world.apply(op);
    }
    world.run_clean();
});
