//! Address allocation within one podCIDR (IPv4 or IPv6).
//!
//! The gateway (the `cbr0` address) is the first usable address: network + 1.
//! The pool never hands out the network address, the gateway, or the IPv4
//! broadcast address. Allocation continues after the last address handed
//! out (round robin), so a just-released address is not reused at once.
//! Persistence and locking belong to the caller (the CNI plugin's store).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an allocation, reservation or pool creation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The podCIDR is too small to hold a gateway and one pod.
    #[error("podCIDR {0} is too small: it needs room for a gateway and at least one pod")]
    TooSmall(IpNet),
    /// Every address of the pool is in use.
    #[error("podCIDR {cidr} is exhausted: all {capacity} pod addresses are in use")]
    Exhausted {
        /// The pool's CIDR.
        cidr: IpNet,
        /// How many pod addresses it has.
        capacity: u128,
    },
    /// The address is not a pod address of this pool.
    #[error(
        "{ip} is not a pod address of {cidr} (outside it, or its network, gateway or broadcast address)"
    )]
    NotInPool {
        /// The address.
        ip: IpAddr,
        /// The pool's CIDR.
        cidr: IpNet,
    },
    /// The address is already allocated.
    #[error("{0} is already allocated")]
    InUse(IpAddr),
}

/// The gateway of a podCIDR: its first usable address.
pub fn gateway(cidr: &IpNet) -> Result<IpAddr, IpamError> {
    Ok(Range::of(cidr)?.gateway)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    gateway: IpAddr,
    first: u128,
    last: u128,
}

impl Range {
    fn of(cidr: &IpNet) -> Result<Self, IpamError> {
        let (net, bcast, v4) = match cidr.trunc() {
            IpNet::V4(n) => (
                u32::from(n.network()) as u128,
                u32::from(n.broadcast()) as u128,
                true,
            ),
            IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast()), false),
        };
        // Pods from network+2; the last pod address is broadcast-1 for IPv4,
        // the last address of the prefix for IPv6 (no broadcast).
        let last = if v4 { bcast.saturating_sub(1) } else { bcast };
        let first = net + 2;
        if bcast < first || last < first {
            return Err(IpamError::TooSmall(*cidr));
        }
        Ok(Self {
            gateway: to_ip(net + 1, v4),
            first,
            last,
        })
    }
}

fn to_ip(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The pod addresses of one podCIDR and which of them are taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    cidr: IpNet,
    range: Range,
    allocated: BTreeSet<u128>,
    /// Where the next search starts.
    cursor: u128,
}

impl Pool {
    /// A pool over `cidr` with nothing allocated.
    pub fn new(cidr: IpNet) -> Result<Self, IpamError> {
        let cidr = cidr.trunc();
        let range = Range::of(&cidr)?;
        Ok(Self {
            cidr,
            range,
            allocated: BTreeSet::new(),
            cursor: range.first,
        })
    }

    /// The pool's CIDR.
    pub fn cidr(&self) -> IpNet {
        self.cidr
    }

    /// The gateway address.
    pub fn gateway(&self) -> IpAddr {
        self.range.gateway
    }

    /// How many pod addresses the pool has in all.
    pub fn capacity(&self) -> u128 {
        self.range.last - self.range.first + 1
    }

    /// How many are allocated.
    pub fn len(&self) -> usize {
        self.allocated.len()
    }

    /// Whether nothing is allocated.
    pub fn is_empty(&self) -> bool {
        self.allocated.is_empty()
    }

    fn is_v4(&self) -> bool {
        matches!(self.cidr, IpNet::V4(_))
    }

    fn index(&self, ip: IpAddr) -> Result<u128, IpamError> {
        let n = to_u128(ip);
        let same_family = ip.is_ipv4() == self.is_v4();
        if !same_family || n < self.range.first || n > self.range.last {
            return Err(IpamError::NotInPool {
                ip,
                cidr: self.cidr,
            });
        }
        Ok(n)
    }

    /// Allocate the next free address.
    pub fn allocate(&mut self) -> Result<IpAddr, IpamError> {
        if self.allocated.len() as u128 >= self.capacity() {
            return Err(IpamError::Exhausted {
                cidr: self.cidr,
                capacity: self.capacity(),
            });
        }
        // Walk forward from the cursor over the run of taken addresses;
        // the run is at most `allocated.len()` long.
        let mut n = self.cursor;
        while self.allocated.contains(&n) {
            n = if n >= self.range.last {
                self.range.first
            } else {
                n + 1
            };
        }
        self.allocated.insert(n);
        self.cursor = if n >= self.range.last {
            self.range.first
        } else {
            n + 1
        };
        Ok(to_ip(n, self.is_v4()))
    }

    /// Mark a specific address as allocated (loading a store).
    pub fn reserve(&mut self, ip: IpAddr) -> Result<(), IpamError> {
        let n = self.index(ip)?;
        if !self.allocated.insert(n) {
            return Err(IpamError::InUse(ip));
        }
        Ok(())
    }

