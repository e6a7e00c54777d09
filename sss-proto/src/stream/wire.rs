//! The session as a channel's upper layer: building stream-layer frames into packets,
//! handling received ones, and re-queueing what was lost.

use std::collections::VecDeque;
use std::time::Instant;

use super::datagram::HeldFragment;
use super::frames::{
    DatagramFrame, OpenInfo, StreamFrame, StreamFrameError, StreamId, StreamLayerFrame,
};
use super::session::{schedule_in, Control, Session};
use super::state::{flag, Kind, StreamState};
use super::{ErrorCode, SessionEvent};
use crate::channel::{CloseCode, Upper, UpperError};
use crate::frame::FrameType;

/// What the session remembers about a frame in flight, to release or re-send its content.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub enum SentFrame {
    /// Stream data (and FIN) at `offset..offset + len`; `open` if it carried OPEN info.
    Stream {
        /// The stream.
        id: StreamId,
        /// First byte.
        offset: u64,
        /// Data length.
        len: u32,
        /// Carried the FIN.
        fin: bool,
        /// Carried the RECORD flag.
        record: bool,
        /// Carried OPEN information.
        open: bool,
    },
    /// A MAX_DATA frame.
    MaxData,
    /// A MAX_STREAMS frame.
    MaxStreams,
    /// A control frame for a stream.
    Control(ControlMeta),
}

/// A control frame in flight (opaque outside the session).
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub struct ControlMeta(pub(crate) Control);

fn violation(reason: String) -> UpperError {
    UpperError {
        code: CloseCode::PROTOCOL_VIOLATION.0,
        reason,
    }
}

impl Session {
    fn write_control(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        limit: usize,
        metas: &mut Vec<SentFrame>,
    ) {
        if self.max_data_queued {
            self.autotune_session(now);
            let frame = StreamLayerFrame::MaxData(self.local_max_data);
            if buf.len() + frame.encoded_len() <= limit {
                frame.encode(buf);
                metas.push(SentFrame::MaxData);
                self.control_in_flight += 1;
                self.max_data_queued = false;
            }
        }
        if self.max_streams_queued {
            let frame = StreamLayerFrame::MaxStreams(self.local_max_streams);
            if buf.len() + frame.encoded_len() <= limit {
                frame.encode(buf);
                metas.push(SentFrame::MaxStreams);
                self.control_in_flight += 1;
                self.max_streams_queued = false;
                self.announced_max_streams = self.local_max_streams;
            }
        }
        while let Some(&c) = self.control.front() {
            let frame = match c {
                Control::MaxStreamData(id) => {
                    self.autotune(id, now);
                    let Some(st) = self.streams.get_mut(&id) else {
                        self.control.pop_front();
                        continue;
                    };
                    st.recv_limit = st.recv_limit.max(st.recv.read_offset() + st.recv_window());
                    StreamLayerFrame::MaxStreamData {
                        id,
                        max: st.recv_limit,
                    }
                }
                Control::Reset {
                    id,
                    code,
                    final_size,
                } => StreamLayerFrame::ResetStream {
                    id,
                    code,
                    final_size,
                },
                Control::Stop { id, code } => StreamLayerFrame::StopSending { id, code },
            };
            if buf.len() + frame.encoded_len() > limit {
                return;
            }
            frame.encode(buf);
            self.control.pop_front();
            if let Control::MaxStreamData(id) = c {
                if let Some(st) = self.streams.get_mut(&id) {
                    st.clear(flag::MAX_DATA_QUEUED);
                }
            }
            metas.push(SentFrame::Control(ControlMeta(c)));
            self.control_in_flight += 1;
        }
    }

    fn autotune_session(&mut self, now: Instant) {
        let two_rtt = self.rtt * 2;
        if let Some(prev) = self.data_window_moved_at {
            if now.saturating_duration_since(prev) < two_rtt {
                self.data_window = (self.data_window * 2).min(self.config.max_session_window);
            }
        }
        self.data_window_moved_at = Some(now);
        self.local_max_data = self.local_max_data.max(self.data_read + self.data_window);
    }

