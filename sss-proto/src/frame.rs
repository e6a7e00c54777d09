//! Frames: the units inside a data packet's encrypted payload (spec/packets.md, "Frames").
//!
//! Every frame starts with its type as a variable-length integer in its shortest encoding.
//! Types below [`FrameType::UPPER_MIN`] belong to the channel and are decoded here; an unknown
//! one among them is an error, because the channel cannot skip a frame whose length it does
//! not know. Types from [`FrameType::UPPER_MIN`] up are the stream layer's; they always carry
//! a body length, so the channel hands them over opaque and a receiver can skip the ones it
//! does not understand.

use std::fmt;
use std::ops::RangeInclusive;

use thiserror::Error;

use crate::codec::{varint_len, write_varint, Reader, VARINT_MAX};
use crate::ranges::RangeSet;

/// Longest CLOSE reason accepted on decode; longer reasons are cut to this on encode.
pub const MAX_CLOSE_REASON_LEN: usize = 1024;

/// A frame type code. Unknown codes round-trip unchanged.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash)]
pub struct FrameType(pub u64);

impl FrameType {
    /// A run of zero bytes that fills a packet.
    pub const PADDING: FrameType = FrameType(0x00);
    /// Elicits an acknowledgment; carries nothing.
    pub const PING: FrameType = FrameType(0x01);
    /// Acknowledges ranges of received packet numbers.
    pub const ACK: FrameType = FrameType(0x02);
    /// An ACK followed by the receiver's ECN counts (ECT(0), ECT(1), CE).
    pub const ACK_ECN: FrameType = FrameType(0x03);
    /// Closes the channel with an error code and a reason.
    pub const CLOSE: FrameType = FrameType(0x04);
    /// Asks the peer to echo 8 bytes: proves it receives at the address it sends from.
    pub const PATH_CHALLENGE: FrameType = FrameType(0x05);
    /// Echoes a PATH_CHALLENGE's 8 bytes.
    pub const PATH_RESPONSE: FrameType = FrameType(0x06);
    /// First type of the stream layer; `UPPER_MIN..` frames carry a body length.
    pub const UPPER_MIN: FrameType = FrameType(0x20);

    /// Whether this type belongs to the stream layer (carried opaque by the channel).
    pub fn is_upper(self) -> bool {
        self.0 >= Self::UPPER_MIN.0
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::PADDING => f.write_str("PADDING"),
            Self::PING => f.write_str("PING"),
            Self::ACK => f.write_str("ACK"),
            Self::ACK_ECN => f.write_str("ACK_ECN"),
            Self::CLOSE => f.write_str("CLOSE"),
            ty if ty.is_upper() => write!(f, "upper({:#x})", ty.0),
            ty => write!(f, "reserved({:#x})", ty.0),
        }
    }
}

/// Why a payload could not be decoded into frames. Any of these closes the channel: the
/// packet authenticated, so the peer itself sent it.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The payload ended inside a frame type.
    #[error("payload ends inside a frame type")]
    TruncatedType,
    /// The payload ended inside a frame of this type.
    #[error("{0} frame truncated")]
    Truncated(FrameType),
    /// The frame type was not in its shortest encoding (RFC 9000 §12.4 rule).
    #[error("frame type {0} not minimally encoded")]
    NonMinimalType(FrameType),
    /// A channel frame type this version does not define.
    #[error("unsupported channel frame type {0}")]
    Reserved(FrameType),
    /// The ACK announces more ranges than the rest of the payload could hold.
    #[error("ACK announces {0} ranges, more than the payload can hold")]
    AckRangeCount(u64),
    /// An ACK range or gap reaches below packet number 0.
    #[error("ACK range extends below packet number 0")]
    AckUnderflow,
    /// A CLOSE reason longer than [`MAX_CLOSE_REASON_LEN`].
    #[error("CLOSE reason of {0} bytes exceeds the limit")]
    CloseReasonTooLong(u64),
}

