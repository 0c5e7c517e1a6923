//! The one MTU computation (see ARCHITECTURE.md, "MTU").
//!
//! WireGuard adds 32 bytes of its own (type, index, counter, tag) plus the
//! outer UDP (8) and IP header (20 for IPv4, 40 for IPv6); rounding to the
//! conventional overheads gives 60 for an IPv4 underlay and 80 for IPv6.
//! The result never goes below 1280, the IPv6 minimum link MTU.
//!
//! The underlay MTU is each node's own (its agent finds the MTU of the
//! interface that holds its underlay address, or takes `--underlay-mtu`)
//! and is published as `podguard.dev/underlay-mtu`; where paths differ,
//! every node uses the smallest of the mesh, so no peer ever receives a
//! datagram its underlay cannot carry.

use std::net::IpAddr;

use crate::NodeInfo;

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

/// Smallest and largest underlay MTU accepted from a peer's annotation
/// (576: the IPv4 minimum datagram; 65535: the largest IP packet).
pub const UNDERLAY_MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=65_535;

/// A published underlay MTU: decimal digits in [`UNDERLAY_MTU_RANGE`].
pub fn parse_underlay_mtu(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|m| UNDERLAY_MTU_RANGE.contains(m))
}

/// The underlay MTU of a node that runs an agent (it published a key) but
/// published no valid MTU: an agent from before MTUs were published, or a
/// garbage value. The old default, so a rolling upgrade never raises the
/// MTU past what such a node can take.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// The underlay MTU the whole mesh can carry: this node's own, lowered to
/// the smallest that the other nodes running an agent published
/// ([`DEFAULT_UNDERLAY_MTU`] for one that published none). Nodes without
/// any key (no agent ran there) do not count; rejected nodes with a key
/// do, so a node that is briefly rejected does not move everyone's MTU.
pub fn mesh_underlay_mtu<'a>(own: u32, others: impl IntoIterator<Item = &'a NodeInfo>) -> u32 {
    others
        .into_iter()
        .filter(|n| n.public_key.is_some())
        .map(|n| {
            n.underlay_mtu
                .as_deref()
                .and_then(parse_underlay_mtu)
                .unwrap_or(DEFAULT_UNDERLAY_MTU)
        })
        .fold(own, u32::min)
}

/// The address whose interface carries this node's WireGuard traffic: its
/// endpoint's IP, else its first InternalIP.
pub fn underlay_ip(own: &NodeInfo) -> Option<IpAddr> {
    own.endpoint
        .as_deref()
        .and_then(|e| e.parse::<std::net::SocketAddr>().ok())
        .map(|e| e.ip())
        .or_else(|| own.internal_ips.iter().find_map(|s| s.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(name: &str, mtu: Option<&str>) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            public_key: Some("a key".into()),
            underlay_mtu: mtu.map(String::from),
            ..NodeInfo::default()
        }
    }

    #[test]
    fn the_mesh_takes_the_smallest_published_mtu() {
        let peers = [published("a", Some("9001")), published("b", Some("1460"))];
        assert_eq!(mesh_underlay_mtu(9001, &peers), 1460);
        assert_eq!(mesh_underlay_mtu(1400, &peers), 1400);
        let jumbo = [published("a", Some("9001")), published("b", Some("9000"))];
        assert_eq!(mesh_underlay_mtu(9001, &jumbo), 9000);
    }

    #[test]
    fn an_agent_that_published_nothing_valid_counts_as_1500() {
        for bad in [
            None,
            Some("abc"),
            Some("100"),
            Some("70000"),
            Some("-1"),
            Some(" 1500"),
            Some(""),
        ] {
            let peers = [published("a", Some("9000")), published("b", bad)];
            assert_eq!(mesh_underlay_mtu(9000, &peers), 1500, "{bad:?}");
        }
        // A node where no agent ever ran (no key) does not count at all.
        let peers = [published("a", Some("9000")), NodeInfo::default()];
        assert_eq!(mesh_underlay_mtu(9000, &peers), 9000);
    }

    #[test]
    fn parse_accepts_only_plain_decimal_in_range() {
        assert_eq!(parse_underlay_mtu("1500"), Some(1500));
        assert_eq!(parse_underlay_mtu("576"), Some(576));
        assert_eq!(parse_underlay_mtu("65535"), Some(65_535));
        for bad in ["575", "65536", "+1500", "1500.0", "0x5dc", "99999999999"] {
            assert_eq!(parse_underlay_mtu(bad), None, "{bad}");
        }
    }

    #[test]
    fn underlay_ip_is_the_endpoints_else_the_first_internal_ip() {
        let mut n = NodeInfo {
            internal_ips: vec!["bad".into(), "192.0.2.7".into()],
            ..NodeInfo::default()
        };
        assert_eq!(
            underlay_ip(&n),
            Some("192.0.2.7".parse().unwrap_or_else(|_| unreachable!()))
        );
        n.endpoint = Some("[2001:db8::1]:51820".into());
        assert_eq!(
            underlay_ip(&n),
            Some("2001:db8::1".parse().unwrap_or_else(|_| unreachable!()))
        );
    }

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