    /// A STREAM frame arrived.
    fn on_stream_frame(&mut self, now: Instant, f: &StreamFrame<'_>) -> Result<(), UpperError> {
        let id = f.id;
        if !self.streams.contains_key(&id) {
            self.open_remote(now, id, f.open.as_ref())?;
        }
        // A late frame of a finished stream finds nothing; a refused stream is there, reset,
        // and still counts this frame's bytes (and learns a final size from its FIN).
        let Some(mut st) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        let end = f.offset.saturating_add(f.data.len() as u64);
        if st.kind == Kind::Datagram
            && end > self.config.max_datagram_size
            && id.side() != self.side
            && !st.has(flag::RECV_RESET)
        {
            // A reliable datagram larger than we accept: it could never be read whole.
            // Refuse it (STOP_SENDING; the peer answers with its final size), and count this
            // frame's bytes as the reset path below does.
            self.dgram_stats.incoming_too_large += 1;
            self.reset(id, ErrorCode::DATAGRAM_TOO_LARGE).ok();
            let Some(again) = self.streams.get_mut(&id) else {
                return Ok(());
            };
            st = again;
        }
        let limit = st.recv_limit;
        if st.has(flag::RECV_RESET) {
            // We reset the stream and wait for the peer's final size: the bytes are not kept,
            // but they count against the session window as received and consumed.
            let grew = st
                .recv
                .skip_to(end, f.fin, limit)
                .map_err(|e| violation(format!("stream {id}: {e}")))?;
            self.receive_skipped(grew)?;
            self.forget_if_done(id);
            return Ok(());
        }
        // Session flow control is checked before anything is stored.
        let growth = end.saturating_sub(st.recv.max_received());
        if self.data_received.saturating_add(growth) > self.local_max_data {
            return Err(violation("session flow-control limit exceeded".into()));
        }
        let new = st
            .recv
            .insert(f.offset, f.data, f.record, f.fin, limit, &mut self.pool)
            .map_err(|e| violation(format!("stream {id}: {e}")))?;
        self.data_received += new;
        if st.kind == Kind::Datagram {
            self.after_receive(id);
        } else {
            // `after_receive` without looking the stream up again.
            let full = notify_readable(st, id, &mut self.events);
            if full {
                self.after_receive_full(id);
            }
        }
        Ok(())
    }

    /// Creates a stream the peer opened, unless the frame is a late one of a stream already
    /// forgotten (or of ours).
    fn open_remote(
        &mut self,
        now: Instant,
        id: StreamId,
        open: Option<&OpenInfo<'_>>,
    ) -> Result<(), UpperError> {
        if id.side() == self.side {
            // One of ours that we already forgot (late retransmission), or never opened.
            return if id.counter() < self.next_counter {
                Ok(())
            } else {
                Err(violation(format!(
                    "frame for stream {id} that we never opened"
                )))
            };
        }
        if self.peer_opened.contains(id.counter()) {
            return Ok(());
        }
        self.check_credit(id)?;
        let Some(open) = open else {
            return Err(violation(format!(
                "first frame of stream {id} lacks OPEN information"
            )));
        };
        self.peer_opened.insert_one(id.counter());
        let (send_limit, window) = (
            self.peer_initial_max_stream_data,
            self.config.initial_max_stream_data,
        );
        match *open {
            OpenInfo::Top { service, protocol } => {
                let mut st = StreamState::new(None, Kind::Top, send_limit, window);
                st.extra().names = Some((service.to_owned(), protocol.to_owned()));
                st.set(flag::OPEN_ACKED);
                self.streams.insert(id, st);
                self.events.push_back(SessionEvent::IncomingStream {
                    id,
                    service: service.to_owned(),
                    protocol: protocol.to_owned(),
                });
            }
            OpenInfo::Sub { parent, datagram } => {
                let kind = if datagram { Kind::Datagram } else { Kind::Sub };
                let mut st = StreamState::new(Some(parent), kind, send_limit, window);
                st.set(flag::OPEN_ACKED | flag::ACCEPTED);
                if datagram {
                    // Nothing ever flows back on a reliable datagram.
                    st.set(flag::SEND_RESET);
                    st.send.reset(&mut self.pool);
                    // It is read only whole: give it room for the largest datagram at once,
                    // and one byte more, so that a larger one shows itself (and is refused)
                    // however the windows compare.
                    let max = self.config.max_datagram_size.saturating_add(1).max(window);
                    st.recv_limit = max;
                    st.set_recv_window(max);
                }
                let parent_pending = parent.side() != self.side
                    && parent.counter() >= 1
                    && !self.peer_opened.contains(parent.counter())
                    && parent.counter() < self.local_max_streams;
                self.streams.insert(id, st);
                if datagram && self.config.max_datagram_size >= window {
                    self.queue_max_stream_data(id);
                }
                if parent_pending {
                    // The parent's OPEN is still on its way (substreams need no round trip,
                    // so their frames may overtake it): hold the child until it arrives.
                    self.orphans.entry(parent).or_default().push(id);
                } else if !self.adopt(parent, id, datagram) {
                    // Refused: it stays, reset, until the peer's final size is known, and
                    // children that arrived before it are refused too.
                    self.refuse_orphans_of(id);
                }
            }
        }
        // Best-effort fragments that overtook the OPEN.
        if !self.unopened.is_empty() {
            for mut f in self.unopened.take(id.0) {
                let data = std::mem::take(&mut f.data);
                if self.streams.contains_key(&id) {
                    self.on_fragment(now, &f, &data);
                } else {
                    self.unopened.dropped += 1;
                }
            }
        }
        // Children that arrived before this stream.
        let children = if self.orphans.is_empty() {
            None
        } else {
            self.orphans.remove(&id)
        };
        if let Some(children) = children {
            for child in children {
                let datagram = self
                    .streams
                    .get(&child)
                    .is_some_and(|c| c.kind == Kind::Datagram);
                if self.adopt(id, child, datagram) {
                    self.after_receive(child);
                }
            }
        }
        Ok(())
    }

