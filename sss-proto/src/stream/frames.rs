//! The stream layer's frames (spec/streams.md, "Frames").
//!
//! The channel hands every upper-layer frame over as `(type, body)`;
//! [`StreamLayerFrame::decode`] turns a body into a typed view that borrows from it. Encoders
//! append the complete upper-layer frame, channel header included, because a sender sizes
//! frames against the space left in a packet. STREAM and DATAGRAM data is the rest of the
//! body, so `write_header` writes everything before it and the caller copies the data straight
//! from its send buffer.
//!
//! Encoding never fails and never panics; values a decoder would reject (a name longer than
//! [`MAX_NAME_LEN`], data ending beyond 2^62 - 1, a fragment beyond its datagram…) produce a
//! frame the peer rejects, so senders keep them valid by construction.

use std::fmt;

use thiserror::Error;

use crate::codec::{varint_len, write_varint, Reader, VARINT_MAX};
use crate::frame::{upper_header_len, write_upper_header, FrameType};

/// Stream data, possibly opening the stream.
pub const STREAM: FrameType = FrameType(0x20);
/// Abandons the sending direction of a stream.
pub const RESET_STREAM: FrameType = FrameType(0x21);
/// Asks the peer to abandon its sending direction of a stream.
pub const STOP_SENDING: FrameType = FrameType(0x22);
/// Raises the session's receive limit.
pub const MAX_DATA: FrameType = FrameType(0x23);
/// Raises one stream's receive limit.
pub const MAX_STREAM_DATA: FrameType = FrameType(0x24);
/// Raises the count of streams the peer may open.
pub const MAX_STREAMS: FrameType = FrameType(0x25);
/// A fragment of a best-effort datagram.
pub const DATAGRAM: FrameType = FrameType(0x26);

/// Longest service or protocol name of a top-level stream, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Largest MAX_STREAMS value: stream counters are below 2^61, so no credit beyond it means
/// anything, and refusing it keeps the session's id arithmetic far from overflow.
pub const MAX_STREAMS_LIMIT: u64 = 1 << 61;

/// A 62-bit stream id: `counter << 1 | side`.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash, Ord, PartialOrd)]
pub struct StreamId(pub u64);

impl StreamId {
    /// Largest counter a side can use (ids must fit a varint).
    pub const MAX_COUNTER: u64 = VARINT_MAX >> 1;

    /// The id of stream `counter` opened by `side` (false: the host whose EID sorts lower).
    /// `counter` must not exceed [`MAX_COUNTER`](Self::MAX_COUNTER).
    pub fn new(side: bool, counter: u64) -> Self {
        Self(counter << 1 | u64::from(side))
    }

    /// Which host opened the stream (false: the host whose EID sorts lower).
    pub fn side(self) -> bool {
        self.0 & 1 == 1
    }

    /// The opener's count of streams before this one.
    pub fn counter(self) -> u64 {
        self.0 >> 1
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.counter(), u8::from(self.side()))
    }
}

/// STREAM frame flag bits.
pub mod flags {
    /// The data ends the stream.
    pub const FIN: u8 = 0x01;
    /// A record ends with the last byte of the data.
    pub const RECORD: u8 = 0x02;
    /// Open info follows the flags.
    pub const OPEN: u8 = 0x04;
    /// (With OPEN) a top-level stream: the open info is service and protocol names.
    pub const TOP: u8 = 0x08;
    /// (With OPEN) a reliable datagram substream.
    pub const DGRAM: u8 = 0x10;
    /// Zero on send; a receiver rejects frames with any of these set.
    pub const RESERVED: u8 = 0xe0;
}

/// What a receiver needs to create a stream from whichever of its frames arrives first.
#[derive(Debug, Clone, Copy, Eq, PartialEq)]
pub enum OpenInfo<'a> {
    /// A substream of `parent`.
    Sub {
        /// The parent stream.
        parent: StreamId,
        /// Whether it is a reliable datagram (delivered whole on the parent's datagram queue).
        datagram: bool,
    },
    /// A top-level stream (its parent is the implicit root).
    Top {
        /// The service the stream is for, at most [`MAX_NAME_LEN`] bytes.
        service: &'a str,
        /// The protocol spoken on it, at most [`MAX_NAME_LEN`] bytes.
        protocol: &'a str,
    },
}

impl<'a> OpenInfo<'a> {
    /// Top-level open info, checking the name lengths a receiver accepts.
    pub fn top(service: &'a str, protocol: &'a str) -> Result<Self, StreamFrameError> {
        for name in [service, protocol] {
            if name.len() > MAX_NAME_LEN {
                return Err(StreamFrameError::NameTooLong(name.len() as u64));
            }
        }
        Ok(Self::Top { service, protocol })
    }

    fn flags(&self) -> u8 {
        match self {
            Self::Sub { datagram: true, .. } => flags::OPEN | flags::DGRAM,
            Self::Sub { .. } => flags::OPEN,
            Self::Top { .. } => flags::OPEN | flags::TOP,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Sub { parent, .. } => varint_len(parent.0),
            Self::Top { service, protocol } => [service, protocol]
                .iter()
                .map(|s| varint_len(s.len() as u64) + s.len())
                .sum(),
        }
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            Self::Sub { parent, .. } => write_varint(buf, parent.0),
            Self::Top { service, protocol } => {
                for name in [service, protocol] {
                    write_varint(buf, name.len() as u64);
                    buf.extend_from_slice(name.as_bytes());
                }
            }
        }
    }

    /// Reads the open info announced by `f` (already checked by [`check_flags`]).
    fn decode(r: &mut Reader<'a>, f: u8) -> Result<Self, StreamFrameError> {
        if f & flags::TOP == 0 {
            return Ok(Self::Sub {
                parent: StreamId(varint(r, STREAM)?),
                datagram: f & flags::DGRAM != 0,
            });
        }
        let service = name(r)?;
        let protocol = name(r)?;
        Ok(Self::Top { service, protocol })
    }
}

