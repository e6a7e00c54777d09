//! The error type of the host API and its mapping to `std::io::Error`.

use std::io;

use sss_proto::handshake::RefuseCode;
use sss_proto::stream::{ErrorCode, StreamError};
use sss_proto::{ChannelError, KeyFileError};

/// Why a host, connection or stream operation failed.
///
/// Converts into [`std::io::Error`] (for `AsyncRead`/`AsyncWrite` and the blocking facade)
/// with a fitting [`io::ErrorKind`]; the original `Error` stays available through
/// [`io::Error::get_ref`] / `into_inner` and a downcast.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed (binding, most often).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The key file could not be read or written.
    #[error("key file: {0}")]
    KeyFile(#[from] KeyFileError),
    /// The peer refused the channel in the handshake, e.g. with
    /// [`RefuseCode::UNKNOWN_SERVICE`] when it listens on no such (service, protocol).
    #[error("refused by the peer (code {}): {reason}", code.0)]
    Refused {
        /// The peer's refusal code.
        code: RefuseCode,
        /// The peer's explanation.
        reason: String,
    },
    /// The peer has no listener for the stream's (service, protocol) (the stream was opened
    /// on a channel that already existed, and the peer reset it).
    #[error("the peer has no listener for this service and protocol")]
    UnknownService,
    /// No connection attempt succeeded before the retry policy gave up.
    #[error("connection attempt timed out")]
    TimedOut,
    /// The handshake failed for a reason other than a refusal or a timeout (wrong identity
    /// at that address, no common cipher suite, channel closed at once…).
    #[error("connection failed: {0}")]
    ConnectFailed(ChannelError),
    /// `connect` was given no address and no channel to the peer exists.
    #[error("no address to connect to")]
    NoAddress,
    /// [`Host::reconnect`](crate::Host::reconnect): there is no session with this peer.
    #[error("no session with this peer")]
    NoSession,
    /// A host cannot connect to itself.
    #[error("cannot connect to our own EID")]
    SelfConnect,
    /// Service and protocol names must be 1 to 255 bytes.
    #[error("service and protocol names must be 1 to 255 bytes")]
    BadName,
    /// This host already listens on that (service, protocol).
    #[error("already listening on this service and protocol")]
    AlreadyListening,
    /// The stream was reset, by the peer or locally, with this application code.
    #[error("stream reset with code {0}")]
    Reset(u64),
    /// The stream's session had no channel for longer than the detached timeout; its streams
    /// were reset.
    #[error("link down: no channel to the peer within the detached timeout")]
    LinkDown,
    /// The peer restarted (its session changed): the stream is gone.
    #[error("the peer restarted and lost the stream")]
    PeerRestarted,
    /// The stream's sending direction is finished (after `shutdown`/`finish`).
    #[error("the stream's sending direction is finished")]
    Finished,
    /// The peer asked us to stop sending on this stream.
    #[error("the peer stopped reading the stream")]
    Stopped,
    /// The datagram is larger than the session's `max_datagram_size`.
    #[error("datagram larger than the configured maximum")]
    DatagramTooLarge,
    /// The datagram is larger than the peer accepts (its `max_datagram_size`, learnt in the
    /// handshake, is the value): it could never be delivered, so it was not sent.
    #[error("datagram larger than the peer accepts ({0} bytes)")]
    DatagramTooLargeForPeer(u64),
    /// A record needs at least one byte.
    #[error("empty record")]
    EmptyRecord,
    /// Dialing by EID needs a regserver, and none is configured
    /// ([`HostConfig::regservers`](crate::HostConfig::regservers),
    /// [`Host::add_regserver`](crate::Host::add_regserver)).
    #[error("no regserver configured: cannot look the EID up")]
    NoRegserver,
    /// Every regserver answered, and none of those that could holds a record of the EID
    /// (the peer is not registered, or its record expired).
    #[error("no regserver knows this EID")]
    PeerNotFound,
    /// No regserver answered the lookup within
    /// [`RoutingConfig::lookup_timeout`](crate::RoutingConfig::lookup_timeout).
    #[error("no regserver answered the lookup in time")]
    LookupTimedOut,
    /// The regservers that answered refused the lookup (rate limit, too many lookups
    /// pending), and none found the EID.
    #[error("the regservers refused the lookup")]
    LookupRefused,
    /// [`Host::connect_eid`](crate::Host::connect_eid): no direct path worked and the
    /// regserver refused to relay the channel (spec/routing.md §6): `Full` (no relay slot
    /// free there, or relaying disabled), `NoTarget` (the peer is not registered there),
    /// `NotRegistered` (we are not, from this address).
    #[error("no direct path, and the regserver refused to relay: {0:?}")]
    RelayRefused(sss_routing::wire::ErrorCode),
    /// The host was closed (or its driver ended).
    #[error("the host is closed")]
    HostClosed,
}