    /// A best-effort fragment for the existing stream `f.stream` (whose `data` is `data`):
    /// reassembled, and delivered when complete.
    fn on_fragment(&mut self, now: Instant, f: &HeldFragment, data: &[u8]) {
        let id = StreamId(f.stream);
        let complete = self.reassembly.insert(
            now,
            f.deadline,
            f.stream,
            f.datagram_id,
            f.total_len,
            f.frag_offset,
            data,
        );
        if let Some(data) = complete {
            if let Some(st) = self.streams.get_mut(&id) {
                if st.reset_code().is_none() {
                    st.extra().datagrams.push_back(data);
                    self.events.push_back(SessionEvent::Datagram(id));
                }
            }
        }
    }

    /// Whether `id` is a peer stream that has not opened yet and may still open (within the
    /// stream credit).
    fn may_open(&self, id: StreamId) -> bool {
        id.side() != self.side
            && id.counter() >= 1
            && id.counter() < self.local_max_streams
            && !self.peer_opened.contains(id.counter())
    }

    /// Stream credit: the peer may open counters 1..local_max_streams.
    fn check_credit(&self, id: StreamId) -> Result<(), UpperError> {
        if id.counter() == 0 {
            return Err(violation("stream counter 0 is not used".into()));
        }
        if id.counter() >= self.local_max_streams {
            return Err(UpperError {
                code: CloseCode::RESOURCE_EXHAUSTED.0,
                reason: format!(
                    "stream {id} opened beyond the stream credit {}",
                    self.local_max_streams
                ),
            });
        }
        Ok(())
    }

    /// Hands the new peer substream `child` to its `parent`'s accept queue (or, for a
    /// reliable datagram, lets it deliver into the parent's datagram queue). Refuses it with a
    /// reset if the parent is gone or refuses substreams; returns whether it lives.
    fn adopt(&mut self, parent: StreamId, child: StreamId, datagram: bool) -> bool {
        let refusal = match self.streams.get_mut(&parent) {
            None => Some(ErrorCode::NO_PARENT),
            Some(p) if p.reset_code().is_some() => Some(ErrorCode::NO_PARENT),
            Some(p) if !datagram && p.has(flag::REFUSING) => Some(ErrorCode::REFUSED),
            Some(p) => {
                if !datagram {
                    p.extra().accept_queue.push_back(child);
                    self.events.push_back(SessionEvent::NewSubstream { parent });
                }
                None
            }
        };
        if let Some(code) = refusal {
            self.reset(child, code).ok();
            self.forget_if_done(child);
            return false;
        }
        true
    }