/// Stream data, and for a stream not yet known to be open, its open info.
#[derive(Debug, Clone, Copy, Eq, PartialEq)]
pub struct StreamFrame<'a> {
    /// The stream.
    pub id: StreamId,
    /// Stream offset of the first data byte; `offset + data.len()` is at most 2^62 - 1.
    pub offset: u64,
    /// The bytes.
    pub data: &'a [u8],
    /// The data ends the stream.
    pub fin: bool,
    /// A record ends with the last data byte (or, without data, at `offset`).
    pub record: bool,
    /// Present until the sender saw an OPEN frame of this stream acknowledged.
    pub open: Option<OpenInfo<'a>>,
}

impl StreamFrame<'_> {
    /// Bytes a STREAM frame takes besides its data (channel header included) when it carries
    /// `data_len` bytes.
    pub fn overhead(
        id: StreamId,
        offset: u64,
        open: Option<&OpenInfo<'_>>,
        data_len: usize,
    ) -> usize {
        let head = Self::body_header_len(id, offset, open);
        upper_header_len(STREAM, head.saturating_add(data_len)) + head
    }

    /// The most data bytes a STREAM frame can carry in at most `space` bytes, also kept so
    /// the data ends at or below 2^62 - 1; `None` if not even an empty frame fits.
    pub fn max_data_len(
        id: StreamId,
        offset: u64,
        open: Option<&OpenInfo<'_>>,
        space: usize,
    ) -> Option<usize> {
        let head = Self::body_header_len(id, offset, open);
        max_fitting(STREAM, head, space, VARINT_MAX.saturating_sub(offset))
    }

    /// Writes the channel header and the STREAM body up to the data, for a frame carrying
    /// `data_len` bytes; the caller appends exactly `data_len` data bytes next.
    pub fn write_header(
        buf: &mut Vec<u8>,
        id: StreamId,
        offset: u64,
        data_len: usize,
        fin: bool,
        record: bool,
        open: Option<&OpenInfo<'_>>,
    ) {
        let head = Self::body_header_len(id, offset, open);
        write_upper_header(buf, STREAM, head.saturating_add(data_len));
        write_varint(buf, id.0);
        let mut f = open.map_or(0, OpenInfo::flags);
        if fin {
            f |= flags::FIN;
        }
        if record {
            f |= flags::RECORD;
        }
        buf.push(f);
        if let Some(open) = open {
            open.encode(buf);
        }
        write_varint(buf, offset);
    }

    /// Body bytes before the data: id, flags, open info, offset.
    fn body_header_len(id: StreamId, offset: u64, open: Option<&OpenInfo<'_>>) -> usize {
        varint_len(id.0) + 1 + open.map_or(0, OpenInfo::encoded_len) + varint_len(offset)
    }
}

impl<'a> StreamFrame<'a> {
    fn decode(body: &'a [u8]) -> Result<Self, StreamFrameError> {
        let mut r = Reader::new(body);
        let id = StreamId(varint(&mut r, STREAM)?);
        let f = r.u8().map_err(|_| StreamFrameError::Truncated(STREAM))?;
        check_flags(f)?;
        let open = if f & flags::OPEN != 0 {
            Some(OpenInfo::decode(&mut r, f)?)
        } else {
            None
        };
        let offset = varint(&mut r, STREAM)?;
        let data = r.rest();
        let len = data.len() as u64;
        if len > VARINT_MAX - offset {
            return Err(StreamFrameError::OffsetOverflow { offset, len });
        }
        Ok(Self {
            id,
            offset,
            data,
            fin: f & flags::FIN != 0,
            record: f & flags::RECORD != 0,
            open,
        })
    }
}

/// One fragment of a best-effort datagram sent on a stream.
#[derive(Debug, Clone, Copy, Eq, PartialEq)]
pub struct DatagramFrame<'a> {
    /// The stream whose datagram queue receives the datagram.
    pub stream: StreamId,
    /// Counts the datagrams of this stream and direction.
    pub datagram_id: u64,
    /// Length of the whole datagram.
    pub total_len: u64,
    /// Where this fragment's data sits in the datagram; `frag_offset + data.len() <= total_len`.
    pub frag_offset: u64,
    /// The fragment's bytes.
    pub data: &'a [u8],
}

