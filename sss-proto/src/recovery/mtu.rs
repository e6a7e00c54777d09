//! Datagram packetization-layer path MTU discovery, after RFC 8899 (DPLPMTUD).
//!
//! The channel starts at the base size of 1200-byte datagrams, which every path must carry
//! (RFC 8899 §5.1.2 `BASE_PLPMTU`, as in QUIC). It then probes upward with padded,
//! ack-eliciting probe packets: a binary search between the largest acknowledged size and
//! the largest size not yet known to fail, one probe in flight at a time, each size tried up
//! to [`MAX_PROBES`] times. The search is repeated every [`RAISE_INTERVAL`] because paths
//! change. A black-hole detector falls back to the base size when packets larger than it keep
//! getting lost while smaller ones get through.

use std::time::{Duration, Instant};

/// Smallest datagram size the channel ever uses; every path must carry it.
pub const BASE_PLPMTU: u16 = 1200;

/// Probes of one size lost before that size counts as too big (RFC 8899 §5.1.2).
pub const MAX_PROBES: u8 = 3;

/// The search stops once the last acknowledged and last failed sizes are closer than this.
pub const SEARCH_MIN_GAP: u16 = 20;

/// Time between a finished search and the next one (RFC 8899 §5.1.1 `PMTU_RAISE_TIMER`).
pub const RAISE_INTERVAL: Duration = Duration::from_secs(600);

/// Time after a black hole before searching again.
pub const BLACK_HOLE_COOLDOWN: Duration = Duration::from_secs(60);

/// Suspicious loss bursts tolerated; one more means a black hole.
pub const BLACK_HOLE_THRESHOLD: u8 = 3;

/// Path MTU discovery state of one path.
#[derive(Debug, Clone)]
pub struct MtuDiscovery {
    base: u16,
    max: u16,
    current: u16,
    phase: Phase,
    /// The probe in flight, as (packet number, size). Kept when a black hole ends the
    /// search, so that its late loss is not mistaken for an ordinary packet's.
    probe: Option<(u64, u16)>,
    black_hole: BlackHoleDetector,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No search yet: the first `poll_probe` starts one.
    Idle,
    Searching(Search),
    /// Search finished (or abandoned after a black hole); the next starts at this instant.
    Complete {
        next_search: Instant,
    },
}

/// One binary search over `[lower, upper]`.
#[derive(Debug, Clone, Copy)]
struct Search {
    /// Largest size known to work.
    lower: u16,
    /// Largest size not known to fail.
    upper: u16,
    /// Whether `upper` came from a failure rather than from the maximum.
    upper_failed: bool,
    /// Size of the probe being tried (in flight or about to be sent).
    size: u16,
    /// Probes of `size` lost so far.
    failures: u8,
}

impl Search {
    fn new(lower: u16, upper: u16) -> Self {
        Self {
            lower,
            upper,
            upper_failed: false,
            size: lower,
            failures: 0,
        }
    }

    /// The next size to try, or `None` when the search is over.
    fn next_size(&self) -> Option<u16> {
        if self.failures > 0 {
            return Some(self.size);
        }
        let gap = self.upper.checked_sub(self.lower).filter(|&gap| gap > 0)?;
        if !self.upper_failed && gap < 2 * SEARCH_MIN_GAP {
            // Halving could not get within the minimum gap of the maximum, so try the
            // maximum itself: most paths carry exactly it.
            return Some(self.upper);
        }
        if gap < SEARCH_MIN_GAP {
            return None;
        }
        Some(self.lower + gap / 2)
    }
}

impl MtuDiscovery {
    /// Creates the discovery state for a path whose datagrams may be at most `max` bytes
    /// (the smaller of the local limit and the peer's `max_udp_payload_size`). `base` is
    /// raised to [`BASE_PLPMTU`] if smaller, `max` to `base`.
    pub fn new(base: u16, max: u16) -> Self {
        let base = base.max(BASE_PLPMTU);
        Self {
            base,
            max: max.max(base),
            current: base,
            phase: Phase::Idle,
            probe: None,
            black_hole: BlackHoleDetector::default(),
        }
    }

    /// Datagram size the channel may use now.
    pub fn current(&self) -> u16 {
        self.current
    }

    /// Packet number of the probe in flight, if any: its loss must not be reported to the
    /// congestion controller (RFC 9000 §14.4).
    pub fn in_flight_probe(&self) -> Option<u64> {
        self.probe.map(|(pn, _)| pn)
    }

