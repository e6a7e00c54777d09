//! The listening side of a call: a jitter buffer that plays frames out at a fixed delay, and
//! the call's statistics (frames received, lost, late; one-way delay; RFC 3550 jitter).
//!
//! Playout: frame `n` is due at `anchor + n × frame + buffer`, where the anchor is the
//! arrival time of the first frame minus its own place in the sequence (as a receiver that
//! starts playing on the first frame it hears). A frame that has not arrived when it is due
//! is concealed; if it arrives later it counts as *late* (received, but useless). Frames that
//! never arrive are *lost*.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Frames more than this far ahead of the playout point, or behind it, are ignored (a peer
/// cannot make the buffer grow without bound by sending made-up sequence numbers): 20 s of
/// 20 ms frames. Within it, duplicates are recognised.
const WINDOW: u32 = 1_000;
/// Delay samples kept for the call's percentiles (an hour of 20 ms frames); beyond it,
/// samples still count in the per-second figures.
const MAX_SAMPLES: usize = 180_000;

/// A jitter buffer and its counters.
#[derive(Debug)]
pub(crate) struct JitterBuffer {
    frame: Duration,
    buffer: Duration,
    /// When this end's call started: no peer frame can be much further into the call than
    /// the time since then.
    start: Instant,
    /// When frame 0 would be due without the buffer delay.
    anchor: Option<Instant>,
    /// The next frame to play.
    next_play: u32,
    /// The number of frames the sender sent, once it said.
    end: Option<u32>,
    /// Frames within [`WINDOW`] of `next_play` that have arrived.
    arrived: BTreeSet<u32>,
    /// Totals for the whole call.
    pub(crate) total: Counters,
    /// Since the last [`take_interval`](Self::take_interval).
    interval: Counters,
    delays_us: Vec<u32>,
    interval_delays_us: Vec<u32>,
    /// RFC 3550 interarrival jitter estimate, in microseconds.
    jitter_us: f64,
    last_transit_us: Option<i128>,
}

/// Frame counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Frames that arrived (each sequence number once).
    pub(crate) received: u64,
    /// Of those, frames that arrived after they were due.
    pub(crate) late: u64,
    /// Frames due that had not arrived (played as silence).
    pub(crate) concealed: u64,
    /// Frames played on time.
    pub(crate) played: u64,
    /// Frames ignored: duplicates, or too far ahead.
    pub(crate) ignored: u64,
}

/// What a span of the call looked like.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Figures {
    /// The counters of the span.
    pub(crate) counters: Counters,
    /// One-way delay percentiles (50, 95, 99, max) in milliseconds, if any frame arrived.
    pub(crate) delay_ms: Option<[f64; 4]>,
    /// RFC 3550 jitter at the end of the span, in milliseconds.
    pub(crate) jitter_ms: f64,
}

impl JitterBuffer {
    /// A buffer for frames of `frame` duration, played `buffer` after the anchor, for a call
    /// that started at `start`.
    pub(crate) fn new(frame: Duration, buffer: Duration, start: Instant) -> Self {
        Self {
            frame,
            buffer,
            start,
            anchor: None,
            next_play: 0,
            end: None,
            arrived: BTreeSet::new(),
            total: Counters::default(),
            interval: Counters::default(),
            delays_us: Vec::new(),
            interval_delays_us: Vec::new(),
            jitter_us: 0.0,
            last_transit_us: None,
        }
    }

    /// When frame `seq` is due, once the first frame has arrived.
    pub(crate) fn due(&self, seq: u32) -> Option<Instant> {
        // Checked: a hostile peer's sequence numbers or count must not overflow the clock.
        self.anchor?
            .checked_add(self.frame.checked_mul(seq)?)?
            .checked_add(self.buffer)
    }

