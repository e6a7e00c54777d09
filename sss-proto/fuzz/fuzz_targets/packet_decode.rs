//! Classifies arbitrary datagrams, parses data headers and rebuilds packet numbers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sss_proto::packet::{
    classify, decode_packet_number, DataHeader, PacketKind, MAX_HEADER_LEN, TAG_LEN,
};

fuzz_target!(|data: &[u8]| {
    let kind = classify(data);
    assert_eq!(kind.is_none(), data.is_empty());
    match DataHeader::parse(data) {
        Ok((header, len)) => {
            assert_eq!(kind, Some(PacketKind::Data));
            assert_eq!(header.len(), len);
            assert!(len <= MAX_HEADER_LEN && len + TAG_LEN <= data.len());
            assert!(u64::from(header.truncated_pn) < 1u64 << (8 * header.pn_len));
            // Rebuild against a "largest received" taken from the input's tail, so both the
            // header and the history are attacker-chosen.
            let mut tail = [0u8; 8];
            let n = data.len().min(8);
            tail[..n].copy_from_slice(&data[data.len() - n..]);
            let largest = u64::from_le_bytes(tail);
            for prior in [None, Some(largest), Some(u64::MAX), Some(0)] {
                let pn = decode_packet_number(prior, header.truncated_pn, header.pn_len);
                let mask = (1u64 << (8 * header.pn_len)) - 1;
                assert_eq!(pn & mask, u64::from(header.truncated_pn));
            }
        }
        Err(_) => assert!(kind != Some(PacketKind::Data) || data.len() < MAX_HEADER_LEN + TAG_LEN),
    }
});