    /// Size of a probe to send now, if one is due. Calling it again before
    /// [`on_probe_sent`](Self::on_probe_sent) returns the same size.
    pub fn poll_probe(&mut self, now: Instant) -> Option<u16> {
        match self.phase {
            Phase::Idle => self.start_search(),
            Phase::Complete { next_search } if now >= next_search => self.start_search(),
            Phase::Complete { .. } => return None,
            Phase::Searching(_) => {}
        }
        let Phase::Searching(search) = &mut self.phase else {
            return None;
        };
        if self.probe.is_some() {
            return None;
        }
        match search.next_size() {
            Some(size) => {
                search.size = size;
                Some(size)
            }
            None => {
                self.phase = Phase::Complete {
                    next_search: now.checked_add(RAISE_INTERVAL).unwrap_or(now),
                };
                None
            }
        }
    }

    /// The probe returned by [`poll_probe`](Self::poll_probe) went out as `packet_number`.
    pub fn on_probe_sent(&mut self, packet_number: u64, size: u16) {
        if let Phase::Searching(search) = &mut self.phase {
            if self.probe.is_none() {
                search.size = size;
                self.probe = Some((packet_number, size));
            }
        }
    }

    /// A packet of `size` bytes was acknowledged. Raises [`current`](Self::current) if it
    /// was the probe; an ordinary packet of the current size proves the path still carries
    /// it (resetting black-hole suspicion).
    pub fn on_acked(&mut self, packet_number: u64, size: u16) {
        match self.probe {
            Some((pn, probe_size)) if pn == packet_number => {
                self.probe = None;
                if let Phase::Searching(search) = &mut self.phase {
                    search.lower = probe_size;
                    search.failures = 0;
                    self.current = self.current.max(probe_size.min(self.max));
                    self.black_hole.on_path_proven(packet_number);
                }
            }
            _ => {
                if size >= self.current {
                    self.black_hole.on_path_proven(packet_number);
                }
            }
        }
    }

    /// A packet of `size` bytes was declared lost. A lost probe counts one failure at its
    /// size; other losses feed the black-hole detector, which may fall back to the base
    /// size and postpone the next search by [`BLACK_HOLE_COOLDOWN`].
    pub fn on_lost(&mut self, now: Instant, packet_number: u64, size: u16) {
        if let Some((pn, probe_size)) = self.probe {
            if pn == packet_number {
                self.probe = None;
                if let Phase::Searching(search) = &mut self.phase {
                    search.failures += 1;
                    if search.failures >= MAX_PROBES {
                        // RFC 8899 §5.2: MAX_PROBES losses mean the size is too big.
                        search.failures = 0;
                        search.upper = probe_size.saturating_sub(1).max(search.lower);
                        search.upper_failed = true;
                    }
                }
                return;
            }
        }
        if self.current <= self.base {
            // Nothing to fall back from.
            return;
        }
        if self.black_hole.on_lost(packet_number, size > self.base) {
            self.current = self.base;
            self.black_hole = BlackHoleDetector::default();
            self.phase = Phase::Complete {
                next_search: now.checked_add(BLACK_HOLE_COOLDOWN).unwrap_or(now),
            };
        }
    }

    /// When the next search starts, if one is scheduled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Complete { next_search } => Some(next_search),
            _ => None,
        }
    }

    fn start_search(&mut self) {
        self.phase = Phase::Searching(Search::new(self.current, self.max));
    }
}

/// Counts loss bursts that only a too-small path MTU explains (after quinn's detector).
///
/// A burst is a run of consecutive packet numbers declared lost. It is *suspicious* when
/// every packet in it is larger than the base size and no packet of the current size (or a
/// probe) sent after it has been acknowledged: ordinary congestion also drops small packets
/// and lets later large ones through.
#[derive(Debug, Clone, Copy, Default)]
struct BlackHoleDetector {
    /// Finished suspicious bursts since the path last proved it carries the current size.
    suspicious_bursts: u8,
    /// The burst being accumulated.
    burst: Option<Burst>,
    /// Largest packet number of an acknowledged packet of at least the current size.
    largest_proven: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Burst {
    last: u64,
    all_large: bool,
}

impl BlackHoleDetector {
    fn on_path_proven(&mut self, packet_number: u64) {
        if self.largest_proven.is_none_or(|pn| packet_number > pn) {
            self.largest_proven = Some(packet_number);
            self.suspicious_bursts = 0;
            // Losses so far were sent before this packet, which got through.
            self.burst = None;
        }
    }

