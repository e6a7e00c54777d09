//! The receiving side of a stream: reassembly of out-of-order data, record boundaries, the
//! final size, and reading (bytes never across a record boundary, or whole records).
//!
//! Memory is bounded by the receive limit the caller passes to [`RecvBuffer::insert`]: the
//! bytes are stored once in a buffer spanning `[read, highest received)`, gaps included;
//! boundaries are a bitmap over the same span (one bit per offset, `span / 8` bytes); the
//! number of separate received runs above the contiguous prefix is capped (a peer sending
//! scattered single bytes gets an error, not a bloated range set). An idle stream (everything
//! read) holds no allocation. The bytes are kept in [`Pages`] from the session's
//! [`PagePool`]: pages wholly read go back to the pool as reading advances.

use std::collections::VecDeque;

use super::pages::{PagePool, Pages};
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

#[derive(Debug)]
struct Inner {
    /// Bytes below were all received.
    contiguous: u64,
    /// Highest offset received (end of the furthest data).
    max_received: u64,
    /// Bytes `[read, max_received)`; gaps hold zeros (or nothing yet).
    data: Pages,
    /// Received runs above `contiguous` (absolute offsets).
    runs: RangeSet,
    /// Boundary bitmap: bit `i` of word `w` is offset `mark_base + 64 w + i`. The end of the
    /// stream (the final size) is a boundary too without a bit of its own.
    marks: VecDeque<u64>,
    /// Offset of bit 0 of `marks[0]`; a multiple of 64.
    mark_base: u64,
    /// Bits set in `(read, contiguous]`: complete records (besides the final piece).
    complete: usize,
}

impl Inner {
    /// Bookkeeping for a stream read up to `read`, with nothing received beyond.
    fn at(read: u64) -> Self {
        Self {
            contiguous: read,
            max_received: read,
            data: Pages::new(read),
            runs: RangeSet::new(),
            marks: VecDeque::new(),
            mark_base: read & !63,
            complete: 0,
        }
    }

    fn is_marked(&self, at: u64) -> bool {
        if at < self.mark_base {
            return false;
        }
        let bit = at - self.mark_base;
        self.marks
            .get((bit / 64) as usize)
            .is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }
}

