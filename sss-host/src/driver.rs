//! The driver: the one task that owns the socket and runs the protocol for every channel of
//! the host.
//!
//! Each poll it receives what the socket holds (GRO batches through [`RecvBatch`]), runs the
//! due timers, lets the channels build packets and sends them as GSO batches, then sleeps
//! until the socket is readable, a timer is due, or a handle wakes it (handles store nothing
//! but call [`State::wake_driver`] after changing a session). Everything happens under the
//! state lock, so handles see a consistent state; the tasks to wake are woken after the lock
//! is released.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use sss_proto::Transmit;

use crate::routing::is_relay_addr;
use crate::state::{Shared, State};
use crate::udp::{RecvBatch, UdpSocket, DEFAULT_BUFFER_SIZE, GSO_MAX_BYTES};

/// Receive calls per round before the driver turns to sending (acknowledgements should not
/// wait behind a long receive burst).
const RECV_CALLS_PER_ROUND: usize = 8;
/// Bytes received per poll before the driver yields, so that the tasks reading the streams
/// run while what arrived is still in the cache (the data is copied twice more: into the
/// stream's buffer, then out to the reader). Without a bound one poll could drain a 16 MiB
/// socket buffer into stream buffers before any reader ran (quinn bounds its receive loop by
/// time, 50 µs, for the same reason). Measured on loopback: ~15 % less receiver CPU per byte.
const RECV_BYTES_PER_POLL: usize = 512 << 10;
/// Buffers per `recvmmsg`: up to 512 KiB of GRO batches, the same bound.
const RECV_BUFFERS: usize = 8;
/// Batches sent per round before the driver turns to receiving again.
const SEND_BATCHES_PER_ROUND: usize = 32;
/// Batches one channel sends before the next channel's turn.
const BURST: usize = 4;
/// Rounds per poll before the driver yields to other tasks.
const ROUNDS_PER_POLL: usize = 16;

/// The driver future; spawned by [`Host`](crate::Host) construction.
pub(crate) struct Driver {
    shared: Arc<Shared>,
    socket: UdpSocket,
    recv: RecvBatch,
    /// The batch being sent; `pending` says whether it is still (partly) unsent.
    buf: Vec<u8>,
    pending: Option<Transmit>,
    timer: Pin<Box<tokio::time::Sleep>>,
    timer_at: Option<Instant>,
    /// Round-robin start among channels.
    next_channel: usize,
    handles: Vec<sss_proto::ChannelHandle>,
}

impl Driver {
    pub(crate) fn new(shared: Arc<Shared>, socket: UdpSocket) -> Self {
        Self {
            shared,
            socket,
            recv: RecvBatch::with_buffers(RECV_BUFFERS, DEFAULT_BUFFER_SIZE),
            buf: Vec::with_capacity(GSO_MAX_BYTES),
            pending: None,
            timer: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            timer_at: None,
            next_channel: 0,
            handles: Vec::new(),
        }
    }

    /// Receives what the socket holds, stopping early once `budget` bytes have arrived;
    /// returns whether anything arrived, and the bytes received.
    fn receive(
        &mut self,
        cx: &mut Context<'_>,
        st: &mut State,
        now: Instant,
        budget: usize,
    ) -> (bool, usize) {
        let mut any = false;
        let mut bytes = 0;
        for _ in 0..RECV_CALLS_PER_ROUND {
            if bytes >= budget {
                break;
            }
            match self.recv.poll_recv(cx, &self.socket) {
                Poll::Ready(Ok(_)) => {
                    any = true;
                    for d in self.recv.datagrams() {
                        bytes += d.data.len();
                        st.handle_datagram(now, d.from, d.ecn, d.data);
                    }
                }
                Poll::Ready(Err(e)) => {
                    // ICMP errors of earlier sends and the like; UDP carries on.
                    tracing::debug!("receive error: {e}");
                    any = true;
                }
                Poll::Pending => break,
            }
        }
        (any, bytes)
    }

    /// Sends what is due. Returns `(blocked, more)`: the socket is full (we are registered
    /// for writability), or the round's budget ran out with more to send.
    fn transmit(&mut self, cx: &mut Context<'_>, st: &mut State, now: Instant) -> (bool, bool) {
        if let Some(t) = self.pending {
            match self.socket.poll_send(cx, &t, &self.buf) {
                Poll::Pending => return (true, false),
                Poll::Ready(r) => {
                    log_send_error(r, &t);
                    self.pending = None;
                }
            }
        }
        if flush(cx, &self.socket, &mut st.out) {
            return (true, false);
        }
        self.handles.clear();
        self.handles.extend(st.channels.keys().copied());
        self.handles.sort_unstable();
        let n = self.handles.len();
        if n == 0 {
            return (false, false);
        }
        let max_segments = self.socket.max_gso_segments().min(64);
        let mut budget = SEND_BATCHES_PER_ROUND;
        let start = self.next_channel % n;
        loop {
            let mut sent_any = false;
            for i in 0..n {
                let h = self.handles[(start + i) % n];
                let Some(slot) = st.channels.get_mut(&h) else {
                    continue;
                };
                let Some(peer) = st.peers.get_mut(&slot.peer) else {
                    continue;
                };
                let mtu = usize::from(slot.channel.stats().mtu).max(1200);
                let max = max_segments.min(GSO_MAX_BYTES / mtu).max(1);
                for _ in 0..BURST {
                    let Some(t) =
                        slot.channel
                            .poll_transmit(now, max, &mut self.buf, &mut peer.session)
                    else {
                        break;
                    };
                    sent_any = true;
                    budget -= 1;
                    if is_relay_addr(t.destination) {
                        // A relayed channel: each datagram leaves wrapped in RELAY_DATA to
                        // the regserver (spec/routing.md §6.3).
                        st.routing.wrap(now, &t, &self.buf, &mut st.out);
                        if flush(cx, &self.socket, &mut st.out) {
                            self.next_channel = start + i;
                            return (true, false);
                        }
                    } else {
                        match self.socket.poll_send(cx, &t, &self.buf) {
                            Poll::Pending => {
                                self.pending = Some(t);
                                self.next_channel = start + i;
                                return (true, false);
                            }
                            Poll::Ready(r) => log_send_error(r, &t),
                        }
                    }
                    if budget == 0 {
                        self.next_channel = start + i + 1;
                        return (false, true);
                    }
                }
            }
            if !sent_any {
                self.next_channel = start + 1;
                return (false, false);
            }
        }
    }

