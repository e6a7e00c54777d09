//! Helpers shared by the host tests: hosts on loopback, seeded content and a verifying sink.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use sss_host::{Host, HostConfig};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A host on 127.0.0.1 with an ephemeral port.
pub(crate) fn host() -> Host {
    host_with(HostConfig::bind(loopback()))
}

/// A host with `config`.
pub(crate) fn host_with(config: HostConfig) -> Host {
    Host::new(config).expect("host")
}

/// `127.0.0.1:0`.
pub(crate) fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Seeded pseudo-random bytes (xorshift64*), reproducible from any offset's chunk start.
pub(crate) struct Pattern {
    state: u64,
}

impl Pattern {
    /// The generator for `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// Fills `buf` with the next bytes (8 per step: keep chunks multiples of 8).
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.state;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.state = x;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// The first `len` bytes of the pattern.
    pub(crate) fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        Self::new(seed).fill(&mut v);
        v
    }
}

/// Writes `len` bytes of `Pattern(seed)` in chunks of 64 KiB (chunk sizes multiple of 8 so
/// the pattern continues across chunks).
pub(crate) async fn write_pattern<W: AsyncWrite + Unpin>(w: &mut W, seed: u64, len: usize) {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        p.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await.expect("write");
        left -= n;
    }
}

/// An `AsyncWrite` that checks every byte against `Pattern(seed)`.
pub(crate) struct Verifier {
    pattern: Pattern,
    /// Expected bytes not yet compared (the generator produces 8 at a time).
    expected: Vec<u8>,
    /// Bytes checked so far.
    pub(crate) checked: u64,
}

impl Verifier {
    /// A sink expecting `Pattern::new(seed)`.
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            pattern: Pattern::new(seed),
            expected: Vec::new(),
            checked: 0,
        }
    }

    fn check(&mut self, data: &[u8]) -> io::Result<()> {
        let mut data = data;
        while !data.is_empty() {
            if self.expected.is_empty() {
                // Blocks of 64 KiB, matching `write_pattern`'s chunking.
                self.expected = vec![0; 64 * 1024];
                self.pattern.fill(&mut self.expected);
                self.expected.reverse();
            }
            let n = data.len().min(self.expected.len());
            for &b in &data[..n] {
                let want = self.expected.pop().expect("refilled");
                if b != want {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("byte {} differs: got {b}, want {want}", self.checked),
                    ));
                }
                self.checked += 1;
            }
            data = &data[n..];
        }
        Ok(())
    }
}

impl AsyncWrite for Verifier {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        Poll::Ready(this.check(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Fails the test if `f` takes longer than `secs`.
pub(crate) async fn within<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("took too long")
}

pub(crate) mod regserver;
