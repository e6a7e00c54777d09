//! A bulk-transfer upper layer: the sender streams `total` bytes of seeded content in
//! upper-layer frames `[offset varint][data]`, re-sending what the channel reports lost; the
//! receiver checks every byte against the content function and reassembles by offset.

use std::collections::VecDeque;
use std::time::Instant;

use crate::channel::{Upper, UpperError};
use crate::codec::{varint_len, write_varint, Reader};
use crate::frame::{upper_header_len, write_upper_header, FrameType};
use crate::ranges::RangeSet;

/// The frame type of bulk data.
pub const BULK: FrameType = FrameType(0x20);

const TABLE_LEN: usize = 1 << 16;

/// A 64 KiB table of pseudo-random bytes from which bulk content is cut, so that producing
/// and checking content is a copy and a comparison, not per-byte arithmetic (the channel
/// benchmark measures the protocol, not the test workload).
fn table() -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let half: Vec<u8> = (0..TABLE_LEN)
            .map(|_| {
                // xorshift64*
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect();
        half.iter().chain(&half).copied().collect()
    })
}

fn table_offset(seed: u64, offset: u64) -> usize {
    (offset.wrapping_add(seed.wrapping_mul(0x9E37_79B9)) % TABLE_LEN as u64) as usize
}

/// The content byte at `offset` of the stream seeded by `seed`.
pub fn content_byte(seed: u64, offset: u64) -> u8 {
    table()[table_offset(seed, offset)]
}

/// Appends the content bytes `offset..offset + len`.
fn write_content(buf: &mut Vec<u8>, seed: u64, mut offset: u64, mut len: usize) {
    let t = table();
    while len > 0 {
        let start = table_offset(seed, offset);
        // The table holds two periods, so any run of up to TABLE_LEN bytes is contiguous.
        let n = len.min(TABLE_LEN);
        buf.extend_from_slice(&t[start..start + n]);
        offset += n as u64;
        len -= n;
    }
}

/// Number of bytes of `data` that differ from the content at `offset`.
fn count_mismatches(seed: u64, mut offset: u64, mut data: &[u8]) -> u64 {
    let t = table();
    let mut bad = 0;
    while !data.is_empty() {
        let start = table_offset(seed, offset);
        let n = data.len().min(TABLE_LEN);
        let expected = &t[start..start + n];
        if expected != &data[..n] {
            bad += expected
                .iter()
                .zip(&data[..n])
                .filter(|(a, b)| a != b)
                .count() as u64;
        }
        offset += n as u64;
        data = &data[n..];
    }
    bad
}

/// Sender and receiver state of one bulk transfer (one of each per channel end).
#[derive(Debug, Default)]
pub struct Bulk {
    /// Seed of the content function.
    pub seed: u64,
    // Sender.
    /// Bytes to send.
    pub total: u64,
    /// First byte never sent.
    pub next_offset: u64,
    /// Ranges (offset, length) reported lost, to send again.
    pub retransmit: VecDeque<(u64, u32)>,
    /// Byte ranges acknowledged.
    pub acked: RangeSet,
    /// Bytes sent again after a loss.
    pub bytes_retransmitted: u64,
    // Receiver.
    /// Bytes the receiver expects.
    pub expect: Option<u64>,
    /// Byte ranges received.
    pub received: RangeSet,
    /// Bytes received, duplicates included.
    pub bytes_received: u64,
    /// Received bytes that differ from the content function.
    pub corrupt: u64,
    /// Whether received bytes are compared with the content function (on by default; a
    /// benchmark of the protocol alone turns it off, as the bare AEAD loop it is compared
    /// with checks nothing either).
    pub verify: bool,
    /// When the receiver first held every byte.
    pub completed_at: Option<Instant>,
    /// When the first byte arrived.
    pub first_at: Option<Instant>,
}

impl Bulk {
    /// A sender of `total` bytes.
    pub fn sender(seed: u64, total: u64) -> Self {
        Self {
            seed,
            total,
            ..Self::default()
        }
    }

