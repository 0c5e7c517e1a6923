//! The underlay MTU this agent plans with and publishes: `--underlay-mtu`
//! when set, else found before every reconcile (the interface holding
//! this node's endpoint address, `netlink::mtu`), so an underlay whose MTU
//! changes is followed. The mesh then uses the smallest published value
//! (`mesh::mtu::mesh_underlay_mtu`).

use mesh::NodeInfo;

use super::Agent;

/// Where the underlay MTU comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderlayMtu {
    /// Set by the operator (`--underlay-mtu`).
    Set(u32),
    /// Found on the underlay interface; `fallback` until one is found.
    Detect {
        /// Used while nothing is found.
        fallback: u32,
    },
}

impl UnderlayMtu {
    /// From the flag: a value overrides, none detects (1500 until found).
    pub fn from_flag(flag: Option<u32>) -> Self {
        flag.map_or(Self::Detect { fallback: 1500 }, Self::Set)
    }
}

/// The largest underlay MTU used (and the flag's upper bound): the
/// userspace device buffers packets of up to 9216 bytes (`tun_rx::PKT_MAX`),
/// enough for 9000-byte jumbo frames.
pub const MAX_UNDERLAY_MTU: u32 = 9216;

impl Agent {
    /// This node's own underlay MTU (found or set), as published in
    /// `podguard.dev/underlay-mtu`: found before every reconcile, so it is
    /// known (and published with the key) even when the plan fails.
    pub fn underlay_mtu(&self) -> u32 {
        self.cfg.mesh.underlay_mtu
    }

    /// Refresh `cfg.mesh.underlay_mtu` before planning (detect mode);
    /// logs when the found value or interface changes.
    pub(super) async fn refresh_underlay_mtu(&mut self, nodes: &[NodeInfo]) {
        let UnderlayMtu::Detect { fallback } = self.cfg.underlay_mtu else {
            return;
        };
        let ip = nodes
            .iter()
            .find(|n| n.name == self.cfg.node_name)
            .and_then(mesh::mtu::underlay_ip);
        let found = match self.nl.underlay_mtu(ip).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "finding the underlay MTU failed; keeping the last value");
                return;
            }
        };
        if found != self.underlay_found {
            match &found {
                Some((ifname, mtu)) => tracing::info!(
                    interface = %ifname,
                    mtu,
                    address = %ip.map(|i| i.to_string()).unwrap_or_else(|| "(default route)".into()),
                    "underlay MTU found (--underlay-mtu overrides)"
                ),
                None => tracing::warn!(
                    mtu = fallback,
                    "no underlay interface found (no interface holds this node's endpoint address, no default route): assuming the fallback; set --underlay-mtu"
                ),
            }
            self.underlay_found = found.clone();
        }
        self.cfg.mesh.underlay_mtu = found.map_or(fallback, |(_, m)| m).min(MAX_UNDERLAY_MTU);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_overrides_and_its_absence_detects() {
        assert_eq!(UnderlayMtu::from_flag(Some(9001)), UnderlayMtu::Set(9001));
        assert_eq!(
            UnderlayMtu::from_flag(None),
            UnderlayMtu::Detect { fallback: 1500 }
        );
    }
}
