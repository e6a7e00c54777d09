//! The receiving side of a stream: reassembly of out-of-order data, record boundaries, the
//! final size, and reading (bytes never across a record boundary, or whole records).
//!
//! Memory is bounded by the receive limit the caller passes to [`RecvBuffer::insert`]: the
//! bytes are stored once in a buffer spanning `[read, highest received)`, gaps included;
//! boundaries are a bitmap over the same span (one bit per offset, `span / 8` bytes); the
//! number of separate received runs above the contiguous prefix is capped (a peer sending
//! scattered single bytes gets an error, not a bloated range set). An idle stream (everything
//! read) holds no allocation.

use std::collections::VecDeque;

use crate::ranges::RangeSet;

/// Most separate received runs beyond the contiguous prefix, at the smallest windows.
const MIN_RUNS: usize = 1024;

/// Why received data was refused (the peer broke the protocol).
#[derive(Debug, Clone, Copy, Eq, PartialEq, thiserror::Error)]
pub enum RecvError {
    /// Data beyond the receive limit.
    #[error("data up to offset {end} exceeds the receive limit {limit}")]
    FlowControl {
        /// End of the offending data.
        end: u64,
        /// The limit.
        limit: u64,
    },
    /// Data or a FIN contradicting the final size.
    #[error("final size violated (final size {final_size:?}, data up to {end})")]
    FinalSize {
        /// The final size known before, if any.
        final_size: Option<u64>,
        /// End of the offending data or FIN.
        end: u64,
    },
    /// Too many separate out-of-order pieces.
    #[error("more than {0} separate out-of-order pieces")]
    TooFragmented(usize),
}

#[derive(Debug, Default)]
struct Inner {
    /// Bytes `[read, read + data.len())`; gaps hold zeros.
    data: VecDeque<u8>,
    /// Received runs above `contiguous` (absolute offsets).
    runs: RangeSet,
    /// Boundary bitmap: bit `i` of word `w` is offset `mark_base + 64 w + i`.
    marks: VecDeque<u64>,
    /// Offset of bit 0 of `marks[0]`; a multiple of 64.
    mark_base: u64,
    /// Boundaries in `(read, contiguous]`: complete records.
    complete: usize,
}

/// The receiving half of a stream.
#[derive(Debug)]
pub struct RecvBuffer {
    inner: Option<Box<Inner>>,
    /// Bytes below were read by the application.
    read: u64,
    /// Bytes below were all received.
    contiguous: u64,
    /// Highest offset received (end of the furthest data).
    max_received: u64,
    /// Final size, `u64::MAX` while unknown.
    final_size: u64,
}

impl Default for RecvBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBuffer {
    /// An empty receive side.
    pub fn new() -> Self {
        Self {
            inner: None,
            read: 0,
            contiguous: 0,
            max_received: 0,
            final_size: u64::MAX,
        }
    }

    /// Bytes read so far.
    pub fn read_offset(&self) -> u64 {
        self.read
    }

    /// End of the furthest data received.
    pub fn max_received(&self) -> u64 {
        self.max_received
    }

    /// The final size, once a FIN arrived.
    pub fn final_size(&self) -> Option<u64> {
        (self.final_size != u64::MAX).then_some(self.final_size)
    }