/// Cumulative counts of received packets by ECN codepoint (RFC 9000 §19.3.2), as reported in
/// an ACK_ECN frame: every authenticated packet the receiver processed, by the codepoint of
/// its IP header.
#[derive(Debug, Default, Copy, Clone, Eq, PartialEq, Hash)]
pub struct EcnCounts {
    /// Packets received marked ECT(0).
    pub ect0: u64,
    /// Packets received marked ECT(1).
    pub ect1: u64,
    /// Packets received marked CE (congestion experienced).
    pub ce: u64,
}

impl EcnCounts {
    /// All counts zero.
    pub const ZERO: Self = Self {
        ect0: 0,
        ect1: 0,
        ce: 0,
    };

    /// Whether every count is zero (an ACK then carries no counts).
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }
}

/// An ACK frame (RFC 9000 §19.3): type ACK without ECN counts, type ACK_ECN with them.
///
/// Invariant, guaranteed by decoding and by [`AckFrame::from_ranges`]: `ranges` is non-empty,
/// descending, disjoint and non-adjacent, `ranges[0]` ends at `largest`, and every value is at
/// most [`VARINT_MAX`]. Encoding a value that breaks it sends garbage but does not panic.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct AckFrame {
    /// Largest packet number acknowledged.
    pub largest: u64,
    /// Time the receiver held the ACK after receiving `largest`, in microseconds.
    pub delay_micros: u64,
    /// Acknowledged packet numbers, newest range first.
    pub ranges: Vec<RangeInclusive<u64>>,
    /// The receiver's ECN counts; `Some` makes the frame an ACK_ECN.
    pub ecn: Option<EcnCounts>,
}

impl AckFrame {
    /// Builds an ACK for the newest `max_ranges` ranges of `set` (at least one), or `None` if
    /// `set` is empty. Values above [`VARINT_MAX`] cannot be sent and are left out.
    pub fn from_ranges(set: &RangeSet, delay_micros: u64, max_ranges: usize) -> Option<Self> {
        let ranges: Vec<_> = set
            .iter()
            .rev()
            .filter_map(|r| {
                let end = r.end.min(VARINT_MAX + 1);
                (r.start < end).then(|| r.start..=end - 1)
            })
            .take(max_ranges.max(1))
            .collect();
        let largest = *ranges.first()?.end();
        Some(Self {
            largest,
            delay_micros,
            ranges,
            ecn: None,
        })
    }

    /// Longest encoding of an ACK frame with one range: the type byte, then largest, delay
    /// and first range as full 8-byte varints, a 1-byte range count of zero, and three ECN
    /// counts as full 8-byte varints.
    pub const MAX_SINGLE_RANGE_LEN: usize = 1 + 8 + 8 + 1 + 8 + 3 * 8;

    /// Drops the oldest ranges until the frame's encoding takes at most `room` bytes, keeping
    /// at least the newest one. Whether it then fits.
    pub fn truncate_to(&mut self, room: usize) -> bool {
        while Frame::encoded_ack_len(self) > room {
            if self.ranges.len() <= 1 {
                return false;
            }
            self.ranges.pop();
        }
        true
    }

