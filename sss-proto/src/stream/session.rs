//! A session: the streams between two hosts, independent of the channel that carries them.
//!
//! The application side of the API lives here (open, write, read, records, datagrams,
//! substreams, priorities, reset); [`super::wire`] implements [`crate::channel::Upper`] so a
//! channel can carry the session's frames.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::datagram::{Outgoing, Reassembly, Unopened};
use super::frames::StreamId;
use super::pages::PagePool;
use super::scheduler::Scheduler;
use super::state::{flag, Kind, StreamState};
use super::{
    DatagramStats, ErrorCode, IdHasher, LinkStatus, SessionConfig, SessionEvent, StreamError,
};
use crate::identity::Eid;
use crate::ranges::RangeSet;

/// The streams of a session by id.
pub(crate) type StreamMap = HashMap<StreamId, StreamState, BuildHasherDefault<IdHasher>>;

/// `id`'s state unless it is unknown or reset (a function of the map alone, so callers can
/// keep using the session's other fields while they hold the state).
pub(crate) fn live_in(
    streams: &mut StreamMap,
    id: StreamId,
) -> Result<&mut StreamState, StreamError> {
    let st = streams.get_mut(&id).ok_or(StreamError::UnknownStream)?;
    if let Some(code) = st.reset_code() {
        return Err(StreamError::Reset(code));
    }
    Ok(st)
}

/// Bytes stream `st` may take in a `write` by its own limits: its send buffer, and its
/// unsent bytes (see [`SessionConfig::max_unsent`], with its hysteresis). Only bytes flow
/// control lets go now count as unsent (`flow_room`: new bytes the session may still send):
/// bytes waiting for the peer's window are bounded by the send buffer alone, or a writer
/// whose peer reads only after the write completes would wait for ever.
fn stream_send_room(config: &SessionConfig, st: &StreamState, flow_room: u64) -> usize {
    let buffer_room = config.send_buffer.saturating_sub(st.send.buffered());
    let sent = st.send.sent_offset();
    let sendable_end = st
        .send
        .write_offset()
        .min(st.send_limit)
        .min(sent.saturating_add(flow_room));
    let unsent = usize::try_from(sendable_end.saturating_sub(sent)).unwrap_or(usize::MAX);
    let max = config.max_unsent.max(1);
    let unsent_room = if unsent > max - max / 4 {
        0
    } else {
        max - unsent
    };
    buffer_room.min(unsent_room)
}

/// Puts `id` (whose state is `st`) in the send queue unless it is queued or blocked.
pub(crate) fn schedule_in(scheduler: &mut Scheduler, st: &mut StreamState, id: StreamId) {
    if st.has(flag::SCHEDULED | flag::CREDIT_BLOCKED | flag::STREAM_BLOCKED | flag::SESSION_BLOCKED)
    {
        return;
    }
    st.set(flag::SCHEDULED);
    scheduler.push(id, st.priority);
}

/// Control frames waiting to be sent.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub(crate) enum Control {
    MaxStreamData(StreamId),
    Reset {
        id: StreamId,
        code: u64,
        final_size: u64,
    },
    Stop {
        id: StreamId,
        code: u64,
    },
}

/// How a new channel relates to the session.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub enum Attach {
    /// The first channel of this session.
    Fresh,
    /// A new channel of the same session: streams resume.
    Resumed,
    /// The peer's session changed (it restarted): every old stream was reset.
    PeerRestarted,
}

/// Stream credit assumed from a peer whose limits are not known yet (a new session before its
/// first channel is up: what early data may open): counters below 2, one stream, the least a
/// host using early data grants (spec/handshake.md §3.4). Streams opened beyond it wait for
/// the handshake's parameters, which raise it.
pub(crate) const UNKNOWN_PEER_MAX_STREAMS: u64 = 2;

