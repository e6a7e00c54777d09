//! The state of one stream inside a session.

use std::collections::VecDeque;
use std::time::Instant;

use super::datagram::Outgoing;
use super::frames::StreamId;
use super::recv_buf::RecvBuffer;
use super::send_buf::SendBuffer;

/// What a stream is.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub(crate) enum Kind {
    /// A child of the root, opened for a (service, protocol).
    Top,
    /// A substream of `parent`.
    Sub,
    /// A reliable datagram: an ephemeral substream read as one unit from the parent's
    /// datagram queue.
    Datagram,
}

/// Per-stream flags, packed to keep idle streams small.
pub(crate) mod flag {
    /// In the scheduler's queues.
    pub(crate) const SCHEDULED: u16 = 1 << 0;
    /// Refuses incoming substreams (the application called `listen(id, false)`); by default
    /// a stream queues them for `accept_substream`.
    pub(crate) const REFUSING: u16 = 1 << 1;
    /// A MAX_STREAM_DATA update is queued.
    pub(crate) const MAX_DATA_QUEUED: u16 = 1 << 2;
    /// The application was told data is readable and has not read since.
    pub(crate) const READABLE_NOTIFIED: u16 = 1 << 3;
    /// The application was told the receive window is full.
    pub(crate) const BLOCKED_NOTIFIED: u16 = 1 << 4;
    /// We reset our sending direction.
    pub(crate) const SEND_RESET: u16 = 1 << 5;
    /// The peer reset its sending direction.
    pub(crate) const RECV_RESET: u16 = 1 << 6;
    /// The OPEN information reached the peer (a packet carrying it was acknowledged).
    pub(crate) const OPEN_ACKED: u16 = 1 << 7;
    /// The stream was accepted by the application (top-level) or is ours.
    pub(crate) const ACCEPTED: u16 = 1 << 8;
    /// Waits for stream credit from the peer.
    pub(crate) const CREDIT_BLOCKED: u16 = 1 << 9;
    /// Waits for the peer's MAX_STREAM_DATA.
    pub(crate) const STREAM_BLOCKED: u16 = 1 << 10;
    /// Waits for the peer's MAX_DATA.
    pub(crate) const SESSION_BLOCKED: u16 = 1 << 11;
    /// The peer asked us to stop sending.
    pub(crate) const STOP_RECEIVED: u16 = 1 << 12;
    /// Told the application it can write again.
    pub(crate) const WRITABLE_WANTED: u16 = 1 << 13;
    /// A frame carrying the OPEN information is in flight.
    pub(crate) const OPEN_IN_FLIGHT: u16 = 1 << 14;
    /// The application asked for a record and none was complete: a window full of one
    /// incomplete record must grow.
    pub(crate) const WANTS_RECORD: u16 = 1 << 15;
}

/// Rarely used parts of a stream, allocated on first use.
#[derive(Debug, Default)]
pub(crate) struct Extra {
    /// Service and protocol of a top-level stream (sent in OPEN info until acknowledged).
    pub(crate) names: Option<(String, String)>,
    /// Incoming substreams not yet accepted.
    pub(crate) accept_queue: VecDeque<StreamId>,
    /// Complete datagrams (best-effort and reliable) not yet read.
    pub(crate) datagrams: VecDeque<Vec<u8>>,
    /// Best-effort datagrams waiting to be sent.
    pub(crate) outgoing: Option<Outgoing>,
    /// Next id of a best-effort datagram we send on this stream.
    pub(crate) next_datagram_id: u64,
    /// Reset code given by the peer (or by us).
    pub(crate) reset_code: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct StreamState {
    pub(crate) parent: Option<StreamId>,
    pub(crate) kind: Kind,
    pub(crate) flags: u16,
    pub(crate) priority: i32,
    pub(crate) send: SendBuffer,
    pub(crate) recv: RecvBuffer,
    /// The peer's limit on what we may send (absolute offset).
    pub(crate) send_limit: u64,
    /// Our limit on what the peer may send.
    pub(crate) recv_limit: u64,
    /// Size of our receive window (grows with use).
    pub(crate) recv_window: u64,
    /// When the receive window last moved.
    pub(crate) window_moved_at: Option<Instant>,
    pub(crate) extra: Option<Box<Extra>>,
}

impl StreamState {
    pub(crate) fn new(
        parent: Option<StreamId>,
        kind: Kind,
        send_limit: u64,
        recv_window: u64,
    ) -> Self {
        Self {
            parent,
            kind,
            flags: 0,
            priority: 0,
            send: SendBuffer::new(),
            recv: RecvBuffer::new(),
            send_limit,
            recv_limit: recv_window,
            recv_window,
            window_moved_at: None,
            extra: None,
        }
    }

    pub(crate) fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    pub(crate) fn set(&mut self, f: u16) {
        self.flags |= f;
    }

    pub(crate) fn clear(&mut self, f: u16) {
        self.flags &= !f;
    }

    pub(crate) fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    pub(crate) fn reset_code(&self) -> Option<u64> {
        self.extra.as_ref().and_then(|e| e.reset_code)
    }

    /// Whether best-effort datagrams wait to be sent.
    pub(crate) fn has_outgoing_datagrams(&self) -> bool {
        self.extra
            .as_ref()
            .and_then(|e| e.outgoing.as_ref())
            .is_some_and(|o| o.has_pending())
    }

    /// Whether both directions are over: the stream can be forgotten.
    pub(crate) fn is_done(&self) -> bool {
        let send_done = self.has(flag::SEND_RESET) || self.send.is_fully_acked();
        // A reset receiving side is over once the peer's final size is known (its RESET_STREAM
        // or FIN arrived): until then its bytes still count against the session window.
        let recv_done = self.recv.at_end();
        send_done
            && recv_done
            && !self.has_outgoing_datagrams()
            && self
                .extra
                .as_ref()
                .is_none_or(|e| e.accept_queue.is_empty() && e.datagrams.is_empty())
    }
}
