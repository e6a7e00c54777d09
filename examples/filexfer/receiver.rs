//! The receiving side: one substream in, one verified file out (or a refusal).
//!
//! Everything a sender says is untrusted. The name must pass [`check_name`]; the body goes to
//! a partial file `.NAME.sss-part` in the directory (created exclusively, never following a
//! symlink), hashed as it is written, and counted against the announced size: one byte too
//! many stops the transfer at once, too few or a different SHA-256 refuses it at the end.
//! Only a verified file gets its final name, and never over an existing file unless the
//! receiver was started with `--overwrite`. Memory per file is one read buffer.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::digest::{Context, SHA256};
use sss_host::Stream;
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::proto::{
    self, Code, Header, Refusal, Verdict, FLAG_RESUME, MAX_HEADER_RECORD, PART_SUFFIX,
};

/// Bytes read from the stream and written to the file at a time.
const CHUNK: usize = 256 * 1024;
/// How long a new substream may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a body may go without a byte before the transfer is given up (a sender that
/// trickles cannot hold a slot for ever).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Files received at once, all senders together: each holds a read buffer and an open file;
/// more wait (each only a stream handle: the stream layer's credit bounds how many).
pub(crate) const MAX_CONCURRENT_FILES: usize = 64;

/// Where and how files are received; shared by all transfers of a receiver.
#[derive(Debug)]
pub(crate) struct Inbox {
    dir: PathBuf,
    overwrite: bool,
    max_size: u64,
    /// Names being received right now (a second transfer of the same name is refused).
    busy: Mutex<HashSet<String>>,
    /// [`MAX_CONCURRENT_FILES`] permits.
    slots: Semaphore,
}

/// A file received and verified.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// Its name in the directory.
    pub(crate) name: String,
    /// Its size.
    pub(crate) size: u64,
    /// Bytes that were already there from an interrupted transfer (resume).
    pub(crate) resumed_from: u64,
    /// From the header to the verdict.
    pub(crate) elapsed: Duration,
}

/// Why a file was not received.
#[derive(Debug)]
pub(crate) enum ReceiveError {
    /// Refused, and the sender was told why.
    Refused {
        /// The name as announced, if the header could be read.
        name: Option<String>,
        /// Why.
        refusal: Refusal,
    },
    /// The stream failed (reset by the sender, link lost): nobody to tell.
    Stream {
        /// The name as announced, if the header could be read.
        name: Option<String>,
        /// What failed.
        error: io::Error,
    },
}

impl std::fmt::Display for ReceiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, what): (&Option<String>, &dyn std::fmt::Display) = match self {
            Self::Refused { name, refusal } => (name, refusal),
            Self::Stream { name, error } => (name, error),
        };
        match name {
            Some(name) => write!(f, "{name:?}: {what}"),
            None => write!(f, "{what}"),
        }
    }
}

impl Inbox {
    /// Receives into `dir` (which must exist), refusing files larger than `max_size`.
    pub(crate) fn new(dir: impl Into<PathBuf>, overwrite: bool, max_size: u64) -> Arc<Self> {
        Arc::new(Self {
            dir: dir.into(),
            overwrite,
            max_size,
            busy: Mutex::new(HashSet::new()),
            slots: Semaphore::new(MAX_CONCURRENT_FILES),
        })
    }