    /// Bytes held: received (or gaps awaiting data) and not yet read.
    pub fn buffered(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.data.len())
    }

    /// Stores `data` at `offset`, with a record ending at `offset + data.len()` if `record`
    /// and the stream ending there if `fin`. `limit` is the receive limit. Returns by how much
    /// the highest received offset grew (what flow control counts).
    pub fn insert(
        &mut self,
        offset: u64,
        data: &[u8],
        record: bool,
        fin: bool,
        limit: u64,
    ) -> Result<u64, RecvError> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(RecvError::FlowControl {
                end: u64::MAX,
                limit,
            })?;
        if end > limit {
            return Err(RecvError::FlowControl { end, limit });
        }
        let known_final = self.final_size();
        if let Some(f) = known_final {
            if end > f || (fin && end != f) {
                return Err(RecvError::FinalSize {
                    final_size: known_final,
                    end,
                });
            }
        }
        if fin && end < self.max_received {
            return Err(RecvError::FinalSize {
                final_size: None,
                end,
            });
        }
        let grew = end.saturating_sub(self.max_received);
        if fin && known_final.is_none() {
            self.final_size = end;
        }
        // Data.
        let lo = offset.max(self.contiguous);
        if lo < end {
            self.store(lo, &data[(lo - offset) as usize..], limit)?;
        }
        self.max_received = self.max_received.max(end);
        // Boundaries: a record mark, and the end of the stream (a FIN ends the last record).
        if record && end > self.read {
            self.set_mark(end);
        }
        if fin && end > self.read {
            self.set_mark(end);
        }
        self.release_if_idle();
        Ok(grew)
    }

    /// Copies `bytes` (all at or above `contiguous`) into place at `at`.
    fn store(&mut self, at: u64, bytes: &[u8], limit: u64) -> Result<(), RecvError> {
        let read = self.read;
        let contiguous = self.contiguous;
        let inner = self.inner.get_or_insert_with(Default::default);
        let end = at + bytes.len() as u64;
        let have_end = read + inner.data.len() as u64;
        if at == have_end && at == contiguous {
            // In order, the common case.
            inner.data.extend(bytes);
            self.contiguous = end;
        } else {
            if end > have_end {
                inner.data.resize((end - read) as usize, 0);
            }
            let pos = (at - read) as usize;
            copy_into(&mut inner.data, pos, bytes);
            inner.runs.insert(at..end);
            let cap = MIN_RUNS.max(((limit - read) / 1024) as usize);
            if inner.runs.len() > cap {
                return Err(RecvError::TooFragmented(cap));
            }
            if inner.runs.min() == Some(contiguous) {
                let r = inner.runs.pop_min().expect("non-empty");
                self.contiguous = r.end;
            }
        }
        let newly = (contiguous, self.contiguous);
        if newly.1 > newly.0 {
            let inner = self.inner.as_mut().expect("stored");
            inner.complete += count_marks(inner, newly.0 + 1, newly.1 + 1);
        }
        Ok(())
    }

    fn set_mark(&mut self, at: u64) {
        let contiguous = self.contiguous;
        let inner = self.inner.get_or_insert_with(Default::default);
        if inner.marks.is_empty() {
            inner.mark_base = self.read & !63;
        }
        let bit = at - inner.mark_base;
        let word = (bit / 64) as usize;
        if word >= inner.marks.len() {
            inner.marks.resize(word + 1, 0);
        }
        let mask = 1u64 << (bit % 64);
        if inner.marks[word] & mask == 0 {
            inner.marks[word] |= mask;
            if at <= contiguous {
                inner.complete += 1;
            }
        }
    }

    /// The first boundary in `(read, contiguous]`, if any.
    fn next_complete_mark(&self) -> Option<u64> {
        let inner = self.inner.as_ref()?;
        if inner.complete == 0 {
            return None;
        }
        first_mark(inner, self.read + 1, self.contiguous + 1)
    }

    /// Bytes readable now with [`read`](Self::read): up to the next boundary or gap.
    pub fn bytes_available(&self) -> usize {
        let stop = self.next_complete_mark().unwrap_or(self.contiguous);
        (stop - self.read) as usize
    }

    /// Reads bytes, never across a record boundary.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = self.bytes_available().min(buf.len());
        if n == 0 {
            return 0;
        }
        let inner = self.inner.as_mut().expect("bytes available");
        let (a, b) = inner.data.as_slices();
        if n <= a.len() {
            buf[..n].copy_from_slice(&a[..n]);
        } else {
            buf[..a.len()].copy_from_slice(a);
            buf[a.len()..n].copy_from_slice(&b[..n - a.len()]);
        }
        self.consume(n as u64);
        n
    }

    /// Advances the read offset by `n` bytes (at most to the next boundary), dropping
    /// boundaries passed.
    fn consume(&mut self, n: u64) {
        let from = self.read;
        let to = from + n;
        let inner = self.inner.as_mut().expect("data to consume");
        inner.data.drain(..n as usize);
        inner.complete -= count_marks(inner, from + 1, to + 1);
        self.read = to;
        // Drop bitmap words wholly below the new read offset (bits at `read` stay: a
        // boundary exactly at `read` was consumed and counted out above).
        while inner.mark_base + 64 <= to && !inner.marks.is_empty() {
            inner.marks.pop_front();
            inner.mark_base += 64;
        }
        if inner.marks.is_empty() {
            inner.mark_base = to & !63;
        }
        self.release_if_idle();
    }

    /// Complete records waiting (including a final unterminated piece when the stream ended).
    pub fn pending_records(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.complete)
    }

    /// Whether a complete record waits.
    pub fn has_pending_records(&self) -> bool {
        self.pending_records() > 0
    }

    /// Size of the next complete record.
    pub fn pending_record_size(&self) -> Option<usize> {
        self.next_complete_mark().map(|m| (m - self.read) as usize)
    }

    /// The next complete record, cut to `max` bytes (the flag says it was cut; the rest is
    /// discarded); `None` if no record is complete.
    pub fn read_record(&mut self, max: usize) -> Option<(Vec<u8>, bool)> {
        let m = self.next_complete_mark()?;
        let len = (m - self.read) as usize;
        let keep = len.min(max);
        let inner = self.inner.as_ref().expect("a record");
        let out: Vec<u8> = inner.data.range(..keep).copied().collect();
        self.consume(len as u64);
        Some((out, keep < len))
    }

    /// All the stream's bytes once it is complete (FIN received and no gap); `None` before.
    pub fn read_all(&mut self) -> Option<Vec<u8>> {
        let f = self.final_size()?;
        if self.contiguous != f {
            return None;
        }
        let n = f - self.read;
        let out: Vec<u8> = self
            .inner
            .as_ref()
            .map_or_else(Vec::new, |i| i.data.range(..n as usize).copied().collect());
        if n > 0 {
            self.consume(n);
        }
        Some(out)
    }

    /// Abandons every byte held (the stream was reset): everything up to the highest offset
    /// received counts as read. Returns how many bytes that skipped.
    pub fn abandon(&mut self) -> u64 {
        let skipped = self.max_received - self.read;
        self.inner = None;
        self.read = self.max_received;
        self.contiguous = self.max_received;
        skipped
    }

    /// On an abandoned stream: data (or a final size, with `fin`) up to `end` arrived. It is
    /// checked like [`insert`](Self::insert) but not stored; returns by how much the highest
    /// received offset grew (bytes that count as received and read at once).
    pub fn skip_to(&mut self, end: u64, fin: bool, limit: u64) -> Result<u64, RecvError> {
        debug_assert!(self.inner.is_none() && self.read == self.max_received);
        if end > limit {
            return Err(RecvError::FlowControl { end, limit });
        }
        let known_final = self.final_size();
        if known_final.is_some_and(|f| end > f || (fin && end != f))
            || (fin && end < self.max_received)
        {
            return Err(RecvError::FinalSize {
                final_size: known_final,
                end,
            });
        }
        let grew = end.saturating_sub(self.max_received);
        if fin {
            self.final_size = end;
        }
        self.max_received += grew;
        self.read = self.max_received;
        self.contiguous = self.max_received;
        Ok(grew)
    }

    /// Whether the stream ended and everything was read.
    pub fn at_end(&self) -> bool {
        self.read == self.final_size
    }

    fn release_if_idle(&mut self) {
        if let Some(i) = &self.inner {
            if i.data.is_empty() && i.runs.is_empty() && i.complete == 0 {
                let marks_beyond = self.max_received > self.read && i.marks.iter().any(|&w| w != 0);
                if !marks_beyond {
                    self.inner = None;
                }
            }
        }
    }
}