    /// The acknowledged ranges, newest first.
    pub fn iter(&self) -> impl Iterator<Item = RangeInclusive<u64>> + '_ {
        self.ranges.iter().cloned()
    }

    /// The frame type on the wire: ACK_ECN when the frame carries ECN counts.
    pub fn frame_type(&self) -> FrameType {
        if self.ecn.is_some() {
            FrameType::ACK_ECN
        } else {
            FrameType::ACK
        }
    }

    /// The integers after the type, in wire order: largest, delay, range count, first range,
    /// then (gap, range length) pairs, then the ECN counts if any. Encoding and its length
    /// both derive from this.
    fn wire_fields(&self) -> impl Iterator<Item = u64> + '_ {
        let first_start = self.ranges.first().map_or(self.largest, |r| *r.start());
        let count = self.ranges.len().saturating_sub(1) as u64;
        let head = [
            self.largest,
            self.delay_micros,
            count,
            self.largest.saturating_sub(first_start),
        ];
        let pairs = self.ranges.windows(2).flat_map(|w| {
            // RFC 9000 §19.3.1: gap = previous smallest - this largest - 2.
            let gap = w[0].start().saturating_sub(*w[1].end()).saturating_sub(2);
            [gap, w[1].end().saturating_sub(*w[1].start())]
        });
        let ecn = self.ecn.into_iter().flat_map(|c| [c.ect0, c.ect1, c.ce]);
        head.into_iter().chain(pairs).chain(ecn)
    }

    /// Decodes the body of an ACK (`ty` = ACK) or ACK_ECN frame.
    fn decode(r: &mut Reader<'_>, ty: FrameType) -> Result<Self, FrameError> {
        let truncated = |_| FrameError::Truncated(ty);
        let largest = r.varint().map_err(truncated)?;
        let delay_micros = r.varint().map_err(truncated)?;
        let count = r.varint().map_err(truncated)?;
        // Each further range takes at least two bytes: this bounds the allocation below by
        // the payload size, whatever the peer claims.
        if count > (r.remaining() / 2) as u64 {
            return Err(FrameError::AckRangeCount(count));
        }
        let first = r.varint().map_err(truncated)?;
        let mut smallest = largest.checked_sub(first).ok_or(FrameError::AckUnderflow)?;
        let mut ranges = Vec::with_capacity(count as usize + 1);
        ranges.push(smallest..=largest);
        for _ in 0..count {
            let gap = r.varint().map_err(truncated)?;
            let len = r.varint().map_err(truncated)?;
            let high = smallest
                .checked_sub(gap)
                .and_then(|x| x.checked_sub(2))
                .ok_or(FrameError::AckUnderflow)?;
            smallest = high.checked_sub(len).ok_or(FrameError::AckUnderflow)?;
            ranges.push(smallest..=high);
        }
        let ecn = if ty == FrameType::ACK_ECN {
            Some(EcnCounts {
                ect0: r.varint().map_err(truncated)?,
                ect1: r.varint().map_err(truncated)?,
                ce: r.varint().map_err(truncated)?,
            })
        } else {
            None
        };
        Ok(Self {
            largest,
            delay_micros,
            ranges,
            ecn,
        })
    }
}

/// One decoded frame, borrowing its bytes from the payload.
#[derive(Debug, Clone, Eq, PartialEq)]
pub enum Frame<'a> {
    /// This many zero bytes (a whole run decodes as one frame).
    Padding(usize),
    /// Asks for an acknowledgment.
    Ping,
    /// Acknowledges packet numbers (type ACK, or ACK_ECN when it carries ECN counts).
    Ack(AckFrame),
    /// Closes the channel.
    Close {
        /// Why; the values are defined by the channel.
        code: u64,
        /// Human-readable detail, at most [`MAX_CLOSE_REASON_LEN`] bytes.
        reason: &'a [u8],
    },
    /// Path validation: echo these bytes in a PATH_RESPONSE.
    PathChallenge([u8; 8]),
    /// Path validation: the bytes of a PATH_CHALLENGE.
    PathResponse([u8; 8]),
    /// A stream-layer frame the channel carries without looking inside.
    Upper {
        /// Its type, at least [`FrameType::UPPER_MIN`].
        ty: FrameType,
        /// Its body.
        body: &'a [u8],
    },
}

