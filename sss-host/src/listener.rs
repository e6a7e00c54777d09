//! [`Listener`]: incoming top-level streams for one (service, protocol).

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use sss_proto::stream::ErrorCode;

use crate::error::Error;
use crate::state::Shared;
use crate::stream::Stream;

/// Incoming top-level streams for one (service, protocol), from [`Host::listen`].
///
/// Dropping the listener stops accepting: streams still queued are reset with the
/// stream layer's `UNKNOWN_SERVICE` code, and later handshakes for the pair are refused.
///
/// [`Host::listen`]: crate::Host::listen
pub struct Listener {
    shared: Arc<Shared>,
    key: (String, String),
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("service", &self.key.0)
            .field("protocol", &self.key.1)
            .finish()
    }
}

impl Listener {
    pub(crate) fn new(shared: Arc<Shared>, key: (String, String)) -> Self {
        Self { shared, key }
    }

    /// The service this listener accepts.
    pub fn service(&self) -> &str {
        &self.key.0
    }

    /// The protocol this listener accepts.
    pub fn protocol(&self) -> &str {
        &self.key.1
    }

    /// The next incoming stream, from any peer. Fails with [`Error::HostClosed`] once the
    /// host is closed.
    pub async fn accept(&self) -> Result<Stream, Error> {
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            if st.closed {
                return Poll::Ready(Err(Error::HostClosed));
            }
            let Some(l) = st.listeners.get_mut(&self.key) else {
                return Poll::Ready(Err(Error::HostClosed));
            };
            let Some((peer, id, epoch)) = l.queue.pop_front() else {
                l.waker = Some(cx.waker().clone());
                return Poll::Pending;
            };
            // A stream of a peer that restarted since is gone: try the next one.
            let current = st.peers.get(&peer).is_some_and(|p| p.epoch == epoch);
            match current
                .then(|| st.new_handle(&self.shared, peer, id))
                .flatten()
            {
                Some(stream) => {
                    tracing::debug!(%peer, stream = %id, service = self.key.0, "accepted stream");
                    Poll::Ready(Ok(stream))
                }
                None => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(l) = st.listeners.remove(&self.key) {
            for (peer, id, epoch) in l.queue {
                if let Some(p) = st.peers.get_mut(&peer).filter(|p| p.epoch == epoch) {
                    p.abandon(id, ErrorCode::UNKNOWN_SERVICE);
                }
            }
        }
        st.release_ref();
        st.wake_driver();
    }
}
