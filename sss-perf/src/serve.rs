//! The server side of the workload, shared by both stacks: accept connections and streams,
//! check every byte against the pattern, answer with a verdict (and response content).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::content::{Direction, Pattern};
use crate::error::{PerfError, Result};
use crate::stack::{Conn, Listener};
use crate::wire::{Header, Kind, Reply, Status, HEADER_LEN};

/// Largest piece read, verified or written at once. Below glibc's mmap threshold (128 KiB) so
/// that per-stream buffers come from the heap, not from a syscall.
pub const CHUNK: usize = 64 * 1024;

/// Serves until the listener closes: one task per connection, one per stream.
pub async fn serve<L: Listener>(listener: L) -> Result<()> {
    while let Some(incoming) = listener.accept().await {
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => serve_connection(conn).await,
                Err(e) => eprintln!("sss-perf server: handshake failed: {e}"),
            }
        });
    }
    Ok(())
}

/// Serves the streams of one connection until it closes.
pub async fn serve_connection<C: Conn>(conn: C) {
    loop {
        match conn.accept_bi().await {
            Ok(Some((send, recv))) => {
                tokio::spawn(async move {
                    if let Err(e) = serve_stream(send, recv).await {
                        eprintln!("sss-perf server: stream failed: {e}");
                    }
                });
            }
            Ok(None) => return,
            Err(e) => {
                eprintln!("sss-perf server: connection ended: {e}");
                return;
            }
        }
    }
}

/// Handles one stream: header, content (verified), reply, response content for requests.
pub async fn serve_stream<S, R>(mut send: S, mut recv: R) -> Result<()>
where
    S: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let mut raw = [0u8; HEADER_LEN];
    recv.read_exact(&mut raw)
        .await
        .map_err(|e| PerfError::io("reading stream header", e))?;
    let header = match Header::decode(&raw) {
        Ok(h) => h,
        Err(e) => {
            let reply = Reply {
                status: Status::BAD_HEADER,
                value: u64::from(raw[0]),
            };
            let _ = send.write_all(&reply.encode()).await;
            let _ = send.shutdown().await;
            return Err(PerfError::Protocol(e.to_string()));
        }
    };
    let len = if header.kind == Kind::PROBE {
        0
    } else {
        header.len
    };
    let pattern = Pattern::new(header.seed, header.stream, Direction::Request);
    let reply = receive_and_verify(&mut recv, &pattern, len).await?;
    if reply.status != Status::OK {
        eprintln!(
            "sss-perf server: REJECTED stream {} (seed {}): status {} value {}",
            header.stream, header.seed, reply.status.0, reply.value
        );
    }
    // Dropping `recv` early (on a rejection) makes quinn send STOP_SENDING, so the client's
    // writes fail fast instead of filling the window.
    drop(recv);
    let write = |e| PerfError::io("writing reply", e);
    if header.kind == Kind::REQUEST && reply.status == Status::OK {
        write_response(&mut send, &reply, header)
            .await
            .map_err(write)?;
    } else {
        send.write_all(&reply.encode()).await.map_err(write)?;
    }
    send.shutdown().await.map_err(write)?;
    if reply.status == Status::OK {
        Ok(())
    } else {
        Err(PerfError::Rejected {
            stream: header.stream,
            status: reply.status,
            value: reply.value,
        })
    }
}

/// Reads to the end of the stream, checking each byte; the verdict is the reply to send.
async fn receive_and_verify<R: AsyncRead + Unpin>(
    recv: &mut R,
    pattern: &Pattern,
    len: u64,
) -> Result<Reply> {
    // Sized to the content so that small requests allocate little; one spare byte lets an
    // over-long stream be seen when `len` is zero.
    let size = usize::try_from(len).unwrap_or(CHUNK).clamp(1, CHUNK);
    let mut buf = vec![0u8; size];
    let mut received = 0u64;
    loop {
        let n = recv
            .read(&mut buf)
            .await
            .map_err(|e| PerfError::io("reading content", e))?;
        if n == 0 {
            let status = if received == len {
                Status::OK
            } else {
                Status::LENGTH
            };
            return Ok(Reply {
                status,
                value: received,
            });
        }
        let end = received.saturating_add(n as u64);
        if end > len {
            return Ok(Reply {
                status: Status::LENGTH,
                value: end,
            });
        }
        if let Err(m) = pattern.verify(received, &buf[..n]) {
            eprintln!(
                "sss-perf server: MISMATCH at offset {}: expected {:#04x}, got {:#04x}",
                m.offset, m.expected, m.got
            );
            return Ok(Reply {
                status: Status::MISMATCH,
                value: m.offset,
            });
        }
        received = end;
    }
}