impl Frame<'_> {
    /// Appends the frame to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            Frame::Padding(n) => buf.resize(buf.len() + n, 0),
            Frame::Ping => write_varint(buf, FrameType::PING.0),
            Frame::Ack(ack) => {
                write_varint(buf, ack.frame_type().0);
                ack.wire_fields().for_each(|v| write_varint(buf, v));
            }
            Frame::Close { code, reason } => {
                let reason = &reason[..reason.len().min(MAX_CLOSE_REASON_LEN)];
                write_varint(buf, FrameType::CLOSE.0);
                write_varint(buf, *code);
                write_varint(buf, reason.len() as u64);
                buf.extend_from_slice(reason);
            }
            Frame::PathChallenge(data) => {
                write_varint(buf, FrameType::PATH_CHALLENGE.0);
                buf.extend_from_slice(data);
            }
            Frame::PathResponse(data) => {
                write_varint(buf, FrameType::PATH_RESPONSE.0);
                buf.extend_from_slice(data);
            }
            Frame::Upper { ty, body } => {
                write_upper_header(buf, *ty, body.len());
                buf.extend_from_slice(body);
            }
        }
    }

    /// Bytes [`encode`](Self::encode) appends.
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::Padding(n) => *n,
            Frame::Ping => 1,
            Frame::Ack(ack) => Self::encoded_ack_len(ack),
            Frame::Close { code, reason } => {
                let n = reason.len().min(MAX_CLOSE_REASON_LEN);
                1 + varint_len(*code) + varint_len(n as u64) + n
            }
            Frame::PathChallenge(_) | Frame::PathResponse(_) => 9,
            Frame::Upper { ty, body } => upper_header_len(*ty, body.len()) + body.len(),
        }
    }

    fn encoded_ack_len(ack: &AckFrame) -> usize {
        1 + ack.wire_fields().map(varint_len).sum::<usize>()
    }

    /// Whether receiving this frame obliges the peer to acknowledge the packet. PADDING, ACK
    /// and CLOSE do not, so ACKs are never acknowledged and closing needs no reply.
    pub fn is_ack_eliciting(&self) -> bool {
        !matches!(
            self,
            Frame::Padding(_) | Frame::Ack(_) | Frame::Close { .. }
        )
    }
}

/// Appends the header of a stream-layer frame; the caller then appends `body_len` bytes.
pub fn write_upper_header(buf: &mut Vec<u8>, ty: FrameType, body_len: usize) {
    debug_assert!(ty.is_upper(), "{ty} is not a stream-layer frame type");
    write_varint(buf, ty.0);
    write_varint(buf, body_len as u64);
}

/// Bytes [`write_upper_header`] appends.
pub fn upper_header_len(ty: FrameType, body_len: usize) -> usize {
    varint_len(ty.0) + varint_len(body_len as u64)
}

