//! Pacing of packet transmissions (RFC 9002 §7.7).
//!
//! A token bucket refilled at `N * window / smoothed_rtt` bytes per second with `N = 1.25`,
//! so that a full window goes out in 80 % of a round trip. The bucket holds one *burst*: about
//! 2 ms of traffic, but never so little that a GSO batch gets cut short on a fast path, and
//! never more than 1024 datagrams.
//!
//! Once the bucket runs dry the pacer stays closed until the instant it computed for a full
//! burst, even if a caller woken early (by an incoming ACK, say) finds enough tokens for one
//! or two datagrams. Releasing those would split the next GSO batch into tiny ones and cost
//! one system call per datagram (the failure mode of quinn issue #1835).

use std::time::{Duration, Instant};

/// Time worth of traffic one burst may carry. Timers in user space (tokio) have about 1 ms
/// resolution, so shorter intervals would be missed and their tokens lost.
pub const BURST_INTERVAL: Duration = Duration::from_millis(2);

/// A burst is never smaller than this many datagrams (fast handshake, some GSO).
pub const MIN_BURST_PACKETS: u64 = 10;

/// A burst is never larger than this many datagrams. This is only a sanity bound: with user
/// space timers of about 1 ms, a cap below 2 ms of traffic caps the throughput (quinn's 256
/// datagrams of 1452 bytes allow about 1.5 Gbit/s per 2 ms wake-up); 1024 keeps whole 2 ms
/// bursts up to about 6 Gbit/s.
pub const MAX_BURST_PACKETS: u64 = 1024;

/// On paths fast enough (see [`GSO_FLOOR_MAX_TIME`]) the burst allows at least this many
/// datagrams, capped by the window: one full GSO batch of 64 segments.
pub const GSO_BURST_PACKETS: u64 = 64;

/// The GSO floor applies only if a full GSO batch drains at the pacing rate within this time
/// (links above roughly 150 Mbit/s with 1200-byte datagrams); slower links keep bursts of
/// about [`BURST_INTERVAL`] so that a bottleneck queue is not flooded.
pub const GSO_FLOOR_MAX_TIME: Duration = Duration::from_millis(4);

/// Pacing rate multiplier `N` of RFC 9002 §7.7, as the fraction 5/4.
const RATE_NUMERATOR: u128 = 5;
const RATE_DENOMINATOR: u128 = 4;

/// Token-bucket pacer.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Burst size in bytes for the parameters below.
    capacity: u64,
    last_window: u64,
    last_rtt: Duration,
    last_mtu: u16,
    /// Bytes that may be sent now.
    tokens: u64,
    /// When `tokens` was last refilled.
    prev: Instant,
    /// Set when the bucket ran dry: sending resumes at this instant, not before.
    release_at: Option<Instant>,
}

impl Pacer {
    /// Creates a pacer whose bucket starts full, so the initial window goes out at once.
    pub fn new(smoothed_rtt: Duration, window: u64, mtu: u16, now: Instant) -> Self {
        let capacity = burst_capacity(smoothed_rtt, window, mtu);
        Self {
            capacity,
            last_window: window,
            last_rtt: smoothed_rtt,
            last_mtu: mtu,
            tokens: capacity,
            prev: now,
            release_at: None,
        }
    }

    /// Bytes that may go out before the next refill.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Current burst size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Returns `None` when `bytes_to_send` may go now, else the instant when it may (call
    /// again then).
    #[inline]
    pub fn delay(
        &mut self,
        smoothed_rtt: Duration,
        bytes_to_send: u64,
        mtu: u16,
        window: u64,
        now: Instant,
    ) -> Option<Instant> {
        // Fast path, inlined into the sender's loop (asked once per packet): no rate known
        // yet (no pacing), or nothing changed since the last call, no release time pending,
        // and the bucket holds enough. (Skipping the capacity update for an unknown rate
        // changes nothing: the next call with a known rate sees changed inputs and does it.)
        if smoothed_rtt.is_zero()
            || window == 0
            || (self.tokens >= bytes_to_send
                && self.release_at.is_none()
                && window == self.last_window
                && smoothed_rtt == self.last_rtt
                && mtu == self.last_mtu)
        {
            return None;
        }
        self.delay_slow(smoothed_rtt, bytes_to_send, mtu, window, now)
    }