    /// Bytes of a reset stream that arrived (or that its final size says were sent) and are
    /// not kept: received and consumed at once.
    fn receive_skipped(&mut self, n: u64) -> Result<(), UpperError> {
        self.data_received += n;
        if self.data_received > self.local_max_data {
            return Err(violation("session flow-control limit exceeded".into()));
        }
        self.consumed(n);
        Ok(())
    }

    /// The peer reset a stream we never saw open: its counter is used up (credit returns to
    /// the peer), its final size counts against the session window, children waiting for it
    /// are refused, and we tell the peer that we sent nothing on it (final size 0), which it
    /// waits for before forgetting the stream.
    fn reset_unopened(
        &mut self,
        id: StreamId,
        code: u64,
        final_size: u64,
    ) -> Result<(), UpperError> {
        if id.side() == self.side
            || id.counter() == 0
            || self.peer_opened.contains(id.counter())
            || self.check_credit(id).is_err()
        {
            return Ok(());
        }
        // Its window was the initial one (a reliable datagram's is the largest datagram and
        // one byte).
        let window = self
            .config
            .initial_max_stream_data
            .max(self.config.max_datagram_size.saturating_add(1));
        if final_size > window {
            return Err(violation(format!(
                "final size {final_size} of stream {id} exceeds its window"
            )));
        }
        self.receive_skipped(final_size)?;
        self.control.push_back(Control::Reset {
            id,
            code,
            final_size: 0,
        });
        self.peer_opened.insert_one(id.counter());
        self.local_max_streams += 1;
        self.max_streams_queued = true;
        self.refuse_orphans_of(id);
        if !self.unopened.is_empty() {
            self.unopened.forget(id.0);
        }
        Ok(())
    }

    /// Resets the substreams waiting for `parent`, which will never open (and, in turn, their
    /// own waiting children).
    fn refuse_orphans_of(&mut self, parent: StreamId) {
        let mut work = vec![parent];
        while let Some(p) = work.pop() {
            for child in self.orphans.remove(&p).unwrap_or_default() {
                self.reset(child, ErrorCode::NO_PARENT).ok();
                self.forget_if_done(child);
                work.push(child);
            }
        }
    }

    /// After data arrived on `id`: deliver reliable datagrams, tell the application.
    fn after_receive(&mut self, id: StreamId) {
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        if st.kind == Kind::Datagram {
            if let Some(p) = st.parent() {
                let parent_live = self.streams.get(&p).map(|ps| ps.reset_code().is_none());
                match parent_live {
                    Some(true) => {}
                    // An orphan: delivered once its parent opens.
                    None if p.side() != self.side && !self.peer_opened.contains(p.counter()) => {
                        return
                    }
                    // The parent is reset or gone: nothing can ever read the datagram.
                    _ => {
                        self.reset(id, ErrorCode::NO_PARENT).ok();
                        return;
                    }
                }
            }
            let st = self.streams.get_mut(&id).expect("checked above");
            let before = st.recv.read_offset();
            if let Some(data) = st.recv.read_all(&mut self.pool) {
                let consumed = st.recv.read_offset() - before;
                let parent = st.parent();
                self.consumed(consumed);
                if let Some(p) = parent.and_then(|p| self.streams.get_mut(&p)) {
                    p.extra().datagrams.push_back(data);
                    self.events
                        .push_back(SessionEvent::Datagram(parent.expect("checked")));
                }
                self.forget_if_done(id);
            }
            return;
        }
        if notify_readable(st, id, &mut self.events) {
            self.after_receive_full(id);
        }
    }

    /// After data arrived on `id` and filled its window: grow it for a record the application
    /// waits for, or tell the application the stream is blocked.
    fn after_receive_full(&mut self, id: StreamId) {
        if self.grow_for_record(id) {
            return;
        }
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        if !st.has(flag::BLOCKED_NOTIFIED) {
            // Nothing more will come until the application reads (a record longer than
            // `max_stream_window` must be read with `read`).
            st.set(flag::BLOCKED_NOTIFIED);
            self.events.push_back(SessionEvent::ReceiveBlocked(id));
        }
    }