/// Iterates over the frames of a decrypted payload. Yields at most one error, then stops.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Frames<'a> {
    /// Starts at the beginning of `payload`.
    pub fn new(payload: &'a [u8]) -> Self {
        Self {
            rest: payload,
            failed: false,
        }
    }

    #[inline]
    fn decode_one(&mut self) -> Result<Frame<'a>, FrameError> {
        let zeros = self.rest.iter().take_while(|&&b| b == 0).count();
        if zeros > 0 {
            self.rest = &self.rest[zeros..];
            return Ok(Frame::Padding(zeros));
        }
        let mut r = Reader::new(self.rest);
        let ty = FrameType(r.varint().map_err(|_| FrameError::TruncatedType)?);
        if r.position() != varint_len(ty.0) {
            return Err(FrameError::NonMinimalType(ty));
        }
        let truncated = |_| FrameError::Truncated(ty);
        let frame = match ty {
            FrameType::PING => Frame::Ping,
            FrameType::ACK | FrameType::ACK_ECN => Frame::Ack(AckFrame::decode(&mut r, ty)?),
            FrameType::CLOSE => {
                let code = r.varint().map_err(truncated)?;
                let len = r.varint().map_err(truncated)?;
                if len > MAX_CLOSE_REASON_LEN as u64 {
                    return Err(FrameError::CloseReasonTooLong(len));
                }
                let reason = r.bytes(len as usize).map_err(truncated)?;
                Frame::Close { code, reason }
            }
            FrameType::PATH_CHALLENGE | FrameType::PATH_RESPONSE => {
                let bytes = r.bytes(8).map_err(truncated)?;
                let mut data = [0u8; 8];
                data.copy_from_slice(bytes);
                if ty == FrameType::PATH_CHALLENGE {
                    Frame::PathChallenge(data)
                } else {
                    Frame::PathResponse(data)
                }
            }
            ty if ty.is_upper() => Frame::Upper {
                ty,
                body: r.varint_bytes().map_err(truncated)?,
            },
            ty => return Err(FrameError::Reserved(ty)),
        };
        self.rest = &self.rest[r.position()..];
        Ok(frame)
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let item = self.decode_one();
        self.failed = item.is_err();
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(payload: &[u8]) -> Result<Vec<Frame<'_>>, FrameError> {
        Frames::new(payload).collect()
    }

    fn encode(frame: &Frame<'_>) -> Vec<u8> {
        let mut buf = Vec::new();
        frame.encode(&mut buf);
        assert_eq!(buf.len(), frame.encoded_len(), "encoded_len of {frame:?}");
        buf
    }

    fn set_of(ranges: &[std::ops::Range<u64>]) -> RangeSet {
        let mut set = RangeSet::new();
        for r in ranges {
            set.insert(r.clone());
        }
        set
    }

    /// A random set of packet numbers: runs spread anywhere below 2^62.
    fn range_set() -> impl Strategy<Value = RangeSet> {
        (
            0u64..(1 << 62) - (1 << 24),
            prop::collection::vec((0u64..1 << 20, 1u64..300), 1..20),
        )
            .prop_map(|(base, runs)| {
                let mut set = RangeSet::new();
                for (off, len) in runs {
                    set.insert(base + off..base + off + len);
                }
                set
            })
    }

    /// No counts (an ACK) or any three counts (an ACK_ECN).
    fn ecn_counts() -> impl Strategy<Value = Option<EcnCounts>> {
        prop::option::of(
            (0..=VARINT_MAX, 0..=VARINT_MAX, 0..=VARINT_MAX)
                .prop_map(|(ect0, ect1, ce)| EcnCounts { ect0, ect1, ce }),
        )
    }

    /// Owned material for one frame of each kind.
    #[derive(Debug, Clone)]
    enum Spec {
        Padding(usize),
        Ping,
        Ack(AckFrame),
        Close(u64, Vec<u8>),
        Challenge([u8; 8]),
        Response([u8; 8]),
        Upper(u64, Vec<u8>),
    }

    impl Spec {
        fn frame(&self) -> Frame<'_> {
            match self {
                Spec::Padding(n) => Frame::Padding(*n),
                Spec::Ping => Frame::Ping,
                Spec::Ack(a) => Frame::Ack(a.clone()),
                Spec::Close(code, reason) => Frame::Close {
                    code: *code,
                    reason,
                },
                Spec::Challenge(d) => Frame::PathChallenge(*d),
                Spec::Response(d) => Frame::PathResponse(*d),
                Spec::Upper(ty, body) => Frame::Upper {
                    ty: FrameType(*ty),
                    body,
                },
            }
        }
    }

    fn spec() -> impl Strategy<Value = Spec> {
        prop_oneof![
            (1usize..50).prop_map(Spec::Padding),
            Just(Spec::Ping),
            (range_set(), 0..=VARINT_MAX, 1usize..30, ecn_counts()).prop_map(
                |(set, delay, max, ecn)| {
                    let mut ack = AckFrame::from_ranges(&set, delay, max).unwrap();
                    ack.ecn = ecn;
                    Spec::Ack(ack)
                }
            ),
            (
                0..=VARINT_MAX,
                prop::collection::vec(any::<u8>(), 0..=MAX_CLOSE_REASON_LEN)
            )
                .prop_map(|(c, r)| Spec::Close(c, r)),
            any::<[u8; 8]>().prop_map(Spec::Challenge),
            any::<[u8; 8]>().prop_map(Spec::Response),
            (
                FrameType::UPPER_MIN.0..=VARINT_MAX,
                prop::collection::vec(any::<u8>(), 0..200)
            )
                .prop_map(|(t, b)| Spec::Upper(t, b)),
        ]
    }

    proptest! {
        #[test]
        fn every_frame_kind_round_trips(spec in spec()) {
            let frame = spec.frame();
            let bytes = encode(&frame);
            prop_assert_eq!(decode_all(&bytes).unwrap(), vec![frame]);
        }

        #[test]
        fn frame_sequences_round_trip(specs in prop::collection::vec(spec(), 0..12)) {
            let frames: Vec<Frame<'_>> = specs.iter().map(Spec::frame).collect();
            let mut payload = Vec::new();
            for f in &frames {
                f.encode(&mut payload);
            }
            // Adjacent padding runs are indistinguishable from one longer run.
            let mut expected: Vec<Frame<'_>> = Vec::new();
            for f in frames {
                match (expected.last_mut(), &f) {
                    (Some(Frame::Padding(a)), Frame::Padding(b)) => *a += b,
                    _ => expected.push(f),
                }
            }
            prop_assert_eq!(decode_all(&payload).unwrap(), expected);
        }

        #[test]
        fn ack_from_ranges_matches_the_set(set in range_set(), max in 1usize..40) {
            let ack = AckFrame::from_ranges(&set, 0, max).unwrap();
            let newest: Vec<_> = set.iter().rev().take(max).map(|r| r.start..=r.end - 1).collect();
            prop_assert_eq!(ack.largest, set.max().unwrap());
            prop_assert_eq!(ack.iter().collect::<Vec<_>>(), newest);
        }

        #[test]
        fn ack_truncated_to_room_keeps_the_newest_ranges(
            set in range_set(),
            delay in 0..=VARINT_MAX,
            room in 0usize..400,
            ecn in ecn_counts(),
        ) {
            let mut full = AckFrame::from_ranges(&set, delay, usize::MAX).unwrap();
            full.ecn = ecn;
            let newest = AckFrame { ranges: full.ranges[..1].to_vec(), ..full.clone() };
            prop_assert!(Frame::Ack(newest).encoded_len() <= AckFrame::MAX_SINGLE_RANGE_LEN);
            let mut ack = full.clone();
            let fits = ack.truncate_to(room);
            let len = Frame::Ack(ack.clone()).encoded_len();
            prop_assert_eq!(fits, len <= room);
            prop_assert!(fits || ack.ranges.len() == 1);
            if room >= AckFrame::MAX_SINGLE_RANGE_LEN {
                prop_assert!(fits, "a one-range ACK always fits in MAX_SINGLE_RANGE_LEN");
            }
            // The newest ranges are kept, as many as fit: one more would not.
            prop_assert_eq!(&ack.ranges[..], &full.ranges[..ack.ranges.len()]);
            if fits && ack.ranges.len() < full.ranges.len() {
                let mut more = ack.clone();
                more.ranges.push(full.ranges[ack.ranges.len()].clone());
                prop_assert!(Frame::Ack(more).encoded_len() > room);
            }
            let bytes = encode(&Frame::Ack(ack.clone()));
            prop_assert_eq!(decode_all(&bytes).unwrap(), vec![Frame::Ack(ack)]);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_reencode(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            for item in Frames::new(&bytes) {
                let Ok(frame) = item else { break };
                let again = encode(&frame);
                prop_assert_eq!(decode_all(&again).unwrap(), vec![frame]);
            }
        }

        #[test]
        fn every_strict_prefix_of_a_frame_fails(spec in spec()) {
            let frame = spec.frame();
            prop_assume!(!matches!(frame, Frame::Padding(_)));
            let bytes = encode(&frame);
            for cut in 1..bytes.len() {
                prop_assert!(decode_all(&bytes[..cut]).is_err(), "prefix of {} bytes decoded", cut);
            }
        }
    }

    #[test]
    fn ack_with_many_ranges() {
        // Every even number below 4000: 2000 ranges separated by gaps of one.
        let set = set_of(&(0..2000u64).map(|i| 2 * i..2 * i + 1).collect::<Vec<_>>());
        let ack = AckFrame::from_ranges(&set, 25_000, usize::MAX).unwrap();
        assert_eq!(ack.ranges.len(), 2000);
        let bytes = encode(&Frame::Ack(ack.clone()));
        let decoded = decode_all(&bytes).unwrap();
        assert_eq!(decoded, vec![Frame::Ack(ack)]);
        let Frame::Ack(ack) = &decoded[0] else {
            unreachable!()
        };
        let mut back = RangeSet::new();
        for r in ack.iter() {
            back.insert(*r.start()..*r.end() + 1);
        }
        assert_eq!(back, set);
    }

    #[test]
    fn from_ranges_keeps_the_newest() {
        let set = set_of(&[0..2, 4..5, 10..20, 30..31]);
        let ack = AckFrame::from_ranges(&set, 7, 2).unwrap();
        assert_eq!(ack.largest, 30);
        assert_eq!(ack.delay_micros, 7);
        assert_eq!(ack.ranges, vec![30..=30, 10..=19]);
        assert_eq!(
            AckFrame::from_ranges(&set, 0, 0).unwrap().ranges,
            vec![30..=30]
        );
        assert_eq!(AckFrame::from_ranges(&RangeSet::new(), 0, 5), None);
    }

    /// An ACK frame from raw wire integers.
    fn raw_ack(fields: &[u64]) -> Vec<u8> {
        let mut buf = vec![0x02];
        fields.iter().for_each(|&v| write_varint(&mut buf, v));
        buf
    }

    #[test]
    fn ack_ecn_wire_format() {
        // ACK_ECN: the ACK fields, then ECT(0), ECT(1) and CE counts, all varints.
        let mut bytes = vec![0x03];
        for v in [10u64, 25, 0, 3, 7, 0, 300] {
            write_varint(&mut bytes, v);
        }
        assert_eq!(bytes, [0x03, 10, 25, 0, 3, 7, 0, 0x41, 0x2c]);
        let expected = AckFrame {
            largest: 10,
            delay_micros: 25,
            ranges: vec![7..=10],
            ecn: Some(EcnCounts {
                ect0: 7,
                ect1: 0,
                ce: 300,
            }),
        };
        assert_eq!(
            decode_all(&bytes).unwrap(),
            vec![Frame::Ack(expected.clone())]
        );
        assert_eq!(encode(&Frame::Ack(expected.clone())), bytes);
        // The same ACK without counts is type 0x02 and six bytes shorter.
        let plain = AckFrame {
            ecn: None,
            ..expected
        };
        assert_eq!(encode(&Frame::Ack(plain)), [0x02, 10, 25, 0, 3]);
        // Counts cut short: truncated ACK_ECN, not an ACK.
        for cut in [5, 6, 7, 8] {
            assert_eq!(
                decode_all(&bytes[..cut]),
                Err(FrameError::Truncated(FrameType::ACK_ECN)),
                "cut at {cut}"
            );
        }
        // Range arithmetic is checked the same way in both types.
        assert_eq!(
            decode_all(&[0x03, 3, 0, 0, 4, 0, 0, 0]),
            Err(FrameError::AckUnderflow)
        );
    }

    #[test]
    fn malformed_acks_are_rejected() {
        // largest, delay, count, first, (gap, len)*
        let first_beyond_largest = raw_ack(&[3, 0, 0, 4]);
        assert_eq!(
            decode_all(&first_beyond_largest),
            Err(FrameError::AckUnderflow)
        );
        let gap_underflow = raw_ack(&[10, 0, 1, 5, 4, 0]);
        assert_eq!(decode_all(&gap_underflow), Err(FrameError::AckUnderflow));
        let len_underflow = raw_ack(&[10, 0, 1, 0, 0, 9]);
        assert_eq!(decode_all(&len_underflow), Err(FrameError::AckUnderflow));
        let edge = raw_ack(&[10, 0, 1, 0, 0, 8]); // second range 0..=8: valid
        assert!(decode_all(&edge).is_ok());
        let huge_count = raw_ack(&[10, 0, 1 << 40, 0, 0, 0]);
        assert_eq!(
            decode_all(&huge_count),
            Err(FrameError::AckRangeCount(1 << 40))
        );
        let count_beyond_payload = raw_ack(&[1000, 0, 3, 0, 0, 0, 0, 0]);
        assert_eq!(
            decode_all(&count_beyond_payload),
            Err(FrameError::AckRangeCount(3))
        );
    }

    #[test]
    fn bad_types_and_lengths_are_rejected() {
        for ty in [0x07u8, 0x08, 0x1f] {
            assert_eq!(
                decode_all(&[ty, 0, 0]),
                Err(FrameError::Reserved(FrameType(ty.into())))
            );
        }
        // PING as a two-byte varint.
        assert_eq!(
            decode_all(&[0x40, 0x01]),
            Err(FrameError::NonMinimalType(FrameType::PING))
        );
        assert_eq!(decode_all(&[0x40]), Err(FrameError::TruncatedType));
        let mut too_long = vec![0x04, 0x00];
        write_varint(&mut too_long, MAX_CLOSE_REASON_LEN as u64 + 1);
        too_long.resize(too_long.len() + MAX_CLOSE_REASON_LEN + 1, b'x');
        assert_eq!(
            decode_all(&too_long),
            Err(FrameError::CloseReasonTooLong(1025))
        );
        // Upper frame whose body runs past the payload.
        assert_eq!(
            decode_all(&[0x20, 0x05, 1, 2]),
            Err(FrameError::Truncated(FrameType(0x20)))
        );
    }

    #[test]
    fn iteration_stops_after_the_first_error() {
        let payload = [0x01, 0x07, 0x01, 0x01];
        let items: Vec<_> = Frames::new(&payload).collect();
        assert_eq!(
            items,
            vec![Ok(Frame::Ping), Err(FrameError::Reserved(FrameType(7)))]
        );
        // A PATH_CHALLENGE needs its 8 bytes.
        assert_eq!(
            decode_all(&[0x05, 1, 2, 3]),
            Err(FrameError::Truncated(FrameType::PATH_CHALLENGE))
        );
    }

    #[test]
    fn unknown_upper_frames_are_skippable() {
        let mut payload = Vec::new();
        write_upper_header(&mut payload, FrameType(0x3fff_0001), 3);
        payload.extend_from_slice(b"abc");
        assert_eq!(
            payload.len(),
            upper_header_len(FrameType(0x3fff_0001), 3) + 3
        );
        Frame::Ping.encode(&mut payload);
        let frames = decode_all(&payload).unwrap();
        assert_eq!(
            frames,
            vec![
                Frame::Upper {
                    ty: FrameType(0x3fff_0001),
                    body: b"abc"
                },
                Frame::Ping
            ]
        );
    }

    #[test]
    fn ack_eliciting_table() {
        let ack = AckFrame::from_ranges(&set_of(&[0..1, 3..5]), 0, 1).unwrap();
        assert!(!Frame::Padding(3).is_ack_eliciting());
        assert!(Frame::Ping.is_ack_eliciting());
        assert!(!Frame::Ack(ack).is_ack_eliciting());
        assert!(!Frame::Close {
            code: 0,
            reason: b""
        }
        .is_ack_eliciting());
        assert!(Frame::Upper {
            ty: FrameType::UPPER_MIN,
            body: b""
        }
        .is_ack_eliciting());
    }

    #[test]
    fn close_reason_is_cut_to_the_limit_on_encode() {
        let reason = vec![b'r'; MAX_CLOSE_REASON_LEN + 10];
        let bytes = encode(&Frame::Close {
            code: 9,
            reason: &reason,
        });
        let expected = Frame::Close {
            code: 9,
            reason: &reason[..MAX_CLOSE_REASON_LEN],
        };
        assert_eq!(decode_all(&bytes).unwrap(), vec![expected]);
    }
}
