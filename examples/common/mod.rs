//! Helpers shared by the demo programs: command-line values, human-readable figures, and
//! seeded test data.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sss_host::{Eid, Host, HostConfig};

/// The error type of the demos' fallible steps.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A host bound to `bind` that registers with `regserver`, with the identity of the key file
/// `key` (created if missing) or a fresh one.
pub(crate) fn host(
    regserver: (Eid, SocketAddr),
    key: Option<&Path>,
    bind: SocketAddr,
) -> Result<Host, BoxError> {
    let mut config = HostConfig::bind(bind);
    config.regservers = vec![regserver];
    Ok(match key {
        Some(key) => Host::from_key_file(key, config)?,
        None => Host::new(config)?,
    })
}

/// Waits (15 s at most) until the regserver holds our record; returns the endpoint it
/// observed.
pub(crate) async fn registered(host: &Host) -> Result<SocketAddr, BoxError> {
    match tokio::time::timeout(Duration::from_secs(15), host.registered()).await {
        Ok(r) => Ok(r?),
        Err(_) => Err("the regserver did not answer within 15 s (address, EID, firewall?)".into()),
    }
}

/// Parses a regserver given as `EID@ADDR` (what the `regserver` binary prints as
/// `regserver eid=<EID> addr=<ADDR>`).
pub(crate) fn parse_regserver(s: &str) -> Result<(Eid, SocketAddr), String> {
    let (eid, addr) = s.split_once('@').ok_or_else(|| {
        format!("{s:?}: expected EID@ADDR, e.g. <52-character EID>@203.0.113.7:9669")
    })?;
    let eid = eid
        .parse()
        .map_err(|e| format!("{s:?}: bad regserver EID: {e}"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("{s:?}: bad regserver address: {e}"))?;
    Ok((eid, addr))
}

/// Parses a size such as `100M`, `1.5G`, `64k` or `1000` (binary units: k = 1024).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (number, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let scale: u64 = match unit.to_ascii_lowercase().trim_end_matches(['b', 'i']) {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit (use k, M or G)")),
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: not a size"))?;
    if !(0.0..=1e18).contains(&n) {
        return Err(format!("{s:?}: out of range"));
    }
    Ok((n * scale as f64) as u64)
}

/// `n` bytes for humans: `100.0 MiB`, `14.6 KiB`, or bytes below 10 KiB.
pub(crate) fn mib(n: u64) -> String {
    if n < 10 * 1024 {
        format!("{n} B")
    } else if n < 1 << 20 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    }
}

/// A throughput: MiB/s and Gbit/s (Mbit/s below 1 Gbit/s).
pub(crate) fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let mib_s = bytes as f64 / secs / (1u64 << 20) as f64;
    let bits = bytes as f64 * 8.0 / secs;
    if bits >= 1e9 {
        format!("{mib_s:.0} MiB/s ({:.2} Gbit/s)", bits / 1e9)
    } else {
        format!("{mib_s:.2} MiB/s ({:.1} Mbit/s)", bits / 1e6)
    }
}

/// Milliseconds with a tenth.
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Seeded pseudo-random bytes (xorshift64*), fast enough to make test files of hundreds of
/// MiB in a moment.
pub(crate) struct Pattern(u64);

impl Pattern {
    /// A generator for `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Fills `buf` (a multiple of 8 bytes gives a stream independent of the split).
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            let word = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}
