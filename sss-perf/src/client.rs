//! The client side of the workload, shared by both stacks: the connect probe, the bulk
//! upload over K concurrent streams and the sequential request/response round trips.
//!
//! Definitions (identical for every stack):
//! - **connect time**: from just before the handshake starts (the socket is already bound)
//!   until the first byte of the server's reply to a probe stream arrives, i.e. handshake +
//!   opening a stream + one application round trip ("connect to first byte"). Each stack
//!   sends the probe as early as it can ([`Dialer::connect_probe`]): SSS inside its handshake
//!   initiation (early data: the client dials by the server's key, so it can encrypt to it
//!   in the first message), which makes the whole a single round trip; quinn once its
//!   handshake is done (QUIC has 0-RTT only when resuming an earlier session, which a first
//!   connection cannot).
//! - **transfer time** (`secs`): from just before the first content byte is written until
//!   the last stream's verification reply has been read.
//! - **round-trip time**: from opening a request's stream until the last byte of its
//!   response (and the end of the stream) has been read and verified.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::content::{Direction, Pattern};
use crate::error::{PerfError, Result};
use crate::serve::CHUNK;
use crate::stack::{Conn, Dialer, Target};
use crate::stats::{RequestsReport, UploadReport};
use crate::wire::{Header, Kind, Reply, Status, HEADER_LEN, REPLY_LEN};

/// A deliberate corruption, to prove that verification catches a wrong byte (test hook and
/// hidden CLI flag `--corrupt STREAM:OFFSET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corruption {
    /// Stream index whose content is altered.
    pub stream: u32,
    /// Offset within that stream's content of the flipped byte.
    pub offset: u64,
}

/// A bulk upload.
#[derive(Debug, Clone, Copy)]
pub struct UploadPlan {
    /// Total content bytes, spread evenly over the streams.
    pub bytes: u64,
    /// Concurrent streams (at least 1).
    pub streams: u32,
    /// Keys the content.
    pub seed: u64,
    /// Flip one byte on the way out.
    pub corrupt: Option<Corruption>,
}

/// Sequential request/response round trips.
#[derive(Debug, Clone, Copy)]
pub struct RequestsPlan {
    /// Round trips (at least 1).
    pub requests: u32,
    /// Bytes in each request and each response.
    pub size: u64,
    /// Keys the content.
    pub seed: u64,
}

/// Connects, measures connect time with a probe, then uploads and verifies.
pub async fn upload<D: Dialer>(
    dialer: &D,
    target: &Target,
    plan: UploadPlan,
) -> Result<UploadReport> {
    if plan.streams == 0 {
        return Err(PerfError::Config("--streams must be at least 1".into()));
    }
    let (conn, connect) = connect_and_probe(dialer, target, plan.seed).await?;
    let per = plan.bytes / u64::from(plan.streams);
    let extra = plan.bytes % u64::from(plan.streams);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for stream in 0..plan.streams {
        let len = per + u64::from(u64::from(stream) < extra);
        let conn = conn.clone();
        tasks.spawn(upload_stream(conn, stream, len, plan.seed, plan.corrupt));
    }
    // The first failure returns, and dropping `tasks` aborts the other streams.
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| PerfError::Protocol(format!("stream task failed: {e}")))??;
    }
    let elapsed = start.elapsed();
    conn.close();
    dialer.shutdown().await;
    Ok(UploadReport::new(
        plan.bytes,
        plan.streams,
        elapsed,
        connect,
    ))
}

/// Connects, then makes `plan.requests` round trips, one at a time, each on a new stream.
pub async fn requests<D: Dialer>(
    dialer: &D,
    target: &Target,
    plan: RequestsPlan,
) -> Result<RequestsReport> {
    if plan.requests == 0 {
        return Err(PerfError::Config("--requests must be at least 1".into()));
    }
    let (conn, _) = connect_and_probe(dialer, target, plan.seed).await?;
    let mut samples = Vec::with_capacity(plan.requests as usize);
    for i in 0..plan.requests {
        let t = Instant::now();
        request(&conn, i, plan.size, plan.seed).await?;
        samples.push(t.elapsed());
    }
    conn.close();
    dialer.shutdown().await;
    Ok(RequestsReport::new(plan.size, &mut samples))
}

/// Handshake plus a probe stream; returns the connection and the connect time.
pub async fn connect_and_probe<D: Dialer>(
    dialer: &D,
    target: &Target,
    seed: u64,
) -> Result<(D::Conn, Duration)> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    Header {
        kind: Kind::PROBE,
        stream: u32::MAX,
        seed,
        len: 0,
    }
    .encode(&mut header);
    let start = Instant::now();
    let (conn, _send, mut recv) = dialer.connect_probe(target, &header).await?;
    let io = |e| PerfError::io("probe", e);
    let mut reply = [0u8; REPLY_LEN];
    recv.read_exact(&mut reply[..1]).await.map_err(io)?;
    let connect = start.elapsed();
    recv.read_exact(&mut reply[1..]).await.map_err(io)?;
    check_reply(u32::MAX, Reply::decode(&reply), 0)?;
    expect_end(&mut recv, u32::MAX).await?;
    Ok((conn, connect))
}