/// Overwrites `data[pos..pos + bytes.len()]` with `bytes` (the range exists).
fn copy_into(data: &mut VecDeque<u8>, pos: usize, bytes: &[u8]) {
    let (a, b) = data.as_mut_slices();
    let end = pos + bytes.len();
    if end <= a.len() {
        a[pos..end].copy_from_slice(bytes);
    } else if pos >= a.len() {
        b[pos - a.len()..end - a.len()].copy_from_slice(bytes);
    } else {
        let split = a.len() - pos;
        a[pos..].copy_from_slice(&bytes[..split]);
        b[..end - a.len()].copy_from_slice(&bytes[split..]);
    }
}

/// Number of boundaries at offsets in `[from, to)`.
fn count_marks(inner: &Inner, from: u64, to: u64) -> usize {
    let mut n = 0;
    let mut at = from.max(inner.mark_base);
    let limit = inner.mark_base + 64 * inner.marks.len() as u64;
    let to = to.min(limit);
    while at < to {
        let bit = at - inner.mark_base;
        let word = inner.marks[(bit / 64) as usize];
        let lo = bit % 64;
        let hi = (lo + (to - at)).min(64);
        let mask = if hi - lo == 64 {
            u64::MAX
        } else {
            ((1u64 << (hi - lo)) - 1) << lo
        };
        n += (word & mask).count_ones() as usize;
        at += hi - lo;
    }
    n
}

