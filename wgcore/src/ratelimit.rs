//! A per-source token bucket for handshake messages while under load: a
//! valid mac2 proves only that the sender receives at its address, so one
//! such address must still not buy unlimited DH computations (the kernel's
//! ratelimiter.c: 20 per second, bursts of 5, IPv6 per /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// Handshakes per second one source may cost under load.
pub const PER_SECOND: u64 = 20;
/// Burst above the rate.
pub const BURST: u64 = 5;
const COST: u64 = 1_000_000_000 / PER_SECOND;
/// Entries kept before idle ones are forgotten.
const MAX_ENTRIES: usize = 16_384;

#[derive(Debug, Default)]
pub(crate) struct SourceLimiter {
    /// Source → (tokens in ns, clock ns of the last update).
    table: HashMap<[u8; 8], (u64, u64)>,
}

fn key(ip: IpAddr) -> [u8; 8] {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            [4, 0, 0, 0, o[0], o[1], o[2], o[3]]
        }
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]]
        }
    }
}

impl SourceLimiter {
    /// Whether a handshake message from `ip` at `now` is within its limit
    /// (and take its cost if so).
    pub fn allow(&mut self, ip: IpAddr, now: Duration) -> bool {
        let now = now.as_nanos() as u64;
        if self.table.len() >= MAX_ENTRIES {
            self.table
                .retain(|_, (_, last)| now.saturating_sub(*last) < 1_000_000_000);
        }
        let e = self.table.entry(key(ip)).or_insert((COST * BURST, now));
        let tokens = (e.0 + now.saturating_sub(e.1)).min(COST * BURST);
        e.1 = now;
        if tokens >= COST {
            e.0 = tokens - COST;
            true
        } else {
            e.0 = tokens;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut l = SourceLimiter::default();
        let ip: IpAddr = "203.0.113.9".parse().unwrap_or_else(|_| unreachable!());
        let t = Duration::from_secs(10);
        let allowed = (0..100).filter(|_| l.allow(ip, t)).count();
        assert_eq!(allowed as u64, BURST);
        // One more per 50 ms afterwards.
        assert!(!l.allow(ip, t + Duration::from_millis(10)));
        assert!(l.allow(ip, t + Duration::from_millis(60)));
        // Another source is not affected.
        let other: IpAddr = "203.0.113.10".parse().unwrap_or_else(|_| unreachable!());
        assert!(l.allow(other, t));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let mut l = SourceLimiter::default();
        let t = Duration::from_secs(1);
        for i in 0..BURST {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}")
                .parse()
                .unwrap_or_else(|_| unreachable!());
            assert!(l.allow(ip, t));
        }
        let ip: IpAddr = "2001:db8:1:2::ffff"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        assert!(!l.allow(ip, t));
    }
}
