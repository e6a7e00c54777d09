//! The harness's error type. A failed check must end the client with a non-zero exit code,
//! so every failure, from a socket error to one wrong byte, becomes a [`PerfError`].

use std::io;

use thiserror::Error;

use crate::wire::Status;

/// Why a run failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PerfError {
    /// The requested stack exists in the CLI but is not built yet.
    #[error("not yet implemented: {0}")]
    NotImplemented(&'static str),
    /// Bad command-line or configuration values.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A socket, stream or connection error from the stack under test.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The server found content that is not what the pattern says (or the wrong length).
    #[error("server rejected stream {stream}: status {} ({}), value {value}", status.0, status_name(*status))]
    Rejected {
        /// Stream index.
        stream: u32,
        /// The server's verdict.
        status: Status,
        /// Offset of the bad byte, or bytes received.
        value: u64,
    },
    /// Content received by the client (a response) differs from the pattern.
    #[error("response on stream {stream} differs at offset {offset}: expected {expected:#04x}, got {got:#04x}")]
    ResponseMismatch {
        /// Stream index.
        stream: u32,
        /// Offset within the response content.
        offset: u64,
        /// Byte the pattern has there.
        expected: u8,
        /// Byte that arrived.
        got: u8,
    },
    /// The peer broke the workload protocol (short reply, extra bytes, wrong count).
    #[error("protocol violation: {0}")]
    Protocol(String),
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::OK => "ok",
        Status::MISMATCH => "content mismatch",
        Status::LENGTH => "wrong length",
        Status::BAD_HEADER => "bad header",
        _ => "unknown",
    }
}

impl PerfError {
    /// Wraps an I/O error with what the harness was doing.
    pub fn io(context: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Self::Io {
            context: context.into(),
            source: source.into(),
        }
    }

    /// The process exit code for this error: 2 for an unbuilt stack or bad usage, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotImplemented(_) | Self::Config(_) => 2,
            _ => 1,
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = PerfError> = std::result::Result<T, E>;
