//! Byte storage for stream buffers in fixed-size pages, recycled through a per-session pool.
//!
//! A stream's send or receive buffer used to be one `VecDeque<u8>`: it grew by doubling
//! (copying everything at each step, and faulting in fresh pages for large buffers), and was
//! freed whenever the stream went idle, so a stream that a reader kept draining regrew it
//! from nothing again and again (a third of a receiver's time with 100 busy streams). Pages
//! of [`PAGE`] bytes never move: data is appended into the last page, pages wholly consumed
//! go back to the session's [`PagePool`], and the next stream that needs one takes it from
//! there instead of the allocator.
//!
//! Page `i` of a [`Pages`] holds the stream offsets `[base + i * PAGE, base + (i + 1) *
//! PAGE)`, where `base` is where the storage started (or restarted, once empty): it need not
//! be a multiple of [`PAGE`], so a receive buffer that is dropped whenever its reader catches
//! up and restarted at the read offset writes from the start of its first page instead of
//! zero-filling up to the offset (with 100 streams whose readers keep up, that zero-filling
//! was ~3 % of the receiver). A page is a `Vec<u8>` whose length is the end
//! of what was written in it (gaps below are zero-filled), so a stream holding a few bytes
//! holds a small allocation, not a whole page: pages from the pool have the full capacity,
//! fresh ones grow to at most [`PAGE`].

use std::collections::VecDeque;

/// Bytes per page. Small enough that the allocator serves it from its free lists (not
/// `mmap`) when the pool is empty, large enough that a frame rarely spans two pages.
pub const PAGE: usize = 16 * 1024;

/// Spare pages a session keeps for reuse by default: 4 MiB.
pub const DEFAULT_SPARE_PAGES: usize = 256;

/// Spare pages a pool keeps whatever its buffers hold: an idle session keeps at most this
/// many (128 KiB), so thousands of idle sessions do not each sit on megabytes.
pub const IDLE_SPARE_PAGES: usize = 8;

/// Spare full-size pages, reused by the stream buffers of one session. Bounded twice: never
/// more than `max`, and never more than the most pages the session's buffers held at once
/// since the last [`trim`](Self::trim) (or [`IDLE_SPARE_PAGES`] if that is more). A busy
/// transfer recycles pages at the rate its buffers turn over, through bursts: a receiver
/// whose reader keeps up holds a few pages between bursts of up to hundreds, and a bound
/// following the pages held at each instant handed the spares of every burst back to the
/// allocator, which returned them to the kernel and faulted them in again for the next one
/// (~125,000 page faults per GB received, ~10-30 % of a receiver's CPU on loopback). The
/// session trims every [`PAGE_TRIM_INTERVAL`](super::PAGE_TRIM_INTERVAL) while spares exceed
/// the idle bound, so an idle session is back to at most [`IDLE_SPARE_PAGES`] within two
/// intervals.
#[derive(Debug)]
pub struct PagePool {
    spare: Vec<Vec<u8>>,
    max: usize,
    /// Pages taken and not given back (held by the session's buffers).
    in_use: usize,
    /// The most pages held at once since the last trim.
    peak: usize,
}

impl Default for PagePool {
    fn default() -> Self {
        Self::new(DEFAULT_SPARE_PAGES)
    }
}

impl PagePool {
    /// A pool keeping at most `max` spare pages.
    pub fn new(max: usize) -> Self {
        Self {
            spare: Vec::new(),
            max,
            in_use: 0,
            peak: 0,
        }
    }

    /// Spare pages held.
    pub fn spare(&self) -> usize {
        self.spare.len()
    }

    /// An empty page: a spare one if any (with room for [`PAGE`] bytes), else a new
    /// allocation-free `Vec` that grows as it is written.
    fn take(&mut self) -> Vec<u8> {
        self.in_use += 1;
        self.peak = self.peak.max(self.in_use);
        self.spare.pop().unwrap_or_default()
    }

    /// The number of spares the pool may keep now.
    fn bound(&self) -> usize {
        self.max
            .min(self.in_use.max(self.peak).max(IDLE_SPARE_PAGES))
    }

    /// Takes back a page no longer used; kept if full-size and the pool has room.
    fn give(&mut self, mut page: Vec<u8>) {
        self.in_use = self.in_use.saturating_sub(1);
        if page.capacity() >= PAGE && self.spare.len() < self.bound() {
            page.clear();
            self.spare.push(page);
        }
    }

