//! The SSS stack: a placeholder until `sss-host` exists.
//!
//! The types are uninhabited and `bind` fails with [`PerfError::NotImplemented`], so the CLI,
//! the runner and the dispatch in `run.rs` are already written against them. To plug SSS in,
//! replace this file with types implementing the same traits over `sss-host`:
//!
//! ```text
//! impl SssListener { pub fn bind(addr: SocketAddr, key_file: Option<&Path>, tuning: &Tuning) -> Result<Self> }
//! impl Listener for SssListener { type Conn = SssConn; identity() = the host's EID text; .. }
//! impl SssDialer { pub fn bind(target: &Target, tuning: &Tuning) -> Result<Self> }  // target.eid: Eid text
//! impl Dialer for SssDialer { connect(target) = handshake done; shutdown() = close sent }
//! impl Conn for SssConn { type Send: AsyncWrite; type Recv: AsyncRead;
//!     open_bi() = a fresh substream; accept_bi() = Ok(None) once the peer closed; close() }
//! ```
//!
//! `bind` may be synchronous or not, but must be called inside the tokio runtime.

use std::net::SocketAddr;
use std::path::Path;

use crate::error::{PerfError, Result};
use crate::stack::{Conn, Dialer, Listener, Target};
use crate::tuning::Tuning;

/// Why `--stack sss` fails for now.
pub const NOT_YET: &str = "sss-host is being built";

/// An SSS listening host (not available yet).
#[derive(Debug)]
pub enum SssListener {}

/// An SSS client host (not available yet).
#[derive(Debug)]
pub enum SssDialer {}

/// An SSS connection (not available yet).
#[derive(Debug, Clone)]
pub enum SssConn {}

impl SssListener {
    /// Would bind an SSS host on `addr` with the identity in `key_file`.
    pub fn bind(_addr: SocketAddr, _key_file: Option<&Path>, _tuning: &Tuning) -> Result<Self> {
        Err(PerfError::NotImplemented(NOT_YET))
    }
}

impl SssDialer {
    /// Would bind an SSS client host ready to reach `target`.
    pub fn bind(_target: &Target, _tuning: &Tuning) -> Result<Self> {
        Err(PerfError::NotImplemented(NOT_YET))
    }
}

impl Listener for SssListener {
    type Conn = SssConn;
    type Incoming = std::future::Ready<Result<SssConn>>;

    fn identity(&self) -> String {
        match *self {}
    }

    fn local_addr(&self) -> Result<SocketAddr> {
        match *self {}
    }

    async fn accept(&self) -> Option<Self::Incoming> {
        match *self {}
    }
}

impl Dialer for SssDialer {
    type Conn = SssConn;

    async fn connect(&self, _target: &Target) -> Result<SssConn> {
        match *self {}
    }

    async fn shutdown(&self) {
        match *self {}
    }
}

impl Conn for SssConn {
    type Send = tokio::io::Sink;
    type Recv = tokio::io::Empty;

    async fn open_bi(&self) -> Result<(Self::Send, Self::Recv)> {
        match *self {}
    }

    async fn accept_bi(&self) -> Result<Option<(Self::Send, Self::Recv)>> {
        match *self {}
    }

    fn close(&self) {
        match *self {}
    }
}
