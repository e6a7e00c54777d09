//! The sending side: a file's header, body and the receiver's verdict on a substream.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ring::digest::{Context, SHA256};
use sss_host::Stream;
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::proto::{self, Code, Header, Verdict, FLAG_RESUME, MAX_VERDICT_RECORD};

/// Bytes read from the file and written to the stream at a time.
const CHUNK: usize = 256 * 1024;

/// A file ready to go: its name, size and SHA-256 (computed by [`prepare`]).
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    /// Where it is read from.
    pub(crate) path: PathBuf,
    /// The header announcing it.
    pub(crate) header: Header,
}

/// What became of a file sent.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    /// Its name.
    pub(crate) name: String,
    /// The receiver's verdict.
    pub(crate) verdict: Verdict,
    /// Body bytes sent on this substream (less than the size when resumed or refused).
    pub(crate) sent: u64,
    /// Where the body started (what the receiver had already).
    pub(crate) offset: u64,
    /// From opening the substream to the verdict.
    pub(crate) elapsed: Duration,
}

/// Reads `path` once to hash it (streaming: memory is one buffer), and names it by its
/// file name.
pub(crate) async fn prepare(path: &Path, resume: bool) -> io::Result<Outgoing> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other(format!("{}: no usable file name", path.display())))?
        .to_owned();
    let mut file = File::open(path)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if !file.metadata().await?.is_file() {
        return Err(io::Error::other(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    let mut hash = Context::new(&SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as u64;
    }
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(hash.finish().as_ref());
    Ok(Outgoing {
        path: path.to_owned(),
        header: Header {
            name,
            size,
            sha256,
            flags: if resume { FLAG_RESUME } else { 0 },
        },
    })
}

/// Sends `file` on `sub` (a fresh substream of the session) and waits for the verdict.
/// `progress` is called with each chunk's length. Fails if the stream fails or the file
/// changed since [`prepare`]; a refusal is a verdict, not an error.
pub(crate) async fn send(
    mut sub: Stream,
    file: &Outgoing,
    mut progress: impl FnMut(u64),
) -> io::Result<Sent> {
    let start = Instant::now();
    let header = &file.header;
    sub.write_record(&header.encode()).await?;
    let mut offset = 0;
    if header.flags & FLAG_RESUME != 0 {
        let record = sub
            .read_record(MAX_VERDICT_RECORD)
            .await?
            .ok_or_else(|| io::Error::other("the receiver closed the stream"))?;
        match proto::decode_offset(&record.data) {
            Some(o) if o <= header.size => offset = o,
            Some(o) => {
                return Err(io::Error::other(format!(
                    "the receiver asked for offset {o}"
                )))
            }
            // Refused before the body (a name, a size): that is the verdict.
            None => return finish(sub, file, 0, 0, start, Some(record.data)).await,
        }
    }
    let mut body = File::open(&file.path).await?;
    body.seek(io::SeekFrom::Start(offset)).await?;
    let mut left = header.size - offset;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        // A record waiting means the receiver gave its verdict early (a refusal): stop.
        if sub.pending_records()? > 0 {
            break;
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = body.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(io::Error::other(format!(
                "{}: the file shrank while it was being sent",
                file.path.display()
            )));
        }
        sub.write_all(&buf[..n]).await?;
        left -= n as u64;
        progress(n as u64);
    }
    sub.finish()?;
    let sent = header.size - offset - left;
    finish(sub, file, sent, offset, start, None).await
}

/// Reads the verdict (unless it is already in hand).
async fn finish(
    mut sub: Stream,
    file: &Outgoing,
    sent: u64,
    offset: u64,
    start: Instant,
    record: Option<Vec<u8>>,
) -> io::Result<Sent> {
    let record = match record {
        Some(r) => r,
        None => {
            sub.read_record(MAX_VERDICT_RECORD)
                .await?
                .ok_or_else(|| {
                    io::Error::other("the receiver closed the stream without a verdict")
                })?
                .data
        }
    };
    let verdict = Verdict::decode(&record)
        .ok_or_else(|| io::Error::other("the receiver's verdict is malformed"))?;
    // The receiver has nothing more to say; drop the stream.
    drop(sub);
    Ok(Sent {
        name: file.header.name.clone(),
        verdict,
        sent,
        offset,
        elapsed: start.elapsed(),
    })
}

impl Sent {
    /// The file arrived and was verified.
    pub(crate) fn ok(&self) -> bool {
        self.verdict.code == Code::OK
    }
}