    /// Receives the file on `sub`, checks it, stores it and tells the sender the verdict.
    /// `progress` is called with each chunk's length.
    pub(crate) async fn receive(
        &self,
        mut sub: Stream,
        progress: impl FnMut(u64),
    ) -> Result<Received, ReceiveError> {
        let Ok(_slot) = self.slots.acquire().await else {
            return Err(ReceiveError::Stream {
                name: None,
                error: io::Error::other("the receiver is shutting down"),
            });
        };
        let start = Instant::now();
        let header = match read_header(&mut sub).await {
            Ok(h) => h,
            Err(Failure::Refused(refusal)) => {
                return Err(refuse(sub, None, refusal, 0).await);
            }
            Err(Failure::Stream(error)) => return Err(ReceiveError::Stream { name: None, error }),
        };
        let name = header.name.clone();
        if header.size > self.max_size {
            let refusal = Refusal::new(
                Code::TOO_LARGE,
                format!(
                    "{} bytes announced, this receiver takes at most {}",
                    header.size, self.max_size
                ),
            );
            return Err(refuse(sub, Some(name), refusal, 0).await);
        }
        if !self
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone())
        {
            let refusal = Refusal::new(Code::BUSY, "a file of that name is being received now");
            return Err(refuse(sub, Some(name), refusal, 0).await);
        }
        let mut job = Job {
            inbox: self,
            header: &header,
            part: self.dir.join(format!(".{name}{PART_SUFFIX}")),
            target: self.dir.join(&name),
            received: 0,
            resumed_from: 0,
        };
        let outcome = job.run(&mut sub, progress).await;
        let received = job.received;
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name);
        match outcome {
            Ok(()) => {
                let verdict = Verdict {
                    code: Code::OK,
                    bytes: received,
                    message: String::new(),
                };
                // The file is stored: a sender that is gone by now changes nothing.
                let _ = sub.write_record(&verdict.encode()).await;
                let _ = sub.finish();
                Ok(Received {
                    name,
                    size: header.size,
                    resumed_from: job.resumed_from,
                    elapsed: start.elapsed(),
                })
            }
            Err(Failure::Refused(refusal)) => Err(refuse(sub, Some(name), refusal, received).await),
            Err(Failure::Stream(error)) => Err(ReceiveError::Stream {
                name: Some(name),
                error,
            }),
        }
    }
}

/// One transfer in progress.
struct Job<'a> {
    inbox: &'a Inbox,
    header: &'a Header,
    part: PathBuf,
    target: PathBuf,
    /// Body bytes in the partial file.
    received: u64,
    resumed_from: u64,
}

enum Failure {
    Refused(Refusal),
    Stream(io::Error),
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Self::Refused(r)
    }
}

