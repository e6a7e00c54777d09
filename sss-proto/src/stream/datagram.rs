//! Best-effort datagrams of any size: fragmentation on the sending side, bounded reassembly
//! on the receiving side.
//!
//! A datagram is cut into DATAGRAM frames (`stream`, `datagram_id`, `total_len`,
//! `frag_offset`, data) and never re-sent. The receiver delivers it only when every byte
//! arrived, once; incomplete datagrams expire after a deadline, and the bytes held for
//! reassembly are capped (each incomplete datagram is charged its whole length plus a fixed
//! overhead the moment its first fragment arrives; the oldest are dropped to make room).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use crate::ranges::RangeSet;

/// Fixed charge per incomplete datagram, for its bookkeeping.
const PER_DATAGRAM_OVERHEAD: usize = 256;
/// Most separate received pieces of one incomplete datagram; beyond, it is dropped.
const MAX_PIECES: usize = 1024;
/// Runs of finished datagram ids remembered per stream (to drop late duplicates).
const MAX_DONE_RUNS: usize = 64;

/// A queued datagram was refused.
#[derive(Debug, Clone, Copy, Eq, PartialEq, thiserror::Error)]
#[error("datagram of {0} bytes exceeds the send queue")]
pub struct QueueFull(pub usize);

/// One fragment to send.
#[derive(Debug, Clone, Eq, PartialEq)]
pub struct Fragment {
    /// Which datagram.
    pub datagram_id: u64,
    /// Its total length.
    pub total_len: u64,
    /// Where this piece starts in it.
    pub frag_offset: u64,
    /// The piece.
    pub data: Bytes,
}

/// Best-effort datagrams of one stream waiting to be sent.
#[derive(Debug)]
pub struct Outgoing {
    queue: VecDeque<(u64, Bytes)>,
    /// Bytes of the front datagram already sent.
    front_sent: usize,
    bytes: usize,
    limit: usize,
    /// Datagrams dropped because the queue overflowed.
    pub dropped: u64,
}

impl Outgoing {
    /// A queue holding at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            front_sent: 0,
            bytes: 0,
            limit,
            dropped: 0,
        }
    }

    /// Queues datagram `id`. When the queue would overflow, the oldest datagrams not yet
    /// started are dropped first; a datagram larger than the whole queue is refused.
    pub fn push(&mut self, id: u64, data: Bytes) -> Result<(), QueueFull> {
        if data.len() > self.limit {
            return Err(QueueFull(data.len()));
        }
        while self.bytes + data.len() > self.limit {
            // Never cut a datagram half sent: drop the next one instead.
            let victim = if self.front_sent > 0 && self.queue.len() > 1 {
                1
            } else {
                0
            };
            if victim == 0 && self.front_sent > 0 {
                break;
            }
            let (_, d) = self.queue.remove(victim).expect("non-empty while over");
            self.bytes -= d.len();
            self.dropped += 1;
        }
        self.bytes += data.len();
        self.queue.push_back((id, data));
        Ok(())
    }

    /// Drops the queued datagrams longer than `max`, one already started too (the peer
    /// discards it whatever is sent: its first fragments, in early data say, expire in its
    /// reassembly); returns how many.
    pub fn drop_larger_than(&mut self, max: u64) -> u64 {
        let before = self.queue.len();
        if self
            .queue
            .front()
            .is_some_and(|(_, d)| d.len() as u64 > max)
        {
            self.front_sent = 0;
        }
        let mut freed = 0;
        self.queue.retain(|(_, d)| {
            let keep = d.len() as u64 <= max;
            if !keep {
                freed += d.len();
            }
            keep
        });
        self.bytes -= freed;
        (before - self.queue.len()) as u64
    }

    /// Bytes queued (datagrams not yet completely sent).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether fragments wait.
    pub fn has_pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The next fragment's (datagram id, total length, offset), to size its frame header.
    pub fn peek(&self) -> Option<(u64, u64, u64)> {
        self.queue
            .front()
            .map(|(id, d)| (*id, d.len() as u64, self.front_sent as u64))
    }

    /// The next fragment, at most `max` data bytes.
    pub fn next_fragment(&mut self, max: usize) -> Option<Fragment> {
        let (id, d) = self.queue.front()?;
        let start = self.front_sent;
        let n = (d.len() - start).min(max);
        if n == 0 && !d.is_empty() {
            return None;
        }
        let frag = Fragment {
            datagram_id: *id,
            total_len: d.len() as u64,
            frag_offset: start as u64,
            data: d.slice(start..start + n),
        };
        self.front_sent += n;
        if self.front_sent == d.len() {
            let (_, d) = self.queue.pop_front().expect("front");
            self.bytes -= d.len();
            self.front_sent = 0;
        }
        Some(frag)
    }
}