    /// Arms the timer for the earliest deadline; returns whether it has already fired.
    fn poll_timer(&mut self, cx: &mut Context<'_>, st: &State) -> bool {
        let Some(at) = st.poll_timeout() else {
            self.timer_at = None;
            return false;
        };
        if self.timer_at != Some(at) {
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(at));
            self.timer_at = Some(at);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            // Re-arm on the next round even if the deadline stays the same.
            self.timer_at = None;
            return true;
        }
        false
    }
}

/// Sends the owned datagrams queued in `out` (handshake replies, routing messages, relayed
/// datagrams); returns whether the socket is full (we are registered for writability).
fn flush(
    cx: &mut Context<'_>,
    socket: &UdpSocket,
    out: &mut std::collections::VecDeque<(Vec<u8>, Transmit)>,
) -> bool {
    while let Some((data, t)) = out.front() {
        match socket.poll_send(cx, t, data) {
            Poll::Pending => return true,
            Poll::Ready(r) => {
                log_send_error(r, t);
                out.pop_front();
            }
        }
    }
    false
}

fn log_send_error(r: std::io::Result<()>, t: &Transmit) {
    if let Err(e) = r {
        tracing::debug!(to = %t.destination, size = t.size, "send error: {e}");
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let shared = this.shared.clone();
        let mut st = shared.lock();
        st.set_driver_waker(cx.waker());
        let mut result = Poll::Pending;
        // Poll again at once (the round budget ran out), or once the tasks woken by this
        // poll have run.
        let mut again = false;
        let mut after_woken = false;
        let mut received = 0;
        for round in 0.. {
            let now = Instant::now();
            let (mut busy, bytes) = this.receive(
                cx,
                &mut st,
                now,
                RECV_BYTES_PER_POLL.saturating_sub(received),
            );
            received += bytes;
            st.handle_timeouts(now);
            st.collect(now);
            if st.refs == 0 && !st.closed {
                let until = now + st.config.linger;
                let linger = *st.linger_until.get_or_insert(until);
                if now >= linger || st.is_quiescent() {
                    tracing::debug!("last handle dropped: closing the host");
                    st.close();
                }
            }
            if st.closed {
                if !st.channels_closed {
                    st.close_channels(now);
                    busy = true;
                } else if this.pending.is_none() && st.out.is_empty() {
                    result = Poll::Ready(());
                    break;
                }
            }
            if std::mem::take(&mut st.connect_woken) && !st.closed {
                // `connect` calls just succeeded: they run before this round's sends, so
                // that the streams they open at once leave in the channel's first packet
                // (which confirms the keys to the responder) rather than in a second one.
                // What arrived while the response was processed is taken first: the peer's
                // answer to early data follows its response closely, and the woken tasks
                // then find it instead of waiting for another round.
                let (any, _) = this.receive(
                    cx,
                    &mut st,
                    Instant::now(),
                    RECV_BYTES_PER_POLL.saturating_sub(received),
                );
                if any {
                    st.collect(now);
                }
                st.connect_woken = false;
                after_woken = true;
                break;
            }
            let (blocked, more) = this.transmit(cx, &mut st, now);
            st.collect(now);
            busy |= more;
            if st.closed && st.channels_closed && !blocked && !more {
                // The CLOSE packets are out: nothing more to do.
                result = Poll::Ready(());
                break;
            }
            busy |= this.poll_timer(cx, &st);
            if !busy {
                if st.wake.is_empty() && st.endpoint.needs_prepare() {
                    // Idle, and no task waits to run: make the next handshake's ephemeral
                    // key now rather than on its critical path.
                    st.endpoint.prepare();
                }
                break;
            }
            if round + 1 >= ROUNDS_PER_POLL || received >= RECV_BYTES_PER_POLL {
                again = true;
                break;
            }
        }
        if result.is_ready() {
            st.close();
        }
        let wake = std::mem::take(&mut st.wake);
        drop(st);
        for w in wake {
            w.wake();
        }
        if after_woken {
            // Deferred like `yield_now`: the runtime runs every task that is ready, the
            // `block_on` future of a single-threaded runtime too, before polling us again.
            let mut yielded = std::pin::pin!(tokio::task::yield_now());
            let _ = yielded.as_mut().poll(cx);
        } else if again {
            cx.waker().wake_by_ref();
        }
        if result.is_ready() {
            tracing::debug!("host driver finished");
            shared.done.send_replace(true);
        }
        result
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The runtime may drop the driver (shutdown): no task must wait for it forever.
        let mut st = self.shared.lock();
        st.close();
        let wake = std::mem::take(&mut st.wake);
        drop(st);
        for w in wake {
            w.wake();
        }
        self.shared.done.send_replace(true);
    }
}
