//! The one MTU computation (see ARCHITECTURE.md, "MTU").
//!
//! WireGuard adds 32 bytes of its own (type, index, counter, tag) plus the
//! outer UDP (8) and IP header (20 for IPv4, 40 for IPv6); rounding to the
//! conventional overheads gives 60 for an IPv4 underlay and 80 for IPv6.
//! The result never goes below 1280, the IPv6 minimum link MTU.

/// Overhead of WireGuard over an IPv4 underlay.
pub const OVERHEAD_V4: u32 = 60;
/// Overhead of WireGuard over an IPv6 underlay.
pub const OVERHEAD_V6: u32 = 80;
/// Lowest MTU we ever configure (IPv6 minimum link MTU).
pub const MIN_MTU: u32 = 1280;

/// Address family of the underlay (the outer packets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Outer {
    /// Outer packets are IPv4.
    V4,
    /// Outer packets are IPv6 (or the family is unknown: the safe choice).
    V6,
}

/// Tunnel MTU for `podguard0`, `cbr0` and pod veths.
pub fn tunnel_mtu(underlay_mtu: u32, outer: Outer) -> u32 {
    let overhead = match outer {
        Outer::V4 => OVERHEAD_V4,
        Outer::V6 => OVERHEAD_V6,
    };
    underlay_mtu.saturating_sub(overhead).max(MIN_MTU)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_underlay() {
        assert_eq!(tunnel_mtu(1500, Outer::V4), 1440);
        assert_eq!(tunnel_mtu(1500, Outer::V6), 1420);
        assert_eq!(tunnel_mtu(9000, Outer::V4), 8940);
    }

    #[test]
    fn never_below_1280() {
        assert_eq!(tunnel_mtu(1300, Outer::V6), 1280);
        assert_eq!(tunnel_mtu(0, Outer::V4), 1280);
    }
}
