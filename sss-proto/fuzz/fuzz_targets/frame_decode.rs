//! Decodes arbitrary payloads as frames; every frame that decodes must re-encode to bytes
//! that decode to the same frame, with `encoded_len` matching.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sss_proto::frame::{Frame, Frames};

fuzz_target!(|data: &[u8]| {
    let mut consumed = 0usize;
    for item in Frames::new(data) {
        let Ok(frame) = item else { break };
        let mut buf = Vec::new();
        frame.encode(&mut buf);
        assert_eq!(buf.len(), frame.encoded_len());
        consumed += buf.len();
        assert!(
            consumed <= data.len(),
            "frames re-encode longer than their input"
        );
        let again: Vec<Frame<'_>> = Frames::new(&buf)
            .collect::<Result<_, _>>()
            .expect("a re-encoded frame decodes");
        assert_eq!(again, vec![frame]);
    }
});
