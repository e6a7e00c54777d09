//! Transport parameters: what each host tells the other about itself in the handshake.
//!
//! On the wire a block is `varint block_len | entry*`, each entry `varint id | varint len |
//! value`. Absent parameters take their default; unknown ids are skipped so that new
//! parameters can be added without breaking old peers; a repeated id is an error.
//!
//! To add a parameter: a field in [`TransportParams`], its default in `Default`, an id in
//! [`param_id`], one `put` line in [`TransportParams::encode`] and one arm in
//! [`TransportParams::decode`].

use std::collections::BTreeSet;

use crate::codec::{varint_len, write_varint, Reader};
use crate::crypto::aead::Suite;

use super::HandshakeError;

/// Identifiers of the transport parameters.
pub mod param_id {
    /// The AEAD suites the sender supports (`u8` bit set of [`Suite::bit`](crate::crypto::aead::Suite::bit)).
    pub const SUITES: u64 = 1;
    /// The largest UDP payload the sender is willing to receive (varint, >= 1200).
    pub const MAX_UDP_PAYLOAD: u64 = 2;
    /// The sender's idle timeout in milliseconds (varint; 0 = no idle timeout).
    pub const IDLE_TIMEOUT_MS: u64 = 3;
    /// The longest the sender delays an acknowledgement, in milliseconds (varint).
    pub const MAX_ACK_DELAY_MS: u64 = 4;
    /// The sender's stream-layer session id (8 bytes).
    pub const SESSION_ID: u64 = 5;
    /// Initial receive window of each stream.
    pub const INITIAL_MAX_STREAM_DATA: u64 = 6;
    /// Initial receive window of the session.
    pub const INITIAL_MAX_DATA: u64 = 7;
    /// Initial stream credit.
    pub const INITIAL_MAX_STREAMS: u64 = 8;
    /// The largest datagram (best-effort or reliable) the sender accepts (varint).
    pub const MAX_DATAGRAM_SIZE: u64 = 9;
}

/// The smallest UDP payload every path must carry (the size of an initiation).
pub const MIN_UDP_PAYLOAD: u16 = 1200;

/// What one host declares to the other during the handshake.
#[derive(Debug, Clone, Copy, Eq, PartialEq, Hash)]
pub struct TransportParams {
    /// The AEAD suites the host supports, as a set of [`Suite::bit`]s. Unknown bits are kept.
    pub suites: u8,
    /// The largest UDP payload the host accepts; at least [`MIN_UDP_PAYLOAD`].
    pub max_udp_payload: u16,
    /// Milliseconds without traffic after which the host closes the channel.
    pub idle_timeout_ms: u32,
    /// The longest the host delays an acknowledgement, in milliseconds.
    pub max_ack_delay_ms: u16,
    /// The sender's stream-layer session id (0: none).
    pub session_id: u64,
    /// Initial receive window the sender grants each stream.
    pub initial_max_stream_data: u64,
    /// Initial receive window the sender grants the session.
    pub initial_max_data: u64,
    /// Initial number of streams the sender lets its peer open.
    pub initial_max_streams: u64,
    /// The largest datagram (best-effort or reliable) the sender accepts. Absent from the
    /// parameters of hosts that predate it: they take the default, which was their fixed
    /// default limit.
    pub max_datagram_size: u64,
}

impl Default for TransportParams {
    /// The values an absent parameter takes. The default suite set is the mandatory
    /// ChaCha20-Poly1305 only, so that defaults do not depend on the CPU; hosts should offer
    /// `Suite::local_set()`.
    fn default() -> Self {
        Self {
            suites: Suite::ChaCha20Poly1305.bit(),
            max_udp_payload: 1452,
            idle_timeout_ms: 30_000,
            max_ack_delay_ms: 25,
            session_id: 0,
            initial_max_stream_data: 256 * 1024,
            initial_max_data: 1024 * 1024,
            initial_max_streams: 1024,
            max_datagram_size: 1024 * 1024,
        }
    }
}

/// Appends one entry whose value is a varint.
fn put_varint(entries: &mut Vec<u8>, id: u64, value: u64) {
    write_varint(entries, id);
    write_varint(entries, varint_len(value) as u64);
    write_varint(entries, value);
}