impl Job<'_> {
    async fn run(&mut self, sub: &mut Stream, progress: impl FnMut(u64)) -> Result<(), Failure> {
        if !self.inbox.overwrite && exists(&self.target).await {
            return Err(Refusal::new(
                Code::EXISTS,
                "a file of that name exists (the receiver runs without --overwrite)",
            )
            .into());
        }
        let resume = self.header.flags & FLAG_RESUME != 0;
        let (file, hash) = self.open_part(resume).await?;
        if resume {
            sub.write_record(&proto::encode_offset(self.received))
                .await
                .map_err(|e| Failure::Stream(e.into()))?;
        }
        let result = self.receive_body(sub, file, hash, progress).await;
        // A resumable transfer keeps what it has when the body fell short or the stream
        // broke; anything else leaves no trace.
        let keep = resume
            && match &result {
                Err(Failure::Stream(_)) => true,
                Err(Failure::Refused(r)) => r.code == Code::TOO_FEW_BYTES,
                Ok(()) => false,
            };
        if result.is_err() && !keep {
            let _ = tokio::fs::remove_file(&self.part).await;
        }
        result
    }

    /// Opens the partial file: a new one, or (resuming) the one left by an interrupted
    /// transfer, whose bytes are hashed again.
    async fn open_part(&mut self, resume: bool) -> Result<(File, Context), Failure> {
        let io_error = |what: &str, e: io::Error| {
            Failure::Refused(Refusal::new(Code::IO, format!("{what}: {e}")))
        };
        let mut hash = Context::new(&SHA256);
        if resume {
            // O_NOFOLLOW semantics come from the check: a partial file must be a plain file.
            if let Ok(meta) = tokio::fs::symlink_metadata(&self.part).await {
                if meta.is_file() && meta.len() <= self.header.size {
                    let mut file = OpenOptions::new()
                        .read(true)
                        .append(true)
                        .open(&self.part)
                        .await
                        .map_err(|e| io_error("reopening the partial file", e))?;
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        let n = file
                            .read(&mut buf)
                            .await
                            .map_err(|e| io_error("reading the partial file", e))?;
                        if n == 0 {
                            break;
                        }
                        hash.update(&buf[..n]);
                        self.received += n as u64;
                    }
                    self.resumed_from = self.received;
                    return Ok((file, hash));
                }
                // Not ours to reuse (too long, or not a plain file): start over.
                tokio::fs::remove_file(&self.part)
                    .await
                    .map_err(|e| io_error("removing a stale partial file", e))?;
            }
        }
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.part)
            .await
        {
            Ok(file) => Ok((file, hash)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Refusal::new(
                Code::BUSY,
                format!(
                    "a partial file {:?} is in the way (an interrupted transfer: resend with \
                     --resume, or remove it)",
                    self.part.file_name().unwrap_or_default()
                ),
            )
            .into()),
            Err(e) => Err(io_error("creating the partial file", e)),
        }
    }

    async fn receive_body(
        &mut self,
        sub: &mut Stream,
        mut file: File,
        mut hash: Context,
        mut progress: impl FnMut(u64),
    ) -> Result<(), Failure> {
        let size = self.header.size;
        let io_error =
            |e: io::Error| Failure::Refused(Refusal::new(Code::IO, format!("writing: {e}")));
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match tokio::time::timeout(IDLE_TIMEOUT, sub.read(&mut buf)).await {
                Ok(read) => read.map_err(Failure::Stream)?,
                Err(_) => {
                    return Err(Failure::Stream(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no data for 60 s",
                    )))
                }
            };
            if n == 0 {
                break;
            }
            if self.received + n as u64 > size {
                return Err(Refusal::new(
                    Code::TOO_MANY_BYTES,
                    format!("more than the {size} bytes announced arrived"),
                )
                .into());
            }
            hash.update(&buf[..n]);
            file.write_all(&buf[..n]).await.map_err(io_error)?;
            self.received += n as u64;
            progress(n as u64);
        }
        if self.received < size {
            return Err(Refusal::new(
                Code::TOO_FEW_BYTES,
                format!(
                    "the body ended after {} of the {size} bytes announced",
                    self.received
                ),
            )
            .into());
        }
        if hash.finish().as_ref() != self.header.sha256 {
            return Err(Refusal::new(
                Code::HASH_MISMATCH,
                "the body's SHA-256 differs from the header's",
            )
            .into());
        }
        file.flush().await.map_err(io_error)?;
        file.sync_all().await.map_err(io_error)?;
        drop(file);
        self.publish().await
    }

    /// Gives the verified partial file its name: never over an existing file unless
    /// overwriting (a hard link fails if the name exists, atomically).
    async fn publish(&self) -> Result<(), Failure> {
        let io_error = |e: io::Error| {
            Failure::Refused(Refusal::new(Code::IO, format!("storing the file: {e}")))
        };
        if self.inbox.overwrite {
            tokio::fs::rename(&self.part, &self.target)
                .await
                .map_err(io_error)?;
            return Ok(());
        }
        match tokio::fs::hard_link(&self.part, &self.target).await {
            Ok(()) => {
                tokio::fs::remove_file(&self.part).await.map_err(io_error)?;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let _ = tokio::fs::remove_file(&self.part).await;
                Err(Refusal::new(
                    Code::EXISTS,
                    "a file of that name appeared during the transfer (not overwritten)",
                )
                .into())
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&self.part).await;
                Err(io_error(e))
            }
        }
    }
}

/// Reads and checks the header record.
async fn read_header(sub: &mut Stream) -> Result<Header, Failure> {
    let record = match tokio::time::timeout(HEADER_TIMEOUT, sub.read_record(MAX_HEADER_RECORD))
        .await
    {
        Err(_) => {
            return Err(Refusal::new(Code::BAD_HEADER, "no header within 30 s").into());
        }
        Ok(Err(e)) => return Err(Failure::Stream(e.into())),
        Ok(Ok(None)) => {
            return Err(Refusal::new(Code::BAD_HEADER, "the stream ended before a header").into())
        }
        Ok(Ok(Some(r))) => r,
    };
    if record.truncated {
        return Err(Refusal::new(
            Code::BAD_HEADER,
            format!("header record longer than {MAX_HEADER_RECORD} bytes"),
        )
        .into());
    }
    Ok(Header::decode(&record.data)?)
}

/// Tells the sender why (best effort), finishes and drops the substream: whatever else the
/// sender sends on it is discarded.
async fn refuse(
    mut sub: Stream,
    name: Option<String>,
    refusal: Refusal,
    bytes: u64,
) -> ReceiveError {
    let verdict = Verdict {
        code: refusal.code,
        bytes,
        message: refusal.message.clone(),
    };
    let _ = sub.write_record(&verdict.encode()).await;
    let _ = sub.finish();
    ReceiveError::Refused { name, refusal }
}

async fn exists(path: &Path) -> bool {
    tokio::fs::symlink_metadata(path).await.is_ok()
}
