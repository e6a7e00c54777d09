//! Result records (one JSON line each) and the order statistics behind them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The result of a bulk upload, printed by `client --bytes N --streams K`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UploadReport {
    /// Content bytes uploaded and verified (headers and replies not counted).
    pub bytes: u64,
    /// Concurrent streams the bytes were spread over.
    pub streams: u32,
    /// From the first content byte written to the last verification reply read.
    pub secs: f64,
    /// `bytes * 8 / secs / 1e9` (SI gigabits per second of goodput).
    pub gbps: f64,
    /// From the start of connection setup to the first byte of the server's reply to a
    /// probe stream (see the crate documentation for the exact definition).
    pub connect_ms: f64,
}

/// The result of sequential request/response round trips, printed by
/// `client --requests N --size S`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RequestsReport {
    /// Round trips made, one stream each.
    pub requests: u64,
    /// Content bytes in each request and in each response.
    pub size: u64,
    /// Median round-trip time in microseconds.
    pub p50_us: f64,
    /// 99th percentile round-trip time in microseconds.
    pub p99_us: f64,
    /// Mean round-trip time in microseconds.
    pub mean_us: f64,
}

impl UploadReport {
    /// Builds the report, deriving `gbps` from `bytes` and `elapsed`.
    pub fn new(bytes: u64, streams: u32, elapsed: Duration, connect: Duration) -> Self {
        let secs = elapsed.as_secs_f64();
        let gbps = if secs > 0.0 {
            bytes as f64 * 8.0 / secs / 1e9
        } else {
            0.0
        };
        Self {
            bytes,
            streams,
            secs,
            gbps,
            connect_ms: connect.as_secs_f64() * 1e3,
        }
    }
}

impl RequestsReport {
    /// Summarises per-request round-trip times (`samples` must not be empty).
    pub fn new(size: u64, samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let total: Duration = samples.iter().sum();
        Self {
            requests: samples.len() as u64,
            size,
            p50_us: us(percentile(samples, 50.0)),
            p99_us: us(percentile(samples, 99.0)),
            mean_us: us(total) / samples.len().max(1) as f64,
        }
    }
}

/// Nearest-rank percentile of sorted samples: the smallest sample that at least `p` percent of
/// the samples do not exceed. Returns zero for no samples.
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median (mean of the middle two for an even count), minimum and maximum.
pub fn summary(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((median, v[0], v[n - 1]))
}

/// Serialises a record as one JSON line (no trailing newline).
pub fn json_line<T: Serialize>(record: &T) -> String {
    serde_json::to_string(record).expect("reports hold only numbers")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_json_has_exactly_the_documented_keys_in_order() {
        let r = UploadReport::new(
            1_000_000_000,
            4,
            Duration::from_secs(2),
            Duration::from_millis(3),
        );
        let line = json_line(&r);
        assert!(!line.contains('\n'));
        assert_eq!(
            line,
            r#"{"bytes":1000000000,"streams":4,"secs":2.0,"gbps":4.0,"connect_ms":3.0}"#
        );
        let back: UploadReport = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn requests_json_has_exactly_the_documented_keys_in_order() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        samples.reverse();
        let r = RequestsReport::new(64, &mut samples);
        let line = json_line(&r);
        assert_eq!(
            line,
            r#"{"requests":100,"size":64,"p50_us":50.0,"p99_us":99.0,"mean_us":50.5}"#
        );
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let v: Vec<u32> = (1..=10).collect();
        assert_eq!(percentile(&v, 50.0), 5);
        assert_eq!(percentile(&v, 99.0), 10);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile::<u32>(&[], 50.0), 0);
    }

    #[test]
    fn summary_gives_median_min_max() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(summary(&[]), None);
    }
}
