//! Datagram classification and the clear header of channel data packets (spec/packets.md).
//!
//! The first byte of every datagram says what it carries, so the endpoint dispatches with one
//! match. A data packet is laid out as:
//!
//! ```text
//! 0        1                5                  5+L            len-16      len
//! +--------+----------------+------------------+----------------+----------+
//! |01RRRKLL| receiver_index | packet number    | ciphertext     | AEAD tag |
//! |        | u32 BE         | L = LL+1 bytes BE| (frames)       | 16 bytes |
//! +--------+----------------+------------------+----------------+----------+
//! ```
//!
//! The header (first byte through packet number) is the AEAD associated data and the full
//! 64-bit packet number is the nonce, so nothing in it can be altered unnoticed. The packet
//! number is truncated as in RFC 9000 §17.1 and rebuilt as in RFC 9000 Appendix A.3.

use thiserror::Error;

/// Length of the AEAD authentication tag that ends every data packet.
pub const TAG_LEN: usize = 16;
/// Longest data packet header: first byte, receiver index, 4-byte packet number.
pub const MAX_HEADER_LEN: usize = 9;
/// Shortest data packet header (1-byte packet number).
pub const MIN_HEADER_LEN: usize = 6;

/// Byte layout of the data packet header (smoltcp's `field` idiom).
mod field {
    use std::ops::Range;
    pub(super) const FIRST: usize = 0;
    pub(super) const RECEIVER_INDEX: Range<usize> = 1..5;
    pub(super) const PACKET_NUMBER: usize = 5;
}

/// First-byte bits of a data packet.
mod bits {
    /// The two high bits that mark a data packet (0x40..=0x7f).
    pub(super) const FORM_MASK: u8 = 0xc0;
    pub(super) const FORM_DATA: u8 = 0x40;
    /// Sent as zero, ignored on receipt: room for future header flags.
    pub(super) const RESERVED: u8 = 0x38;
    pub(super) const KEY_PHASE: u8 = 0x04;
    /// Packet-number length minus one.
    pub(super) const PN_LEN: u8 = 0x03;
}

/// What a datagram carries, from its first byte.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub enum PacketKind {
    /// 0x01: handshake initiation.
    Initiation,
    /// 0x02: handshake response.
    Response,
    /// 0x03: cookie reply from a responder under load.
    CookieReply,
    /// 0x10..=0x1f: routing layer (regserver protocol, relay); the byte is kept.
    Routing(u8),
    /// 0x40..=0x7f: channel data packet.
    Data,
    /// Anything else; such datagrams are dropped.
    Unknown(u8),
}

/// Says what `datagram` carries, or `None` if it is empty.
pub fn classify(datagram: &[u8]) -> Option<PacketKind> {
    let &first = datagram.first()?;
    Some(match first {
        0x01 => PacketKind::Initiation,
        0x02 => PacketKind::Response,
        0x03 => PacketKind::CookieReply,
        0x10..=0x1f => PacketKind::Routing(first),
        0x40..=0x7f => PacketKind::Data,
        other => PacketKind::Unknown(other),
    })
}

/// Why a datagram is not a well-formed data packet.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Error)]
#[non_exhaustive]
pub enum PacketError {
    /// The datagram has no bytes at all.
    #[error("empty datagram")]
    Empty,
    /// The first byte does not mark a data packet.
    #[error("first byte {0:#04x} does not mark a data packet")]
    NotData(u8),
    /// The datagram cannot hold the header it announces plus the AEAD tag.
    #[error("data packet of {len} bytes is shorter than its header plus tag ({needed} bytes)")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// Header length announced by the first byte plus [`TAG_LEN`].
        needed: usize,
    },
}

/// The clear header of a data packet.
#[derive(Debug, Copy, Clone, Eq, PartialEq)]
pub struct DataHeader {
    /// Index the receiver chose for this channel; finds the channel with one table lookup.
    pub receiver_index: u32,
    /// Which of the two current key generations sealed the packet.
    pub key_phase: bool,
    /// The low `pn_len` bytes of the packet number.
    pub truncated_pn: u32,
    /// Bytes of packet number on the wire, 1..=4.
    pub pn_len: usize,
}