async fn upload_stream<C: Conn>(
    conn: C,
    stream: u32,
    len: u64,
    seed: u64,
    corrupt: Option<Corruption>,
) -> Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let pattern = Pattern::new(seed, stream, Direction::Request);
    let corrupt = corrupt.filter(|c| c.stream == stream).map(|c| c.offset);
    let written = async {
        // One buffer, zeroed once: the header, then content chunks written over each other.
        let mut header = Vec::with_capacity(HEADER_LEN);
        Header {
            kind: Kind::UPLOAD,
            stream,
            seed,
            len,
        }
        .encode(&mut header);
        let mut buf = vec![0; CHUNK];
        buf[..header.len()].copy_from_slice(&header);
        let mut head = header.len();
        let mut offset = 0u64;
        loop {
            let n = usize::try_from(len - offset)
                .unwrap_or(CHUNK)
                .min(CHUNK - head);
            let chunk = &mut buf[..head + n];
            pattern.fill(offset, &mut chunk[head..]);
            if let Some(at) = corrupt.filter(|at| (offset..offset + n as u64).contains(at)) {
                chunk[head + (at - offset) as usize] ^= 0xff;
            }
            send.write_all(chunk).await?;
            offset += n as u64;
            if offset == len {
                break;
            }
            head = 0;
        }
        send.shutdown().await
    }
    .await;
    // Read the verdict even if writing failed: a server that found a bad byte stops the
    // stream, and its reply says why.
    let reply = read_reply(&mut recv).await;
    match (written, reply) {
        (_, Ok(reply)) if reply.status != Status::OK => Err(PerfError::Rejected {
            stream,
            status: reply.status,
            value: reply.value,
        }),
        (Err(e), _) => Err(PerfError::io(format!("writing stream {stream}"), e)),
        (Ok(()), Err(e)) => Err(PerfError::io(
            format!("reading reply on stream {stream}"),
            e,
        )),
        (Ok(()), Ok(reply)) => {
            check_reply(stream, reply, len)?;
            expect_end(&mut recv, stream).await
        }
    }
}

async fn request<C: Conn>(conn: &C, stream: u32, size: u64, seed: u64) -> Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let io = |what: &str, e| PerfError::io(format!("{what} request {stream}"), e);
    let body = usize::try_from(size).map_err(|_| PerfError::Config("--size too large".into()))?;
    let mut buf = Vec::with_capacity(HEADER_LEN + body);
    Header {
        kind: Kind::REQUEST,
        stream,
        seed,
        len: size,
    }
    .encode(&mut buf);
    buf.resize(HEADER_LEN + body, 0);
    Pattern::new(seed, stream, Direction::Request).fill(0, &mut buf[HEADER_LEN..]);
    send.write_all(&buf).await.map_err(|e| io("writing", e))?;
    send.shutdown().await.map_err(|e| io("finishing", e))?;
    let reply = read_reply(&mut recv)
        .await
        .map_err(|e| io("reading reply to", e))?;
    check_reply(stream, reply, size)?;
    // Read the whole response (and its end) and verify it.
    buf.resize(body, 0);
    recv.read_exact(&mut buf)
        .await
        .map_err(|e| io("reading response to", e))?;
    Pattern::new(seed, stream, Direction::Response)
        .verify(0, &buf)
        .map_err(|m| PerfError::ResponseMismatch {
            stream,
            offset: m.offset,
            expected: m.expected,
            got: m.got,
        })?;
    expect_end(&mut recv, stream).await
}

async fn read_reply<R: AsyncRead + Unpin>(recv: &mut R) -> std::io::Result<Reply> {
    let mut raw = [0u8; REPLY_LEN];
    recv.read_exact(&mut raw).await?;
    Ok(Reply::decode(&raw))
}

fn check_reply(stream: u32, reply: Reply, len: u64) -> Result<()> {
    if reply.status != Status::OK {
        return Err(PerfError::Rejected {
            stream,
            status: reply.status,
            value: reply.value,
        });
    }
    if reply.value != len {
        return Err(PerfError::Protocol(format!(
            "server verified {} bytes on stream {stream}, {len} were sent",
            reply.value
        )));
    }
    Ok(())
}

async fn expect_end<R: AsyncRead + Unpin>(recv: &mut R, stream: u32) -> Result<()> {
    let mut extra = [0u8; 1];
    match recv.read(&mut extra).await {
        Ok(0) => Ok(()),
        Ok(_) => Err(PerfError::Protocol(format!(
            "extra bytes after the reply on stream {stream}"
        ))),
        Err(e) => Err(PerfError::io(format!("reading end of stream {stream}"), e)),
    }
}