/// The receiving half of a stream.
#[derive(Debug)]
pub struct RecvBuffer {
    /// `None` when idle: nothing was received beyond `read` (`contiguous == max_received ==
    /// read`).
    inner: Option<Box<Inner>>,
    /// Bytes below were read by the application.
    read: u64,
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
            final_size: u64::MAX,
        }
    }

    fn inner_mut(&mut self) -> &mut Inner {
        let read = self.read;
        self.inner.get_or_insert_with(|| Box::new(Inner::at(read)))
    }

    /// Bytes read so far.
    pub fn read_offset(&self) -> u64 {
        self.read
    }

    /// Bytes below were all received.
    fn contiguous(&self) -> u64 {
        self.inner.as_ref().map_or(self.read, |i| i.contiguous)
    }

    /// End of the furthest data received.
    pub fn max_received(&self) -> u64 {
        self.inner.as_ref().map_or(self.read, |i| i.max_received)
    }

    /// The final size, once a FIN arrived.
    pub fn final_size(&self) -> Option<u64> {
        (self.final_size != u64::MAX).then_some(self.final_size)
    }

    /// Bytes held: received (or gaps awaiting data) and not yet read.
    pub fn buffered(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, |i| (i.max_received - self.read) as usize)
    }

    /// Stores `data` at `offset`, with a record ending at `offset + data.len()` if `record`
    /// and the stream ending there if `fin`. `limit` is the receive limit. Returns by how much
    /// the highest received offset grew (what flow control counts). Pages come from `pool`.
    pub fn insert(
        &mut self,
        offset: u64,
        data: &[u8],
        record: bool,
        fin: bool,
        limit: u64,
        pool: &mut PagePool,
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
        let max_received = self.max_received();
        if fin && end < max_received {
            return Err(RecvError::FinalSize {
                final_size: None,
                end,
            });
        }
        let grew = end.saturating_sub(max_received);
        if fin && known_final.is_none() {
            self.final_size = end;
        }
        // Data.
        let lo = offset.max(self.contiguous());
        if lo < end {
            self.store(lo, &data[(lo - offset) as usize..], limit, pool)?;
        }
        if grew > 0 {
            self.inner_mut().max_received = end;
        }
        // Boundaries: a record mark. (The end of the stream ends the last record without a
        // mark: see `final_pending`.)
        if record && end > self.read {
            self.set_mark(end);
        }
        self.release_if_idle(pool);
        Ok(grew)
    }

    /// Copies `bytes` (all at or above `contiguous`) into place at `at`.
    fn store(
        &mut self,
        at: u64,
        bytes: &[u8],
        limit: u64,
        pool: &mut PagePool,
    ) -> Result<(), RecvError> {
        let read = self.read;
        let inner = self.inner_mut();
        let contiguous = inner.contiguous;
        let end = at + bytes.len() as u64;
        inner.data.write(at, bytes, pool);
        if at == inner.max_received && at == contiguous {
            // In order, the common case.
            inner.contiguous = end;
        } else {
            inner.runs.insert(at..end);
            let cap = MIN_RUNS.max(((limit - read) / 1024) as usize);
            if inner.runs.len() > cap {
                return Err(RecvError::TooFragmented(cap));
            }
            if inner.runs.min() == Some(contiguous) {
                let r = inner.runs.pop_min().expect("non-empty");
                inner.contiguous = r.end;
            }
        }
        let newly = (contiguous, inner.contiguous);
        if newly.1 > newly.0 && !inner.marks.is_empty() {
            inner.complete += count_marks(inner, newly.0 + 1, newly.1 + 1);
        }
        Ok(())
    }

    fn set_mark(&mut self, at: u64) {
        let read = self.read;
        let inner = self.inner_mut();
        if inner.marks.is_empty() {
            inner.mark_base = read & !63;
        }
        let bit = at - inner.mark_base;
        let word = (bit / 64) as usize;
        if word >= inner.marks.len() {
            inner.marks.resize(word + 1, 0);
        }
        let mask = 1u64 << (bit % 64);
        if inner.marks[word] & mask == 0 {
            inner.marks[word] |= mask;
            if at <= inner.contiguous {
                inner.complete += 1;
            }
        }
    }

    /// Whether the piece ending at the final size is complete and not yet read, and has no
    /// record mark of its own (the end of the stream ends the last record).
    fn final_pending(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| {
            self.final_size != u64::MAX
                && self.read < self.final_size
                && i.contiguous == self.final_size
                && !i.is_marked(self.final_size)
        })
    }

    /// The first boundary in `(read, contiguous]`, if any.
    fn next_complete_mark(&self) -> Option<u64> {
        let inner = self.inner.as_ref()?;
        if inner.complete > 0 {
            // Bits are never beyond the final size.
            return first_mark(inner, self.read + 1, inner.contiguous + 1);
        }
        self.final_pending().then_some(self.final_size)
    }

    /// Bytes readable now with [`read`](Self::read): up to the next boundary or gap.
    pub fn bytes_available(&self) -> usize {
        let stop = self
            .next_complete_mark()
            .unwrap_or_else(|| self.contiguous());
        (stop - self.read) as usize
    }

    /// Reads bytes, never across a record boundary; pages read go back to `pool`.
    pub fn read(&mut self, buf: &mut [u8], pool: &mut PagePool) -> usize {
        let n = self.bytes_available().min(buf.len());
        if n == 0 {
            return 0;
        }
        let inner = self.inner.as_mut().expect("bytes available");
        inner.data.read(self.read, &mut buf[..n]);
        self.consume(n as u64, pool);
        n
    }

    /// Advances the read offset by `n` bytes (at most to the next boundary), dropping
    /// boundaries passed and giving back the pages read.
    fn consume(&mut self, n: u64, pool: &mut PagePool) {
        let from = self.read;
        let to = from + n;
        let inner = self.inner.as_mut().expect("data to consume");
        inner.data.release_below(to, pool);
        if !inner.marks.is_empty() {
            inner.complete -= count_marks(inner, from + 1, to + 1);
        }
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
        self.release_if_idle(pool);
    }

    /// Complete records waiting (including a final unterminated piece when the stream ended).
    pub fn pending_records(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, |i| i.complete + usize::from(self.final_pending()))
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
    pub fn read_record(&mut self, max: usize, pool: &mut PagePool) -> Option<(Vec<u8>, bool)> {
        let m = self.next_complete_mark()?;
        let len = (m - self.read) as usize;
        let keep = len.min(max);
        let inner = self.inner.as_ref().expect("a record");
        let mut out = Vec::new();
        inner.data.append_to(self.read, keep, &mut out);
        self.consume(len as u64, pool);
        Some((out, keep < len))
    }

    /// All the stream's bytes once it is complete (FIN received and no gap); `None` before.
    pub fn read_all(&mut self, pool: &mut PagePool) -> Option<Vec<u8>> {
        let f = self.final_size()?;
        if self.contiguous() != f {
            return None;
        }
        let n = f - self.read;
        let mut out = Vec::new();
        if let Some(i) = &self.inner {
            i.data.append_to(self.read, n as usize, &mut out);
        }
        if n > 0 {
            self.consume(n, pool);
        }
        Some(out)
    }

    /// Abandons every byte held (the stream was reset; its pages go back to `pool`):
    /// everything up to the highest offset received counts as read. Returns how many bytes
    /// that skipped.
    pub fn abandon(&mut self, pool: &mut PagePool) -> u64 {
        let max_received = self.max_received();
        let skipped = max_received - self.read;
        if let Some(mut inner) = self.inner.take() {
            inner.data.release_all(pool);
        }
        self.read = max_received;
        skipped
    }

    /// On an abandoned stream: data (or a final size, with `fin`) up to `end` arrived. It is
    /// checked like [`insert`](Self::insert) but not stored; returns by how much the highest
    /// received offset grew (bytes that count as received and read at once).
    pub fn skip_to(&mut self, end: u64, fin: bool, limit: u64) -> Result<u64, RecvError> {
        debug_assert!(self.inner.is_none());
        if end > limit {
            return Err(RecvError::FlowControl { end, limit });
        }
        let known_final = self.final_size();
        let max_received = self.max_received();
        if known_final.is_some_and(|f| end > f || (fin && end != f)) || (fin && end < max_received)
        {
            return Err(RecvError::FinalSize {
                final_size: known_final,
                end,
            });
        }
        let grew = end.saturating_sub(max_received);
        if fin {
            self.final_size = end;
        }
        self.inner = None;
        self.read = max_received + grew;
        Ok(grew)
    }

    /// Whether the stream ended and everything was read.
    pub fn at_end(&self) -> bool {
        self.read == self.final_size
    }

    /// Drops the allocation once nothing was received beyond what was read.
    fn release_if_idle(&mut self, pool: &mut PagePool) {
        if self
            .inner
            .as_ref()
            .is_some_and(|i| i.max_received == self.read)
        {
            // Then nothing is buffered: `contiguous == read`, no runs, no complete records
            // (bits at or below `read` were consumed).
            if let Some(mut inner) = self.inner.take() {
                inner.data.release_all(pool);
            }
        }
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
        r.insert(0, b"hello", true, false, LIM, &mut PagePool::default())
            .unwrap();
        r.insert(5, b"wor", false, false, LIM, &mut PagePool::default())
            .unwrap();
        assert_eq!(r.pending_records(), 1);
        assert_eq!(r.pending_record_size(), Some(5));
        let mut buf = [0u8; 100];
        // A plain read stops at the boundary.
        assert_eq!(r.read(&mut buf, &mut PagePool::default()), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(r.pending_records(), 0);
        assert!(r.read_record(100, &mut PagePool::default()).is_none());
        r.insert(8, b"ld", true, true, LIM, &mut PagePool::default())
            .unwrap();
        assert_eq!(
            r.read_record(100, &mut PagePool::default()),
            Some((b"world".to_vec(), false))
        );
        assert!(r.at_end());
        assert!(r.inner.is_none());
    }

    #[test]
    fn out_of_order_reassembly_and_duplicates() {
        let mut r = RecvBuffer::new();
        assert_eq!(
            r.insert(6, b"ghi", false, false, LIM, &mut PagePool::default())
                .unwrap(),
            9
        );
        assert_eq!(r.bytes_available(), 0);
        assert_eq!(
            r.insert(0, b"abc", false, false, LIM, &mut PagePool::default())
                .unwrap(),
            0
        );
        assert_eq!(
            r.insert(0, b"abc", false, false, LIM, &mut PagePool::default())
                .unwrap(),
            0
        );
        assert_eq!(r.bytes_available(), 3);
        r.insert(2, b"cdefg", false, true, LIM, &mut PagePool::default())
            .unwrap_err();
        r.insert(2, b"cdefg", false, false, LIM, &mut PagePool::default())
            .unwrap();
        assert_eq!(r.bytes_available(), 9);
        let mut buf = [0u8; 9];
        assert_eq!(r.read(&mut buf, &mut PagePool::default()), 9);
        assert_eq!(&buf, b"abcdefghi");
    }

    #[test]
    fn oversized_record_is_cut_and_the_rest_discarded() {
        let mut r = RecvBuffer::new();
        r.insert(0, b"0123456789", true, false, LIM, &mut PagePool::default())
            .unwrap();
        r.insert(10, b"ab", true, false, LIM, &mut PagePool::default())
            .unwrap();
        assert_eq!(
            r.read_record(4, &mut PagePool::default()),
            Some((b"0123".to_vec(), true))
        );
        assert_eq!(
            r.read_record(4, &mut PagePool::default()),
            Some((b"ab".to_vec(), false))
        );
        assert_eq!(r.read_record(4, &mut PagePool::default()), None);
    }

    #[test]
    fn fin_ends_the_last_record_and_read_all_waits_for_completion() {
        let mut r = RecvBuffer::new();
        r.insert(3, b"def", false, true, LIM, &mut PagePool::default())
            .unwrap();
        assert_eq!(r.read_all(&mut PagePool::default()), None);
        assert_eq!(r.pending_records(), 0);
        r.insert(0, b"abc", false, false, LIM, &mut PagePool::default())
            .unwrap();
        assert_eq!(r.pending_records(), 1);
        assert_eq!(
            r.read_all(&mut PagePool::default()),
            Some(b"abcdef".to_vec())
        );
        assert!(r.at_end());
    }

    #[test]
    fn the_end_of_the_stream_ends_one_record_whatever_marks_it() {
        // A FIN alone ends the last record, without a boundary bitmap.
        let mut r = RecvBuffer::new();
        r.insert(0, b"abc", false, true, LIM, &mut PagePool::default())
            .unwrap();
        assert!(r.inner.as_ref().is_some_and(|i| i.marks.is_empty()));
        assert_eq!(r.pending_records(), 1);
        assert_eq!(r.pending_record_size(), Some(3));
        assert_eq!(
            r.read_record(10, &mut PagePool::default()),
            Some((b"abc".to_vec(), false))
        );
        assert_eq!(r.pending_records(), 0);
        assert!(r.at_end() && r.inner.is_none());
        // A record mark and the FIN at the same offset are one record, in either order.
        for mark_first in [true, false] {
            let mut r = RecvBuffer::new();
            r.insert(0, b"xy", false, false, LIM, &mut PagePool::default())
                .unwrap();
            let (a, b) = if mark_first {
                ((true, false), (false, true))
            } else {
                ((false, true), (true, false))
            };
            r.insert(2, b"", a.0, a.1, LIM, &mut PagePool::default())
                .unwrap();
            r.insert(2, b"", b.0, b.1, LIM, &mut PagePool::default())
                .unwrap();
            assert_eq!(r.pending_records(), 1, "mark first: {mark_first}");
            assert_eq!(
                r.read_record(10, &mut PagePool::default()),
                Some((b"xy".to_vec(), false))
            );
            assert_eq!(r.pending_records(), 0);
            assert!(r.at_end());
        }
        // A FIN that overtakes the data: the record completes when the gap fills.
        let mut r = RecvBuffer::new();
        r.insert(5, b"", false, true, LIM, &mut PagePool::default())
            .unwrap();
        assert_eq!((r.pending_records(), r.bytes_available()), (0, 0));
        r.insert(0, b"he", true, false, LIM, &mut PagePool::default())
            .unwrap();
        r.insert(2, b"llo", false, false, LIM, &mut PagePool::default())
            .unwrap();
        assert_eq!(r.pending_records(), 2);
        assert_eq!(
            r.read_record(10, &mut PagePool::default()),
            Some((b"he".to_vec(), false))
        );
        assert_eq!(
            r.read_record(10, &mut PagePool::default()),
            Some((b"llo".to_vec(), false))
        );
        assert!(r.at_end() && r.inner.is_none());
    }

    #[test]
    fn an_empty_frame_beyond_the_read_offset_is_remembered() {
        // Flow control counts the highest offset even without data; it must not be lost
        // when nothing is buffered.
        let mut r = RecvBuffer::new();
        assert_eq!(
            r.insert(10, b"", false, false, LIM, &mut PagePool::default())
                .unwrap(),
            10
        );
        assert_eq!(r.max_received(), 10);
        assert_eq!(
            r.insert(
                0,
                b"0123456789",
                false,
                false,
                LIM,
                &mut PagePool::default()
            )
            .unwrap(),
            0
        );
        let mut buf = [0u8; 16];
        assert_eq!(r.read(&mut buf, &mut PagePool::default()), 10);
        assert!(r.inner.is_none());
        assert_eq!(r.max_received(), 10);
    }

    #[test]
    fn late_bare_mark_completes_a_record() {
        let mut r = RecvBuffer::new();
        r.insert(0, b"abc", false, false, LIM, &mut PagePool::default())
            .unwrap();
        assert!(r.read_record(10, &mut PagePool::default()).is_none());
        r.insert(3, b"", true, false, LIM, &mut PagePool::default())
            .unwrap();
        assert_eq!(
            r.read_record(10, &mut PagePool::default()),
            Some((b"abc".to_vec(), false))
        );
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut r = RecvBuffer::new();
        assert!(matches!(
            r.insert(LIM - 1, b"ab", false, false, LIM, &mut PagePool::default()),
            Err(RecvError::FlowControl { .. })
        ));
        r.insert(0, b"abcd", false, false, LIM, &mut PagePool::default())
            .unwrap();
        assert!(matches!(
            r.insert(0, b"ab", false, true, LIM, &mut PagePool::default()),
            Err(RecvError::FinalSize { .. })
        ));
        r.insert(4, b"", false, true, LIM, &mut PagePool::default())
            .unwrap();
        assert!(r
            .insert(4, b"x", false, false, LIM, &mut PagePool::default())
            .is_err());
        assert!(r
            .insert(
                u64::MAX - 1,
                b"xyz",
                false,
                false,
                u64::MAX,
                &mut PagePool::default()
            )
            .is_err());
    }

    #[test]
    fn scattered_bytes_are_capped() {
        let mut r = RecvBuffer::new();
        let mut err = None;
        for i in 0..5000u64 {
            if let Err(e) = r.insert(
                1 + 2 * i,
                b"x",
                false,
                false,
                64 * 1024,
                &mut PagePool::default(),
            ) {
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
            r.insert(i, &[i as u8], true, false, LIM, &mut PagePool::default())
                .unwrap();
        }
        assert_eq!(r.pending_records(), 1000);
        for i in 0..1000u64 {
            assert_eq!(
                r.read_record(8, &mut PagePool::default()),
                Some((vec![i as u8], false))
            );
        }
        assert_eq!(r.pending_records(), 0);
        assert!(r.inner.is_none());
    }

    #[test]
    fn idle_recv_buffer_is_small() {
        assert!(std::mem::size_of::<RecvBuffer>() <= 24);
    }
}
