//! The state of one stream inside a session.

use std::collections::VecDeque;

use super::datagram::Outgoing;
use super::frames::StreamId;
use super::recv_buf::RecvBuffer;
use super::send_buf::SendBuffer;

/// What a stream is.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
#[repr(u8)]
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

/// "No parent" in [`StreamState::parent`]: not a valid stream id (ids are below 2^62).
const ROOT: StreamId = StreamId(u64::MAX);

/// Everything a session keeps for one stream. Packed for idle streams: a million open
/// substreams are a million of these (plus the hash table's key and slack), so the size is
/// checked by a test below.
#[derive(Debug)]
pub(crate) struct StreamState {
    /// The parent, or [`ROOT`] for a top-level stream (see [`parent`](Self::parent)).
    parent: StreamId,
    pub(crate) send: SendBuffer,
    pub(crate) recv: RecvBuffer,
    /// The peer's limit on what we may send (absolute offset).
    pub(crate) send_limit: u64,
    /// Our limit on what the peer may send.
    pub(crate) recv_limit: u64,
    pub(crate) extra: Option<Box<Extra>>,
    pub(crate) priority: i32,
    /// Size of our receive window (grows with use), at most [`MAX_WINDOW`].
    recv_window: u32,
    /// When the receive window last moved: the session's microsecond stamp (wrapping, see
    /// `Session::stamp`), 0 if never.
    pub(crate) window_moved_at: u32,
    pub(crate) flags: u16,
    pub(crate) kind: Kind,
}

/// Largest receive window of one stream (larger configured windows are capped to it).
pub(crate) const MAX_WINDOW: u64 = u32::MAX as u64;

impl StreamState {
    pub(crate) fn new(
        parent: Option<StreamId>,
        kind: Kind,
        send_limit: u64,
        recv_window: u64,
    ) -> Self {
        let mut st = Self {
            parent: parent.unwrap_or(ROOT),
            kind,
            flags: 0,
            priority: 0,
            send: SendBuffer::new(),
            recv: RecvBuffer::new(),
            send_limit,
            recv_limit: recv_window,
            recv_window: 0,
            window_moved_at: 0,
            extra: None,
        };
        st.set_recv_window(recv_window);
        st
    }

    /// The parent stream (`None` for a top-level stream).
    pub(crate) fn parent(&self) -> Option<StreamId> {
        (self.parent != ROOT).then_some(self.parent)
    }

    /// Size of our receive window.
    pub(crate) fn recv_window(&self) -> u64 {
        u64::from(self.recv_window)
    }

    /// Sets the receive window (capped at [`MAX_WINDOW`]).
    pub(crate) fn set_recv_window(&mut self, w: u64) {
        self.recv_window = w.min(MAX_WINDOW) as u32;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle streams stay small: the memory goal (BENCHMARKS.md, issue 3) is at most 256 bytes
    /// per idle open stream including the hash table's key and slack.
    #[test]
    fn stream_state_stays_small() {
        assert!(std::mem::size_of::<StreamState>() <= 96);
        assert!(std::mem::size_of::<SendBuffer>() <= 24);
        assert!(std::mem::size_of::<RecvBuffer>() <= 24);
    }

    #[test]
    fn session_stamps_are_microseconds_never_zero_and_wrap() {
        use rand_chacha::rand_core::SeedableRng;
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        let eid = crate::Identity::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1)).eid();
        let mut s = crate::stream::Session::new(Arc::default(), eid, eid, 1);
        let t0 = Instant::now();
        assert_eq!(
            s.stamp(t0),
            1,
            "the first stamp is the origin (0 is kept for never)"
        );
        assert_eq!(s.stamp(t0 + Duration::from_micros(1500)), 1500);
        let wrap = Duration::from_micros(1 << 32);
        assert_eq!(s.stamp(t0 + wrap + Duration::from_micros(7)), 7);
        // Differences across the wrap are still right.
        let a = s.stamp(t0 + wrap - Duration::from_micros(10));
        let b = s.stamp(t0 + wrap + Duration::from_micros(30));
        assert_eq!(b.wrapping_sub(a), 40);
    }

    #[test]
    fn parent_sentinel_and_window_cap() {
        let mut st = StreamState::new(None, Kind::Top, 0, 1 << 40);
        assert_eq!(st.parent(), None);
        assert_eq!(st.recv_window(), MAX_WINDOW);
        assert_eq!(st.recv_limit, 1 << 40);
        st.set_recv_window(1000);
        assert_eq!(st.recv_window(), 1000);
        let st = StreamState::new(Some(StreamId(0)), Kind::Sub, 0, 10);
        assert_eq!(st.parent(), Some(StreamId(0)));
    }
}