    /// Release an address. Returns whether it was allocated (releasing a
    /// free address is not an error: DEL must be idempotent).
    pub fn release(&mut self, ip: IpAddr) -> bool {
        match self.index(ip) {
            Ok(n) => self.allocated.remove(&n),
            Err(_) => false,
        }
    }

    /// Whether `ip` is currently allocated.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.index(ip)
            .map(|n| self.allocated.contains(&n))
            .unwrap_or(false)
    }

    /// Continue after `ip` (the last address handed out, e.g. read back
    /// from a store); ignored if outside the pool.
    pub fn resume_after(&mut self, ip: IpAddr) {
        if let Ok(n) = self.index(ip) {
            self.cursor = if n >= self.range.last {
                self.range.first
            } else {
                n + 1
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_skips_network_gateway_broadcast_and_exhausts() {
        let mut p = Pool::new("10.0.0.0/29".parse().unwrap()).unwrap();
        assert_eq!(p.gateway(), ip("10.0.0.1"));
        assert_eq!(p.capacity(), 5);
        let got: Vec<IpAddr> = (0..5).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(got.first(), Some(&ip("10.0.0.2")));
        assert_eq!(got.last(), Some(&ip("10.0.0.6")));
        let e = p.allocate().unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/29 is exhausted"), "{e}");
        assert!(p.release(ip("10.0.0.4")));
        assert!(!p.release(ip("10.0.0.4")));
        assert_eq!(p.allocate().unwrap(), ip("10.0.0.4"));
    }

    #[test]
    fn v6_has_no_broadcast() {
        let mut p = Pool::new("fd00::/126".parse().unwrap()).unwrap();
        assert_eq!(p.gateway(), ip("fd00::1"));
        assert_eq!(p.allocate().unwrap(), ip("fd00::2"));
        assert_eq!(p.allocate().unwrap(), ip("fd00::3"));
        assert!(p.allocate().is_err());
        let big = Pool::new("fd00:10:244:1::/64".parse().unwrap()).unwrap();
        assert_eq!(big.capacity(), (1u128 << 64) - 2);
    }

    #[test]
    fn too_small_pools() {
        for c in ["10.0.0.0/31", "10.0.0.0/32", "fd00::/127", "fd00::/128"] {
            assert!(matches!(
                Pool::new(c.parse().unwrap()),
                Err(IpamError::TooSmall(_))
            ));
        }
        assert_eq!(
            Pool::new("10.0.0.0/30".parse().unwrap())
                .unwrap()
                .capacity(),
            1
        );
    }

    #[test]
    fn reserve_rejects_special_and_foreign_addresses() {
        let mut p = Pool::new("10.0.0.0/24".parse().unwrap()).unwrap();
        for bad in ["10.0.0.0", "10.0.0.1", "10.0.0.255", "10.0.1.5", "fd00::5"] {
            assert!(
                matches!(p.reserve(ip(bad)), Err(IpamError::NotInPool { .. })),
                "{bad}"
            );
        }
        p.reserve(ip("10.0.0.2")).unwrap();
        assert_eq!(
            p.reserve(ip("10.0.0.2")),
            Err(IpamError::InUse(ip("10.0.0.2")))
        );
        assert!(p.contains(ip("10.0.0.2")));
        assert_eq!(p.allocate().unwrap(), ip("10.0.0.3"));
        p.resume_after(ip("10.0.0.254"));
        assert_eq!(
            p.allocate().unwrap(),
            ip("10.0.0.4"),
            "wraps around to the first free"
        );
        p.resume_after(ip("10.0.0.10"));
        assert_eq!(p.allocate().unwrap(), ip("10.0.0.11"));
    }

    proptest! {
        #[test]
        fn never_hands_out_duplicates_or_specials(ops in proptest::collection::vec(any::<(bool, u8)>(), 0..200)) {
            let mut p = Pool::new("10.1.2.0/28".parse().unwrap()).unwrap();
            let mut held: BTreeSet<IpAddr> = BTreeSet::new();
            for (alloc, pick) in ops {
                if alloc {
                    match p.allocate() {
                        Ok(a) => {
                            prop_assert!(held.insert(a), "duplicate {}", a);
                            prop_assert!(a != ip("10.1.2.0") && a != ip("10.1.2.1") && a != ip("10.1.2.15"));
                        }
                        Err(IpamError::Exhausted { .. }) => prop_assert_eq!(held.len(), 13),
                        Err(e) => prop_assert!(false, "{}", e),
                    }
                } else if !held.is_empty() {
                    let a = *held.iter().nth(pick as usize % held.len()).unwrap();
                    held.remove(&a);
                    prop_assert!(p.release(a));
                }
                prop_assert_eq!(p.len(), held.len());
            }
        }
    }
}