    /// `n` bytes of sent data were acknowledged and released: writers cut short by the
    /// session's send buffer may write again.
    fn on_send_released(&mut self, n: usize) {
        self.send_buffered = self.send_buffered.saturating_sub(n);
        if self.send_buffered < self.config.session_send_buffer {
            for id in std::mem::take(&mut self.session_write_waiters) {
                if let Some(st) = self.streams.get_mut(&id) {
                    st.clear(flag::WRITABLE_WANTED);
                    self.events.push_back(SessionEvent::Writable(id));
                }
            }
        }
    }

    /// The peer's stream limit rose: streams waiting for credit may try again, and control
    /// frames held back for streams beyond the old limit go out.
    pub(crate) fn credit_raised(&mut self) {
        self.unblock(|s| &mut s.credit_blocked, flag::CREDIT_BLOCKED);
        for c in std::mem::take(&mut self.deferred_control) {
            self.queue_control(c);
        }
    }

    fn unblock(&mut self, list: fn(&mut Session) -> &mut Vec<StreamId>, f: u16) {
        let ids = std::mem::take(list(self));
        for id in ids {
            if let Some(st) = self.streams.get_mut(&id) {
                st.clear(f);
            }
            self.schedule(id);
        }
    }
}

/// Tells the application (once) that `id` (state `st`) has something to read; returns
/// whether its receive window is full.
fn notify_readable(
    st: &mut StreamState,
    id: StreamId,
    events: &mut VecDeque<SessionEvent>,
) -> bool {
    if !st.has(flag::READABLE_NOTIFIED)
        && (st.recv.bytes_available() > 0 || st.recv.has_pending_records() || st.recv.at_end())
    {
        st.set(flag::READABLE_NOTIFIED);
        events.push_back(SessionEvent::Readable(id));
    }
    st.recv.max_received() >= st.recv_limit
}

/// What a stream's turn needs to know of its session.
struct TurnLimits {
    /// Our side bit in stream ids.
    side: bool,
    /// Streams we may open: counters below this.
    peer_max_streams: u64,
    /// New bytes the session may still send.
    session_room: u64,
}