#[derive(Debug)]
struct Partial {
    data: Vec<u8>,
    got: RangeSet,
    deadline: Instant,
}

/// Reassembly of incoming best-effort datagrams for a whole session.
#[derive(Debug)]
pub struct Reassembly {
    partial: HashMap<(u64, u64), Partial>,
    by_deadline: BTreeMap<(Instant, u64, u64), ()>,
    /// Finished (delivered or given up) datagram ids per stream.
    done: HashMap<u64, RangeSet>,
    charged: usize,
    limit: usize,
    max_size: u64,
    /// Incomplete datagrams dropped (expired, evicted or malformed).
    pub dropped: u64,
}

impl Reassembly {
    /// Reassembly holding at most `limit` bytes, for datagrams up to `max_size` bytes.
    pub fn new(limit: usize, max_size: u64) -> Self {
        Self {
            partial: HashMap::new(),
            by_deadline: BTreeMap::new(),
            done: HashMap::new(),
            charged: 0,
            limit,
            max_size,
            dropped: 0,
        }
    }

    /// Bytes charged to incomplete datagrams.
    pub fn charged(&self) -> usize {
        self.charged
    }

    /// A fragment arrived; returns the datagram when it is complete. Malformed, duplicate,
    /// oversized or late fragments are dropped.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &mut self,
        now: Instant,
        deadline: Instant,
        stream: u64,
        id: u64,
        total_len: u64,
        frag_offset: u64,
        data: &[u8],
    ) -> Option<Vec<u8>> {
        let end = frag_offset.checked_add(data.len() as u64)?;
        if total_len > self.max_size || end > total_len {
            self.dropped += 1;
            return None;
        }
        if self.done.get(&stream).is_some_and(|d| d.contains(id)) {
            return None;
        }
        if frag_offset == 0 && end == total_len {
            // Whole in one frame: no reassembly state.
            self.finish(stream, id);
            return Some(data.to_vec());
        }
        let key = (stream, id);
        if !self.partial.contains_key(&key) {
            let charge = total_len as usize + PER_DATAGRAM_OVERHEAD;
            if charge > self.limit {
                self.dropped += 1;
                return None;
            }
            while self.charged + charge > self.limit {
                let (&(_, s, i), _) = self.by_deadline.iter().next()?;
                self.drop_partial(s, i);
            }
            self.charged += charge;
            self.partial.insert(
                key,
                Partial {
                    data: vec![0; total_len as usize],
                    got: RangeSet::new(),
                    deadline,
                },
            );
            self.by_deadline.insert((deadline, stream, id), ());
        }
        let _ = now;
        let p = self.partial.get_mut(&key).expect("present");
        if p.data.len() as u64 != total_len {
            // Fragments disagree on the length: drop the datagram.
            self.drop_partial(stream, id);
            return None;
        }
        p.data[frag_offset as usize..end as usize].copy_from_slice(data);
        if frag_offset < end {
            p.got.insert(frag_offset..end);
        }
        if p.got.len() > MAX_PIECES {
            self.drop_partial(stream, id);
            return None;
        }
        let complete = p.got.len() == 1 && p.got.iter().next() == Some(0..total_len);
        if !complete {
            return None;
        }
        let p = self.partial.remove(&key).expect("present");
        self.by_deadline.remove(&(p.deadline, stream, id));
        self.charged -= p.data.len() + PER_DATAGRAM_OVERHEAD;
        self.finish(stream, id);
        Some(p.data)
    }

    fn finish(&mut self, stream: u64, id: u64) {
        let d = self.done.entry(stream).or_default();
        d.insert_one(id);
        if d.len() > MAX_DONE_RUNS {
            // Forget the gap below the second run: its ids count as finished.
            let first = d.pop_min().expect("non-empty");
            let second_start = d.min().expect("more than one run");
            d.insert(first.start..second_start);
        }
    }

    fn drop_partial(&mut self, stream: u64, id: u64) {
        if let Some(p) = self.partial.remove(&(stream, id)) {
            self.by_deadline.remove(&(p.deadline, stream, id));
            self.charged -= p.data.len() + PER_DATAGRAM_OVERHEAD;
            self.dropped += 1;
            self.finish(stream, id);
        }
    }

    /// Drops incomplete datagrams whose deadline passed.
    pub fn expire(&mut self, now: Instant) {
        while let Some((&(t, s, i), _)) = self.by_deadline.iter().next() {
            if t > now {
                break;
            }
            self.drop_partial(s, i);
        }
    }

    /// The earliest deadline of an incomplete datagram.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.keys().next().map(|k| k.0)
    }

    /// Forgets everything about `stream` (it ended).
    pub fn forget_stream(&mut self, stream: u64) {
        // Most streams never carried a best-effort datagram: no hashing then.
        if self.done.is_empty() && self.partial.is_empty() {
            return;
        }
        if self.done.remove(&stream).is_none() && self.partial.is_empty() {
            return;
        }
        let keys: Vec<(u64, u64)> = self
            .partial
            .keys()
            .filter(|k| k.0 == stream)
            .copied()
            .collect();
        for (s, i) in keys {
            self.drop_partial(s, i);
        }
        self.done.remove(&stream);
    }
}