    /// Frame `seq`, sent at `sent_us` (sender's clock, microseconds), arrived at `now`
    /// (`now_us` on the receiver's clock).
    pub(crate) fn on_frame(&mut self, seq: u32, sent_us: u64, now: Instant, now_us: u64) {
        // A sequence number further into the call than the call is old (plus the window, for
        // a peer that started first) is made up: anchoring playout on it would make the
        // buffer play (conceal) billions of slots at once.
        let elapsed = now.saturating_duration_since(self.start);
        let plausible = elapsed.as_nanos() / self.frame.as_nanos().max(1) + u128::from(WINDOW);
        if u128::from(seq) > plausible {
            self.count(|c| c.ignored += 1);
            return;
        }
        if self.anchor.is_none() {
            // A frame can only be this far into the call: anchor on its capture slot.
            let into_call = self.frame.checked_mul(seq).unwrap_or(Duration::MAX);
            self.anchor = Some(now.checked_sub(into_call).unwrap_or(now));
        }
        let late = seq < self.next_play;
        let in_window = if late {
            self.next_play - seq <= WINDOW
        } else {
            seq - self.next_play <= WINDOW
        };
        if !in_window || !self.arrived.insert(seq) {
            self.count(|c| c.ignored += 1);
            return;
        }
        self.count(|c| c.received += 1);
        if late {
            self.count(|c| c.late += 1);
        }
        // One-way delay on the shared clock (meaningful when both ends share it, as in the
        // local mode); the jitter below needs no shared clock.
        let delay = now_us.saturating_sub(sent_us).min(u64::from(u32::MAX)) as u32;
        if self.delays_us.len() < MAX_SAMPLES {
            self.delays_us.push(delay);
        }
        if self.interval_delays_us.len() < MAX_SAMPLES {
            self.interval_delays_us.push(delay);
        }
        // RFC 3550 §6.4.1: J += (|D(i-1, i)| - J) / 16, D the change in transit time.
        // (In i128: the peer chooses `sent_us`.)
        let transit = i128::from(now_us) - i128::from(sent_us);
        if let Some(last) = self.last_transit_us {
            let d = (transit - last).unsigned_abs() as f64;
            self.jitter_us += (d - self.jitter_us) / 16.0;
        }
        self.last_transit_us = Some(transit);
    }

    /// The sender sent frames `0..frames`: none after them is played (or concealed).
    pub(crate) fn set_end(&mut self, frames: u32) {
        self.end = Some(frames);
        // Slots played out beyond the end before we knew it held no frame of the call.
        if self.next_play > frames {
            let phantom = u64::from(self.next_play - frames);
            self.total.concealed = self.total.concealed.saturating_sub(phantom);
            self.interval.concealed = self.interval.concealed.saturating_sub(phantom);
            self.next_play = frames;
        }
    }

    /// Plays every frame due by `now` (up to the end, if known). Returns the number of the
    /// next frame to play.
    pub(crate) fn play_until(&mut self, now: Instant) -> u32 {
        while let Some(due) = self.due(self.next_play) {
            if due > now || self.end.is_some_and(|end| self.next_play >= end) {
                break;
            }
            let seq = self.next_play;
            if self.arrived.contains(&seq) {
                self.count(|c| c.played += 1);
            } else {
                self.count(|c| c.concealed += 1);
            }
            self.next_play = seq.saturating_add(1);
        }
        let oldest = self.next_play.saturating_sub(WINDOW);
        while self.arrived.first().is_some_and(|&s| s < oldest) {
            self.arrived.pop_first();
        }
        self.next_play
    }

    /// The figures since the last call, and starts a new span.
    pub(crate) fn take_interval(&mut self) -> Figures {
        let counters = std::mem::take(&mut self.interval);
        let delay_ms = percentiles(&mut self.interval_delays_us);
        self.interval_delays_us.clear();
        Figures {
            counters,
            delay_ms,
            jitter_ms: self.jitter_us / 1e3,
        }
    }

    /// The figures of the whole call.
    pub(crate) fn totals(&mut self) -> Figures {
        Figures {
            counters: self.total,
            delay_ms: percentiles(&mut self.delays_us),
            jitter_ms: self.jitter_us / 1e3,
        }
    }

    fn count(&mut self, f: impl Fn(&mut Counters)) {
        f(&mut self.total);
        f(&mut self.interval);
    }
}