/// The streams between this host and one peer.
pub struct Session {
    pub(crate) config: Arc<SessionConfig>,
    pub(crate) remote_eid: Eid,
    /// Our side bit in stream ids.
    pub(crate) side: bool,
    pub(crate) local_session_id: u64,
    pub(crate) remote_session_id: Option<u64>,
    pub(crate) streams: StreamMap,
    /// Next counter of a stream we open.
    pub(crate) next_counter: u64,
    /// Streams we may open: counters below this.
    pub(crate) peer_max_streams: u64,
    /// Streams the peer may open: counters below this.
    pub(crate) local_max_streams: u64,
    /// `local_max_streams` has grown since it was last written: a MAX_STREAMS goes in the next
    /// packet sent, and forces a packet of its own only once the peer runs short of credit
    /// ([`Session::max_streams_urgent`]).
    pub(crate) max_streams_queued: bool,
    /// The limit last written in a MAX_STREAMS (or the initial one); 0 when the peer may not
    /// have it (lost, or a resumed session), which makes the next update urgent.
    pub(crate) announced_max_streams: u64,
    /// Counters of peer streams ever opened (to tell late frames of finished streams).
    pub(crate) peer_opened: RangeSet,
    /// Session send limit given by the peer, and new bytes sent so far.
    pub(crate) peer_max_data: u64,
    pub(crate) data_sent: u64,
    /// Initial send window of each stream, from the peer's handshake.
    pub(crate) peer_initial_max_stream_data: u64,
    /// The largest datagram the peer accepts, from its handshake (`None` before the first
    /// channel).
    pub(crate) peer_max_datagram_size: Option<u64>,
    /// Datagram counters.
    pub(crate) dgram_stats: DatagramStats,
    /// Session receive limit we gave, its window, bytes received (unique) and read.
    pub(crate) local_max_data: u64,
    pub(crate) data_window: u64,
    pub(crate) data_received: u64,
    pub(crate) data_read: u64,
    pub(crate) data_window_moved_at: Option<Instant>,
    /// Origin of the streams' time stamps (see [`stamp`](Self::stamp)): the first `now` used.
    pub(crate) epoch: Option<Instant>,
    pub(crate) max_data_queued: bool,
    pub(crate) control: VecDeque<Control>,
    /// RESET_STREAM and STOP_SENDING of our streams beyond the peer's stream credit (reset
    /// before they could be sent): the peer would ignore them; they wait for MAX_STREAMS.
    pub(crate) deferred_control: Vec<Control>,
    /// Control frames (and MAX_DATA, MAX_STREAMS) sent and not yet acknowledged or lost.
    pub(crate) control_in_flight: usize,
    pub(crate) scheduler: Scheduler,
    /// Streams waiting for MAX_DATA or MAX_STREAMS.
    pub(crate) session_blocked: Vec<StreamId>,
    pub(crate) credit_blocked: Vec<StreamId>,
    /// Peer substreams whose parent's OPEN has not arrived yet, by parent.
    pub(crate) orphans: HashMap<StreamId, Vec<StreamId>, BuildHasherDefault<IdHasher>>,
    pub(crate) reassembly: Reassembly,
    /// Best-effort fragments for peer streams not opened yet.
    pub(crate) unopened: Unopened,
    /// Spare pages for the streams' send and receive buffers.
    pub(crate) pool: PagePool,
    /// When the pool's spares are next trimmed, after a trim that left more than the idle
    /// bound; before the first, [`PAGE_TRIM_INTERVAL`](super::PAGE_TRIM_INTERVAL) after
    /// `last_active`.
    pub(crate) pages_trim_at: Option<Instant>,
    /// When the channel last asked for frames or delivered one.
    pub(crate) last_active: Option<Instant>,
    /// Bytes written and not yet acknowledged, all streams together (the sum of their
    /// `send.buffered()`), against `config.session_send_buffer`.
    pub(crate) send_buffered: usize,
    /// Streams whose `write` was cut short by the session's send buffer: they get
    /// [`SessionEvent::Writable`] when it has room again.
    pub(crate) session_write_waiters: Vec<StreamId>,
    pub(crate) events: VecDeque<SessionEvent>,
    pub(crate) link: LinkStatus,
    pub(crate) detached_since: Option<Instant>,
    pub(crate) rtt: Duration,
    /// Set when the peer broke the protocol; the driver closes the channel.
    pub(crate) violation: Option<(u64, String)>,
    /// Streams below this priority are not served until the deadline, or until a writer of
    /// a stream at least this important writes again (see [`super::WRITER_HOLD`]).
    pub(crate) hold: Option<(i32, Instant)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("remote", &self.remote_eid)
            .field("streams", &self.streams.len())
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session with `remote`; `local_session_id` is a fresh random number.
    pub fn new(config: Arc<SessionConfig>, local: Eid, remote: Eid, local_session_id: u64) -> Self {
        let reassembly =
            Reassembly::new(config.datagram_reassembly_limit, config.max_datagram_size);
        Self {
            remote_eid: remote,
            side: local.as_bytes() > remote.as_bytes(),
            local_session_id,
            remote_session_id: None,
            streams: HashMap::default(),
            next_counter: 1,
            peer_max_streams: config.initial_max_streams.min(UNKNOWN_PEER_MAX_STREAMS),
            local_max_streams: config.initial_max_streams,
            max_streams_queued: false,
            announced_max_streams: config.initial_max_streams,
            peer_opened: RangeSet::new(),
            peer_max_data: config.initial_max_data,
            data_sent: 0,
            peer_initial_max_stream_data: config.initial_max_stream_data,
            peer_max_datagram_size: None,
            dgram_stats: DatagramStats::default(),
            local_max_data: config.initial_max_data,
            data_window: config.initial_max_data,
            data_received: 0,
            data_read: 0,
            data_window_moved_at: None,
            epoch: None,
            max_data_queued: false,
            control: VecDeque::new(),
            deferred_control: Vec::new(),
            control_in_flight: 0,
            scheduler: Scheduler::default(),
            session_blocked: Vec::new(),
            credit_blocked: Vec::new(),
            orphans: HashMap::default(),
            reassembly,
            unopened: Unopened::new(config.unopened_datagram_limit),
            pool: PagePool::default(),
            pages_trim_at: None,
            last_active: None,
            send_buffered: 0,
            session_write_waiters: Vec::new(),
            events: VecDeque::new(),
            link: LinkStatus::Down,
            detached_since: None,
            rtt: Duration::from_millis(100),
            violation: None,
            hold: None,
            config,
        }
    }

    /// The peer.
    pub fn remote_eid(&self) -> Eid {
        self.remote_eid
    }

    /// Our session id (sent in handshakes).
    pub fn local_session_id(&self) -> u64 {
        self.local_session_id
    }

    /// Number of live streams.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Bytes the session holds for its streams: unacknowledged sent data, received data not
    /// yet read (gaps included), incomplete datagrams and queued datagrams. Bounded by the
    /// configured windows and limits whatever the peer sends.
    pub fn buffered_bytes(&self) -> usize {
        let streams: usize = self
            .streams
            .values()
            .map(|st| {
                let queued = st.extra.as_ref().map_or(0, |e| {
                    e.datagrams.iter().map(Vec::len).sum::<usize>()
                        + e.outgoing.as_ref().map_or(0, |o| o.bytes())
                });
                st.send.buffered() + st.recv.buffered() + queued
            })
            .sum();
        streams + self.reassembly.charged() + self.unopened.bytes()
    }