/// Fixed charge per fragment held for a stream not yet opened.
const PER_HELD_OVERHEAD: usize = 64;

/// One DATAGRAM fragment held until its stream opens.
#[derive(Debug)]
pub struct HeldFragment {
    /// The stream (not yet known when the fragment arrived).
    pub stream: u64,
    /// Which datagram.
    pub datagram_id: u64,
    /// Its total length.
    pub total_len: u64,
    /// Where this piece starts in it.
    pub frag_offset: u64,
    /// When it is given up.
    pub deadline: Instant,
    /// The piece.
    pub data: Vec<u8>,
}

/// Best-effort fragments for peer streams whose OPEN has not arrived yet (datagrams sent at
/// once on a new stream may overtake its OPEN), held in arrival order within a byte limit for
/// the whole session: beyond it the oldest are dropped, and each is dropped at its deadline.
#[derive(Debug)]
pub struct Unopened {
    held: VecDeque<HeldFragment>,
    bytes: usize,
    limit: usize,
    /// Fragments dropped (evicted, expired, or their stream never opened).
    pub dropped: u64,
    /// Fragments ever held.
    pub held_total: u64,
}

impl Unopened {
    /// A store of at most `limit` bytes (each fragment charged its length plus a fixed
    /// overhead).
    pub fn new(limit: usize) -> Self {
        Self {
            held: VecDeque::new(),
            bytes: 0,
            limit,
            dropped: 0,
            held_total: 0,
        }
    }

    /// Bytes charged to held fragments.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Holds a fragment, dropping the oldest ones if the store would overflow.
    pub fn push(&mut self, f: HeldFragment) {
        let charge = f.data.len() + PER_HELD_OVERHEAD;
        if charge > self.limit {
            self.dropped += 1;
            return;
        }
        while self.bytes + charge > self.limit {
            self.pop_oldest();
        }
        self.bytes += charge;
        self.held_total += 1;
        self.held.push_back(f);
    }

    fn pop_oldest(&mut self) {
        if let Some(old) = self.held.pop_front() {
            self.bytes -= old.data.len() + PER_HELD_OVERHEAD;
            self.dropped += 1;
        }
    }

