//! A token bucket in integer milli-tokens (no floating point, deterministic).

use std::time::{Duration, Instant};

/// Credit that refills at `rate` tokens per second up to `burst` tokens.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    milli: u64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(now: Instant, burst: u32) -> Self {
        Self {
            milli: u64::from(burst) * 1000,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant, burst: u32, rate: u32) {
        let elapsed = now.saturating_duration_since(self.last);
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        // rate tokens per second = rate milli-tokens per millisecond.
        self.milli = self
            .milli
            .saturating_add(ms.saturating_mul(u64::from(rate)))
            .min(u64::from(burst) * 1000);
        if ms > 0 {
            self.last = now;
        }
    }

    /// Takes one token, or says how long until one is available.
    pub(crate) fn take(&mut self, now: Instant, burst: u32, rate: u32) -> Result<(), Duration> {
        self.refill(now, burst, rate);
        if self.milli >= 1000 {
            self.milli -= 1000;
            Ok(())
        } else if rate == 0 {
            Err(Duration::from_secs(3600))
        } else {
            let missing = 1000 - self.milli;
            Err(Duration::from_millis(missing.div_ceil(u64::from(rate))))
        }
    }

    /// Takes `n` tokens if the bucket holds them (tokens here are bytes: a relay budget).
    pub(crate) fn take_n(&mut self, now: Instant, n: u64, burst: u32, rate: u32) -> bool {
        self.refill(now, burst, rate);
        let need = n.saturating_mul(1000);
        if self.milli >= need {
            self.milli -= need;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled completely (its owner has been idle).
    pub(crate) fn is_full(&mut self, now: Instant, burst: u32, rate: u32) -> bool {
        self.refill(now, burst, rate);
        self.milli >= u64::from(burst) * 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(t0, 3);
        for _ in 0..3 {
            assert!(b.take(t0, 3, 2).is_ok());
        }
        assert_eq!(b.take(t0, 3, 2), Err(Duration::from_millis(500)));
        assert!(b.take(t0 + Duration::from_millis(500), 3, 2).is_ok());
        assert!(b.take(t0 + Duration::from_millis(500), 3, 2).is_err());
        assert!(b.is_full(t0 + Duration::from_secs(10), 3, 2));
    }

    #[test]
    fn byte_budget_takes_many_tokens_at_once() {
        let t0 = Instant::now();
        let mut b = Bucket::full(t0, 3000);
        assert!(b.take_n(t0, 2000, 3000, 1000));
        assert!(!b.take_n(t0, 1001, 3000, 1000), "1000 left");
        assert!(b.take_n(t0, 1000, 3000, 1000));
        // 1000 per second: 500 after half a second.
        let t1 = t0 + Duration::from_millis(500);
        assert!(!b.take_n(t1, 501, 3000, 1000));
        assert!(b.take_n(t1, 500, 3000, 1000));
    }
}