/// Writes one frame for stream `id` (state `st`): a datagram fragment or stream data. Returns
/// whether the stream still has something to send now, and the new (flow-controlled) bytes
/// the frame carried.
fn write_stream(
    st: &mut StreamState,
    id: StreamId,
    lim: &TurnLimits,
    buf: &mut Vec<u8>,
    limit: usize,
    metas: &mut Vec<SentFrame>,
) -> (StreamTurn, u64) {
    let TurnLimits {
        side,
        peer_max_streams,
        session_room,
    } = *lim;
    if id.side() == side && id.counter() >= peer_max_streams {
        return (StreamTurn::CreditBlocked, 0);
    }
    let space = limit.saturating_sub(buf.len());
    // Best-effort datagrams first: they are latency-sensitive and never re-sent. (Once the
    // stream's OPEN has left: the peer drops datagrams of streams it does not know.)
    let announced = st.has(flag::OPEN_ACKED) || st.has(flag::OPEN_IN_FLIGHT);
    if let Some(out) = st
        .extra
        .as_mut()
        .and_then(|e| e.outgoing.as_mut())
        .filter(|_| announced)
    {
        if let Some((dgram, total, frag)) = out.peek() {
            let Some(max) = DatagramFrame::max_data_len(id, dgram, total, frag, space)
                .filter(|&m| m > 0 || total == frag)
            else {
                return (StreamTurn::NoRoom, 0);
            };
            if let Some(f) = out.next_fragment(max) {
                let n = f.data.len();
                DatagramFrame::write_header(buf, id, f.datagram_id, f.total_len, f.frag_offset, n);
                buf.extend_from_slice(&f.data);
                // The next turn finds out whether anything else waits.
                return (StreamTurn::More, 0);
            }
        }
    }
    let open_names;
    let open = if st.has(flag::OPEN_ACKED) {
        None
    } else {
        Some(match st.kind {
            Kind::Top => {
                open_names = st
                    .extra
                    .as_ref()
                    .and_then(|e| e.names.clone())
                    .unwrap_or_default();
                OpenInfo::Top {
                    service: &open_names.0,
                    protocol: &open_names.1,
                }
            }
            Kind::Sub | Kind::Datagram => OpenInfo::Sub {
                parent: st.parent().unwrap_or(StreamId(0)),
                datagram: st.kind == Kind::Datagram,
            },
        })
    };
    if st.has(flag::SEND_RESET) {
        // Nothing to send, not even an OPEN announcement: if the peer never saw the
        // stream, our RESET_STREAM tells it all it needs.
        return (StreamTurn::Done, 0);
    }
    let stream_limit = st.send_limit;
    let flow_limit = stream_limit.min(st.send.sent_offset().saturating_add(session_room));
    if open.is_some() && !st.has(flag::OPEN_IN_FLIGHT) && !st.send.has_pending(flow_limit) {
        // Nothing to carry the OPEN: announce the stream with an empty frame, so that its
        // substreams (which may already be on their way) find their parent.
        let offset = st.send.sent_offset();
        if StreamFrame::overhead(id, offset, open.as_ref(), 0) > space {
            return (StreamTurn::NoRoom, 0);
        }
        StreamFrame::write_header(buf, id, offset, 0, false, false, open.as_ref());
        st.set(flag::OPEN_IN_FLIGHT);
        metas.push(SentFrame::Stream {
            id,
            offset,
            len: 0,
            fin: false,
            record: false,
            open: true,
        });
        return (StreamTurn::More, 0);
    }
    if !st.send.has_pending(flow_limit) {
        let turn = if st.send.has_pending(u64::MAX) {
            if flow_limit >= stream_limit {
                StreamTurn::StreamBlocked
            } else {
                StreamTurn::SessionBlocked
            }
        } else {
            StreamTurn::Done
        };
        return (turn, 0);
    }
    let Some(max) = StreamFrame::max_data_len(id, st.send.write_offset(), open.as_ref(), space)
    else {
        return (StreamTurn::NoRoom, 0);
    };
    let Some(chunk) = st.send.next_chunk(max, flow_limit) else {
        // Room for a header but not one data byte: the data waits for the next packet.
        return if st.send.has_pending(flow_limit) {
            (StreamTurn::NoRoom, 0)
        } else {
            (StreamTurn::Done, 0)
        };
    };
    StreamFrame::write_header(
        buf,
        id,
        chunk.offset,
        chunk.len,
        chunk.fin,
        chunk.record,
        open.as_ref(),
    );
    st.send.copy_to(&chunk, buf);
    if open.is_some() {
        st.set(flag::OPEN_IN_FLIGHT);
    }
    metas.push(SentFrame::Stream {
        id,
        offset: chunk.offset,
        len: chunk.len as u32,
        fin: chunk.fin,
        record: chunk.record,
        open: open.is_some(),
    });
    let new_bytes = if chunk.fresh { chunk.len as u64 } else { 0 };
    let more = st.send.has_pending(u64::MAX) || st.has_outgoing_datagrams();
    if more {
        (StreamTurn::More, new_bytes)
    } else {
        (StreamTurn::Done, new_bytes)
    }
}

/// What happened on one stream's turn in the scheduler.
enum StreamTurn {
    More,
    Done,
    NoRoom,
    CreditBlocked,
    StreamBlocked,
    SessionBlocked,
}

impl Upper for Session {
    type Meta = SentFrame;

    fn has_pending(&self) -> bool {
        self.max_data_queued
            || self.max_streams_urgent()
            || !self.control.is_empty()
            || self
                .scheduler
                .max_priority()
                .is_some_and(|p| self.hold.is_none_or(|(held, _)| p >= held))
    }