    /// A one-line-per-stream dump of flow-control state, for debugging.
    #[doc(hidden)]
    pub fn debug_streams(&self) -> String {
        let mut out = format!(
            "peer_max_data {} data_sent {} local_max_data {} data_received {} data_read {} sched_empty {} ctl {} ctl_in_flight {} sess_blocked {:?}\n",
            self.peer_max_data, self.data_sent, self.local_max_data, self.data_received, self.data_read,
            self.scheduler.is_empty(), self.control.len(), self.control_in_flight, self.session_blocked
        );
        for (id, st) in &self.streams {
            out += &format!(
                "  {id} (parent {:?}, {:?}, queued {}): flags {:#x} send_limit {} sent {} written {} buffered {} recv_limit {} read {} max_recv {}\n",
                st.parent(), st.kind, st.extra.as_ref().map_or(0, |e| e.accept_queue.len()), st.flags, st.send_limit, st.send.sent_offset(), st.send.write_offset(), st.send.buffered(),
                st.recv_limit, st.recv.read_offset(), st.recv.max_received()
            );
        }
        out
    }

    /// Whether no channel has carried this session yet (or it started afresh): the peer's
    /// session and limits are not known. Only then may a new channel carry the session's
    /// first frames as early data (`spec/handshake.md` §3.4): on a resumed session they
    /// could meet a peer that restarted, whose fresh session would take streams the
    /// attach is about to reset on this side.
    pub fn is_new(&self) -> bool {
        self.remote_session_id.is_none()
    }

    /// The link status shared by every stream of the session.
    pub fn link_status(&self) -> LinkStatus {
        self.link
    }

    /// The handshake parameters of the stream layer for a channel to this peer.
    pub fn layer_params(&self) -> crate::endpoint::LayerParams {
        crate::endpoint::LayerParams {
            session_id: self.local_session_id,
            initial_max_stream_data: self.config.initial_max_stream_data,
            initial_max_data: self.config.initial_max_data,
            initial_max_streams: self.config.initial_max_streams,
            max_datagram_size: self.config.max_datagram_size,
        }
    }

    /// Datagram counters of the session.
    pub fn datagram_stats(&self) -> DatagramStats {
        let mut s = self.dgram_stats;
        s.reassembly_dropped += self.reassembly.dropped;
        s.unopened_held = self.unopened.held_total;
        s.unopened_dropped = self.unopened.dropped;
        s
    }

    /// The largest datagram the peer accepts, once a channel told (its handshake's
    /// `max_datagram_size`; a peer that predates the parameter is taken to accept the
    /// default, 1 MiB).
    pub fn peer_max_datagram_size(&self) -> Option<u64> {
        self.peer_max_datagram_size
    }

    /// Nothing waits to be sent or acknowledged: every byte written was acknowledged.
    pub fn is_quiescent(&self) -> bool {
        !self.max_data_queued
            && !self.max_streams_urgent()
            && self.control_in_flight == 0
            && self.control.is_empty()
            && self.deferred_control.is_empty()
            && self.scheduler.is_empty()
            && self.session_blocked.is_empty()
            && self.credit_blocked.is_empty()
            && self.streams.values().all(|st| {
                let open_done = st.has(flag::OPEN_ACKED) || !st.has(flag::OPEN_IN_FLIGHT);
                open_done
                    && ((st.send.buffered() == 0
                        && (!st.send.is_finished() || st.send.is_fully_acked()))
                        || st.has(flag::SEND_RESET))
            })
    }

    /// A protocol violation by the peer, if one happened: (close code, reason). The driver
    /// closes the channel with it.
    pub fn take_violation(&mut self) -> Option<(u64, String)> {
        self.violation.take()
    }

    // ------------------------------------------------------------ channel life

    /// A channel to the peer is established; `peer` are the parameters of its handshake
    /// (session id and initial limits).
    pub fn attach(&mut self, now: Instant, peer: &crate::handshake::TransportParams) -> Attach {
        let remote_session_id = peer.session_id;
        let outcome = match self.remote_session_id {
            None => Attach::Fresh,
            Some(id) if id == remote_session_id => Attach::Resumed,
            Some(_) => {
                self.reset_all(ErrorCode::PEER_RESTARTED);
                Attach::PeerRestarted
            }
        };
        self.remote_session_id = Some(remote_session_id);
        self.detached_since = None;
        if outcome == Attach::Resumed {
            // The peer may have lost our last window updates with the old channel.
            self.max_data_queued = true;
            self.max_streams_queued = true;
            self.announced_max_streams = 0;
            let ids: Vec<StreamId> = self.streams.keys().copied().collect();
            for id in ids {
                self.queue_max_stream_data(id);
            }
        } else {
            // The peer's limits for a new session come from its handshake. Streams held back
            // by the assumed stream credit may go now.
            self.peer_max_data = peer.initial_max_data;
            self.peer_max_streams = peer.initial_max_streams;
            self.credit_raised();
            for st in self.streams.values_mut() {
                st.send_limit = peer.initial_max_stream_data;
            }
            self.peer_initial_max_stream_data = peer.initial_max_stream_data;
        }
        self.peer_max_datagram_size = Some(peer.max_datagram_size);
        self.fail_datagrams_beyond(peer.max_datagram_size);
        let _ = now;
        self.set_link(LinkStatus::Up);
        outcome
    }

