//! `sss-perf`: measures SSS against quinn on real loopback sockets with one workload.
//!
//! A client uploads seeded pseudo-random content ([`content`]) over K concurrent streams, or
//! makes sequential request/response round trips; the server checks every byte and answers
//! each stream with a verdict ([`wire`]). The workload ([`client`], [`serve`]) is generic
//! over the [`stack`] traits, implemented by [`quinn_stack`] and (later) [`sss_stack`], so
//! both stacks move identical bytes through identical code. [`compare`] runs both stacks
//! alternately in separate processes and prints a table of medians.
#![forbid(unsafe_code)]

pub mod client;
pub mod compare;
pub mod content;
pub mod error;
pub mod quinn_stack;
pub mod quinn_tls;
pub mod run;
pub mod serve;
pub mod sss_stack;
pub mod stack;
pub mod stats;
pub mod tuning;
pub mod wire;

pub use error::{PerfError, Result};
pub use stack::{StackKind, Target};

/// Parses a byte count: plain digits, or with an SI suffix (`k`, `M`, `G`: powers of 1000)
/// or a binary one (`Ki`, `Mi`, `Gi`: powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count"))?;
    let mult: u64 = match unit {
        "" => 1,
        "k" | "K" | "kB" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (k, M, G, Ki, Mi, Gi)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} overflows 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_si_and_binary_units() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert_eq!(parse_size("4M"), Ok(4_000_000));
        assert_eq!(parse_size("64Ki"), Ok(65_536));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
