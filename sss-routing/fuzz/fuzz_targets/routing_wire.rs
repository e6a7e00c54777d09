//! Decodes arbitrary datagrams as routing messages. Decoding never panics, and the encoding
//! is canonical: a message that decodes re-encodes to exactly its input (HELLO: the same
//! length and header, its padding written as zeros) and decodes back to an equal message.
//! The forwarding path's header parser (`wire::relay_data`) agrees with the decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sss_routing::wire::{relay_data, Message, RelayData, HELLO_LEN};

fuzz_target!(|data: &[u8]| {
    let decoded = Message::decode(data);
    match (&decoded, relay_data(data)) {
        (
            Ok(Message::RelayData(RelayData {
                relay_id,
                data: inner,
            })),
            Some((id, rest)),
        ) => {
            assert_eq!((*relay_id, &inner[..]), (id, rest));
        }
        (Ok(Message::RelayData(_)), None) | (_, Some(_)) => panic!("relay_data disagrees"),
        _ => {}
    }
    let Ok(msg) = decoded else {
        return;
    };
    let bytes = msg.to_vec();
    match &msg {
        Message::Hello(_) => {
            assert!(data.len() >= HELLO_LEN);
            assert_eq!(bytes.len(), data.len());
            assert_eq!(bytes[..9], data[..9]);
        }
        _ => assert_eq!(bytes, data, "non-canonical encoding"),
    }
    assert_eq!(Message::decode(&bytes), Ok(msg));
});