/// Decodes a value that must be exactly one varint filling the entry.
fn value_varint(value: &[u8], what: &'static str) -> Result<u64, HandshakeError> {
    let mut r = Reader::new(value);
    let v = r.varint().map_err(|_| HandshakeError::Malformed(what))?;
    if !r.is_empty() {
        return Err(HandshakeError::Malformed(what));
    }
    Ok(v)
}

impl TransportParams {
    /// Appends the block: its length, then every parameter (all of them, defaults included,
    /// so that a peer never depends on our defaults).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut entries = Vec::with_capacity(16);
        write_varint(&mut entries, param_id::SUITES);
        write_varint(&mut entries, 1);
        entries.push(self.suites);
        put_varint(
            &mut entries,
            param_id::MAX_UDP_PAYLOAD,
            self.max_udp_payload.into(),
        );
        put_varint(
            &mut entries,
            param_id::IDLE_TIMEOUT_MS,
            self.idle_timeout_ms.into(),
        );
        put_varint(
            &mut entries,
            param_id::MAX_ACK_DELAY_MS,
            self.max_ack_delay_ms.into(),
        );
        write_varint(&mut entries, param_id::SESSION_ID);
        write_varint(&mut entries, 8);
        entries.extend_from_slice(&self.session_id.to_be_bytes());
        put_varint(
            &mut entries,
            param_id::INITIAL_MAX_STREAM_DATA,
            self.initial_max_stream_data,
        );
        put_varint(
            &mut entries,
            param_id::INITIAL_MAX_DATA,
            self.initial_max_data,
        );
        put_varint(
            &mut entries,
            param_id::INITIAL_MAX_STREAMS,
            self.initial_max_streams,
        );
        put_varint(
            &mut entries,
            param_id::MAX_DATAGRAM_SIZE,
            self.max_datagram_size,
        );
        write_varint(out, entries.len() as u64);
        out.extend_from_slice(&entries);
    }

    /// Reads a block written by [`TransportParams::encode`] (or by a newer peer).
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, HandshakeError> {
        let block = r
            .varint_bytes()
            .map_err(|_| HandshakeError::Malformed("transport parameters truncated"))?;
        let mut r = Reader::new(block);
        let mut params = Self::default();
        // Bounded by the block length: every entry takes at least two bytes.
        let mut seen = BTreeSet::new();
        while !r.is_empty() {
            let id = r
                .varint()
                .map_err(|_| HandshakeError::Malformed("transport parameter id truncated"))?;
            let value = r
                .varint_bytes()
                .map_err(|_| HandshakeError::Malformed("transport parameter value truncated"))?;
            if !seen.insert(id) {
                return Err(HandshakeError::Malformed("duplicate transport parameter"));
            }
            match id {
                param_id::SUITES => {
                    let [bits] = value else {
                        return Err(HandshakeError::Malformed(
                            "suites parameter is not one byte",
                        ));
                    };
                    params.suites = *bits;
                }
                param_id::MAX_UDP_PAYLOAD => {
                    let v = value_varint(value, "max_udp_payload is not one varint")?;
                    params.max_udp_payload = u16::try_from(v)
                        .ok()
                        .filter(|v| *v >= MIN_UDP_PAYLOAD)
                        .ok_or(HandshakeError::Malformed("max_udp_payload out of range"))?;
                }
                param_id::IDLE_TIMEOUT_MS => {
                    let v = value_varint(value, "idle_timeout_ms is not one varint")?;
                    params.idle_timeout_ms = u32::try_from(v)
                        .map_err(|_| HandshakeError::Malformed("idle_timeout_ms out of range"))?;
                }
                param_id::MAX_ACK_DELAY_MS => {
                    let v = value_varint(value, "max_ack_delay_ms is not one varint")?;
                    params.max_ack_delay_ms = u16::try_from(v)
                        .map_err(|_| HandshakeError::Malformed("max_ack_delay_ms out of range"))?;
                }
                // Unknown parameters are ignored so that peers can add new ones.
                param_id::SESSION_ID => {
                    let bytes: [u8; 8] = value
                        .try_into()
                        .map_err(|_| HandshakeError::Malformed("session_id is not 8 bytes"))?;
                    params.session_id = u64::from_be_bytes(bytes);
                }
                param_id::INITIAL_MAX_STREAM_DATA => {
                    params.initial_max_stream_data =
                        value_varint(value, "initial_max_stream_data is not one varint")?;
                }
                param_id::INITIAL_MAX_DATA => {
                    params.initial_max_data =
                        value_varint(value, "initial_max_data is not one varint")?;
                }
                param_id::INITIAL_MAX_STREAMS => {
                    params.initial_max_streams =
                        value_varint(value, "initial_max_streams is not one varint")?;
                }
                param_id::MAX_DATAGRAM_SIZE => {
                    params.max_datagram_size =
                        value_varint(value, "max_datagram_size is not one varint")?;
                }
                _ => {}
            }
        }
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_params() -> impl Strategy<Value = TransportParams> {
        (
            (
                any::<u8>(),
                MIN_UDP_PAYLOAD..=u16::MAX,
                any::<u32>(),
                any::<u16>(),
            ),
            (
                any::<u64>(),
                0..=crate::codec::VARINT_MAX,
                0..=crate::codec::VARINT_MAX,
                0..=crate::codec::VARINT_MAX,
                0..=crate::codec::VARINT_MAX,
            ),
        )
            .prop_map(
                |(
                    (suites, max_udp_payload, idle_timeout_ms, max_ack_delay_ms),
                    (session_id, msd, md, ms, mds),
                )| TransportParams {
                    suites,
                    max_udp_payload,
                    idle_timeout_ms,
                    max_ack_delay_ms,
                    session_id,
                    initial_max_stream_data: msd,
                    initial_max_data: md,
                    initial_max_streams: ms,
                    max_datagram_size: mds,
                },
            )
    }

    fn decode_all(bytes: &[u8]) -> Result<TransportParams, HandshakeError> {
        TransportParams::decode(&mut Reader::new(bytes))
    }

    #[test]
    fn empty_block_gives_defaults() {
        assert_eq!(decode_all(&[0]), Ok(TransportParams::default()));
    }

    #[test]
    fn unknown_ids_are_skipped_and_duplicates_rejected() {
        // id 0x1234 (2-byte varint) with 3 bytes of value, then idle_timeout = 5.
        let entries = [0x52, 0x34, 3, 9, 9, 9, 3, 1, 5];
        let mut block = vec![entries.len() as u8];
        block.extend_from_slice(&entries);
        let p = decode_all(&block).unwrap();
        assert_eq!(p.idle_timeout_ms, 5);
        assert_eq!(p.suites, TransportParams::default().suites);

        let dup = [6, 3, 1, 5, 3, 1, 6];
        assert_eq!(
            decode_all(&dup),
            Err(HandshakeError::Malformed("duplicate transport parameter"))
        );
        let dup_unknown = [6, 0x20, 1, 0, 0x20, 1, 0];
        assert_eq!(
            decode_all(&dup_unknown),
            Err(HandshakeError::Malformed("duplicate transport parameter"))
        );
    }

    #[test]
    fn values_are_range_checked() {
        // max_udp_payload = 1199 (2-byte varint 0x44af).
        assert!(decode_all(&[4, 2, 2, 0x44, 0xaf]).is_err());
        // max_udp_payload = 1200 is fine.
        assert_eq!(
            decode_all(&[4, 2, 2, 0x44, 0xb0]).unwrap().max_udp_payload,
            1200
        );
        // A varint with trailing bytes inside the value.
        assert!(decode_all(&[4, 3, 2, 1, 0]).is_err());
        // The suites value must be exactly one byte.
        assert!(decode_all(&[4, 1, 2, 1, 1]).is_err());
        // max_ack_delay above u16.
        assert!(decode_all(&[7, 4, 4, 0x80, 1, 0, 0]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(p in arb_params()) {
            let mut out = Vec::new();
            p.encode(&mut out);
            let mut r = Reader::new(&out);
            prop_assert_eq!(TransportParams::decode(&mut r), Ok(p));
            prop_assert!(r.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_all(&bytes);
        }
    }
}