impl Error {
    /// The error that a reset with `code` means for the application.
    pub(crate) fn from_reset(code: u64) -> Self {
        match code {
            ErrorCode::UNKNOWN_SERVICE => Self::UnknownService,
            ErrorCode::LINK_DOWN => Self::LinkDown,
            ErrorCode::PEER_RESTARTED => Self::PeerRestarted,
            code => Self::Reset(code),
        }
    }

    /// Maps a stream-layer error (an unknown stream is handled by the callers, who know what
    /// a forgotten stream means for their operation).
    pub(crate) fn from_stream(e: StreamError) -> Self {
        match e {
            StreamError::Reset(code) => Self::from_reset(code),
            StreamError::BadName => Self::BadName,
            StreamError::Finished | StreamError::UnknownStream => Self::Finished,
            StreamError::Stopped => Self::Stopped,
            StreamError::DatagramTooLarge => Self::DatagramTooLarge,
            StreamError::DatagramTooLargeForPeer(max) => Self::DatagramTooLargeForPeer(max),
            StreamError::EmptyRecord => Self::EmptyRecord,
        }
    }

    /// The `std::io::ErrorKind` this error maps to.
    pub fn io_kind(&self) -> io::ErrorKind {
        use io::ErrorKind as K;
        match self {
            Self::Io(e) => e.kind(),
            Self::KeyFile(KeyFileError::Io { source, .. }) => source.kind(),
            Self::KeyFile(_) => K::InvalidData,
            Self::Refused { .. } | Self::UnknownService => K::ConnectionRefused,
            Self::TimedOut => K::TimedOut,
            Self::ConnectFailed(_) => K::ConnectionAborted,
            Self::NoAddress | Self::NoRegserver => K::AddrNotAvailable,
            Self::PeerNotFound => K::NotFound,
            Self::LookupTimedOut => K::TimedOut,
            Self::LookupRefused | Self::RelayRefused(_) => K::ConnectionRefused,
            Self::NoSession => K::NotConnected,
            Self::SelfConnect
            | Self::BadName
            | Self::DatagramTooLarge
            | Self::DatagramTooLargeForPeer(_)
            | Self::EmptyRecord => K::InvalidInput,
            Self::AlreadyListening => K::AddrInUse,
            Self::Reset(_) | Self::PeerRestarted => K::ConnectionReset,
            Self::LinkDown | Self::HostClosed => K::NotConnected,
            Self::Finished | Self::Stopped => K::BrokenPipe,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            e => io::Error::new(e.io_kind(), e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_kinds_are_sensible() {
        use io::ErrorKind as K;
        let cases = [
            (Error::Reset(0x200), K::ConnectionReset),
            (
                Error::from_reset(ErrorCode::PEER_RESTARTED),
                K::ConnectionReset,
            ),
            (Error::from_reset(ErrorCode::LINK_DOWN), K::NotConnected),
            (
                Error::from_reset(ErrorCode::UNKNOWN_SERVICE),
                K::ConnectionRefused,
            ),
            (
                Error::Refused {
                    code: RefuseCode::UNKNOWN_SERVICE,
                    reason: "no".into(),
                },
                K::ConnectionRefused,
            ),
            (Error::TimedOut, K::TimedOut),
            (Error::Finished, K::BrokenPipe),
            (Error::HostClosed, K::NotConnected),
            (Error::BadName, K::InvalidInput),
            (Error::NoRegserver, K::AddrNotAvailable),
            (Error::PeerNotFound, K::NotFound),
            (Error::LookupTimedOut, K::TimedOut),
            (
                Error::RelayRefused(sss_routing::wire::ErrorCode::Full),
                K::ConnectionRefused,
            ),
        ];
        for (e, kind) in cases {
            let shown = e.to_string();
            let io: io::Error = e.into();
            assert_eq!(io.kind(), kind, "{shown}");
            let inner = io.get_ref().and_then(|e| e.downcast_ref::<Error>());
            assert!(inner.is_some(), "the typed error survives: {shown}");
        }
        let raw = io::Error::new(K::AddrInUse, "x");
        assert_eq!(io::Error::from(Error::from(raw)).kind(), K::AddrInUse);
    }

    #[test]
    fn resets_map_to_typed_errors() {
        assert!(matches!(Error::from_reset(7), Error::Reset(7)));
        assert!(matches!(
            Error::from_stream(StreamError::Reset(ErrorCode::LINK_DOWN)),
            Error::LinkDown
        ));
        assert!(matches!(
            Error::from_stream(StreamError::Stopped),
            Error::Stopped
        ));
    }
}