    /// Records one lost packet; returns whether a black hole is now established.
    fn on_lost(&mut self, packet_number: u64, large: bool) -> bool {
        if self.largest_proven.is_some_and(|pn| packet_number < pn) {
            // A larger packet sent later got through: congestion, not the path MTU.
            return false;
        }
        match &mut self.burst {
            Some(burst) if packet_number == burst.last.wrapping_add(1) => {
                burst.last = packet_number;
                burst.all_large &= large;
            }
            _ => {
                if self.burst.is_some_and(|b| b.all_large) {
                    self.suspicious_bursts = self.suspicious_bursts.saturating_add(1);
                }
                self.burst = Some(Burst {
                    last: packet_number,
                    all_large: large,
                });
            }
        }
        // The open burst counts provisionally so that detection does not wait for the next
        // loss; it can only stop being suspicious if a small packet of it is lost as well.
        let open = u8::from(self.burst.is_some_and(|b| b.all_large));
        self.suspicious_bursts.saturating_add(open) > BLACK_HOLE_THRESHOLD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one search against a path that carries datagrams up to `limit` bytes.
    /// Returns the number of probes sent.
    fn search(mtud: &mut MtuDiscovery, now: Instant, limit: u16, pn: &mut u64) -> u32 {
        let mut probes = 0;
        while let Some(size) = mtud.poll_probe(now) {
            assert_eq!(
                mtud.poll_probe(now),
                Some(size),
                "polling twice gives the same probe"
            );
            assert!(size <= mtud.max, "probe {size} above the maximum");
            mtud.on_probe_sent(*pn, size);
            assert_eq!(mtud.in_flight_probe(), Some(*pn));
            assert_eq!(mtud.poll_probe(now), None, "one probe in flight at a time");
            if size <= limit {
                mtud.on_acked(*pn, size);
            } else {
                mtud.on_lost(now, *pn, size);
            }
            *pn += 1;
            probes += 1;
            assert!(probes < 100, "search does not terminate");
        }
        probes
    }

    #[test]
    fn search_converges_to_the_path_limit() {
        let now = Instant::now();
        for (max, limit) in [
            (1452, 1452),
            (1452, 1300),
            (1500, 1499),
            (1500, 1201),
            (9000, 1452),
            (9000, 8000),
            (u16::MAX, 1472),
            (1452, 1200),
            (1452, 2000),
        ] {
            let mut mtud = MtuDiscovery::new(1200, max);
            let mut pn = 0;
            let probes = search(&mut mtud, now, limit, &mut pn);
            let current = mtud.current();
            let reachable = limit.min(max);
            assert!(current <= reachable, "max {max} limit {limit}: {current}");
            if reachable == max {
                assert_eq!(current, max, "limit {limit} should reach the maximum");
            } else {
                assert!(
                    reachable - current < SEARCH_MIN_GAP,
                    "limit {limit}: {current}"
                );
            }
            // log2(range / gap) + 2 sizes, each tried at most MAX_PROBES times.
            let range = f64::from(max - 1200) / f64::from(SEARCH_MIN_GAP);
            let bound = (range.max(1.0).log2().ceil() as u32 + 2) * u32::from(MAX_PROBES);
            assert!(
                probes <= bound,
                "max {max} limit {limit}: {probes} probes > {bound}"
            );
            assert_eq!(mtud.poll_timeout(), Some(now + RAISE_INTERVAL));
        }
    }

    #[test]
    fn one_lost_probe_is_retried_not_taken_as_too_big() {
        let now = Instant::now();
        let mut mtud = MtuDiscovery::new(1200, 1452);
        let first = mtud.poll_probe(now).unwrap();
        mtud.on_probe_sent(1, first);
        mtud.on_lost(now, 1, first);
        assert_eq!(mtud.poll_probe(now), Some(first));
        mtud.on_probe_sent(2, first);
        mtud.on_acked(2, first);
        assert_eq!(mtud.current(), first);
    }

    #[test]
    fn base_is_never_below_1200_and_max_never_below_base() {
        let now = Instant::now();
        let mut mtud = MtuDiscovery::new(500, 1000);
        assert_eq!(mtud.current(), 1200);
        assert_eq!(mtud.poll_probe(now), None);
        assert_eq!(mtud.current(), 1200);
        let mut pn = 0;
        let mut mtud = MtuDiscovery::new(1280, 1452);
        search(&mut mtud, now, 1200, &mut pn);
        assert_eq!(mtud.current(), 1280);
    }

    #[test]
    fn search_repeats_after_the_raise_interval() {
        let start = Instant::now();
        let mut mtud = MtuDiscovery::new(1200, 1500);
        let mut pn = 0;
        search(&mut mtud, start, 1400, &mut pn);
        let found = mtud.current();
        assert!(found > 1380 && found <= 1400);
        assert_eq!(
            mtud.poll_probe(start + RAISE_INTERVAL - Duration::from_secs(1)),
            None
        );
        // The path grew meanwhile: the next search finds the new limit.
        let later = start + RAISE_INTERVAL;
        assert_eq!(mtud.poll_timeout(), Some(later));
        assert!(search(&mut mtud, later, 1500, &mut pn) > 0);
        assert_eq!(mtud.current(), 1500);
    }

    #[test]
    fn black_hole_falls_back_to_base() {
        let start = Instant::now();
        let mut mtud = MtuDiscovery::new(1200, 1452);
        let mut pn = 0;
        search(&mut mtud, start, 1452, &mut pn);
        assert_eq!(mtud.current(), 1452);
        // The path shrinks to 1300: full-size packets vanish, small ACK-only packets and
        // 1200-byte packets get through. Bursts of losses separated by acknowledged small
        // packets.
        let now = start + Duration::from_secs(1);
        for burst in 0..4 {
            assert_eq!(mtud.current(), 1452, "fell back after only {burst} bursts");
            for _ in 0..3 {
                mtud.on_lost(now, pn, 1452);
                pn += 1;
            }
            mtud.on_acked(pn, 60);
            pn += 1;
        }
        assert_eq!(mtud.current(), 1200);
        // Searching again waits for the cooldown.
        assert_eq!(mtud.poll_probe(now), None);
        assert_eq!(mtud.poll_timeout(), Some(now + BLACK_HOLE_COOLDOWN));
        search(&mut mtud, now + BLACK_HOLE_COOLDOWN, 1300, &mut pn);
        assert!(mtud.current() > 1280 && mtud.current() <= 1300);
    }

    #[test]
    fn congestion_losses_are_not_a_black_hole() {
        let now = Instant::now();
        let mut mtud = MtuDiscovery::new(1200, 1452);
        let mut pn = 0;
        search(&mut mtud, now, 1452, &mut pn);
        // Large packets are lost now and then, but later full-size packets get through.
        for _ in 0..20 {
            mtud.on_lost(now, pn, 1452);
            mtud.on_acked(pn + 1, 1452);
            pn += 2;
        }
        // Bursts that also lose small packets are congestion too.
        for _ in 0..20 {
            mtud.on_lost(now, pn, 1452);
            mtud.on_lost(now, pn + 1, 1100);
            pn += 3;
        }
        assert_eq!(mtud.current(), 1452);
    }

    #[test]
    fn hostile_sequences_do_not_panic() {
        let now = Instant::now();
        let mut mtud = MtuDiscovery::new(u16::MAX, u16::MAX);
        assert_eq!(mtud.poll_probe(now), None);
        let mut mtud = MtuDiscovery::new(1200, 1500);
        mtud.on_acked(u64::MAX, u16::MAX);
        mtud.on_lost(now, u64::MAX, 0);
        mtud.on_probe_sent(7, 1400);
        mtud.on_lost(now, 0, 1400);
        mtud.on_lost(now, u64::MAX, 1400);
        assert!(mtud.current() <= 1500);
    }

    #[derive(Debug, Clone)]
    enum Op {
        ProbeRound { delivered: bool },
        Acked { pn: u64, size: u16 },
        Lost { pn: u64, size: u16 },
        Advance { secs: u16 },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            any::<bool>().prop_map(|delivered| Op::ProbeRound { delivered }),
            (0..64u64, any::<u16>()).prop_map(|(pn, size)| Op::Acked { pn, size }),
            (0..64u64, any::<u16>()).prop_map(|(pn, size)| Op::Lost { pn, size }),
            (0..700u16).prop_map(|secs| Op::Advance { secs }),
        ]
    }

    proptest::proptest! {
        /// Whatever the peer acknowledges or loses, the current size stays within
        /// [base, max] and probes are never smaller than base nor larger than max.
        #[test]
        fn operation_sequences_keep_invariants(
            base in 0..2000u16,
            max in 0..20000u16,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let mut now = Instant::now();
            let mut mtud = MtuDiscovery::new(base, max);
            let base = base.max(BASE_PLPMTU);
            let max = max.max(base);
            let mut pn = 1000;
            for op in ops {
                match op {
                    Op::ProbeRound { delivered } => {
                        if let Some(size) = mtud.poll_probe(now) {
                            proptest::prop_assert!(size >= base && size <= max);
                            mtud.on_probe_sent(pn, size);
                            if delivered {
                                mtud.on_acked(pn, size);
                            } else {
                                mtud.on_lost(now, pn, size);
                            }
                            pn += 1;
                        }
                    }
                    Op::Acked { pn, size } => mtud.on_acked(pn, size),
                    Op::Lost { pn, size } => mtud.on_lost(now, pn, size),
                    Op::Advance { secs } => now += Duration::from_secs(u64::from(secs)),
                }
                proptest::prop_assert!(mtud.current() >= base && mtud.current() <= max);
            }
        }
    }
}