    #[inline(never)]
    fn delay_slow(
        &mut self,
        smoothed_rtt: Duration,
        bytes_to_send: u64,
        mtu: u16,
        window: u64,
        now: Instant,
    ) -> Option<Instant> {
        if window != self.last_window || smoothed_rtt != self.last_rtt || mtu != self.last_mtu {
            self.capacity = burst_capacity(smoothed_rtt, window, mtu);
            self.tokens = self.tokens.min(self.capacity);
            self.last_window = window;
            self.last_rtt = smoothed_rtt;
            self.last_mtu = mtu;
            // `release_at` is kept: the smoothed RTT changes with nearly every ACK, and
            // recomputing here would reopen the bucket for a datagram or two on each one.
        }
        let rtt_nanos = smoothed_rtt.as_nanos();
        if rtt_nanos == 0 || window == 0 {
            // Nothing to pace against (no estimate, or a controller that does not limit).
            return None;
        }
        if let Some(release) = self.release_at {
            if now < release {
                return Some(release);
            }
            self.release_at = None;
        }
        if self.tokens >= bytes_to_send {
            return None;
        }

        // Refill: rate * elapsed, where rate = 5/4 * window / srtt.
        let elapsed = now.saturating_duration_since(self.prev).as_nanos();
        let new_tokens = u128::from(window)
            .checked_mul(RATE_NUMERATOR)
            .and_then(|v| v.checked_mul(elapsed))
            .map_or(u128::MAX, |v| v / (RATE_DENOMINATOR * rtt_nanos));
        let refilled = u128::from(self.tokens).saturating_add(new_tokens);
        self.tokens = refilled.min(u128::from(self.capacity)) as u64;
        self.prev = now;
        if self.tokens >= bytes_to_send {
            return None;
        }

        // Closed until a whole burst (or the oversized packet) has accumulated.
        let missing = u128::from(bytes_to_send.max(self.capacity) - self.tokens);
        let wait_nanos = (missing.saturating_mul(rtt_nanos * RATE_DENOMINATOR))
            .div_ceil(u128::from(window) * RATE_NUMERATOR);
        let wait = Duration::from_nanos(u64::try_from(wait_nanos).unwrap_or(u64::MAX));
        let release = now.checked_add(wait)?;
        self.release_at = Some(release);
        Some(release)
    }

    /// Records that a packet of `packet_length` bytes was sent.
    pub fn on_transmit(&mut self, packet_length: u16) {
        self.tokens = self.tokens.saturating_sub(u64::from(packet_length));
    }
}