    fn write_frames(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        space: usize,
        metas: &mut Vec<SentFrame>,
    ) {
        self.last_active = Some(now);
        let limit = buf.len() + space;
        self.write_control(now, buf, limit, metas);
        while let Some((id, priority)) = self.scheduler.pop() {
            if let Some((held, until)) = self.hold {
                if now >= until {
                    self.hold = None;
                } else if priority < held {
                    // Lower priorities wait for the held writer (see `WRITER_HOLD`).
                    self.scheduler.push_front(id, priority);
                    break;
                }
            }
            let lim = TurnLimits {
                side: self.side,
                peer_max_streams: self.peer_max_streams,
                session_room: self.peer_max_data.saturating_sub(self.data_sent),
            };
            let Some(st) = self.streams.get_mut(&id) else {
                continue;
            };
            let (turn, new_bytes) = write_stream(st, id, &lim, buf, limit, metas);
            self.data_sent += new_bytes;
            st.clear(flag::SCHEDULED);
            let mut stop = false;
            let mut forget = false;
            match turn {
                StreamTurn::More if st.kind == Kind::Datagram => {
                    st.set(flag::SCHEDULED);
                    self.scheduler.push_front(id, st.priority);
                }
                StreamTurn::More => schedule_in(&mut self.scheduler, st, id),
                StreamTurn::NoRoom => {
                    schedule_in(&mut self.scheduler, st, id);
                    stop = true;
                }
                StreamTurn::Done => {
                    if st.has(flag::WRITABLE_WANTED) {
                        st.clear(flag::WRITABLE_WANTED);
                        self.events.push_back(SessionEvent::Writable(id));
                        // Its writer was held back by the unsent bound alone and could write
                        // now: lower priorities wait a moment for it (strict priority
                        // whatever the writer's pace).
                        let buffers_have_room = st.send.buffered() < self.config.send_buffer
                            && self.send_buffered < self.config.session_send_buffer;
                        if buffers_have_room {
                            let held = self.hold.map_or(st.priority, |(p, _)| p.max(st.priority));
                            self.hold = Some((held, now + super::WRITER_HOLD));
                        }
                    }
                    // The last best-effort datagram may leave after everything else was
                    // acknowledged: nothing else would forget the stream then.
                    forget = st.is_done();
                }
                StreamTurn::CreditBlocked => {
                    st.set(flag::CREDIT_BLOCKED);
                    self.credit_blocked.push(id);
                }
                StreamTurn::StreamBlocked => st.set(flag::STREAM_BLOCKED),
                StreamTurn::SessionBlocked => {
                    st.set(flag::SESSION_BLOCKED);
                    // (It may be listed already: a re-send cleared its flag meanwhile.)
                    if !self.session_blocked.contains(&id) {
                        self.session_blocked.push(id);
                    }
                }
            }
            if forget {
                self.remove_done(id);
            }
            if stop || limit.saturating_sub(buf.len()) < 8 {
                break;
            }
        }
    }

    fn handle_frame(&mut self, now: Instant, ty: FrameType, body: &[u8]) -> Result<(), UpperError> {
        self.last_active = Some(now);
        let frame = match StreamLayerFrame::decode(ty, body) {
            Ok(f) => f,
            // A frame type of a later version: skip it (the channel delimits every frame).
            Err(StreamFrameError::UnknownType(_)) => return Ok(()),
            Err(e) => return Err(violation(format!("bad stream-layer frame: {e}"))),
        };
        match frame {
            StreamLayerFrame::Stream(f) => self.on_stream_frame(now, &f)?,
            StreamLayerFrame::ResetStream {
                id,
                code,
                final_size,
            } => {
                if !self.streams.contains_key(&id) {
                    self.reset_unopened(id, code, final_size)?;
                }
                if let Some(st) = self.streams.get_mut(&id) {
                    let fresh = !st.has(flag::RECV_RESET);
                    st.set(flag::RECV_RESET);
                    // Bytes never read, and bytes sent that never arrived, count as consumed:
                    // the peer counted them against the session window.
                    let unread = st.recv.abandon(&mut self.pool);
                    let limit = st.recv_limit;
                    let grew = st
                        .recv
                        .skip_to(final_size, true, limit)
                        .map_err(|e| violation(format!("stream {id}: {e}")))?;
                    if fresh {
                        st.extra().reset_code.get_or_insert(code);
                        self.events.push_back(SessionEvent::Reset { id, code });
                    }
                    self.consumed(unread);
                    self.receive_skipped(grew)?;
                    if fresh {
                        // The application cannot use a half-reset stream: reset ours too.
                        self.reset(id, code).ok();
                    } else {
                        self.forget_if_done(id);
                    }
                }
            }
            StreamLayerFrame::StopSending { id, code } => {
                if let Some(st) = self.streams.get_mut(&id) {
                    st.set(flag::STOP_RECEIVED);
                    if !st.has(flag::SEND_RESET) {
                        // The application never saw a reliable datagram's stream: it hears
                        // of the datagram on the parent.
                        let datagram_of = (st.kind == Kind::Datagram && id.side() == self.side)
                            .then(|| st.parent())
                            .flatten();
                        self.reset(id, code).ok();
                        match datagram_of {
                            Some(parent) => self.datagram_failed(parent, code),
                            None => self.events.push_back(SessionEvent::Reset { id, code }),
                        }
                    }
                }
            }
            StreamLayerFrame::MaxData(m) => {
                if m > self.peer_max_data {
                    self.peer_max_data = m;
                    self.unblock(|s| &mut s.session_blocked, flag::SESSION_BLOCKED);
                }
            }
            StreamLayerFrame::MaxStreamData { id, max } => {
                if let Some(st) = self.streams.get_mut(&id) {
                    if max > st.send_limit {
                        st.send_limit = max;
                        st.clear(flag::STREAM_BLOCKED);
                        self.schedule(id);
                    }
                }
            }
            StreamLayerFrame::MaxStreams(n) => {
                if n > self.peer_max_streams {
                    self.peer_max_streams = n;
                    self.credit_raised();
                }
            }
            StreamLayerFrame::Datagram(f) => {
                let wait = (self.rtt * 4).max(std::time::Duration::from_millis(200));
                let fragment = HeldFragment {
                    stream: f.stream.0,
                    datagram_id: f.datagram_id,
                    total_len: f.total_len,
                    frag_offset: f.frag_offset,
                    deadline: now + wait,
                    data: Vec::new(),
                };
                if self.streams.contains_key(&f.stream) {
                    self.on_fragment(now, &fragment, f.data);
                } else if self.may_open(f.stream) && f.total_len <= self.config.max_datagram_size {
                    // Its OPEN is still on the way (the fragment overtook it): held until
                    // the stream opens (`open_remote`), within a bound.
                    self.unopened.push(HeldFragment {
                        data: f.data.to_vec(),
                        ..fragment
                    });
                } else {
                    self.dgram_stats.unknown_stream_dropped += 1;
                }
            }
        }
        Ok(())
    }