impl DatagramFrame<'_> {
    /// Bytes a DATAGRAM frame takes besides its data (channel header included) when it
    /// carries `data_len` bytes.
    pub fn overhead(
        stream: StreamId,
        datagram_id: u64,
        total_len: u64,
        frag_offset: u64,
        data_len: usize,
    ) -> usize {
        let head = Self::body_header_len(stream, datagram_id, total_len, frag_offset);
        upper_header_len(DATAGRAM, head.saturating_add(data_len)) + head
    }

    /// The most data bytes a DATAGRAM frame can carry in at most `space` bytes, also kept
    /// within the datagram (`frag_offset + n <= total_len`); `None` if not even an empty
    /// frame fits.
    pub fn max_data_len(
        stream: StreamId,
        datagram_id: u64,
        total_len: u64,
        frag_offset: u64,
        space: usize,
    ) -> Option<usize> {
        let head = Self::body_header_len(stream, datagram_id, total_len, frag_offset);
        max_fitting(DATAGRAM, head, space, total_len.saturating_sub(frag_offset))
    }

    /// Writes the channel header and the DATAGRAM body up to the data, for a fragment carrying
    /// `data_len` bytes; the caller appends exactly `data_len` data bytes next.
    pub fn write_header(
        buf: &mut Vec<u8>,
        stream: StreamId,
        datagram_id: u64,
        total_len: u64,
        frag_offset: u64,
        data_len: usize,
    ) {
        let head = Self::body_header_len(stream, datagram_id, total_len, frag_offset);
        write_upper_header(buf, DATAGRAM, head.saturating_add(data_len));
        for v in [stream.0, datagram_id, total_len, frag_offset] {
            write_varint(buf, v);
        }
    }

    fn body_header_len(stream: StreamId, datagram_id: u64, total_len: u64, frag: u64) -> usize {
        [stream.0, datagram_id, total_len, frag]
            .into_iter()
            .map(varint_len)
            .sum()
    }
}

impl<'a> DatagramFrame<'a> {
    fn decode(body: &'a [u8]) -> Result<Self, StreamFrameError> {
        let mut r = Reader::new(body);
        let stream = StreamId(varint(&mut r, DATAGRAM)?);
        let datagram_id = varint(&mut r, DATAGRAM)?;
        let total_len = varint(&mut r, DATAGRAM)?;
        let frag_offset = varint(&mut r, DATAGRAM)?;
        let data = r.rest();
        let len = data.len() as u64;
        if frag_offset > total_len || len > total_len - frag_offset {
            return Err(StreamFrameError::FragmentBeyondTotal {
                frag_offset,
                len,
                total_len,
            });
        }
        Ok(Self {
            stream,
            datagram_id,
            total_len,
            frag_offset,
            data,
        })
    }
}

/// One decoded stream-layer frame, borrowing its bytes from the body.
#[derive(Debug, Clone, Copy, Eq, PartialEq)]
pub enum StreamLayerFrame<'a> {
    /// Stream data.
    Stream(StreamFrame<'a>),
    /// The sender abandons its direction of `id`.
    ResetStream {
        /// The stream.
        id: StreamId,
        /// Why (spec/streams.md, "Error codes").
        code: u64,
        /// Bytes the sender had sent on the stream before abandoning it.
        final_size: u64,
    },
    /// The sender asks the peer to abandon its direction of `id`.
    StopSending {
        /// The stream.
        id: StreamId,
        /// Why.
        code: u64,
    },
    /// The session's receive limit: cumulative bytes over all streams.
    MaxData(u64),
    /// One stream's receive limit: the highest offset the peer may send up to.
    MaxStreamData {
        /// The stream.
        id: StreamId,
        /// The limit.
        max: u64,
    },
    /// The peer may open streams with counters below this (at most [`MAX_STREAMS_LIMIT`]).
    MaxStreams(u64),
    /// A datagram fragment.
    Datagram(DatagramFrame<'a>),
}

impl<'a> StreamLayerFrame<'a> {
    /// Decodes the body of an upper-layer frame of type `ty` (as handed over by the channel).
    /// [`StreamFrameError::UnknownType`] concerns only this frame: a receiver may skip it.
    pub fn decode(ty: FrameType, body: &'a [u8]) -> Result<Self, StreamFrameError> {
        let mut r = Reader::new(body);
        let r = &mut r;
        let frame = match ty {
            STREAM => return StreamFrame::decode(body).map(Self::Stream),
            DATAGRAM => return DatagramFrame::decode(body).map(Self::Datagram),
            RESET_STREAM => Self::ResetStream {
                id: StreamId(varint(r, ty)?),
                code: varint(r, ty)?,
                final_size: varint(r, ty)?,
            },
            STOP_SENDING => Self::StopSending {
                id: StreamId(varint(r, ty)?),
                code: varint(r, ty)?,
            },
            MAX_DATA => Self::MaxData(varint(r, ty)?),
            MAX_STREAM_DATA => Self::MaxStreamData {
                id: StreamId(varint(r, ty)?),
                max: varint(r, ty)?,
            },
            MAX_STREAMS => match varint(r, ty)? {
                n if n > MAX_STREAMS_LIMIT => return Err(StreamFrameError::MaxStreamsTooLarge(n)),
                n => Self::MaxStreams(n),
            },
            ty => return Err(StreamFrameError::UnknownType(ty)),
        };
        if !r.is_empty() {
            return Err(StreamFrameError::TrailingBytes(ty));
        }
        Ok(frame)
    }

    /// The frame's type.
    pub fn ty(&self) -> FrameType {
        match self {
            Self::Stream(_) => STREAM,
            Self::ResetStream { .. } => RESET_STREAM,
            Self::StopSending { .. } => STOP_SENDING,
            Self::MaxData(_) => MAX_DATA,
            Self::MaxStreamData { .. } => MAX_STREAM_DATA,
            Self::MaxStreams(_) => MAX_STREAMS,
            Self::Datagram(_) => DATAGRAM,
        }
    }

    /// Appends the complete upper-layer frame (channel header and body).
    pub fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            Self::Stream(s) => {
                let open = s.open.as_ref();
                let len = s.data.len();
                StreamFrame::write_header(buf, s.id, s.offset, len, s.fin, s.record, open);
                buf.extend_from_slice(s.data);
            }
            Self::Datagram(d) => {
                let (id, total, frag) = (d.datagram_id, d.total_len, d.frag_offset);
                DatagramFrame::write_header(buf, d.stream, id, total, frag, d.data.len());
                buf.extend_from_slice(d.data);
            }
            control => {
                let (fields, n) = control.control_fields();
                let fields = &fields[..n];
                write_upper_header(buf, self.ty(), fields.iter().copied().map(varint_len).sum());
                fields.iter().for_each(|&v| write_varint(buf, v));
            }
        }
    }

    /// Bytes [`encode`](Self::encode) appends.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Stream(s) => {
                let n = s.data.len();
                StreamFrame::overhead(s.id, s.offset, s.open.as_ref(), n) + n
            }
            Self::Datagram(d) => {
                let n = d.data.len();
                DatagramFrame::overhead(d.stream, d.datagram_id, d.total_len, d.frag_offset, n) + n
            }
            control => {
                let (fields, n) = control.control_fields();
                let body = fields[..n].iter().copied().map(varint_len).sum();
                upper_header_len(self.ty(), body) + body
            }
        }
    }

    /// The body integers of a frame without data, in wire order: the first `n` of the array
    /// (none for STREAM and DATAGRAM, which carry data and are encoded on their own).
    fn control_fields(&self) -> ([u64; 3], usize) {
        match *self {
            Self::ResetStream {
                id,
                code,
                final_size,
            } => ([id.0, code, final_size], 3),
            Self::StopSending { id, code } => ([id.0, code, 0], 2),
            Self::MaxData(max) | Self::MaxStreams(max) => ([max, 0, 0], 1),
            Self::MaxStreamData { id, max } => ([id.0, max, 0], 2),
            Self::Stream(_) | Self::Datagram(_) => ([0; 3], 0),
        }
    }
}