/// Writes the OK reply followed by `header.len` bytes of response content.
async fn write_response<S: AsyncWrite + Unpin>(
    send: &mut S,
    reply: &Reply,
    header: Header,
) -> std::io::Result<()> {
    let pattern = Pattern::new(header.seed, header.stream, Direction::Response);
    let first = usize::try_from(header.len).unwrap_or(CHUNK).min(CHUNK);
    // The reply and the first piece go in one write so a small response is one packet.
    let mut buf = Vec::with_capacity(crate::wire::REPLY_LEN + first);
    buf.extend_from_slice(&reply.encode());
    buf.resize(crate::wire::REPLY_LEN + first, 0);
    pattern.fill(0, &mut buf[crate::wire::REPLY_LEN..]);
    send.write_all(&buf).await?;
    let mut offset = first as u64;
    while offset < header.len {
        let n = usize::try_from(header.len - offset)
            .unwrap_or(CHUNK)
            .min(CHUNK);
        buf.resize(n, 0);
        pattern.fill(offset, &mut buf);
        send.write_all(&buf).await?;
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `serve_stream` over in-memory pipes with `input` as the client's bytes; returns
    /// the server's result and everything it wrote.
    async fn exchange(input: Vec<u8>) -> (Result<()>, Vec<u8>) {
        let (mut client_send, server_recv) = tokio::io::duplex(1 << 20);
        let (server_send, mut client_recv) = tokio::io::duplex(1 << 20);
        client_send.write_all(&input).await.unwrap();
        drop(client_send);
        let result = serve_stream(server_send, server_recv).await;
        let mut out = Vec::new();
        client_recv.read_to_end(&mut out).await.unwrap();
        (result, out)
    }

    fn upload(kind: Kind, len: u64, content_len: usize) -> Vec<u8> {
        let mut buf = Vec::new();
        Header {
            kind,
            stream: 7,
            seed: 9,
            len,
        }
        .encode(&mut buf);
        let mut content = vec![0; content_len];
        Pattern::new(9, 7, Direction::Request).fill(0, &mut content);
        buf.extend_from_slice(&content);
        buf
    }

    fn reply_of(out: &[u8]) -> Reply {
        Reply::decode(out[..crate::wire::REPLY_LEN].try_into().unwrap())
    }

    #[tokio::test]
    async fn correct_upload_gets_ok_and_the_count() {
        let (result, out) = exchange(upload(Kind::UPLOAD, 200_000, 200_000)).await;
        assert!(result.is_ok());
        assert_eq!(
            out,
            Reply {
                status: Status::OK,
                value: 200_000
            }
            .encode()
        );
    }

    #[tokio::test]
    async fn short_and_long_uploads_get_a_length_error() {
        let (result, out) = exchange(upload(Kind::UPLOAD, 1000, 600)).await;
        assert!(result.is_err());
        assert_eq!(
            reply_of(&out),
            Reply {
                status: Status::LENGTH,
                value: 600
            }
        );
        let (_, out) = exchange(upload(Kind::UPLOAD, 1000, 1001)).await;
        assert_eq!(reply_of(&out).status, Status::LENGTH);
    }

    #[tokio::test]
    async fn a_wrong_byte_gets_its_offset() {
        let mut input = upload(Kind::UPLOAD, 100_000, 100_000);
        input[HEADER_LEN + 77_777] ^= 4;
        let (result, out) = exchange(input).await;
        assert!(matches!(result, Err(PerfError::Rejected { stream: 7, .. })));
        assert_eq!(
            reply_of(&out),
            Reply {
                status: Status::MISMATCH,
                value: 77_777
            }
        );
    }

    #[tokio::test]
    async fn a_request_gets_response_content() {
        let (result, out) = exchange(upload(Kind::REQUEST, 100_000, 100_000)).await;
        assert!(result.is_ok());
        assert_eq!(
            reply_of(&out),
            Reply {
                status: Status::OK,
                value: 100_000
            }
        );
        let body = &out[crate::wire::REPLY_LEN..];
        assert_eq!(body.len(), 100_000);
        assert_eq!(
            Pattern::new(9, 7, Direction::Response).verify(0, body),
            Ok(())
        );
    }

    #[tokio::test]
    async fn garbage_gets_bad_header() {
        let (result, out) = exchange(vec![0xee; 40]).await;
        assert!(matches!(result, Err(PerfError::Protocol(_))));
        assert_eq!(
            reply_of(&out),
            Reply {
                status: Status::BAD_HEADER,
                value: 0xee
            }
        );
    }
}
