//! Decodes arbitrary stream-layer frame bodies; every frame that decodes must re-encode, with
//! `encoded_len` matching, to one upper-layer frame that decodes to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sss_proto::frame::{Frame, FrameType, Frames};
use sss_proto::stream::frames::StreamLayerFrame;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    // Mostly the defined types 0x20..=0x26, sometimes unknown or channel ones around them.
    let ty = FrameType(0x1c + u64::from(selector & 0x0f));
    let Ok(frame) = StreamLayerFrame::decode(ty, body) else {
        return;
    };
    assert_eq!(frame.ty(), ty);
    let mut buf = Vec::new();
    frame.encode(&mut buf);
    assert_eq!(buf.len(), frame.encoded_len());
    let frames: Vec<Frame<'_>> = Frames::new(&buf)
        .collect::<Result<_, _>>()
        .expect("a re-encoded frame passes the channel framing");
    let [Frame::Upper {
        ty: again_ty,
        body: again,
    }] = frames.as_slice()
    else {
        panic!("re-encoding gave {frames:?}");
    };
    assert_eq!(*again_ty, ty);
    assert_eq!(StreamLayerFrame::decode(ty, again), Ok(frame));
});
