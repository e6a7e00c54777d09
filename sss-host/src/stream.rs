//! [`Stream`]: one stream of a session, with tokio's `AsyncRead`/`AsyncWrite`, records,
//! datagrams and substreams.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sss_proto::stream::{LinkStatus, StreamError, StreamId};
use sss_proto::{Eid, Upper};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::error::Error;
use crate::state::{Peer, Shared, State};

/// One stream between this host and a peer: a reliable, ordered byte stream each way, with
/// record boundaries, datagrams and substreams.
///
/// - Bytes: [`AsyncRead`] and [`AsyncWrite`] (so `tokio::io::copy`, `split` and codecs
///   work); `poll_shutdown` finishes the sending direction, `poll_flush` returns at once
///   (written data is already with the driver, which sends it as fast as the network
///   allows). A read never crosses a record boundary.
/// - Records: [`write_record`](Self::write_record), [`read_record`](Self::read_record).
/// - Datagrams: [`send_datagram`](Self::send_datagram) (best-effort or reliable),
///   [`recv_datagram`](Self::recv_datagram).
/// - Substreams: [`open_substream`](Self::open_substream) (no round trip),
///   [`accept_substream`](Self::accept_substream).
///
/// Dropping a stream finishes its sending direction (data written is still delivered) and
/// discards whatever the peer sends until it finishes too; substreams not accepted are
/// refused. [`reset`](Self::reset) abandons the stream instead.
///
/// Methods on one stream may be called from several tasks, but each kind of wait (read,
/// write, datagram, accept) wakes only the last task that waited for it.
pub struct Stream {
    shared: Arc<Shared>,
    peer: Eid,
    id: StreamId,
    /// The peer's session incarnation this stream belongs to.
    epoch: u64,
    link: watch::Receiver<LinkStatus>,
}

/// A record read by [`Stream::read_record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's bytes (at most the `max` asked for).
    pub data: Vec<u8>,
    /// The record was longer than `max`: the rest was discarded.
    pub truncated: bool,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("peer", &self.peer)
            .field("id", &self.id)
            .finish()
    }
}

impl Stream {
    pub(crate) fn new(
        shared: Arc<Shared>,
        peer: Eid,
        id: StreamId,
        epoch: u64,
        link: watch::Receiver<LinkStatus>,
    ) -> Self {
        Self {
            shared,
            peer,
            id,
            epoch,
            link,
        }
    }