/// Why a stream-layer frame body could not be decoded. Except for
/// [`UnknownType`](Self::UnknownType), the peer broke the protocol.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Error)]
#[non_exhaustive]
pub enum StreamFrameError {
    /// The body ended inside a field.
    #[error("{} frame truncated", TypeName(*.0))]
    Truncated(FrameType),
    /// A frame without data has bytes after its last field.
    #[error("{} frame has bytes after its last field", TypeName(*.0))]
    TrailingBytes(FrameType),
    /// Not a frame type this version of the stream layer defines.
    #[error("unknown stream-layer frame type {0}")]
    UnknownType(FrameType),
    /// STREAM flags with reserved bits set.
    #[error("STREAM flags {0:#04x} set reserved bits")]
    ReservedFlags(u8),
    /// STREAM flags with TOP or DGRAM but not OPEN.
    #[error("STREAM flags {0:#04x} set TOP or DGRAM without OPEN")]
    OpenFlagsWithoutOpen(u8),
    /// STREAM flags with both TOP and DGRAM: the root has no datagram queue.
    #[error("STREAM flags set both TOP and DGRAM")]
    TopDatagram,
    /// A service or protocol name longer than [`MAX_NAME_LEN`].
    #[error("name of {0} bytes exceeds {MAX_NAME_LEN}")]
    NameTooLong(u64),
    /// A service or protocol name that is not UTF-8.
    #[error("name is not UTF-8")]
    NameNotUtf8,
    /// STREAM data ending beyond the largest offset, 2^62 - 1.
    #[error("STREAM data of {len} bytes at offset {offset} ends beyond 2^62 - 1")]
    OffsetOverflow {
        /// The frame's offset.
        offset: u64,
        /// Its data length.
        len: u64,
    },
    /// A DATAGRAM fragment reaching beyond its datagram's total length.
    #[error("DATAGRAM fragment of {len} bytes at {frag_offset} exceeds total length {total_len}")]
    FragmentBeyondTotal {
        /// The fragment's offset.
        frag_offset: u64,
        /// Its data length.
        len: u64,
        /// The datagram's length.
        total_len: u64,
    },
    /// MAX_STREAMS above [`MAX_STREAMS_LIMIT`].
    #[error("MAX_STREAMS {0} exceeds 2^61")]
    MaxStreamsTooLarge(u64),
}

/// Displays a stream-layer frame type by its spec name.
struct TypeName(FrameType);

impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            STREAM => "STREAM",
            RESET_STREAM => "RESET_STREAM",
            STOP_SENDING => "STOP_SENDING",
            MAX_DATA => "MAX_DATA",
            MAX_STREAM_DATA => "MAX_STREAM_DATA",
            MAX_STREAMS => "MAX_STREAMS",
            DATAGRAM => "DATAGRAM",
            other => return other.fmt(f),
        };
        f.write_str(name)
    }
}

fn varint(r: &mut Reader<'_>, ty: FrameType) -> Result<u64, StreamFrameError> {
    r.varint().map_err(|_| StreamFrameError::Truncated(ty))
}

fn name<'a>(r: &mut Reader<'a>) -> Result<&'a str, StreamFrameError> {
    let len = varint(r, STREAM)?;
    if len > MAX_NAME_LEN as u64 {
        return Err(StreamFrameError::NameTooLong(len));
    }
    let bytes = r
        .bytes(len as usize)
        .map_err(|_| StreamFrameError::Truncated(STREAM))?;
    std::str::from_utf8(bytes).map_err(|_| StreamFrameError::NameNotUtf8)
}

fn check_flags(f: u8) -> Result<(), StreamFrameError> {
    if f & flags::RESERVED != 0 {
        Err(StreamFrameError::ReservedFlags(f))
    } else if f & flags::OPEN == 0 && f & (flags::TOP | flags::DGRAM) != 0 {
        Err(StreamFrameError::OpenFlagsWithoutOpen(f))
    } else if f & flags::TOP != 0 && f & flags::DGRAM != 0 {
        Err(StreamFrameError::TopDatagram)
    } else {
        Ok(())
    }
}

