//! Where the underlay MTU comes from when `--underlay-mtu` is not set: the
//! MTU of the interface that holds this node's underlay address (its
//! endpoint's IP; Kilo's `detectMTU` does the same with the node's private
//! IP), else of the interface of the main table's default route of that
//! family. On an underlay with MTU 9001 (AWS) or 1460 (GCE) the tunnel
//! then follows without the operator knowing the number.
//!
//! This is the link's MTU, not the path's: where the paths between nodes
//! carry less than the link (an AWS Transit Gateway, a VPN between sites),
//! set `--underlay-mtu`. A multipath default route (no single output
//! interface) and a route's own `mtu` attribute are not looked at.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::route::RouteAttribute;

use super::{Netlink, NetlinkError};

/// The main routing table.
const RT_TABLE_MAIN: u8 = 254;

impl Netlink {
    /// The interface that carries this node's underlay traffic (holding
    /// `ip`, else the default route's) and its MTU; `None` when neither
    /// exists. podguard's own links and `lo` never count.
    pub async fn underlay_mtu(
        &self,
        ip: Option<IpAddr>,
    ) -> Result<Option<(String, u32)>, NetlinkError> {
        let links = self.links("").await?;
        let usable = |index: u32| {
            links
                .iter()
                .find(|l| l.index == index)
                .filter(|l| {
                    ![mesh::WG_IFNAME, mesh::BRIDGE_IFNAME, "lo"].contains(&l.name.as_str())
                        && l.mtu > 0
                })
                .map(|l| (l.name.clone(), l.mtu))
        };
        // Each dump is read to its end before it is searched: a stream
        // dropped half-read leaves netlink-proto with messages nobody takes
        // (it warns once for each).
        if let Some(ip) = ip {
            let addresses: Vec<_> = self
                .handle
                .address()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(|source| NetlinkError::Request {
                    what: "listing addresses".into(),
                    source,
                })?;
            for m in addresses {
                // IFA_LOCAL is the node's own address on point-to-point
                // links (where IFA_ADDRESS is the far end's).
                let holds = m.attributes.iter().any(|a| {
                    matches!(a, AddressAttribute::Address(a) | AddressAttribute::Local(a) if *a == ip)
                });
                if holds && let Some(found) = usable(m.header.index) {
                    return Ok(Some(found));
                }
            }
        }
        let msg = if ip.is_some_and(|i| i.is_ipv6()) {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let routes: Vec<_> = self
            .handle
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetlinkError::Request {
                what: "listing routes".into(),
                source,
            })?;
        for m in routes {
            if m.header.destination_prefix_length != 0 || m.header.table != RT_TABLE_MAIN {
                continue;
            }
            let oif = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            if let Some(found) = oif.and_then(usable) {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
}