impl DataHeader {
    /// Appends a header for packet `pn`; `largest_acked` is the largest of our packets the peer
    /// acknowledged. Returns the header length; `buf[start..start + len]` is the AEAD
    /// associated data.
    pub fn write(
        buf: &mut Vec<u8>,
        receiver_index: u32,
        key_phase: bool,
        pn: u64,
        largest_acked: Option<u64>,
    ) -> usize {
        let pn_len = packet_number_len(pn, largest_acked);
        let mut first = bits::FORM_DATA | (pn_len as u8 - 1);
        if key_phase {
            first |= bits::KEY_PHASE;
        }
        debug_assert_eq!(first & bits::RESERVED, 0, "reserved bits are sent as zero");
        // This runs for every packet sent. The header is built in a register and stored as
        // 1 + 8 bytes of constant size (the bytes past its end are cut off again): no
        // variable-length copy, and no reload of bytes stored piecemeal, which stalls the
        // core until every earlier store (the previous packet's) has reached the cache.
        // The low 32 bits hold the packet number's `pn_len` low bytes, big-endian, first.
        let pn_bits = (pn as u32) << (8 * (4 - pn_len));
        let rest = (u64::from(receiver_index) << 32) | u64::from(pn_bits);
        let len = 1 + 4 + pn_len;
        let start = buf.len();
        buf.reserve(MAX_HEADER_LEN);
        buf.push(first);
        buf.extend_from_slice(&rest.to_be_bytes());
        buf.truncate(start + len);
        len
    }

    /// Parses the clear header of a data packet; returns it and its length. Fails if the
    /// datagram is not a data packet or is too short to hold the header and the tag.
    pub fn parse(datagram: &[u8]) -> Result<(DataHeader, usize), PacketError> {
        let &first = datagram.get(field::FIRST).ok_or(PacketError::Empty)?;
        if first & bits::FORM_MASK != bits::FORM_DATA {
            return Err(PacketError::NotData(first));
        }
        // Reserved bits are deliberately not checked: a later version may use them.
        let pn_len = usize::from(first & bits::PN_LEN) + 1;
        let len = field::PACKET_NUMBER + pn_len;
        let needed = len + TAG_LEN;
        if datagram.len() < needed {
            return Err(PacketError::TooShort {
                len: datagram.len(),
                needed,
            });
        }
        // Length checked above, so these slices are in bounds.
        let mut index = [0u8; 4];
        index.copy_from_slice(&datagram[field::RECEIVER_INDEX]);
        let truncated_pn = datagram[field::PACKET_NUMBER..len]
            .iter()
            .fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
        let header = DataHeader {
            receiver_index: u32::from_be_bytes(index),
            key_phase: first & bits::KEY_PHASE != 0,
            truncated_pn,
            pn_len,
        };
        Ok((header, len))
    }

    /// Header length in bytes.
    #[allow(clippy::len_without_is_empty)] // a header is never empty
    pub fn len(&self) -> usize {
        field::PACKET_NUMBER + self.pn_len.clamp(1, 4)
    }

    /// The full packet number, given the largest number received so far on this channel.
    pub fn packet_number(&self, largest_received: Option<u64>) -> u64 {
        decode_packet_number(largest_received, self.truncated_pn, self.pn_len)
    }
}

/// Bytes needed to send `pn` so that the receiver rebuilds it: enough to represent more than
/// twice the distance from `largest_acked` (RFC 9000 §17.1, Appendix A.2). At most 4; the
/// sender keeps fewer than 2^31 packets in flight, so 4 always suffices.
pub fn packet_number_len(pn: u64, largest_acked: Option<u64>) -> usize {
    // Number of contiguous unacknowledged packet numbers, this one included.
    let unacked = match largest_acked {
        Some(acked) => pn.saturating_sub(acked),
        None => pn.saturating_add(1),
    };
    // RFC 9000 A.2: bytes = ceil((log2(unacked) + 1) / 8), i.e. the least n with
    // unacked <= 2^(8n - 1).
    match unacked {
        0..=0x80 => 1,
        0x81..=0x8000 => 2,
        0x8001..=0x80_0000 => 3,
        _ => 4,
    }
}