/// The first boundary at an offset in `[from, to)`.
fn first_mark(inner: &Inner, from: u64, to: u64) -> Option<u64> {
    let mut at = from.max(inner.mark_base);
    let limit = inner.mark_base + 64 * inner.marks.len() as u64;
    let to = to.min(limit);
    while at < to {
        let bit = at - inner.mark_base;
        let word = inner.marks[(bit / 64) as usize];
        let lo = bit % 64;
        let masked = word >> lo;
        if masked != 0 {
            let found = at + u64::from(masked.trailing_zeros());
            return (found < to).then_some(found);
        }
        at += 64 - lo;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: u64 = 1 << 20;

    #[test]
    fn in_order_bytes_and_records() {
        let mut r = RecvBuffer::new();
        r.insert(0, b"hello", true, false, LIM).unwrap();
        r.insert(5, b"wor", false, false, LIM).unwrap();
        assert_eq!(r.pending_records(), 1);
        assert_eq!(r.pending_record_size(), Some(5));
        let mut buf = [0u8; 100];
        // A plain read stops at the boundary.
        assert_eq!(r.read(&mut buf), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(r.pending_records(), 0);
        assert!(r.read_record(100).is_none());
        r.insert(8, b"ld", true, true, LIM).unwrap();
        assert_eq!(r.read_record(100), Some((b"world".to_vec(), false)));
        assert!(r.at_end());
        assert!(r.inner.is_none());
    }

    #[test]
    fn out_of_order_reassembly_and_duplicates() {
        let mut r = RecvBuffer::new();
        assert_eq!(r.insert(6, b"ghi", false, false, LIM).unwrap(), 9);
        assert_eq!(r.bytes_available(), 0);
        assert_eq!(r.insert(0, b"abc", false, false, LIM).unwrap(), 0);
        assert_eq!(r.insert(0, b"abc", false, false, LIM).unwrap(), 0);
        assert_eq!(r.bytes_available(), 3);
        r.insert(2, b"cdefg", false, true, LIM).unwrap_err();
        r.insert(2, b"cdefg", false, false, LIM).unwrap();
        assert_eq!(r.bytes_available(), 9);
        let mut buf = [0u8; 9];
        assert_eq!(r.read(&mut buf), 9);
        assert_eq!(&buf, b"abcdefghi");
    }

    #[test]
    fn oversized_record_is_cut_and_the_rest_discarded() {
        let mut r = RecvBuffer::new();
        r.insert(0, b"0123456789", true, false, LIM).unwrap();
        r.insert(10, b"ab", true, false, LIM).unwrap();
        assert_eq!(r.read_record(4), Some((b"0123".to_vec(), true)));
        assert_eq!(r.read_record(4), Some((b"ab".to_vec(), false)));
        assert_eq!(r.read_record(4), None);
    }

    #[test]
    fn fin_ends_the_last_record_and_read_all_waits_for_completion() {
        let mut r = RecvBuffer::new();
        r.insert(3, b"def", false, true, LIM).unwrap();
        assert_eq!(r.read_all(), None);
        assert_eq!(r.pending_records(), 0);
        r.insert(0, b"abc", false, false, LIM).unwrap();
        assert_eq!(r.pending_records(), 1);
        assert_eq!(r.read_all(), Some(b"abcdef".to_vec()));
        assert!(r.at_end());
    }

    #[test]
    fn late_bare_mark_completes_a_record() {
        let mut r = RecvBuffer::new();
        r.insert(0, b"abc", false, false, LIM).unwrap();
        assert!(r.read_record(10).is_none());
        r.insert(3, b"", true, false, LIM).unwrap();
        assert_eq!(r.read_record(10), Some((b"abc".to_vec(), false)));
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut r = RecvBuffer::new();
        assert!(matches!(
            r.insert(LIM - 1, b"ab", false, false, LIM),
            Err(RecvError::FlowControl { .. })
        ));
        r.insert(0, b"abcd", false, false, LIM).unwrap();
        assert!(matches!(
            r.insert(0, b"ab", false, true, LIM),
            Err(RecvError::FinalSize { .. })
        ));
        r.insert(4, b"", false, true, LIM).unwrap();
        assert!(r.insert(4, b"x", false, false, LIM).is_err());
        assert!(r
            .insert(u64::MAX - 1, b"xyz", false, false, u64::MAX)
            .is_err());
    }

    #[test]
    fn scattered_bytes_are_capped() {
        let mut r = RecvBuffer::new();
        let mut err = None;
        for i in 0..5000u64 {
            if let Err(e) = r.insert(1 + 2 * i, b"x", false, false, 64 * 1024) {
                err = Some(e);
                break;
            }
        }
        assert!(matches!(err, Some(RecvError::TooFragmented(_))));
    }

    #[test]
    fn many_tiny_records_across_bitmap_words() {
        let mut r = RecvBuffer::new();
        for i in 0..1000u64 {
            r.insert(i, &[i as u8], true, false, LIM).unwrap();
        }
        assert_eq!(r.pending_records(), 1000);
        for i in 0..1000u64 {
            assert_eq!(r.read_record(8), Some((vec![i as u8], false)));
        }
        assert_eq!(r.pending_records(), 0);
        assert!(r.inner.is_none());
    }

    #[test]
    fn idle_recv_buffer_is_small() {
        assert!(std::mem::size_of::<RecvBuffer>() <= 40);
    }
}