    /// The peer's entry, if the host is open and the stream was not reset.
    fn peer<'a>(&self, st: &'a mut State) -> Result<&'a mut Peer, Error> {
        if st.closed {
            return Err(Error::HostClosed);
        }
        let p = st.peers.get_mut(&self.peer).ok_or(Error::PeerRestarted)?;
        if p.epoch != self.epoch {
            return Err(Error::PeerRestarted);
        }
        if let Some(code) = p.streams.get(&self.id).and_then(|s| s.reset) {
            return Err(Error::from_reset(code));
        }
        Ok(p)
    }

    /// Runs `f` on the stream's session under the lock, then wakes the driver.
    fn op<R>(
        &self,
        f: impl FnOnce(&mut sss_proto::stream::Session, StreamId) -> Result<R, StreamError>,
    ) -> Result<R, Error> {
        let mut st = self.shared.lock();
        let p = self.peer(&mut st)?;
        let r = f(&mut p.session, self.id).map_err(Error::from_stream);
        st.wake_driver();
        r
    }

    // ------------------------------------------------------------ identity

    /// The stream's id within its session.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// This host's EID.
    pub fn local_eid(&self) -> Eid {
        self.shared.eid
    }

    /// The peer's EID.
    pub fn remote_eid(&self) -> Eid {
        self.peer
    }

    /// This host's socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Where the peer was last seen (the address its packets come from).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared
            .lock()
            .peers
            .get(&self.peer)
            .and_then(|p| p.addr)
    }

    /// The (service, protocol) of a top-level stream; `None` for substreams.
    pub fn service(&self) -> Option<(String, String)> {
        let st = self.shared.lock();
        let p = st.peers.get(&self.peer)?;
        p.session
            .service(self.id)
            .map(|(s, p)| (s.to_owned(), p.to_owned()))
    }

    /// The state of the link to the peer (shared by every stream of the session): up,
    /// stalled (no acknowledgement for two probe timeouts), or down (no channel; streams
    /// wait for a new one). The receiver sees every change.
    pub fn link_status(&self) -> watch::Receiver<LinkStatus> {
        self.link.clone()
    }

    // ------------------------------------------------------------ sending

    /// Finishes the sending direction: the peer reads to the end, then sees end of stream.
    /// Data written before is still delivered. Idempotent.
    pub fn finish(&self) -> Result<(), Error> {
        match self.op(|s, id| s.finish(id)) {
            Err(Error::Finished) => Ok(()),
            r => r,
        }
    }

    /// Abandons the stream in both directions with an application `code` (the peer's reads
    /// and writes fail with [`Error::Reset`]`(code)`); unsent data is dropped.
    pub fn reset(&self, code: u64) -> Result<(), Error> {
        let mut st = self.shared.lock();
        let p = self.peer(&mut st)?;
        match p.session.reset(self.id, code) {
            Ok(()) | Err(StreamError::UnknownStream) => {}
            Err(e) => return Err(Error::from_stream(e)),
        }
        if let Some(slot) = p.streams.get_mut(&self.id) {
            slot.reset = Some(code);
        }
        st.wake_driver();
        Ok(())
    }

    /// Writes as much of `data` as the stream takes now, without waiting (0 when its send
    /// buffer is full). Before a handshake, e.g. in [`Host::connect_early_with`]'s
    /// `prepare`, what is written this way can ride in the handshake initiation.
    ///
    /// [`Host::connect_early_with`]: crate::Host::connect_early_with
    pub fn try_write(&self, data: &[u8]) -> Result<usize, Error> {
        self.op(|s, id| s.write(id, data))
    }

    /// Writes `data` followed by a record boundary (bytes written before with `write` form
    /// the head of the record). Waits while the send buffer is full, then takes the whole
    /// record at once.
    pub async fn write_record(&mut self, data: &[u8]) -> Result<(), Error> {
        poll_fn(|cx| {
            let mut guard = self.shared.lock();
            let st = &mut *guard;
            let p = self.peer(st)?;
            if p.session.write_capacity(self.id) == 0 && p.session.parent(self.id).is_ok() {
                if let Some(slot) = p.streams.get_mut(&self.id) {
                    slot.write = Some(cx.waker().clone());
                }
                let key = (self.peer, self.id);
                if !st.write_waiters.contains(&key) {
                    st.write_waiters.push(key);
                }
                return Poll::Pending;
            }
            let r = p.session.write_record(self.id, data);
            st.wake_driver();
            Poll::Ready(r.map_err(Error::from_stream))
        })
        .await
    }

    /// Sends a datagram on this stream: best-effort (delivered whole or not at all, never
    /// re-sent; any size up to the session's `max_datagram_size`) or reliable (an ephemeral
    /// substream the peer reads whole from its datagram queue).
    pub fn send_datagram(&self, data: &[u8], reliable: bool) -> Result<(), Error> {
        self.op(|s, id| s.write_datagram(id, data, reliable))
    }

    /// Reliable datagrams sent on this stream that will never be delivered: the peer refused
    /// them (larger than it accepts, when this host could not know its limit yet) or their
    /// stream there was gone. (Datagrams the peer is known to refuse are not sent at all:
    /// [`send_datagram`](Self::send_datagram) fails with [`Error::DatagramTooLargeForPeer`].)
    pub fn failed_datagrams(&self) -> u64 {
        let mut st = self.shared.lock();
        self.peer(&mut st)
            .ok()
            .and_then(|p| p.streams.get(&self.id))
            .map_or(0, |s| s.datagrams_failed)
    }

    /// Sets the send priority (higher first; equal priorities share round robin). Takes
    /// effect with the next packet.
    pub fn set_priority(&self, priority: i32) -> Result<(), Error> {
        match self.op(|s, id| s.set_priority(id, priority)) {
            Err(Error::Finished) => Ok(()),
            r => r,
        }
    }

    /// The send priority.
    pub fn priority(&self) -> Result<i32, Error> {
        self.op(|s, id| s.priority(id))
    }

    // ------------------------------------------------------------ receiving

    /// The next complete record, at most `max` bytes (a longer record is cut and the rest
    /// discarded: [`Record::truncated`]). `None` at the end of the stream.
    pub async fn read_record(&mut self, max: usize) -> Result<Option<Record>, Error> {
        poll_fn(|cx| {
            let mut guard = self.shared.lock();
            let st = &mut *guard;
            let p = self.peer(st)?;
            let r = match p.session.read_record(self.id, max) {
                Ok(Some((data, truncated))) => Ok(Some(Record { data, truncated })),
                Ok(None) => match p.session.at_end(self.id) {
                    Ok(true) | Err(StreamError::UnknownStream) => Ok(None),
                    Ok(false) => {
                        if let Some(slot) = p.streams.get_mut(&self.id) {
                            slot.read = Some(cx.waker().clone());
                        }
                        return Poll::Pending;
                    }
                    Err(e) => Err(Error::from_stream(e)),
                },
                Err(StreamError::UnknownStream) => Ok(None),
                Err(e) => Err(Error::from_stream(e)),
            };
            if p.session.has_pending() {
                st.wake_driver();
            }
            Poll::Ready(r)
        })
        .await
    }

    /// Complete records waiting to be read.
    pub fn pending_records(&self) -> Result<usize, Error> {
        match self.op(|s, id| s.pending_records(id)) {
            Err(Error::Finished) => Ok(0),
            r => r,
        }
    }

    /// The next datagram received on this stream (best-effort or reliable), whole. `None`
    /// once the stream is over (no more can arrive).
    pub async fn recv_datagram(&self) -> Result<Option<Vec<u8>>, Error> {
        poll_fn(|cx| {
            let mut guard = self.shared.lock();
            let p = self.peer(&mut guard)?;
            match p.session.read_datagram(self.id) {
                Ok(Some(d)) => Poll::Ready(Ok(Some(d))),
                Ok(None) => {
                    if let Some(slot) = p.streams.get_mut(&self.id) {
                        slot.datagram = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
                Err(StreamError::UnknownStream) => Poll::Ready(Ok(None)),
                Err(e) => Poll::Ready(Err(Error::from_stream(e))),
            }
        })
        .await
    }

    // ------------------------------------------------------------ substreams

    /// Opens a substream, at once: no round trip; data written to it goes out with its
    /// opening. The peer gets it from [`accept_substream`](Self::accept_substream) on its
    /// side of this stream.
    pub fn open_substream(&self) -> Result<Stream, Error> {
        let mut st = self.shared.lock();
        let p = self.peer(&mut st)?;
        let sub = p
            .session
            .open_substream(self.id)
            .map_err(Error::from_stream)?;
        let _ = p.session.listen(sub, true);
        let stream = st.new_handle(&self.shared, self.peer, sub);
        st.wake_driver();
        stream.ok_or(Error::HostClosed)
    }

    /// Accepts substreams the peer opens on this stream. Streams listen from the start (so
    /// that substreams opened by the peer right away are not refused); this undoes
    /// [`stop_listening`](Self::stop_listening).
    pub fn listen(&self) -> Result<(), Error> {
        self.op(|s, id| s.listen(id, true))
    }

    /// Refuses substreams the peer opens from now on (they are reset with the stream
    /// layer's `REFUSED` code); those already queued can still be accepted.
    pub fn stop_listening(&self) -> Result<(), Error> {
        self.op(|s, id| s.listen(id, false))
    }

    /// The next substream the peer opened on this stream; `None` once the stream is over.
    pub async fn accept_substream(&self) -> Result<Option<Stream>, Error> {
        poll_fn(|cx| {
            let mut guard = self.shared.lock();
            let st = &mut *guard;
            let p = self.peer(st)?;
            let slot = p.streams.entry(self.id).or_default();
            let Some(sub) = slot.subs.pop_front() else {
                if p.session.parent(self.id).is_err() {
                    return Poll::Ready(Ok(None));
                }
                slot.accept = Some(cx.waker().clone());
                return Poll::Pending;
            };
            Poll::Ready(Ok(st.new_handle(&self.shared, self.peer, sub)))
        })
        .await
    }

    // ------------------------------------------------------------ poll helpers

    fn poll_read_inner(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<Result<(), Error>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let p = self.peer(st)?;
        let dst = buf.initialize_unfilled();
        match p.session.read(self.id, dst) {
            Ok(0) => match p.session.at_end(self.id) {
                Ok(true) | Err(StreamError::UnknownStream) => Poll::Ready(Ok(())),
                Ok(false) => {
                    if let Some(slot) = p.streams.get_mut(&self.id) {
                        slot.read = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(Error::from_stream(e))),
            },
            Ok(n) => {
                buf.advance(n);
                if p.session.has_pending() {
                    st.wake_driver();
                }
                Poll::Ready(Ok(()))
            }
            Err(StreamError::UnknownStream) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(Error::from_stream(e))),
        }
    }

    fn poll_write_inner(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<Result<usize, Error>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let p = self.peer(st)?;
        match p.session.write(self.id, data) {
            Ok(0) => {
                if let Some(slot) = p.streams.get_mut(&self.id) {
                    slot.write = Some(cx.waker().clone());
                }
                let key = (self.peer, self.id);
                if !st.write_waiters.contains(&key) {
                    st.write_waiters.push(key);
                }
                Poll::Pending
            }
            Ok(n) => {
                st.wake_driver();
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(Error::from_stream(e))),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_inner(cx, buf).map_err(Into::into)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_inner(cx, buf).map_err(Into::into)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().finish().map_err(Into::into))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.shared
            .lock()
            .drop_stream(self.peer, self.id, self.epoch);
    }
}