/// p50, p95, p99 and max of `samples` (µs), in milliseconds (sorts them).
fn percentiles(samples: &mut [u32]) -> Option<[f64; 4]> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let at = |p: f64| {
        let i = ((samples.len() - 1) as f64 * p).round() as usize;
        f64::from(samples[i]) / 1e3
    };
    Some([at(0.50), at(0.95), at(0.99), at(1.0)])
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Duration = Duration::from_millis(20);

    #[test]
    fn frames_on_time_play_missing_ones_are_concealed_and_late_ones_counted() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(F, Duration::from_millis(60), t0);
        // Frames 0, 1 and 3 arrive on time; 2 is missing until 200 ms, long after it was due
        // (anchor t0, due at 40 + 60 = 100 ms).
        for seq in [0u32, 1, 3] {
            let at = t0 + F * seq;
            jb.on_frame(
                seq,
                1_000_000 + 20_000 * u64::from(seq),
                at,
                1_000_500 + 20_000 * u64::from(seq),
            );
        }
        // Due: frame n at 60 + 20n ms; by 130 ms frames 0 to 3 were due.
        jb.play_until(t0 + Duration::from_millis(130));
        jb.on_frame(2, 1_040_000, t0 + Duration::from_millis(200), 1_200_000);
        jb.on_frame(3, 1_060_000, t0 + Duration::from_millis(201), 1_200_000);
        let f = jb.totals();
        assert_eq!(f.counters.received, 4);
        assert_eq!(f.counters.late, 1);
        assert_eq!(f.counters.played, 3);
        assert_eq!(f.counters.concealed, 1);
        assert_eq!(f.counters.ignored, 1, "the duplicate of frame 3");
        let [p50, _, _, max] = f.delay_ms.unwrap();
        assert_eq!(p50, 0.5);
        assert_eq!(max, 160.0);
        assert!(f.jitter_ms > 0.0);
    }

    #[test]
    fn slots_played_past_the_end_are_not_counted() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(F, Duration::from_millis(60), t0);
        jb.on_frame(0, 0, t0, 0);
        jb.on_frame(1, 0, t0 + F, 0);
        // A late wake-up plays slots 0 to 4 before the sender's count (2) is known.
        jb.play_until(t0 + Duration::from_millis(145));
        jb.set_end(2);
        jb.play_until(t0 + Duration::from_secs(1));
        let c = jb.totals().counters;
        assert_eq!((c.played, c.concealed), (2, 0));
    }

    #[test]
    fn hostile_numbers_do_not_overflow() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(F, Duration::from_millis(60), t0);
        // Frames claiming to be years into a call that just started are ignored (anchoring
        // on one would conceal billions of slots at once); the times are the peer's to choose.
        jb.on_frame(u32::MAX - 1, u64::MAX, t0, 0);
        jb.on_frame(u32::MAX, 1 << 63, t0, u64::MAX);
        jb.on_frame(3, 0, t0, u64::MAX);
        jb.on_frame(4, 1 << 63, t0, 0);
        jb.set_end(u32::MAX);
        let start = Instant::now();
        jb.play_until(t0 + Duration::from_secs(1));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "a bounded amount of work"
        );
        let f = jb.totals();
        assert_eq!(f.counters.received, 2, "frames 3 and 4");
        assert_eq!(f.counters.ignored, 2);
        // Anchored on frame 3 at t0: frame n is due at 20n ms, so frames 0 to 50 by 1 s.
        assert_eq!(f.counters.played + f.counters.concealed, 51);
        assert!(f.jitter_ms.is_finite());
        assert_eq!(jb.due(u32::MAX).map(|d| d > t0), Some(true));
    }

    #[test]
    fn frames_far_ahead_are_ignored() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(F, Duration::from_millis(60), t0);
        jb.on_frame(0, 0, t0, 0);
        jb.on_frame(u32::MAX, 0, t0, 0);
        assert_eq!(jb.totals().counters.ignored, 1);
        assert_eq!(jb.totals().counters.received, 1);
    }
}