/// Burst size in bytes for a window of `window` bytes, a smoothed RTT and datagrams of `mtu`
/// bytes: [`BURST_INTERVAL`] of traffic at the pacing rate, clamped to
/// [`MIN_BURST_PACKETS`, `MAX_BURST_PACKETS`] datagrams, raised to
/// `min(GSO_BURST_PACKETS datagrams, window)` on fast paths.
pub fn burst_capacity(smoothed_rtt: Duration, window: u64, mtu: u16) -> u64 {
    let mtu = u64::from(mtu);
    let rtt_nanos = smoothed_rtt.as_nanos().max(1);
    let rate_bytes_in = |interval: Duration| -> u128 {
        u128::from(window).saturating_mul(RATE_NUMERATOR * interval.as_nanos())
            / (RATE_DENOMINATOR * rtt_nanos)
    };
    let interval_bytes = u64::try_from(rate_bytes_in(BURST_INTERVAL)).unwrap_or(u64::MAX);
    let capacity = interval_bytes.clamp(MIN_BURST_PACKETS * mtu, MAX_BURST_PACKETS * mtu);
    let gso_floor = (GSO_BURST_PACKETS * mtu).min(window);
    if gso_floor > capacity && rate_bytes_in(GSO_FLOOR_MAX_TIME) >= u128::from(gso_floor) {
        gso_floor
    } else {
        capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u16 = 1200;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Sends `packets` full datagrams as fast as the pacer allows; returns the time taken.
    fn send_paced(pacer: &mut Pacer, rtt: Duration, window: u64, packets: u32) -> Duration {
        let start = Instant::now();
        let mut now = start;
        let mut sent = 0;
        while sent < packets {
            match pacer.delay(rtt, u64::from(MTU), MTU, window, now) {
                None => {
                    pacer.on_transmit(MTU);
                    sent += 1;
                }
                Some(at) => {
                    assert!(at > now, "the pacer must not ask to wait for the past");
                    now = at;
                }
            }
        }
        now - start
    }

    #[test]
    fn steady_state_rate_is_five_quarters_of_window_per_rtt() {
        let window = 100 * u64::from(MTU);
        let rtt = ms(100);
        let mut pacer = Pacer::new(rtt, window, MTU, Instant::now());
        // 2 ms at 1.5 MB/s is 3000 bytes: the 10-datagram floor applies.
        assert_eq!(pacer.capacity(), 10 * u64::from(MTU));
        let packets = 1000;
        let took = send_paced(&mut pacer, rtt, window, packets);
        // The first burst is free; the rest goes at 1.25 * window / rtt.
        let paced_bytes = (u64::from(packets) * u64::from(MTU) - pacer.capacity()) as f64;
        let expected = paced_bytes / (1.25 * window as f64 / rtt.as_secs_f64());
        let ratio = took.as_secs_f64() / expected;
        assert!(
            (0.99..=1.01).contains(&ratio),
            "took {took:?}, expected {expected}s"
        );
    }

    #[test]
    fn fresh_pacer_sends_the_initial_window_at_once() {
        let window = crate::recovery::cc::initial_window(MTU);
        let now = Instant::now();
        let mut pacer = Pacer::new(crate::recovery::INITIAL_RTT, window, MTU, now);
        for _ in 0..window / u64::from(MTU) {
            assert_eq!(
                pacer.delay(crate::recovery::INITIAL_RTT, 1200, MTU, window, now),
                None
            );
            pacer.on_transmit(MTU);
        }
    }

    #[test]
    fn gso_floor_allows_64_segments_on_fast_paths_only() {
        let window = 200_000;
        let now = Instant::now();
        // 10 ms RTT: rate 25 MB/s, 2 ms is 50 kB (41 datagrams); 64 datagrams drain in 3 ms.
        let mut fast = Pacer::new(ms(10), window, MTU, now);
        for _ in 0..64 {
            assert_eq!(fast.delay(ms(10), 1200, MTU, window, now), None);
            fast.on_transmit(MTU);
        }
        assert!(fast.delay(ms(10), 1200, MTU, window, now).is_some());
        // 100 ms RTT: rate 2.5 MB/s, 64 datagrams would be 31 ms of queue: 10-datagram floor.
        let slow = Pacer::new(ms(100), window, MTU, now);
        assert_eq!(slow.capacity(), 10 * u64::from(MTU));
        // The GSO floor never exceeds the window (4 ms RTT: 2 ms is 18750 bytes).
        assert_eq!(burst_capacity(ms(4), 30_000, MTU), 30_000);
        // Very fast paths are capped at 1024 datagrams.
        assert_eq!(
            burst_capacity(Duration::from_micros(50), 1 << 30, MTU),
            1024 * 1200
        );
    }

    #[test]
    fn early_wakeup_does_not_release_a_partial_burst() {
        let window = 100 * u64::from(MTU);
        let rtt = ms(100);
        let start = Instant::now();
        let mut pacer = Pacer::new(rtt, window, MTU, start);
        while pacer.delay(rtt, 1200, MTU, window, start).is_none() {
            pacer.on_transmit(MTU);
        }
        let release = pacer.delay(rtt, 1200, MTU, window, start).unwrap();
        // Enough time for one datagram's tokens, but not for the burst.
        let early = start + (release - start) / 4;
        assert_eq!(pacer.delay(rtt, 1200, MTU, window, early), Some(release));
        // At the release instant the whole burst goes.
        for _ in 0..10 {
            assert_eq!(pacer.delay(rtt, 1200, MTU, window, release), None);
            pacer.on_transmit(MTU);
        }
    }

    #[test]
    fn window_change_rescales_capacity_and_clamps_tokens() {
        let now = Instant::now();
        let rtt = ms(10);
        let mut pacer = Pacer::new(rtt, 1_000_000, MTU, now);
        assert_eq!(pacer.capacity(), 250_000);
        // 2 ms at 12.5 MB/s; 64 datagrams would take 6 ms, so no GSO floor.
        pacer.delay(rtt, 1200, MTU, 100_000, now);
        assert_eq!(pacer.capacity(), 25_000);
        assert_eq!(pacer.tokens(), 25_000);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let now = Instant::now();
        let later = now + ms(5);
        let mut pacer = Pacer::new(ms(1), 30_000, MTU, later);
        assert_eq!(pacer.delay(Duration::ZERO, 1_000_000, MTU, 1, now), None);
        assert_eq!(pacer.delay(ms(1), 1200, MTU, 0, now), None);
        pacer.on_transmit(u16::MAX);
        let _ = pacer.delay(Duration::MAX, u64::MAX, MTU, u64::MAX, now);
        let _ = pacer.delay(ms(1), u64::MAX, u16::MAX, u64::MAX, later);
        let _ = burst_capacity(Duration::ZERO, u64::MAX, u16::MAX);
    }

    proptest::proptest! {
        /// The pacer never asks to wait for an instant in the past, never panics, and a
        /// datagram it lets through always fits the tokens it had.
        #[test]
        fn arbitrary_calls_are_sane(
            calls in proptest::collection::vec(
                (0..200_000u64, 0..3000u16, 1200..9000u16, 1..10_000_000u64, 0..5000u64),
                0..200,
            ),
        ) {
            let start = Instant::now();
            let mut now = start;
            let mut pacer = Pacer::new(ms(100), 12_000, MTU, now);
            for (rtt_us, bytes, mtu, window, advance_us) in calls {
                now += Duration::from_micros(advance_us);
                let rtt = Duration::from_micros(rtt_us);
                match pacer.delay(rtt, bytes.into(), mtu, window, now) {
                    Some(at) => proptest::prop_assert!(at > now),
                    None => {
                        proptest::prop_assert!(
                            rtt.is_zero() || pacer.tokens() >= u64::from(bytes)
                        );
                        pacer.on_transmit(bytes);
                    }
                }
            }
        }
    }
}