    fn on_acked(&mut self, meta: SentFrame) {
        match meta {
            SentFrame::Stream {
                id,
                offset,
                len,
                fin,
                record,
                open,
            } => {
                if let Some(st) = self.streams.get_mut(&id) {
                    if open {
                        st.set(flag::OPEN_ACKED);
                        st.clear(flag::OPEN_IN_FLIGHT);
                    }
                    let before = st.send.buffered();
                    st.send
                        .on_acked(offset, len as usize, fin, record, &mut self.pool);
                    let released = before.saturating_sub(st.send.buffered());
                    let done = st.is_done();
                    if done {
                        self.remove_done(id);
                    }
                    if released > 0 {
                        self.on_send_released(released);
                    }
                }
            }
            SentFrame::MaxData | SentFrame::MaxStreams | SentFrame::Control(_) => {
                self.control_in_flight = self.control_in_flight.saturating_sub(1);
            }
        }
    }

    fn on_lost(&mut self, meta: SentFrame) {
        match meta {
            SentFrame::Stream {
                id,
                offset,
                len,
                fin,
                record,
                open,
            } => {
                if let Some(st) = self.streams.get_mut(&id) {
                    if open && !st.has(flag::OPEN_ACKED) {
                        st.clear(flag::OPEN_IN_FLIGHT);
                    }
                    if !st.has(flag::SEND_RESET) {
                        st.send.on_lost(offset, len as usize, fin, record);
                        // Re-sends are not flow-controlled: a stream blocked for new data
                        // still sends them (its turn finds out whether it is blocked again).
                        st.clear(flag::STREAM_BLOCKED | flag::SESSION_BLOCKED);
                        self.schedule(id);
                    }
                }
            }
            SentFrame::MaxData => {
                self.control_in_flight = self.control_in_flight.saturating_sub(1);
                self.max_data_queued = true;
            }
            SentFrame::MaxStreams => {
                self.control_in_flight = self.control_in_flight.saturating_sub(1);
                self.max_streams_queued = true;
                // The peer may be short of the credit it announced: re-send it at once.
                self.announced_max_streams = 0;
            }
            SentFrame::Control(ControlMeta(c)) => {
                self.control_in_flight = self.control_in_flight.saturating_sub(1);
                match c {
                    Control::MaxStreamData(id) => self.queue_max_stream_data(id),
                    other => self.control.push_back(other),
                }
            }
        }
    }
}
