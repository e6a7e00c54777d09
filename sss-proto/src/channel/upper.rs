//! The interface between a channel and the layer above it (the stream layer, or a test
//! source): the channel asks it for frames when it builds a packet, hands it the upper-layer
//! frames it receives, and tells it the fate of every frame it sent, so that lost content is
//! sent again in a new packet (never the same packet number twice).

use std::time::Instant;

use crate::frame::FrameType;

/// The peer sent an upper-layer frame that breaks the protocol; the channel closes.
#[derive(Debug, Clone, Eq, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct UpperError {
    /// Close code sent to the peer.
    pub code: u64,
    /// Human-readable reason, sent to the peer.
    pub reason: String,
}

/// The layer above a channel.
pub trait Upper {
    /// What the upper layer keeps about a frame it sent, to re-send or release its content.
    type Meta;

    /// Whether frames are waiting to be sent.
    fn has_pending(&self) -> bool;

    /// Appends complete upper-layer frames (see [`crate::frame::write_upper_header`]) to
    /// `buf`, adding at most `space` bytes, and pushes to `metas` what it must learn back
    /// about each frame that needs re-sending if lost.
    fn write_frames(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        space: usize,
        metas: &mut Vec<Self::Meta>,
    );

    /// An upper-layer frame arrived in an authenticated packet.
    fn handle_frame(&mut self, now: Instant, ty: FrameType, body: &[u8]) -> Result<(), UpperError>;

    /// The packet that carried the frame was acknowledged.
    fn on_acked(&mut self, meta: Self::Meta);

    /// The packet that carried the frame was declared lost (or the channel closed before it
    /// was acknowledged): its content must be sent again if it is still wanted.
    fn on_lost(&mut self, meta: Self::Meta);
}

/// A channel with nothing above it: sends no upper frames and refuses any it receives.
impl Upper for () {
    type Meta = ();

    fn has_pending(&self) -> bool {
        false
    }

    fn write_frames(&mut self, _: Instant, _: &mut Vec<u8>, _: usize, _: &mut Vec<()>) {}

    fn handle_frame(&mut self, _: Instant, ty: FrameType, _: &[u8]) -> Result<(), UpperError> {
        Err(UpperError {
            code: crate::channel::CloseCode::PROTOCOL_VIOLATION.0,
            reason: format!("unexpected frame type {:#x}", ty.0),
        })
    }

    fn on_acked(&mut self, _: ()) {}

    fn on_lost(&mut self, _: ()) {}
}