    /// Datagrams written before the peer's limit was known and larger than it can never be
    /// delivered: reliable ones fail ([`SessionEvent::DatagramFailed`]), best-effort ones not
    /// yet started are dropped.
    fn fail_datagrams_beyond(&mut self, max: u64) {
        let mut failed = Vec::new();
        for (&id, st) in &mut self.streams {
            // (Reliable datagram streams we opened; best-effort datagrams on any stream.)
            if st.kind == Kind::Datagram
                && id.side() == self.side
                && !st.has(flag::SEND_RESET)
                && st.send.write_offset() > max
            {
                failed.push((id, st.parent().unwrap_or(id)));
            }
            if let Some(out) = st.extra.as_mut().and_then(|e| e.outgoing.as_mut()) {
                self.dgram_stats.best_effort_too_large += out.drop_larger_than(max);
            }
        }
        for (id, parent) in failed {
            self.reset(id, ErrorCode::DATAGRAM_TOO_LARGE).ok();
            self.datagram_failed(parent, ErrorCode::DATAGRAM_TOO_LARGE);
        }
    }

    /// Tells the application that a reliable datagram sent on `parent` failed.
    pub(crate) fn datagram_failed(&mut self, parent: StreamId, code: u64) {
        self.dgram_stats.reliable_failed += 1;
        self.events
            .push_back(SessionEvent::DatagramFailed { parent, code });
    }

    /// The channel closed. Its unacknowledged frames were reported lost and are queued
    /// again; the streams wait for the next channel.
    pub fn detach(&mut self, now: Instant) {
        self.detached_since.get_or_insert(now);
        self.set_link(LinkStatus::Down);
    }

    /// Updates the link status from the channel's consecutive probe timeouts.
    pub fn update_link(&mut self, pto_count: u32, rtt: Duration) {
        self.rtt = rtt;
        if self.detached_since.is_some() {
            return;
        }
        let status = if pto_count >= 2 {
            LinkStatus::Stalled
        } else {
            LinkStatus::Up
        };
        self.set_link(status);
    }

    fn set_link(&mut self, status: LinkStatus) {
        if self.link != status {
            self.link = status;
            self.events.push_back(SessionEvent::Link(status));
        }
    }