    /// Ends a trim interval: frees the spares beyond the most pages held during it (or
    /// [`IDLE_SPARE_PAGES`]) and starts the next. Returns whether more than
    /// [`IDLE_SPARE_PAGES`] spares remain (another interval should follow).
    pub fn trim(&mut self) -> bool {
        self.spare.truncate(self.bound());
        self.peak = self.in_use;
        self.spare.len() > IDLE_SPARE_PAGES
    }
}

/// Bytes at stream offsets from `base` on, in pages. See the [module documentation](self).
#[derive(Debug)]
pub struct Pages {
    pages: VecDeque<Vec<u8>>,
    /// Stream offset of the first byte of `pages[0]`.
    base: u64,
}

impl Pages {
    /// Empty storage for offsets from `at` on.
    pub fn new(at: u64) -> Self {
        Self {
            pages: VecDeque::new(),
            base: at,
        }
    }

    /// Stores `bytes` at stream offset `at` (at least the offset given to
    /// [`new`](Self::new) or last passed to [`release_below`](Self::release_below)),
    /// overwriting what was there; bytes never written below `at` read as zeros.
    pub fn write(&mut self, at: u64, mut bytes: &[u8], pool: &mut PagePool) {
        debug_assert!(at >= self.base, "write below the storage's base");
        let mut rel = at.saturating_sub(self.base);
        while !bytes.is_empty() {
            // A stream offset difference within a receive window or send buffer fits a usize.
            let index = (rel / PAGE as u64) as usize;
            let pos = (rel % PAGE as u64) as usize;
            let n = bytes.len().min(PAGE - pos);
            while self.pages.len() <= index {
                self.pages.push_back(pool.take());
            }
            let multi_page = self.pages.len() > 1;
            let page = &mut self.pages[index];
            let end = pos + n;
            if page.len() < end {
                if multi_page {
                    // A stream holding more than a page is a bulk one: no doubling steps.
                    page.reserve_exact(PAGE - page.len());
                } else {
                    reserve_page(page, end);
                }
                if page.len() < pos {
                    page.resize(pos, 0);
                }
                // Overwrite what the page holds already, append the rest.
                let old = page.len() - pos;
                page[pos..].copy_from_slice(&bytes[..old]);
                page.extend_from_slice(&bytes[old..n]);
            } else {
                page[pos..end].copy_from_slice(&bytes[..n]);
            }
            bytes = &bytes[n..];
            rel += n as u64;
        }
    }

    /// Copies the bytes at `at..at + out.len()` (all written before) into `out`.
    pub fn read(&self, at: u64, out: &mut [u8]) {
        let mut rel = at - self.base;
        let mut done = 0;
        while done < out.len() {
            let index = (rel / PAGE as u64) as usize;
            let pos = (rel % PAGE as u64) as usize;
            let n = (out.len() - done).min(PAGE - pos);
            out[done..done + n].copy_from_slice(&self.pages[index][pos..pos + n]);
            done += n;
            rel += n as u64;
        }
    }

    /// Appends the bytes at `at..at + len` (all written before) to `out`.
    pub fn append_to(&self, at: u64, len: usize, out: &mut Vec<u8>) {
        let mut rel = at - self.base;
        let mut left = len;
        out.reserve(len);
        while left > 0 {
            let index = (rel / PAGE as u64) as usize;
            let pos = (rel % PAGE as u64) as usize;
            let n = left.min(PAGE - pos);
            out.extend_from_slice(&self.pages[index][pos..pos + n]);
            left -= n;
            rel += n as u64;
        }
    }

    /// Gives back the pages wholly below stream offset `at` (no longer needed).
    pub fn release_below(&mut self, at: u64, pool: &mut PagePool) {
        while self.base + PAGE as u64 <= at {
            match self.pages.pop_front() {
                Some(page) => {
                    pool.give(page);
                    self.base += PAGE as u64;
                }
                None => {
                    self.base = at;
                    break;
                }
            }
        }
    }

    /// Gives back every page.
    pub fn release_all(&mut self, pool: &mut PagePool) {
        for page in self.pages.drain(..) {
            pool.give(page);
        }
    }
}