/// The largest `n <= limit` such that a frame of type `ty` whose body is `head + n` bytes
/// takes at most `space` bytes, channel header included.
fn max_fitting(ty: FrameType, head: usize, space: usize, limit: u64) -> Option<usize> {
    // The body length is a varint of 1, 2, 4 or 8 bytes. For each width, take the most data
    // that keeps the body below the width's ceiling and the frame within `space`: every such
    // candidate fits, and the frame size grows with `n`, so the largest candidate is the answer.
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let fixed = varint_len(ty.0) + head;
    [(1, 1u64 << 6), (2, 1 << 14), (4, 1 << 30), (8, 1 << 62)]
        .into_iter()
        .filter_map(|(width, ceiling)| {
            let by_space = space.checked_sub(fixed + width)?;
            let below_ceiling = usize::try_from(ceiling - 1).unwrap_or(usize::MAX);
            Some(by_space.min(below_ceiling.checked_sub(head)?).min(limit))
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Frame, Frames};
    use proptest::prelude::*;

    /// Encodes `frame`, checks `encoded_len`, and decodes it back through the channel framing.
    fn round_trip(frame: &StreamLayerFrame<'_>) -> Vec<u8> {
        let mut buf = Vec::new();
        frame.encode(&mut buf);
        assert_eq!(buf.len(), frame.encoded_len(), "encoded_len of {frame:?}");
        buf
    }

    /// The `(ty, body)` pairs the channel hands over for `payload`.
    fn upper_frames(payload: &[u8]) -> Vec<(FrameType, &[u8])> {
        Frames::new(payload)
            .map(|f| match f.expect("channel framing") {
                Frame::Upper { ty, body } => (ty, body),
                other => panic!("not an upper-layer frame: {other:?}"),
            })
            .collect()
    }

    fn decode_payload(payload: &[u8]) -> Vec<StreamLayerFrame<'_>> {
        upper_frames(payload)
            .into_iter()
            .map(|(ty, body)| StreamLayerFrame::decode(ty, body).expect("decodes"))
            .collect()
    }

    /// Frame material with owned bytes, so strategies can produce it.
    #[derive(Debug, Clone)]
    enum Owned {
        Stream {
            id: StreamId,
            offset: u64,
            data: Vec<u8>,
            fin: bool,
            record: bool,
            open: Option<OwnedOpen>,
        },
        Datagram {
            stream: StreamId,
            datagram_id: u64,
            total_len: u64,
            frag_offset: u64,
            data: Vec<u8>,
        },
        Control(StreamLayerFrame<'static>),
    }

    #[derive(Debug, Clone)]
    enum OwnedOpen {
        Sub(StreamId, bool),
        Top(String, String),
    }

    impl OwnedOpen {
        fn info(&self) -> OpenInfo<'_> {
            match self {
                Self::Sub(parent, datagram) => OpenInfo::Sub {
                    parent: *parent,
                    datagram: *datagram,
                },
                Self::Top(service, protocol) => OpenInfo::Top { service, protocol },
            }
        }
    }

    impl Owned {
        fn frame(&self) -> StreamLayerFrame<'_> {
            match self {
                Self::Stream {
                    id,
                    offset,
                    data,
                    fin,
                    record,
                    open,
                } => StreamLayerFrame::Stream(StreamFrame {
                    id: *id,
                    offset: *offset,
                    data,
                    fin: *fin,
                    record: *record,
                    open: open.as_ref().map(OwnedOpen::info),
                }),
                Self::Datagram {
                    stream,
                    datagram_id,
                    total_len,
                    frag_offset,
                    data,
                } => StreamLayerFrame::Datagram(DatagramFrame {
                    stream: *stream,
                    datagram_id: *datagram_id,
                    total_len: *total_len,
                    frag_offset: *frag_offset,
                    data,
                }),
                Self::Control(frame) => *frame,
            }
        }
    }

    /// Varints of every width, often near the width boundaries.
    fn varint_value() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..64,
            60u64..70,
            16380u64..16390,
            0u64..1 << 30,
            (1u64 << 30) - 4..(1 << 30) + 4,
            0..=VARINT_MAX,
            VARINT_MAX - 4..=VARINT_MAX,
        ]
    }

    fn stream_id() -> impl Strategy<Value = StreamId> {
        varint_value().prop_map(StreamId)
    }

    fn data() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..80),
            prop::collection::vec(any::<u8>(), 16370..16400),
        ]
    }

    /// A name of at most 63 chars: at most 252 bytes of UTF-8.
    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(any::<char>(), 0..64).prop_map(String::from_iter)
    }

    fn open_info() -> impl Strategy<Value = Option<OwnedOpen>> {
        prop_oneof![
            Just(None),
            (stream_id(), any::<bool>()).prop_map(|(p, d)| Some(OwnedOpen::Sub(p, d))),
            (name(), name()).prop_map(|(s, p)| Some(OwnedOpen::Top(s, p))),
        ]
    }

    fn owned() -> impl Strategy<Value = Owned> {
        let stream = (
            stream_id(),
            varint_value(),
            data(),
            any::<(bool, bool)>(),
            open_info(),
        )
            .prop_map(|(id, offset, data, (fin, record), open)| Owned::Stream {
                id,
                offset: offset.min(VARINT_MAX - data.len() as u64),
                data,
                fin,
                record,
                open,
            });
        let datagram = (
            stream_id(),
            varint_value(),
            varint_value(),
            any::<u64>(),
            data(),
        )
            .prop_map(|(stream, datagram_id, total, pick, data)| {
                let total_len = total.max(data.len() as u64);
                Owned::Datagram {
                    stream,
                    datagram_id,
                    total_len,
                    frag_offset: pick % (total_len - data.len() as u64 + 1),
                    data,
                }
            });
        use StreamLayerFrame as F;
        let control = prop_oneof![
            (stream_id(), varint_value(), varint_value()).prop_map(|(id, code, final_size)| {
                F::ResetStream {
                    id,
                    code,
                    final_size,
                }
            }),
            (stream_id(), varint_value()).prop_map(|(id, code)| F::StopSending { id, code }),
            varint_value().prop_map(F::MaxData),
            (stream_id(), varint_value()).prop_map(|(id, max)| F::MaxStreamData { id, max }),
            prop_oneof![
                0..=MAX_STREAMS_LIMIT,
                MAX_STREAMS_LIMIT - 3..=MAX_STREAMS_LIMIT
            ]
            .prop_map(F::MaxStreams),
        ]
        .prop_map(Owned::Control);
        prop_oneof![stream, datagram, control]
    }

    /// Bytes of the frame's body before the data (all of it for control frames).
    fn body_header_len(frame: &StreamLayerFrame<'_>) -> usize {
        let data_len = match frame {
            StreamLayerFrame::Stream(s) => s.data.len(),
            StreamLayerFrame::Datagram(d) => d.data.len(),
            _ => 0,
        };
        let bytes = round_trip(frame);
        upper_frames(&bytes)[0].1.len() - data_len
    }

    proptest! {
        #[test]
        fn every_frame_kind_round_trips(owned in owned()) {
            let frame = owned.frame();
            let bytes = round_trip(&frame);
            let frames = upper_frames(&bytes);
            prop_assert_eq!(frames.len(), 1);
            prop_assert_eq!(frames[0].0, frame.ty());
            prop_assert_eq!(StreamLayerFrame::decode(frames[0].0, frames[0].1), Ok(frame));
        }

        #[test]
        fn frame_sequences_round_trip(owned in prop::collection::vec(owned(), 0..8)) {
            let frames: Vec<_> = owned.iter().map(Owned::frame).collect();
            let mut payload = Vec::new();
            frames.iter().for_each(|f| f.encode(&mut payload));
            prop_assert_eq!(decode_payload(&payload), frames);
        }

        #[test]
        fn write_header_then_data_is_encode(owned in owned()) {
            let frame = owned.frame();
            let mut buf = Vec::new();
            match frame {
                StreamLayerFrame::Stream(s) => {
                    let open = s.open.as_ref();
                    let n = s.data.len();
                    StreamFrame::write_header(&mut buf, s.id, s.offset, n, s.fin, s.record, open);
                    prop_assert_eq!(buf.len(), StreamFrame::overhead(s.id, s.offset, open, n));
                    buf.extend_from_slice(s.data);
                }
                StreamLayerFrame::Datagram(d) => {
                    let (id, total, frag, n) = (d.datagram_id, d.total_len, d.frag_offset, d.data.len());
                    DatagramFrame::write_header(&mut buf, d.stream, id, total, frag, n);
                    prop_assert_eq!(buf.len(), DatagramFrame::overhead(d.stream, id, total, frag, n));
                    buf.extend_from_slice(d.data);
                }
                _ => return Ok(()),
            }
            prop_assert_eq!(buf, round_trip(&frame));
        }

        #[test]
        fn every_truncated_header_fails(owned in owned()) {
            let frame = owned.frame();
            let bytes = round_trip(&frame);
            let (ty, body) = upper_frames(&bytes)[0];
            let header = body_header_len(&frame);
            for cut in 0..header {
                prop_assert!(StreamLayerFrame::decode(ty, &body[..cut]).is_err(), "cut at {}", cut);
            }
        }

        #[test]
        fn trailing_bytes_after_a_control_frame_fail(owned in owned(), extra in 1u8..=255) {
            let frame = owned.frame();
            prop_assume!(!matches!(frame, StreamLayerFrame::Stream(_) | StreamLayerFrame::Datagram(_)));
            let bytes = round_trip(&frame);
            let (ty, body) = upper_frames(&bytes)[0];
            let mut longer = body.to_vec();
            longer.push(extra);
            prop_assert_eq!(
                StreamLayerFrame::decode(ty, &longer),
                Err(StreamFrameError::TrailingBytes(ty))
            );
        }

        #[test]
        fn stream_max_data_len_is_tight(
            id in stream_id(),
            offset in varint_value(),
            open in open_info(),
            space in prop_oneof![0usize..120, 60usize..90, 16370usize..16420, 0usize..100_000,
                (1usize << 30) - 50..(1 << 30) + 50],
        ) {
            let open = open.as_ref().map(OwnedOpen::info);
            let open = open.as_ref();
            let size = |n: usize| StreamFrame::overhead(id, offset, open, n) + n;
            let limit = VARINT_MAX - offset;
            check_tight(StreamFrame::max_data_len(id, offset, open, space), size, space, limit)?;
        }

        #[test]
        fn datagram_max_data_len_is_tight(
            stream in stream_id(),
            datagram_id in varint_value(),
            total_len in varint_value(),
            frag in any::<u64>(),
            space in prop_oneof![0usize..120, 60usize..90, 16370usize..16420, 0usize..100_000,
                (1usize << 30) - 50..(1 << 30) + 50],
        ) {
            let frag_offset = frag % (total_len + 1);
            let size =
                |n: usize| DatagramFrame::overhead(stream, datagram_id, total_len, frag_offset, n) + n;
            let max = DatagramFrame::max_data_len(stream, datagram_id, total_len, frag_offset, space);
            check_tight(max, size, space, total_len - frag_offset)?;
        }

        #[test]
        fn arbitrary_bodies_never_panic_and_reencode(
            ty in 0x1eu64..0x2a,
            body in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let Ok(frame) = StreamLayerFrame::decode(FrameType(ty), &body) else {
                return Ok(());
            };
            prop_assert_eq!(frame.ty(), FrameType(ty));
            let bytes = round_trip(&frame);
            prop_assert_eq!(decode_payload(&bytes), vec![frame]);
        }

        #[test]
        fn stream_id_parts_round_trip(side in any::<bool>(), counter in 0..=StreamId::MAX_COUNTER) {
            let id = StreamId::new(side, counter);
            prop_assert!(id.0 <= VARINT_MAX);
            prop_assert_eq!((id.side(), id.counter()), (side, counter));
        }
    }

    /// `max` is the largest `n <= limit` with `size(n) <= space`, or `None` if `size(0)`
    /// exceeds `space`. `size` grows with `n`, so checking `n` and `n + 1` suffices.
    fn check_tight(
        max: Option<usize>,
        size: impl Fn(usize) -> usize,
        space: usize,
        limit: u64,
    ) -> Result<(), TestCaseError> {
        match max {
            None => prop_assert!(size(0) > space, "an empty frame fits in {}", space),
            Some(n) => {
                prop_assert!(size(n) <= space, "{} bytes take {} > {}", n, size(n), space);
                prop_assert!(n as u64 <= limit);
                prop_assert!(
                    n as u64 == limit || size(n + 1) > space,
                    "{} bytes would still fit in {}",
                    n + 1,
                    space
                );
            }
        }
        Ok(())
    }

    #[test]
    fn max_data_len_is_tight_for_every_small_space() {
        // Every space up to past the 2-byte body-length ceiling, for header sizes that put
        // the boundary at different data lengths.
        let top = OpenInfo::top("svc", "proto").unwrap();
        let sub = OpenInfo::Sub {
            parent: StreamId(300),
            datagram: true,
        };
        for (id, offset, open) in [
            (StreamId(1), 0, None),
            (StreamId(1 << 20), 1 << 40, Some(&top)),
            (StreamId(5), 70, Some(&sub)),
            (StreamId(2), VARINT_MAX - 10, None),
        ] {
            for space in 0..16_500 {
                let size = |n: usize| StreamFrame::overhead(id, offset, open, n) + n;
                let max = StreamFrame::max_data_len(id, offset, open, space);
                check_tight(max, size, space, VARINT_MAX - offset).unwrap();
            }
        }
        for space in 0..16_500 {
            let size = |n: usize| DatagramFrame::overhead(StreamId(9), 3, 20_000, 100, n) + n;
            let max = DatagramFrame::max_data_len(StreamId(9), 3, 20_000, 100, space);
            check_tight(max, size, space, 19_900).unwrap();
        }
    }

    #[test]
    fn max_data_len_at_the_varint_boundaries() {
        // STREAM id 1, no open info, offset 0: body header = 1 + 1 + 1 = 3 bytes; the frame is
        // type (1) + body length (1 while the body is below 64 bytes, then 2) + 3 + data.
        let max = |space| StreamFrame::max_data_len(StreamId(1), 0, None, space);
        assert_eq!(max(4), None);
        assert_eq!(max(5), Some(0));
        assert_eq!(max(65), Some(60)); // body 63 bytes, the last with a 1-byte length
        assert_eq!(max(66), Some(60)); // 61 bytes would need a 2-byte length: 67 bytes
        assert_eq!(max(67), Some(61));
        assert_eq!(max(16_386), Some(16_380)); // body 16383: 2-byte length
        assert_eq!(max(16_387), Some(16_380));
        assert_eq!(max(16_388), Some(16_380));
        assert_eq!(max(16_389), Some(16_381)); // 4-byte length from here
                                               // Data never ends beyond 2^62 - 1.
        assert_eq!(
            StreamFrame::max_data_len(StreamId(1), VARINT_MAX - 2, None, 1000),
            Some(2)
        );
        // Nor beyond the datagram.
        assert_eq!(
            DatagramFrame::max_data_len(StreamId(1), 0, 10, 7, 1000),
            Some(3)
        );
    }

    /// A STREAM body from its parts (flags written as given).
    fn stream_body(f: u8, open: &[u8], offset: u64, data: &[u8]) -> Vec<u8> {
        let mut body = vec![0x04, f];
        body.extend_from_slice(open);
        write_varint(&mut body, offset);
        body.extend_from_slice(data);
        body
    }

    fn decode(ty: FrameType, body: &[u8]) -> Result<StreamLayerFrame<'_>, StreamFrameError> {
        StreamLayerFrame::decode(ty, body)
    }

    #[test]
    fn malformed_stream_frames_are_rejected() {
        use StreamFrameError as E;
        for f in [0x20, 0x40, 0x80, 0xe5] {
            assert_eq!(
                decode(STREAM, &stream_body(f, &[], 0, b"")),
                Err(E::ReservedFlags(f))
            );
        }
        for f in [flags::TOP, flags::DGRAM, flags::DGRAM | flags::FIN] {
            let body = stream_body(f, &[1], 0, b"");
            assert_eq!(decode(STREAM, &body), Err(E::OpenFlagsWithoutOpen(f)));
        }
        let both = flags::OPEN | flags::TOP | flags::DGRAM;
        assert_eq!(
            decode(STREAM, &stream_body(both, &[0, 0], 0, b"")),
            Err(E::TopDatagram)
        );

        let top = flags::OPEN | flags::TOP;
        let mut long_name = vec![0x41, 0x00]; // varint 256
        long_name.extend_from_slice(&[b'a'; 256]);
        long_name.push(0);
        assert_eq!(
            decode(STREAM, &stream_body(top, &long_name, 0, b"")),
            Err(E::NameTooLong(256))
        );
        let mut longest = vec![0x40, 0xff]; // varint 255
        longest.extend_from_slice(&[b'a'; 255]);
        longest.push(0);
        assert!(decode(STREAM, &stream_body(top, &longest, 0, b"")).is_ok());
        let not_utf8 = [1, b'a', 2, 0xc3, 0x28];
        assert_eq!(
            decode(STREAM, &stream_body(top, &not_utf8, 0, b"")),
            Err(E::NameNotUtf8)
        );
        // The name's length runs past the body.
        assert_eq!(
            decode(STREAM, &[0x04, top, 5, b'a']),
            Err(E::Truncated(STREAM))
        );

        let at_end = stream_body(flags::FIN, &[], VARINT_MAX - 2, b"abc");
        assert_eq!(
            decode(STREAM, &at_end),
            Err(E::OffsetOverflow {
                offset: VARINT_MAX - 2,
                len: 3
            })
        );
        assert!(decode(STREAM, &stream_body(0, &[], VARINT_MAX - 3, b"abc")).is_ok());
        assert_eq!(decode(STREAM, &[]), Err(E::Truncated(STREAM)));
        assert_eq!(decode(STREAM, &[0x04]), Err(E::Truncated(STREAM)));
        assert_eq!(
            decode(STREAM, &[0x04, flags::OPEN]),
            Err(E::Truncated(STREAM))
        );
    }

    #[test]
    fn malformed_datagram_and_control_frames_are_rejected() {
        use StreamFrameError as E;
        // stream 4, datagram 0, total 5, fragment at 3 with 3 bytes.
        assert_eq!(
            decode(DATAGRAM, &[4, 0, 5, 3, 1, 2, 3]),
            Err(E::FragmentBeyondTotal {
                frag_offset: 3,
                len: 3,
                total_len: 5
            })
        );
        assert_eq!(
            decode(DATAGRAM, &[4, 0, 5, 6]),
            Err(E::FragmentBeyondTotal {
                frag_offset: 6,
                len: 0,
                total_len: 5
            })
        );
        assert!(decode(DATAGRAM, &[4, 0, 5, 3, 1, 2]).is_ok());
        assert!(decode(DATAGRAM, &[4, 0, 0, 0]).is_ok()); // an empty datagram
        assert_eq!(decode(DATAGRAM, &[4, 0, 5]), Err(E::Truncated(DATAGRAM)));

        let mut too_many = Vec::new();
        write_varint(&mut too_many, MAX_STREAMS_LIMIT + 1);
        assert_eq!(
            decode(MAX_STREAMS, &too_many),
            Err(E::MaxStreamsTooLarge(MAX_STREAMS_LIMIT + 1))
        );
        assert_eq!(decode(MAX_DATA, &[1, 2]), Err(E::TrailingBytes(MAX_DATA)));
        assert_eq!(
            decode(RESET_STREAM, &[4, 0]),
            Err(E::Truncated(RESET_STREAM))
        );
        for ty in [0x27, 0x3f, 0x4000, VARINT_MAX, 0x05] {
            assert_eq!(
                decode(FrameType(ty), &[]),
                Err(E::UnknownType(FrameType(ty)))
            );
        }
    }

    #[test]
    fn encoding_sets_the_flags_of_its_open_info() {
        let cases = [
            (None, false, false, 0),
            (None, true, true, flags::FIN | flags::RECORD),
            (
                Some(OpenInfo::Sub {
                    parent: StreamId(6),
                    datagram: true,
                }),
                true,
                false,
                flags::OPEN | flags::DGRAM | flags::FIN,
            ),
            (
                Some(OpenInfo::top("a", "b").unwrap()),
                false,
                false,
                flags::OPEN | flags::TOP,
            ),
        ];
        for (open, fin, record, expected) in cases {
            let mut buf = Vec::new();
            StreamFrame::write_header(&mut buf, StreamId(4), 0, 0, fin, record, open.as_ref());
            let (_, body) = upper_frames(&buf)[0];
            assert_eq!(body[1], expected, "{open:?} fin={fin} record={record}");
        }
    }

    #[test]
    fn top_checks_name_lengths() {
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            OpenInfo::top(&long, "p"),
            Err(StreamFrameError::NameTooLong(256))
        );
        assert_eq!(
            OpenInfo::top("s", &long),
            Err(StreamFrameError::NameTooLong(256))
        );
        assert!(OpenInfo::top(&long[1..], "").is_ok());
    }

    #[test]
    fn stream_ids_display_counter_and_side() {
        assert_eq!(StreamId::new(true, 7).to_string(), "7/1");
        assert_eq!(StreamId::new(false, 0).to_string(), "0/0");
        assert_eq!(StreamId::new(true, 7), StreamId(15));
    }

    #[test]
    fn errors_name_the_frame_type() {
        assert_eq!(
            StreamFrameError::Truncated(RESET_STREAM).to_string(),
            "RESET_STREAM frame truncated"
        );
        assert_eq!(
            StreamFrameError::TrailingBytes(MAX_DATA).to_string(),
            "MAX_DATA frame has bytes after its last field"
        );
    }
}