    /// Resets every stream (locally) with `code` and starts afresh.
    fn reset_all(&mut self, code: u64) {
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            self.events.push_back(SessionEvent::Reset { id, code });
        }
        for st in self.streams.values_mut() {
            // Their pages go back to the pool, which then keeps only what it may.
            st.send.reset(&mut self.pool);
            st.recv.abandon(&mut self.pool);
        }
        self.streams.clear();
        self.hold = None;
        self.send_buffered = 0;
        self.session_write_waiters.clear();
        self.scheduler = Scheduler::default();
        self.control.clear();
        self.deferred_control.clear();
        self.session_blocked.clear();
        self.credit_blocked.clear();
        self.orphans.clear();
        self.peer_opened = RangeSet::new();
        self.next_counter = 1;
        self.peer_max_streams = self
            .config
            .initial_max_streams
            .min(UNKNOWN_PEER_MAX_STREAMS);
        self.local_max_streams = self.config.initial_max_streams;
        self.announced_max_streams = self.config.initial_max_streams;
        self.peer_max_data = self.config.initial_max_data;
        self.local_max_data = self.config.initial_max_data;
        self.data_window = self.config.initial_max_data;
        self.data_sent = 0;
        self.data_received = 0;
        self.data_read = 0;
        self.dgram_stats.reassembly_dropped += self.reassembly.dropped;
        self.reassembly = Reassembly::new(
            self.config.datagram_reassembly_limit,
            self.config.max_datagram_size,
        );
        self.unopened.clear();
    }

    // ------------------------------------------------------------ timers

    /// When [`handle_timeout`](Self::handle_timeout) should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let detach = self
            .detached_since
            .map(|t| t + self.config.detached_timeout);
        [
            detach,
            self.reassembly.next_deadline(),
            self.unopened.next_deadline(),
            self.hold.map(|h| h.1),
            self.page_trim_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Expires incomplete datagrams and, after `detached_timeout` without a channel, resets
    /// every stream with `LINK_DOWN`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.reassembly.expire(now);
        self.unopened.expire(now);
        if self.hold.is_some_and(|(_, until)| now >= until) {
            self.hold = None;
        }
        if self.page_trim_deadline().is_some_and(|at| now >= at) {
            self.pages_trim_at = self.pool.trim().then_some(now + super::PAGE_TRIM_INTERVAL);
        }
        if let Some(since) = self.detached_since {
            if now >= since + self.config.detached_timeout && !self.streams.is_empty() {
                self.reset_all(ErrorCode::LINK_DOWN);
                self.detached_since = None;
                // A new session: stream ids start again, so the peer must not resume the
                // old one (it would see ids it already knows). A new session id makes it
                // reset its side too (`Attach::PeerRestarted`).
                let mut x = self.local_session_id.wrapping_add(0x9E37_79B9_7F4A_7C15);
                x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                self.local_session_id = (x ^ (x >> 31)) | 1;
                self.remote_session_id = None;
            }
        }
    }

    /// When spare pages beyond the idle bound are next trimmed, if there are any.
    fn page_trim_deadline(&self) -> Option<Instant> {
        if self.pool.spare() <= super::pages::IDLE_SPARE_PAGES {
            return None;
        }
        self.pages_trim_at
            .or_else(|| Some(self.last_active? + super::PAGE_TRIM_INTERVAL))
    }

    // ------------------------------------------------------------ opening

    fn new_local_id(&mut self) -> StreamId {
        let id = StreamId::new(self.side, self.next_counter);
        self.next_counter += 1;
        id
    }

    /// Opens a top-level stream for (`service`, `protocol`). Data written to it is sent at
    /// once; the peer accepts or refuses the stream.
    pub fn open(&mut self, service: &str, protocol: &str) -> Result<StreamId, StreamError> {
        if !(1..=255).contains(&service.len()) || !(1..=255).contains(&protocol.len()) {
            return Err(StreamError::BadName);
        }
        let id = self.new_local_id();
        let mut st = StreamState::new(
            None,
            Kind::Top,
            self.config.initial_max_stream_data,
            self.config.initial_max_stream_data,
        );
        st.set(flag::ACCEPTED);
        st.extra().names = Some((service.to_owned(), protocol.to_owned()));
        self.streams.insert(id, st);
        self.schedule(id);
        Ok(id)
    }

    /// Opens a substream of `parent`, without a round trip: it can be written at once.
    pub fn open_substream(&mut self, parent: StreamId) -> Result<StreamId, StreamError> {
        self.open_child(parent, Kind::Sub)
    }

    fn open_child(&mut self, parent: StreamId, kind: Kind) -> Result<StreamId, StreamError> {
        self.live(parent)?;
        let id = self.new_local_id();
        let mut st = StreamState::new(
            Some(parent),
            kind,
            self.config.initial_max_stream_data,
            self.config.initial_max_stream_data,
        );
        st.set(flag::ACCEPTED);
        schedule_in(&mut self.scheduler, &mut st, id);
        self.streams.insert(id, st);
        Ok(id)
    }

    fn live(&self, id: StreamId) -> Result<&StreamState, StreamError> {
        let st = self.streams.get(&id).ok_or(StreamError::UnknownStream)?;
        if let Some(code) = st.reset_code() {
            return Err(StreamError::Reset(code));
        }
        Ok(st)
    }

    fn live_mut(&mut self, id: StreamId) -> Result<&mut StreamState, StreamError> {
        live_in(&mut self.streams, id)
    }

    /// Puts `id` in the send queue if it has something to send and is not queued or blocked.
    pub(crate) fn schedule(&mut self, id: StreamId) {
        if let Some(st) = self.streams.get_mut(&id) {
            schedule_in(&mut self.scheduler, st, id);
        }
    }

    // ------------------------------------------------------------ writing

    /// Bytes that `id` can still buffer for sending before writes are refused.
    pub fn write_capacity(&self, id: StreamId) -> usize {
        let session_room = self.session_send_room();
        let flow_room = self.peer_max_data.saturating_sub(self.data_sent);
        self.streams.get(&id).map_or(0, |st| {
            stream_send_room(&self.config, st, flow_room).min(session_room)
        })
    }

    /// Spare buffer pages the session keeps for reuse (each
    /// [`PAGE`](super::pages::PAGE) bytes): bounded by the pages its buffers hold, and at most
    /// [`IDLE_SPARE_PAGES`](super::pages::IDLE_SPARE_PAGES) once they are empty.
    pub fn spare_pages(&self) -> usize {
        self.pool.spare()
    }

    /// Bytes written on all streams together and not yet acknowledged (what
    /// [`SessionConfig::session_send_buffer`] bounds).
    pub fn send_buffered(&self) -> usize {
        self.send_buffered
    }

    /// Bytes the session's send buffer (all streams together) can still take.
    fn session_send_room(&self) -> usize {
        self.config
            .session_send_buffer
            .saturating_sub(self.send_buffered)
    }

    /// Queues bytes for sending; returns how many were taken (fewer than `data.len()` when
    /// the stream's send buffer is full: wait for [`SessionEvent::Writable`]).
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let session_room = self.session_send_room();
        let flow_room = self.peer_max_data.saturating_sub(self.data_sent);
        let st = live_in(&mut self.streams, id)?;
        let own_room = stream_send_room(&self.config, st, flow_room);
        let cap = own_room.min(session_room);
        if st.send.is_finished() || st.has(flag::SEND_RESET) {
            return Err(StreamError::Finished);
        }
        if st.has(flag::STOP_RECEIVED) {
            return Err(StreamError::Stopped);
        }
        let n = data.len().min(cap);
        if n < data.len() && own_room > session_room {
            // Cut short by the session's buffer: told when it has room again (the stream's own
            // `Writable` comes only after its own data left, which may already be the case).
            if !self.session_write_waiters.contains(&id) {
                self.session_write_waiters.push(id);
            }
        }
        if n == 0 && !data.is_empty() {
            st.set(flag::WRITABLE_WANTED);
            return Ok(0);
        }
        st.send.write(&data[..n], &mut self.pool);
        self.send_buffered += n;
        if self.hold.is_some_and(|(held, _)| st.priority >= held) {
            self.hold = None;
        }
        schedule_in(&mut self.scheduler, st, id);
        Ok(n)
    }

    /// Writes `data` followed by a record boundary: bytes written before with
    /// [`write`](Self::write) form the head of the record. All of `data` is taken (records are
    /// atomic), even beyond the send buffer's nominal capacity.
    pub fn write_record(&mut self, id: StreamId, data: &[u8]) -> Result<(), StreamError> {
        let st = live_in(&mut self.streams, id)?;
        if st.send.is_finished() || st.has(flag::SEND_RESET) {
            return Err(StreamError::Finished);
        }
        if st.has(flag::STOP_RECEIVED) {
            return Err(StreamError::Stopped);
        }
        st.send.write(data, &mut self.pool);
        self.send_buffered += data.len();
        if !st.send.mark_record() {
            return Err(StreamError::EmptyRecord);
        }
        schedule_in(&mut self.scheduler, st, id);
        Ok(())
    }

    /// Sends a datagram on stream `id`: best-effort (delivered whole or not at all) or
    /// reliable (an ephemeral substream the peer reads as one unit).
    pub fn write_datagram(
        &mut self,
        id: StreamId,
        data: &[u8],
        reliable: bool,
    ) -> Result<(), StreamError> {
        if data.len() as u64 > self.config.max_datagram_size {
            return Err(StreamError::DatagramTooLarge);
        }
        if let Some(max) = self.peer_max_datagram_size {
            if data.len() as u64 > max {
                // Only a live stream counts the refusal.
                self.live(id)?;
                self.dgram_stats.refused_for_peer += 1;
                return Err(StreamError::DatagramTooLargeForPeer(max));
            }
        }
        if reliable {
            let child = self.open_child(id, Kind::Datagram)?;
            let st = self.streams.get_mut(&child).expect("just opened");
            st.send.write(data, &mut self.pool);
            self.send_buffered += data.len();
            st.send.finish();
            // Our receiving side of an ephemeral datagram stream carries nothing.
            st.set(flag::RECV_RESET);
            // Nothing ever comes back: the peer's final size is 0.
            st.recv
                .skip_to(0, true, 0)
                .expect("a new stream received nothing");
            return Ok(());
        }
        let limit = self.config.outgoing_datagram_limit;
        let st = self.live_mut(id)?;
        let extra = st.extra();
        let datagram_id = extra.next_datagram_id;
        extra.next_datagram_id += 1;
        extra
            .outgoing
            .get_or_insert_with(|| Outgoing::new(limit))
            .push(datagram_id, Bytes::copy_from_slice(data))
            .map_err(|_| StreamError::DatagramTooLarge)?;
        self.schedule(id);
        Ok(())
    }

    /// Ends our sending direction after the data written so far.
    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        let st = live_in(&mut self.streams, id)?;
        if !st.send.is_finished() {
            st.send.finish();
        }
        schedule_in(&mut self.scheduler, st, id);
        Ok(())
    }

    /// Abandons the stream in both directions with an application code. Datagrams not yet
    /// read or sent are dropped, and substreams waiting in its accept queue (never accepted
    /// by the application) are reset with [`ErrorCode::NO_PARENT`].
    pub fn reset(&mut self, id: StreamId, code: u64) -> Result<(), StreamError> {
        if !self.streams.contains_key(&id) {
            return Err(StreamError::UnknownStream);
        }
        // A work list, not recursion: unaccepted substreams may have queued substreams too.
        let mut work = vec![(id, code)];
        while let Some((id, code)) = work.pop() {
            for child in self.reset_one(id, code) {
                work.push((child, ErrorCode::NO_PARENT));
            }
        }
        Ok(())
    }

    /// Resets one stream; returns the substreams that were waiting in its accept queue.
    fn reset_one(&mut self, id: StreamId, code: u64) -> VecDeque<StreamId> {
        let Some(st) = self.streams.get_mut(&id) else {
            return VecDeque::new();
        };
        // Nothing can be read from or sent on a reset stream: what waits would keep it (and
        // the peer's stream credit) alive for ever.
        let orphans = match st.extra.as_mut() {
            Some(extra) => {
                extra.datagrams.clear();
                extra.outgoing = None;
                std::mem::take(&mut extra.accept_queue)
            }
            None => VecDeque::new(),
        };
        let mut queue = Vec::with_capacity(2);
        if !st.has(flag::SEND_RESET) {
            st.set(flag::SEND_RESET);
            self.send_buffered = self.send_buffered.saturating_sub(st.send.buffered());
            let final_size = st.send.reset(&mut self.pool);
            queue.push(Control::Reset {
                id,
                code,
                final_size,
            });
        }
        let mut unread = 0;
        if !st.has(flag::RECV_RESET) {
            st.set(flag::RECV_RESET);
            queue.push(Control::Stop { id, code });
            unread = st.recv.abandon(&mut self.pool);
        }
        st.extra().reset_code = Some(code);
        for c in queue {
            self.queue_control(c);
        }
        self.consumed(unread);
        self.forget_if_done(id);
        orphans
    }

    /// Sets the send priority of `id` (higher first); takes effect with the next packet.
    pub fn set_priority(&mut self, id: StreamId, priority: i32) -> Result<(), StreamError> {
        let st = self
            .streams
            .get_mut(&id)
            .ok_or(StreamError::UnknownStream)?;
        let old = st.priority;
        st.priority = priority;
        if st.has(flag::SCHEDULED) && old != priority {
            self.scheduler.remove(id, old);
            self.scheduler.push(id, priority);
        }
        Ok(())
    }

    /// The send priority of `id`.
    pub fn priority(&self, id: StreamId) -> Result<i32, StreamError> {
        Ok(self
            .streams
            .get(&id)
            .ok_or(StreamError::UnknownStream)?
            .priority)
    }

    // ------------------------------------------------------------ reading

    /// Reads bytes, never across a record boundary. `Ok(0)` means nothing is readable now
    /// (or the end, see [`at_end`](Self::at_end)).
    pub fn read(&mut self, id: StreamId, buf: &mut [u8]) -> Result<usize, StreamError> {
        let st = live_in(&mut self.streams, id)?;
        let n = st.recv.read(buf, &mut self.pool);
        st.clear(flag::READABLE_NOTIFIED | flag::WANTS_RECORD);
        let done = note_read(st, id, n as u64, &mut self.control);
        self.consumed(n as u64);
        if done {
            self.remove_done(id);
        }
        Ok(n)
    }

    /// Bytes readable now (up to the next record boundary).
    pub fn bytes_available(&self, id: StreamId) -> Result<usize, StreamError> {
        Ok(self.live(id)?.recv.bytes_available())
    }

    /// The next complete record, or `None`. A record longer than `max` is cut to `max` bytes
    /// and the rest discarded; the flag says so.
    pub fn read_record(
        &mut self,
        id: StreamId,
        max: usize,
    ) -> Result<Option<(Vec<u8>, bool)>, StreamError> {
        let st = live_in(&mut self.streams, id)?;
        let before = st.recv.read_offset();
        let r = st.recv.read_record(max, &mut self.pool);
        let consumed = st.recv.read_offset() - before;
        st.clear(flag::READABLE_NOTIFIED);
        if r.is_none() {
            st.set(flag::WANTS_RECORD);
        } else {
            st.clear(flag::WANTS_RECORD);
        }
        let done = note_read(st, id, consumed, &mut self.control);
        self.consumed(consumed);
        if done {
            self.remove_done(id);
        } else if r.is_none() {
            self.grow_for_record(id);
        }
        Ok(r)
    }

    /// If the application waits for a record and `id`'s window is full of one incomplete
    /// record (which `read_record` cannot take), grows the window — the stream's, and the
    /// session's if needed — up to their bounds. Returns false if the window cannot grow (the
    /// record is longer than `max_stream_window`).
    pub(crate) fn grow_for_record(&mut self, id: StreamId) -> bool {
        let max = self.config.max_stream_window;
        let Some(st) = self.streams.get_mut(&id) else {
            return false;
        };
        let full = st.recv.max_received() >= st.recv_limit;
        if !full || !st.has(flag::WANTS_RECORD) || st.recv.has_pending_records() {
            return false;
        }
        if st.recv_window() >= max {
            return false;
        }
        st.set_recv_window((st.recv_window() * 2).min(max));
        self.queue_max_stream_data(id);
        if self.data_received >= self.local_max_data.saturating_sub(self.data_window / 2)
            && self.data_window < self.config.max_session_window
        {
            self.data_window = (self.data_window * 2).min(self.config.max_session_window);
            self.max_data_queued = true;
        }
        true
    }

    /// Complete records waiting to be read.
    pub fn pending_records(&self, id: StreamId) -> Result<usize, StreamError> {
        Ok(self.live(id)?.recv.pending_records())
    }

    /// Size of the next complete record.
    pub fn pending_record_size(&self, id: StreamId) -> Result<Option<usize>, StreamError> {
        Ok(self.live(id)?.recv.pending_record_size())
    }

    /// Whether the peer finished its direction and everything was read.
    pub fn at_end(&self, id: StreamId) -> Result<bool, StreamError> {
        Ok(self.live(id)?.recv.at_end())
    }

    /// The next datagram (best-effort or reliable) received on `id`.
    pub fn read_datagram(&mut self, id: StreamId) -> Result<Option<Vec<u8>>, StreamError> {
        let st = self.live_mut(id)?;
        let d = st.extra.as_mut().and_then(|e| e.datagrams.pop_front());
        self.forget_if_done(id);
        Ok(d)
    }

    /// Datagrams waiting on `id`.
    pub fn pending_datagrams(&self, id: StreamId) -> Result<usize, StreamError> {
        Ok(self
            .live(id)?
            .extra
            .as_ref()
            .map_or(0, |e| e.datagrams.len()))
    }

    /// Queues a RESET_STREAM or STOP_SENDING, holding back those of our streams the peer
    /// cannot know yet (beyond its stream credit).
    pub(crate) fn queue_control(&mut self, c: Control) {
        let id = match c {
            Control::Reset { id, .. } | Control::Stop { id, .. } | Control::MaxStreamData(id) => id,
        };
        if id.side() == self.side && id.counter() >= self.peer_max_streams {
            self.deferred_control.push(c);
        } else {
            self.control.push_back(c);
        }
    }

    /// Accounts `n` bytes of the session window as consumed (read, or skipped on a reset
    /// stream) and announces more room once half the window is used.
    pub(crate) fn consumed(&mut self, n: u64) {
        self.data_read += n;
        if n > 0 && self.local_max_data.saturating_sub(self.data_read) < self.data_window / 2 {
            self.max_data_queued = true;
        }
    }

    /// Grows windows that were used up within two round trips (called when a window moves,
    /// with the time).
    pub(crate) fn autotune(&mut self, id: StreamId, now: Instant) {
        let two_rtt = self.rtt * 2;
        let max_stream = self.config.max_stream_window;
        let stamp = self.stamp(now);
        if let Some(st) = self.streams.get_mut(&id) {
            if st.window_moved_at != 0 {
                let elapsed = Duration::from_micros(stamp.wrapping_sub(st.window_moved_at).into());
                if elapsed < two_rtt && st.recv_window() < max_stream {
                    st.set_recv_window((st.recv_window() * 2).min(max_stream));
                }
            }
            st.window_moved_at = stamp;
        }
        if let Some(prev) = self.data_window_moved_at {
            if now.saturating_duration_since(prev) < two_rtt
                && self.data_window < self.config.max_session_window
            {
                self.data_window = (self.data_window * 2).min(self.config.max_session_window);
            }
        }
        self.data_window_moved_at = Some(now);
    }

    /// `now` in microseconds since the session's first stamp, wrapping every 2^32 µs (71.6
    /// minutes), never 0 (0 means "never" in [`StreamState::window_moved_at`]). Streams keep
    /// 4-byte stamps instead of 16-byte `Instant`s; they are only compared over two round trips,
    /// so the wrap only matters for a window that last moved a multiple of 71.6 minutes ago
    /// to within two round trips: it doubles once more (still within `max_stream_window`).
    pub(crate) fn stamp(&mut self, now: Instant) -> u32 {
        let epoch = *self.epoch.get_or_insert(now);
        // Truncation is the wrap.
        (now.saturating_duration_since(epoch).as_micros() as u32).max(1)
    }

    pub(crate) fn queue_max_stream_data(&mut self, id: StreamId) {
        if let Some(st) = self.streams.get_mut(&id) {
            queue_max_stream_data_in(&mut self.control, st, id);
        }
    }

    // ------------------------------------------------------------ substreams

    /// Whether incoming substreams of `id` are queued for
    /// [`accept_substream`](Self::accept_substream) (the default) or refused with
    /// [`ErrorCode::REFUSED`]. Streams queue by default so a substream opened right after its
    /// parent is not refused before the application had a chance to call this.
    pub fn listen(&mut self, id: StreamId, on: bool) -> Result<(), StreamError> {
        let st = self.live_mut(id)?;
        if on {
            st.clear(flag::REFUSING);
        } else {
            st.set(flag::REFUSING);
        }
        Ok(())
    }

    /// The next incoming substream of `id`, if one is queued.
    pub fn accept_substream(&mut self, id: StreamId) -> Result<Option<StreamId>, StreamError> {
        let st = self.live_mut(id)?;
        let Some(extra) = st.extra.as_mut() else {
            return Ok(None);
        };
        let child = extra.accept_queue.pop_front();
        if child.is_none() && extra.accept_queue.capacity() > 1024 {
            // Idle listeners hold at most 8 KB from past bursts (a listener with steady
            // bursts of substreams does not regrow its queue from nothing each time).
            extra.accept_queue = VecDeque::new();
        }
        Ok(child)
    }

    /// Accepts an incoming top-level stream announced by [`SessionEvent::IncomingStream`].
    pub fn accept(&mut self, id: StreamId) -> Result<(), StreamError> {
        self.live_mut(id)?.set(flag::ACCEPTED);
        Ok(())
    }

    /// The parent of a substream (`None` for top-level streams).
    pub fn parent(&self, id: StreamId) -> Result<Option<StreamId>, StreamError> {
        Ok(self
            .streams
            .get(&id)
            .ok_or(StreamError::UnknownStream)?
            .parent())
    }

    /// The (service, protocol) of a top-level stream.
    pub fn service(&self, id: StreamId) -> Option<(&str, &str)> {
        let st = self.streams.get(&id)?;
        st.extra
            .as_ref()?
            .names
            .as_ref()
            .map(|(s, p)| (s.as_str(), p.as_str()))
    }

    // ------------------------------------------------------------ events

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        let e = self.events.pop_front();
        if e.is_none() && self.events.capacity() > 1024 {
            // A burst (thousands of new substreams) must not pin its queue for ever.
            self.events.shrink_to(1024);
        }
        e
    }

    /// Forgets a stream whose both directions are over, returning stream credit to the peer
    /// for streams it opened.
    pub(crate) fn forget_if_done(&mut self, id: StreamId) {
        if self.streams.get(&id).is_some_and(StreamState::is_done) {
            self.remove_done(id);
        }
    }

    /// Forgets `id`, which [`StreamState::is_done`] (the caller checked), returning stream
    /// credit to the peer for streams it opened.
    pub(crate) fn remove_done(&mut self, id: StreamId) {
        let Some(st) = self.streams.remove(&id) else {
            return;
        };
        debug_assert!(st.is_done());
        // (Zero for a stream done: everything acknowledged, or reset.)
        self.send_buffered = self.send_buffered.saturating_sub(st.send.buffered());
        if st.has(flag::SCHEDULED) {
            self.scheduler.remove(id, st.priority);
        }
        self.reassembly.forget_stream(id.0);
        if id.side() != self.side {
            self.local_max_streams += 1;
            self.max_streams_queued = true;
        }
    }

    /// Whether a queued MAX_STREAMS must be sent now, in a packet of its own if need be: the
    /// peer may have less than half its initial credit left (counters it may still open under
    /// the limit it knows of). Otherwise the update waits for a packet sent anyway: renewing
    /// credit one stream at a time made a request/response on a fresh stream cost a second
    /// packet each way (the update, then the peer's acknowledgement of it).
    pub(crate) fn max_streams_urgent(&self) -> bool {
        if !self.max_streams_queued {
            return false;
        }
        let next = self.peer_opened.max().map_or(1, |c| c.saturating_add(1));
        let left = self.announced_max_streams.saturating_sub(next);
        left < self.config.initial_max_streams.div_ceil(2)
    }
}

/// Queues a MAX_STREAM_DATA for `id` (state `st`) unless one is queued or the receiving side
/// is reset.
pub(crate) fn queue_max_stream_data_in(
    control: &mut VecDeque<Control>,
    st: &mut StreamState,
    id: StreamId,
) {
    if !st.has(flag::MAX_DATA_QUEUED) && !st.has(flag::RECV_RESET) {
        st.set(flag::MAX_DATA_QUEUED);
        control.push_back(Control::MaxStreamData(id));
    }
}

/// After the application read `n` bytes of `st`: queues a window update once half the
/// window is used (the new limit is computed when the frame is written, after the window may
/// have grown). Returns whether the stream is over and can be forgotten. (The session window
/// is the caller's: [`Session::consumed`].)
fn note_read(st: &mut StreamState, id: StreamId, n: u64, control: &mut VecDeque<Control>) -> bool {
    if n > 0 {
        st.clear(flag::BLOCKED_NOTIFIED);
        let read = st.recv.read_offset();
        if st.recv_limit.saturating_sub(read) < st.recv_window() / 2
            && st.recv.final_size().is_none()
        {
            queue_max_stream_data_in(control, st, id);
        }
    }
    st.is_done()
}