    /// Takes the fragments held for `stream`, oldest first.
    pub fn take(&mut self, stream: u64) -> Vec<HeldFragment> {
        if !self.held.iter().any(|f| f.stream == stream) {
            return Vec::new();
        }
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.held.len());
        for f in self.held.drain(..) {
            if f.stream == stream {
                self.bytes -= f.data.len() + PER_HELD_OVERHEAD;
                taken.push(f);
            } else {
                kept.push_back(f);
            }
        }
        self.held = kept;
        taken
    }

    /// Drops the fragments held for `stream` (it will never open).
    pub fn forget(&mut self, stream: u64) {
        let n = self.take(stream).len();
        self.dropped += n as u64;
    }

    /// Drops fragments whose deadline passed (in arrival order: a fragment waits behind an
    /// older one whose deadline is later, still within the byte limit).
    pub fn expire(&mut self, now: Instant) {
        while self.held.front().is_some_and(|f| f.deadline <= now) {
            self.pop_oldest();
        }
    }

    /// The deadline of the oldest held fragment.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.held.front().map(|f| f.deadline)
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.dropped += self.held.len() as u64;
        self.held.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fragments_and_reassembles_out_of_order() {
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut out = Outgoing::new(1 << 20);
        out.push(7, Bytes::from(data.clone())).unwrap();
        let mut frags = Vec::new();
        while let Some(f) = out.next_fragment(1200) {
            frags.push(f);
        }
        assert_eq!(frags.len(), 5);
        assert!(!out.has_pending());
        frags.reverse();
        let now = Instant::now();
        let mut r = Reassembly::new(1 << 20, 1 << 20);
        let mut got = None;
        for f in &frags {
            let d = r.insert(
                now,
                now,
                3,
                f.datagram_id,
                f.total_len,
                f.frag_offset,
                &f.data,
            );
            if d.is_some() {
                got = d;
            }
        }
        assert!(
            got.as_deref() == Some(&data[..]),
            "reassembled datagram differs"
        );
        assert_eq!(r.charged(), 0);
        // A duplicate of a finished datagram is not delivered again.
        let f = &frags[0];
        assert!(r
            .insert(now, now, 3, 7, f.total_len, f.frag_offset, &f.data)
            .is_none());
        assert!(r.partial.is_empty());
    }

    #[test]
    fn incomplete_datagrams_expire_and_memory_is_capped() {
        let now = Instant::now();
        let mut r = Reassembly::new(10_000, 1 << 20);
        for i in 0..100u64 {
            let t = now + Duration::from_millis(i);
            assert!(r.insert(now, t, 1, i, 3000, 0, &[1; 100]).is_none());
            assert!(r.charged() <= 10_000);
        }
        assert!(r.dropped > 90);
        r.expire(now + Duration::from_secs(1));
        assert_eq!(r.charged(), 0);
        assert!(r.next_deadline().is_none());
        // Oversized, inconsistent and overflowing fragments are dropped.
        assert!(r.insert(now, now, 1, 500, 2 << 20, 0, &[0; 10]).is_none());
        assert!(r.insert(now, now, 1, 501, 10, 5, &[0; 10]).is_none());
        assert!(r.insert(now, now, 1, 502, 20, 0, &[0; 10]).is_none());
        assert!(r.insert(now, now, 1, 502, 30, 10, &[0; 10]).is_none());
        assert!(r.insert(now, now, 1, 502, 20, 10, &[0; 10]).is_none());
    }

    #[test]
    fn send_queue_drops_oldest_unstarted() {
        let mut out = Outgoing::new(100);
        out.push(0, Bytes::from(vec![0; 60])).unwrap();
        let f = out.next_fragment(10).unwrap();
        assert_eq!(f.data.len(), 10);
        out.push(1, Bytes::from(vec![1; 30])).unwrap();
        out.push(2, Bytes::from(vec![2; 30])).unwrap();
        // Datagram 0 is half sent and kept; 1 is dropped for 2.
        assert_eq!(out.dropped, 1);
        let mut ids = Vec::new();
        while let Some(f) = out.next_fragment(1000) {
            ids.push(f.datagram_id);
        }
        assert_eq!(ids, vec![0, 2]);
        assert!(out.push(3, Bytes::from(vec![0; 101])).is_err());
    }

    #[test]
    fn datagrams_too_large_for_the_peer_go_even_when_started() {
        let mut out = Outgoing::new(1000);
        out.push(0, Bytes::from(vec![0; 300])).unwrap();
        out.push(1, Bytes::from(vec![1; 50])).unwrap();
        out.push(2, Bytes::from(vec![2; 200])).unwrap();
        let f = out.next_fragment(100).unwrap();
        assert_eq!((f.datagram_id, f.data.len()), (0, 100));
        // The peer takes at most 100 bytes: the half-sent 0 and the queued 2 go.
        assert_eq!(out.drop_larger_than(100), 2);
        assert_eq!(out.bytes(), 50);
        let f = out.next_fragment(1000).unwrap();
        assert_eq!((f.datagram_id, f.data.len()), (1, 50));
        assert!(out.next_fragment(1000).is_none());
    }

    #[test]
    fn unopened_store_is_bounded_and_releases_by_stream() {
        let now = Instant::now();
        let mut u = Unopened::new(1000);
        let frag = |stream, id, t: u64| HeldFragment {
            stream,
            datagram_id: id,
            total_len: 100,
            frag_offset: 0,
            deadline: now + Duration::from_millis(t),
            data: vec![1; 100],
        };
        // 164 bytes each: six fit, the seventh evicts the oldest.
        for i in 0..7 {
            u.push(frag(i % 2, i, 10 + i));
            assert!(u.bytes() <= 1000);
        }
        assert_eq!(u.dropped, 1);
        let odd: Vec<u64> = u.take(1).iter().map(|f| f.datagram_id).collect();
        assert_eq!(odd, vec![1, 3, 5]);
        u.forget(0);
        assert!(u.is_empty());
        assert_eq!(u.bytes(), 0);
        assert_eq!(u.dropped, 4);
        u.push(frag(5, 0, 10));
        u.push(frag(5, 1, 20));
        u.expire(now + Duration::from_millis(15));
        assert_eq!(u.next_deadline(), Some(now + Duration::from_millis(20)));
        u.push(HeldFragment {
            data: vec![0; 1000],
            ..frag(5, 2, 30)
        });
        assert_eq!(u.held.len(), 1, "larger than the store: dropped");
    }
}