    /// A receiver of `expect` bytes.
    pub fn receiver(seed: u64, expect: u64) -> Self {
        Self {
            seed,
            expect: Some(expect),
            verify: true,
            ..Self::default()
        }
    }

    /// Continues the transfer with `bytes` more of the same content: a sender queues them, a
    /// receiver expects them (so one channel can carry several transfers back to back, as a
    /// benchmark of the steady state does).
    pub fn extend(&mut self, bytes: u64) {
        if let Some(expect) = self.expect.as_mut() {
            *expect += bytes;
            self.completed_at = None;
        } else {
            self.total += bytes;
        }
    }

    /// Everything sent was acknowledged.
    pub fn all_acked(&self) -> bool {
        self.total == 0 || (self.acked.len() == 1 && self.acked.elements() == self.total)
    }

    /// The receiver holds exactly bytes `0..expect`, every one correct.
    pub fn complete(&self) -> bool {
        let Some(expect) = self.expect else {
            return false;
        };
        self.corrupt == 0
            && (expect == 0
                || (self.received.len() == 1
                    && self.received.min() == Some(0)
                    && self.received.elements() == expect))
    }
}

impl Upper for Bulk {
    type Meta = (u64, u32);

    fn has_pending(&self) -> bool {
        !self.retransmit.is_empty() || self.next_offset < self.total
    }

    fn write_frames(
        &mut self,
        _now: Instant,
        buf: &mut Vec<u8>,
        space: usize,
        metas: &mut Vec<(u64, u32)>,
    ) {
        let mut left = space;
        loop {
            let (offset, len, resend) = match self.retransmit.front() {
                Some(&(o, l)) => (o, u64::from(l), true),
                None if self.next_offset < self.total => {
                    (self.next_offset, self.total - self.next_offset, false)
                }
                None => return,
            };
            let overhead = upper_header_len(BULK, left) + varint_len(offset);
            if left <= overhead + 16 {
                return;
            }
            let n = len.min((left - overhead) as u64);
            let body_len = varint_len(offset) + n as usize;
            write_upper_header(buf, BULK, body_len);
            write_varint(buf, offset);
            write_content(buf, self.seed, offset, n as usize);
            left -= upper_header_len(BULK, body_len) + body_len;
            metas.push((offset, n as u32));
            if resend {
                self.bytes_retransmitted += n;
                let front = self.retransmit.front_mut().expect("checked above");
                if u64::from(front.1) == n {
                    self.retransmit.pop_front();
                } else {
                    front.0 += n;
                    front.1 -= n as u32;
                }
            } else {
                self.next_offset += n;
            }
        }
    }

    fn handle_frame(&mut self, now: Instant, ty: FrameType, body: &[u8]) -> Result<(), UpperError> {
        if ty != BULK {
            return Err(UpperError {
                code: 1,
                reason: format!("unexpected frame {:#x}", ty.0),
            });
        }
        let mut r = Reader::new(body);
        let offset = r.varint().map_err(|_| UpperError {
            code: 1,
            reason: "bad bulk frame".into(),
        })?;
        let data = r.rest();
        if self.verify {
            self.corrupt += count_mismatches(self.seed, offset, data);
        }
        self.first_at.get_or_insert(now);
        self.bytes_received += data.len() as u64;
        self.received.insert(offset..offset + data.len() as u64);
        // `complete` walks the range set: only worth asking once the last byte is in.
        if self.completed_at.is_none()
            && self.received.max().map(|m| m + 1) == self.expect
            && self.complete()
        {
            self.completed_at = Some(now);
        }
        Ok(())
    }

    fn on_acked(&mut self, (offset, len): (u64, u32)) {
        self.acked.insert(offset..offset + u64::from(len));
    }

    fn on_lost(&mut self, (offset, len): (u64, u32)) {
        // Re-send only what is not known to have arrived through another copy.
        let end = offset + u64::from(len);
        let mut start = offset;
        while start < end {
            if self.acked.contains(start) {
                start += 1;
                continue;
            }
            let mut stop = start + 1;
            while stop < end && !self.acked.contains(stop) {
                stop += 1;
            }
            self.retransmit.push_back((start, (stop - start) as u32));
            start = stop;
        }
    }
}