/// Rebuilds a full packet number from its low `pn_len` bytes: the candidate closest to the
/// next expected number (RFC 9000 Appendix A.3). Saturates instead of wrapping near the ends
/// of the 64-bit space and never panics; a `pn_len` outside 1..=4 is clamped.
pub fn decode_packet_number(largest_received: Option<u64>, truncated: u32, pn_len: usize) -> u64 {
    let pn_bits = 8 * pn_len.clamp(1, 4) as u32;
    let expected = largest_received.map_or(0, |l| l.saturating_add(1));
    let win = 1u64 << pn_bits;
    let hwin = win / 2;
    let mask = win - 1;
    let candidate = (expected & !mask) | (u64::from(truncated) & mask);
    // The RFC's comparisons are on unbounded integers; a bound that falls outside u64 makes
    // its comparison false, which is what the checked operations express.
    if expected
        .checked_sub(hwin)
        .is_some_and(|low| candidate <= low)
    {
        if let Some(up) = candidate.checked_add(win) {
            return up;
        }
    }
    if expected
        .checked_add(hwin)
        .is_some_and(|high| candidate > high)
        && candidate >= win
    {
        return candidate - win;
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc9000_a3_example() {
        assert_eq!(
            decode_packet_number(Some(0xa82f_30ea), 0x9b32, 2),
            0xa82f_9b32
        );
    }

    #[test]
    fn rfc9000_a2_examples() {
        assert_eq!(packet_number_len(0xac5c02, Some(0xabe8b3)), 2);
        assert_eq!(packet_number_len(0xace8fe, Some(0xabe8b3)), 3);
        assert_eq!(packet_number_len(0, None), 1);
        assert_eq!(packet_number_len(127, None), 1);
        assert_eq!(packet_number_len(128, None), 2);
    }

    #[test]
    fn classify_table() {
        let table: &[(&[u8], Option<PacketKind>)] = &[
            (&[], None),
            (&[0x00], Some(PacketKind::Unknown(0x00))),
            (&[0x01, 9, 9], Some(PacketKind::Initiation)),
            (&[0x02], Some(PacketKind::Response)),
            (&[0x03], Some(PacketKind::CookieReply)),
            (&[0x04], Some(PacketKind::Unknown(0x04))),
            (&[0x0f], Some(PacketKind::Unknown(0x0f))),
            (&[0x10], Some(PacketKind::Routing(0x10))),
            (&[0x1f], Some(PacketKind::Routing(0x1f))),
            (&[0x20], Some(PacketKind::Unknown(0x20))),
            (&[0x3f], Some(PacketKind::Unknown(0x3f))),
            (&[0x40], Some(PacketKind::Data)),
            (&[0x7f], Some(PacketKind::Data)),
            (&[0x80], Some(PacketKind::Unknown(0x80))),
            (&[0xff], Some(PacketKind::Unknown(0xff))),
        ];
        for (bytes, kind) in table {
            assert_eq!(classify(bytes), *kind, "first byte {bytes:02x?}");
        }
    }

    #[test]
    fn parse_rejects_short_and_foreign_datagrams() {
        assert_eq!(DataHeader::parse(&[]), Err(PacketError::Empty));
        assert_eq!(
            DataHeader::parse(&[0x01; 40]),
            Err(PacketError::NotData(0x01))
        );
        // 0x43: 4-byte packet number, so 9 + 16 bytes are needed.
        assert_eq!(
            DataHeader::parse(&[0x43; 24]),
            Err(PacketError::TooShort {
                len: 24,
                needed: 25
            })
        );
        assert!(DataHeader::parse(&[0x43; 25]).is_ok());
    }

    #[test]
    fn reserved_bits_are_ignored_on_receipt() {
        let mut buf = Vec::new();
        DataHeader::write(&mut buf, 7, true, 5, None);
        buf.resize(buf.len() + TAG_LEN, 0);
        let clean = DataHeader::parse(&buf);
        buf[0] |= 0x38;
        assert_eq!(DataHeader::parse(&buf), clean);
    }

    /// (pn, largest_acked) with pn > largest_acked and fewer than 2^31 packets in flight.
    fn pn_and_acked() -> impl Strategy<Value = (u64, Option<u64>)> {
        prop_oneof![
            (0u64..(1 << 31)).prop_map(|pn| (pn, None)),
            (0u64..(1 << 62), 1u64..(1 << 31)).prop_map(|(acked, d)| (acked + d, Some(acked))),
            (0u64..(1 << 62), 1u64..300).prop_map(|(acked, d)| (acked + d, Some(acked))),
        ]
    }

    proptest! {
        #[test]
        fn header_round_trip(
            index in any::<u32>(),
            key_phase in any::<bool>(),
            (pn, acked) in pn_and_acked(),
            payload_len in 0usize..40,
        ) {
            let mut buf = vec![0xaa; 3];
            let len = DataHeader::write(&mut buf, index, key_phase, pn, acked);
            prop_assert_eq!(buf.len(), 3 + len);
            buf.resize(buf.len() + payload_len + TAG_LEN, 0);
            let (header, parsed_len) = DataHeader::parse(&buf[3..]).unwrap();
            prop_assert_eq!(parsed_len, len);
            prop_assert_eq!(header.len(), len);
            prop_assert_eq!(header.receiver_index, index);
            prop_assert_eq!(header.key_phase, key_phase);
            prop_assert_eq!(header.pn_len, packet_number_len(pn, acked));
            let mask = (1u64 << (8 * header.pn_len)) - 1;
            prop_assert_eq!(u64::from(header.truncated_pn), pn & mask);
            prop_assert_eq!(buf[3] & 0x38, 0, "reserved bits must be sent as zero");
        }

        /// The receiver has seen at least `largest_acked` (the peer acknowledged it) and at
        /// most `pn - 1`; it then rebuilds `pn` from the truncated bits.
        #[test]
        fn decode_inverts_encode(
            (pn, acked, received) in pn_and_acked().prop_flat_map(|(pn, acked)| {
                let received = match acked {
                    Some(a) => (a..pn).prop_map(Some).boxed(),
                    None if pn == 0 => Just(None).boxed(),
                    None => proptest::option::of(0..pn).boxed(),
                };
                (Just(pn), Just(acked), received)
            }),
        ) {
            let len = packet_number_len(pn, acked);
            let truncated = (pn & ((1u64 << (8 * len)) - 1)) as u32;
            prop_assert_eq!(decode_packet_number(received, truncated, len), pn);
        }

        #[test]
        fn decode_never_panics(
            largest in proptest::option::of(any::<u64>()),
            truncated in any::<u32>(),
            pn_len in 0usize..8,
        ) {
            let pn = decode_packet_number(largest, truncated, pn_len);
            // Whatever the inputs, the result carries the truncated bits it was given.
            let bits = 8 * pn_len.clamp(1, 4);
            let mask = (1u64 << bits) - 1;
            prop_assert_eq!(pn & mask, u64::from(truncated) & mask);
        }

        #[test]
        fn parse_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let kind = classify(&bytes);
            match DataHeader::parse(&bytes) {
                Ok((header, len)) => {
                    prop_assert_eq!(kind, Some(PacketKind::Data));
                    prop_assert!(len + TAG_LEN <= bytes.len());
                    prop_assert_eq!(header.len(), len);
                }
                Err(_) => prop_assert!(kind != Some(PacketKind::Data) || bytes.len() < MAX_HEADER_LEN + TAG_LEN),
            }
        }
    }
}
