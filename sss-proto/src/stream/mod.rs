//! The stream layer: sessions of hereditary streams over channels (see `spec/streams.md`).
//!
//! A [`Session`] holds every stream between this host and one peer. It is independent of the
//! channel that carries it: it implements [`crate::channel::Upper`], so a channel writes the
//! session's frames into its packets and reports them acknowledged or lost; when the channel
//! dies the session keeps its streams, and a new channel to the same peer resumes them.

pub mod datagram;
pub mod frames;
pub mod pages;
pub mod recv_buf;
pub mod send_buf;

mod scheduler;
mod session;
mod state;
mod wire;

use std::hash::Hasher;
use std::time::Duration;

pub use frames::StreamId;
pub use session::{Attach, Session};
pub use wire::{ControlMeta, SentFrame};

/// How long lower-priority streams wait for a writer: when a stream runs out of bytes to send
/// while its writer, held back by [`SessionConfig::max_unsent`], could write more, streams of
/// lower priority are not served until that writer writes again or this time has passed. A
/// writer paced by `max_unsent` refills its stream only after the driver has run; without the
/// hold, every such gap would go to lower priorities, and a low-priority bulk transfer could
/// take most of the link from a high-priority one.
pub const WRITER_HOLD: std::time::Duration = std::time::Duration::from_millis(1);

/// How often a session whose spare stream pages exceed
/// [`IDLE_SPARE_PAGES`](pages::IDLE_SPARE_PAGES) frees those it did not need during the last
/// interval (see [`PagePool`](pages::PagePool)): an idle session is back to the idle bound
/// within two intervals.
pub const PAGE_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Limits and windows of the stream layer.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Streams the peer may have open at once (credit granted up front and renewed as its
    /// streams end).
    pub initial_max_streams: u64,
    /// Initial receive window of each stream, in bytes.
    pub initial_max_stream_data: u64,
    /// Initial receive window of the whole session, in bytes.
    pub initial_max_data: u64,
    /// Largest receive window a stream may grow to (at most 2^32 - 1 bytes are used, whatever
    /// this says).
    pub max_stream_window: u64,
    /// Largest receive window the session may grow to.
    pub max_session_window: u64,
    /// Bytes a stream buffers for sending before `write` takes fewer than offered.
    pub send_buffer: usize,
    /// Bytes all streams of the session together buffer for sending (written, not yet
    /// acknowledged) before `write` takes fewer than offered (quinn's `send_window`). Records
    /// and reliable datagrams are taken whole whatever this says, but count against it.
    pub session_send_buffer: usize,
    /// Bytes a stream buffers beyond what it has sent (at least once) before `write` takes
    /// fewer than offered, like TCP's `TCP_NOTSENT_LOWAT`: bytes written far ahead of the
    /// network go cold in the CPU caches before they are copied into packets (on loopback a
    /// 16 MiB backlog made that copy a quarter of the sender's time). Once refused, a writer
    /// may write again when the unsent bytes fall below three quarters of this. The send
    /// buffers above still bound the bytes kept for re-sending.
    pub max_unsent: usize,
    /// Largest datagram (best-effort or reliable) accepted for sending or reassembly.
    pub max_datagram_size: u64,
    /// Bytes of incomplete best-effort datagrams held for reassembly (whole session).
    pub datagram_reassembly_limit: usize,
    /// Bytes of best-effort datagrams queued for sending per stream; older ones are dropped
    /// first when it overflows.
    pub outgoing_datagram_limit: usize,
    /// Bytes of best-effort datagram fragments held (whole session) for peer streams whose
    /// OPEN has not arrived yet (datagrams sent at once on a new stream may overtake it):
    /// released to the stream when it opens; the oldest are dropped beyond this.
    pub unopened_datagram_limit: usize,
    /// How long a session without a channel keeps its streams before resetting them with
    /// [`ErrorCode::LINK_DOWN`].
    pub detached_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            initial_max_streams: 1024,
            initial_max_stream_data: 256 * 1024,
            initial_max_data: 1024 * 1024,
            max_stream_window: 16 * 1024 * 1024,
            max_session_window: 64 * 1024 * 1024,
            send_buffer: 4 * 1024 * 1024,
            session_send_buffer: 64 * 1024 * 1024,
            max_unsent: 1024 * 1024,
            max_datagram_size: 1024 * 1024,
            datagram_reassembly_limit: 4 * 1024 * 1024,
            outgoing_datagram_limit: 1024 * 1024,
            unopened_datagram_limit: 128 * 1024,
            detached_timeout: Duration::from_secs(300),
        }
    }
}