/// Makes room in `page` for `end` bytes (at most [`PAGE`]), growing by doubling as a `Vec`
/// would but never beyond a page.
fn reserve_page(page: &mut Vec<u8>, end: usize) {
    if page.capacity() < end {
        let target = end.max(page.capacity() * 2).clamp(64, PAGE);
        page.reserve_exact(target - page.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn writes_across_pages_read_back() {
        let mut pool = PagePool::default();
        let start = 3 * PAGE as u64 - 100;
        let mut p = Pages::new(start);
        let data = bytes(2 * PAGE + 500, 7);
        p.write(start, &data[..1000], &mut pool);
        p.write(start + 1000, &data[1000..], &mut pool);
        let mut out = vec![0; data.len()];
        p.read(start, &mut out);
        assert_eq!(out, data);
        let mut v = vec![9];
        p.append_to(start + 50, 2 * PAGE, &mut v);
        assert_eq!(v[1..], data[50..50 + 2 * PAGE]);
    }

    #[test]
    fn out_of_order_writes_leave_zeroed_gaps_and_fill_them() {
        let mut pool = PagePool::default();
        let mut p = Pages::new(0);
        let data = bytes(PAGE + 3000, 1);
        p.write(PAGE as u64 + 10, &data[PAGE + 10..], &mut pool);
        p.write(5, &data[5..20], &mut pool);
        let mut out = vec![1; 20];
        p.read(0, &mut out);
        assert_eq!(out[..5], [0; 5]);
        assert_eq!(out[5..20], data[5..20]);
        p.write(0, &data[..PAGE + 10], &mut pool);
        let mut all = vec![0; data.len()];
        p.read(0, &mut all);
        assert_eq!(all, data);
    }

    #[test]
    fn spares_follow_the_recent_peak_and_an_idle_pool_keeps_few() {
        let mut pool = PagePool::default();
        let mut p = Pages::new(0);
        let mut q = Pages::new(0);
        p.write(0, &bytes(100 * PAGE, 1), &mut pool);
        q.write(0, &bytes(100 * PAGE, 2), &mut pool);
        // Half of p's pages go back while q still holds 100: all kept for reuse.
        p.release_below(50 * PAGE as u64, &mut pool);
        assert_eq!(pool.spare(), 50);
        // Reused: no allocation for the next 50 pages.
        let mut r = Pages::new(0);
        r.write(0, &bytes(50 * PAGE, 3), &mut pool);
        assert_eq!(pool.spare(), 0);
        // Everything drains: the pool keeps the spares of its peak until trimmed; a trim
        // interval with no use brings it down to IDLE_SPARE_PAGES.
        for pages in [&mut p, &mut q, &mut r] {
            pages.release_all(&mut pool);
        }
        assert_eq!(pool.spare(), 200);
        assert!(
            pool.trim(),
            "the interval held 200 pages at its peak: all kept"
        );
        assert_eq!(pool.spare(), 200);
        assert!(!pool.trim(), "an interval without use");
        assert_eq!(pool.spare(), IDLE_SPARE_PAGES);
    }

    #[test]
    fn released_pages_are_reused_and_the_pool_is_bounded() {
        let mut pool = PagePool::new(2);
        let mut p = Pages::new(0);
        p.write(0, &bytes(4 * PAGE, 3), &mut pool);
        p.release_below(PAGE as u64 * 3 + 1, &mut pool);
        assert_eq!(pool.spare(), 2, "three pages released, two kept");
        let mut q = Pages::new(0);
        q.write(0, &[1], &mut pool);
        assert_eq!(pool.spare(), 1);
        assert!(q.pages[0].capacity() >= PAGE);
        let mut out = [0u8; 10];
        p.read(3 * PAGE as u64 + 5, &mut out);
        assert_eq!(out[..], bytes(4 * PAGE, 3)[3 * PAGE + 5..3 * PAGE + 15]);
        p.release_all(&mut pool);
        assert_eq!(pool.spare(), 2);
    }

    #[test]
    fn a_few_bytes_take_a_small_allocation_without_a_spare_page() {
        let mut pool = PagePool::new(0);
        let mut p = Pages::new(100);
        p.write(100, b"hello", &mut pool);
        assert!(p.pages[0].capacity() < 1024);
        assert_eq!(p.pages[0].len(), 5, "nothing below the start is stored");
        let mut out = [0u8; 5];
        p.read(100, &mut out);
        assert_eq!(&out, b"hello");
    }

    #[test]
    fn release_below_an_empty_storage_moves_its_base() {
        let mut pool = PagePool::default();
        let mut p = Pages::new(0);
        p.release_below(5 * PAGE as u64 + 7, &mut pool);
        p.write(5 * PAGE as u64 + 7, b"x", &mut pool);
        let mut out = [0u8; 1];
        p.read(5 * PAGE as u64 + 7, &mut out);
        assert_eq!(&out, b"x");
        assert_eq!(p.pages.len(), 1);
    }
}