/// Datagram counters of a session (since it was created).
#[derive(Debug, Clone, Copy, Default, Eq, PartialEq)]
pub struct DatagramStats {
    /// Datagrams refused by `write_datagram` because they exceed the peer's
    /// `max_datagram_size` ([`StreamError::DatagramTooLargeForPeer`]).
    pub refused_for_peer: u64,
    /// Reliable datagrams that will never be delivered ([`SessionEvent::DatagramFailed`]).
    pub reliable_failed: u64,
    /// Best-effort datagrams queued before the peer's limit was known and dropped unsent
    /// because they exceed it.
    pub best_effort_too_large: u64,
    /// Incoming reliable datagrams refused with [`ErrorCode::DATAGRAM_TOO_LARGE`].
    pub incoming_too_large: u64,
    /// Incoming best-effort datagrams dropped incomplete (a fragment lost or late, the
    /// reassembly buffer full, or malformed).
    pub reassembly_dropped: u64,
    /// Incoming fragments held because their stream's OPEN had not arrived yet.
    pub unopened_held: u64,
    /// Of those, fragments dropped (held too long, evicted by newer ones, or their stream
    /// never opened).
    pub unopened_dropped: u64,
    /// Incoming fragments for streams that do not exist (forgotten already, or beyond the
    /// stream credit), or for a stream not opened yet but of a datagram larger than
    /// `max_datagram_size`: dropped at once.
    pub unknown_stream_dropped: u64,
}

/// The state of the path under a session, shared by all its streams.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub enum LinkStatus {
    /// A channel is established and acknowledges data.
    Up,
    /// First sign of trouble: no acknowledgement for two probe timeouts in a row.
    Stalled,
    /// No channel: the streams wait for a new one (until the detached timeout).
    Down,
}

/// Something the application should know about.
#[derive(Debug, Clone, Eq, PartialEq)]
pub enum SessionEvent {
    /// The peer opened a top-level stream for (`service`, `protocol`).
    IncomingStream {
        /// The new stream.
        id: StreamId,
        /// Requested service.
        service: String,
        /// Requested protocol.
        protocol: String,
    },
    /// A substream of `parent` waits in its accept queue.
    NewSubstream {
        /// The listening stream.
        parent: StreamId,
    },
    /// Data, a record or the end of the stream can be read.
    Readable(StreamId),
    /// The stream's receive window is full: the application should read.
    ReceiveBlocked(StreamId),
    /// The stream can take more data after a `write` took less than offered.
    Writable(StreamId),
    /// The stream was reset (by the peer, or locally by the session) with `code`.
    Reset {
        /// The stream.
        id: StreamId,
        /// Application or [`ErrorCode`] code.
        code: u64,
    },
    /// A datagram waits on the stream.
    Datagram(StreamId),
    /// A reliable datagram sent on `parent` will never be delivered: the peer refused it
    /// (too large for it, or its parent was gone there), or it was found too large for the
    /// peer's `max_datagram_size` once the peer's limit became known. Counted in
    /// [`DatagramStats::reliable_failed`].
    DatagramFailed {
        /// The stream the datagram was sent on.
        parent: StreamId,
        /// Why: [`ErrorCode::DATAGRAM_TOO_LARGE`], [`ErrorCode::NO_PARENT`], or another
        /// reset code.
        code: u64,
    },
    /// The link status changed (applies to every stream of the session).
    Link(LinkStatus),
}

/// Why a stream operation failed.
#[derive(Debug, Clone, Copy, Eq, PartialEq, thiserror::Error)]
pub enum StreamError {
    /// No such stream (never opened, or finished and forgotten).
    #[error("unknown stream")]
    UnknownStream,
    /// The stream was reset with this code (by the peer or locally).
    #[error("stream reset with code {0}")]
    Reset(u64),
    /// Service and protocol names must be 1 to 255 bytes.
    #[error("service and protocol names must be 1 to 255 bytes")]
    BadName,
    /// The sending direction was finished already.
    #[error("the stream's sending direction is finished")]
    Finished,
    /// The peer asked us to stop sending.
    #[error("the peer stopped reading this stream")]
    Stopped,
    /// The datagram exceeds the configured maximum size.
    #[error("datagram larger than the configured maximum")]
    DatagramTooLarge,
    /// The datagram exceeds the largest the peer accepts (its `max_datagram_size`, learnt in
    /// the handshake): it could never be delivered.
    #[error("datagram larger than the peer accepts ({0} bytes)")]
    DatagramTooLargeForPeer(u64),
    /// A record needs at least one byte (written before with `write`, or given).
    #[error("empty record")]
    EmptyRecord,
}

/// Reset codes the stream layer itself uses (see `spec/streams.md`); applications use codes
/// from [`ErrorCode::APPLICATION_MIN`] up.
#[derive(Debug)]
pub struct ErrorCode;

impl ErrorCode {
    /// No error.
    pub const NO_ERROR: u64 = 0;
    /// No listener for the stream's (service, protocol).
    pub const UNKNOWN_SERVICE: u64 = 1;
    /// The parent does not accept substreams.
    pub const REFUSED: u64 = 2;
    /// The substream's parent is unknown (closed and forgotten).
    pub const NO_PARENT: u64 = 3;
    /// The peer restarted: its new session does not know the stream.
    pub const PEER_RESTARTED: u64 = 4;
    /// No channel came back within the detached timeout.
    pub const LINK_DOWN: u64 = 5;
    /// A reliable datagram larger than the receiver's `max_datagram_size`.
    pub const DATAGRAM_TOO_LARGE: u64 = 6;
    /// The first code applications may use.
    pub const APPLICATION_MIN: u64 = 0x100;
}

/// A hasher for stream ids (already unique integers; no need for SipHash).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // Spread the bits: ids are small sequential counters.
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
