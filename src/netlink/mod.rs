//! Links, addresses and routes through rtnetlink.
//!
//! Observation and application are separate: [`Netlink::observe_routes`]
//! reads what podguard owns (routes tagged with [`ROUTE_PROTOCOL`]) into
//! `mesh` types, and [`Netlink::apply_route`] carries out one `mesh::Action`.
//! EEXIST on add and ENOENT/ESRCH on delete are success: that is the desired
//! state already.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use mesh::{Route, RouteTarget};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkWireguard, RouteMessageBuilder};

mod forwarding;
pub mod links;
pub mod mtu;
pub mod watch;

pub use forwarding::enable_forwarding;

/// Routes podguard installs carry this `proto` (shown by `ip route` as
/// `proto 77`), so we never touch routes that are not ours.
pub const ROUTE_PROTOCOL: u8 = 77;
const MAIN_TABLE: u32 = 254;

/// A netlink failure, naming what we tried.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Opening the netlink socket failed.
    #[error("opening a netlink socket")]
    Connect(#[source] std::io::Error),
    /// A request failed.
    #[error("{what}")]
    Request {
        /// What we tried, with its arguments.
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A link we need is missing.
    #[error("interface {0} does not exist")]
    NoSuchLink(String),
    /// Reading or writing a forwarding sysctl failed.
    #[error(
        "turning on forwarding through {path}: it must be this network namespace's \
         /proc/sys/net, writable (--proc-sys-net / PODGUARD_PROC_SYS_NET; the DaemonSet \
         mounts the host's at /host/proc/sys/net)"
    )]
    Sysctl {
        /// The /proc/sys path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A handle on this network namespace's routing netlink.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Connect (spawns the connection task on the current tokio runtime).
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Interface index by name, if the interface exists.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(m)) => Ok(Some(m.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(NetlinkError::Request {
                what: format!("looking up interface {name}"),
                source,
            }),
        }
    }

    /// Interface name by index.
    pub async fn link_name(&self, index: u32) -> Result<Option<String>, NetlinkError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(Some(m)) => Ok(m.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(NetlinkError::Request {
                what: format!("looking up interface index {index}"),
                source,
            }),
        }
    }

    /// Create bridge `name` unless it exists (an existing one is adopted),
    /// then set its MTU and bring it up. Returns its index.
    pub async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32, NetlinkError> {
        self.ensure_bridge_with_mac(name, mtu, None).await
    }

    /// [`Self::ensure_bridge`], and give the bridge `mac` (so it never
    /// follows its ports' MACs) when it has another.
    pub async fn ensure_bridge_with_mac(
        &self,
        name: &str,
        mtu: u32,
        mac: Option<[u8; 6]>,
    ) -> Result<u32, NetlinkError> {
        if self.link_index(name).await?.is_none() {
            match self
                .handle
                .link()
                .add(LinkBridge::new(name).mtu(mtu).build())
                .execute()
                .await
            {
                Ok(()) => tracing::info!(bridge = name, mtu, "created bridge"),
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(source) => {
                    return Err(NetlinkError::Request {
                        what: format!("creating bridge {name}"),
                        source,
                    });
                }
            }
        }
        if let Some(mac) = mac {
            let want = mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            if let Some(link) = self.link(name).await?
                && link.mac != want
            {
                self.handle
                    .link()
                    .set(
                        LinkUnspec::new_with_index(link.index)
                            .address(mac.to_vec())
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(|source| NetlinkError::Request {
                        what: format!("setting the MAC of {name} to {want}"),
                        source,
                    })?;
                tracing::info!(bridge = name, mac = %want, "bridge MAC fixed");
            }
        }
        self.set_up(name, Some(mtu)).await
    }

    /// Set MTU (if given) and bring `name` up. Returns its index.
    pub async fn set_up(&self, name: &str, mtu: Option<u32>) -> Result<u32, NetlinkError> {
        let index = self
            .link_index(name)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(name.to_string()))?;
        let mut b = LinkUnspec::new_with_index(index).up();
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(|source| NetlinkError::Request {
                what: match mtu {
                    Some(m) => format!("setting {name} up (mtu {m})"),
                    None => format!("setting {name} up"),
                },
                source,
            })?;
        Ok(index)
    }

    /// Whether the kernel can create a `wireguard` link (creates and removes
    /// a probe link).
    pub async fn kernel_wireguard_available(&self) -> bool {
        const PROBE: &str = "pgprobe0";
        let ok = self
            .handle
            .link()
            .add(LinkWireguard::new(PROBE).build())
            .execute()
            .await
            .is_ok();
        if ok && let Ok(Some(i)) = self.link_index(PROBE).await {
            let _ = self.handle.link().del(i).execute().await;
        }
        ok
    }

    /// Make the addresses of `ifname` of the families present in `want`
    /// exactly `want` (other families' addresses and link-local IPv6
    /// addresses are left alone). Added without a prefix route: the plan's
    /// routes are the only ones podguard relies on.
    pub async fn ensure_addresses(
        &self,
        ifname: &str,
        want: &BTreeSet<IpNet>,
    ) -> Result<(), NetlinkError> {
        let index = self
            .link_index(ifname)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(ifname.to_string()))?;
        let msgs = self.address_messages(index, ifname).await?;
        let have: BTreeSet<IpNet> = msgs.iter().map(|(net, _)| *net).collect();
        for net in want.difference(&have) {
            let mut req = self
                .handle
                .address()
                .add(index, net.addr(), net.prefix_len())
                .replace();
            // No prefix route (the plan's routes are the only ones we rely
            // on) and no DAD: the gateway address is ours by construction,
            // and a tentative IPv6 address cannot be a route's source.
            let mut flags = AddressFlags::Noprefixroute;
            if net.addr().is_ipv6() {
                flags |= AddressFlags::Nodad;
            }
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(flags));
            match req.execute().await {
                Ok(()) => tracing::info!(ifname, address = %net, "added address"),
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(source) => {
                    return Err(NetlinkError::Request {
                        what: format!("adding {net} to {ifname}"),
                        source,
                    });
                }
            }
        }
        let families: BTreeSet<bool> = want.iter().map(|n| n.addr().is_ipv4()).collect();
        for (net, m) in msgs {
            let link_local = matches!(net.addr(), IpAddr::V6(a) if a.is_unicast_link_local());
            if want.contains(&net) || link_local || !families.contains(&net.addr().is_ipv4()) {
                continue;
            }
            match self.handle.address().del(m).execute().await {
                Ok(()) => tracing::info!(ifname, address = %net, "removed stale address"),
                Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(source) => {
                    return Err(NetlinkError::Request {
                        what: format!("removing {net} from {ifname}"),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Routes in the main table that carry podguard's protocol tag.
    pub async fn observe_routes(&self) -> Result<BTreeSet<Route>, NetlinkError> {
        let mut out = BTreeSet::new();
        let dumps = [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ];
        for msg in dumps {
            let mut s = self.handle.route().get(msg).execute();
            while let Some(m) = s.try_next().await.map_err(|source| NetlinkError::Request {
                what: "listing routes".into(),
                source,
            })? {
                if m.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
                    continue;
                }
                if let Some(r) = self.to_mesh_route(&m).await? {
                    out.insert(r);
                }
            }
        }
        Ok(out)
    }

    async fn to_mesh_route(&self, m: &RouteMessage) -> Result<Option<Route>, NetlinkError> {
        let table = m
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(m.header.table as u32);
        if table != MAIN_TABLE {
            return Ok(None);
        }
        let mut dst = None;
        let mut oif = None;
        let mut src = None;
        let mut metric = 0;
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(IpAddr::V4(*ip)),
                RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dst = Some(IpAddr::V6(*ip)),
                RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => src = Some(IpAddr::V4(*ip)),
                RouteAttribute::PrefSource(RouteAddress::Inet6(ip)) => src = Some(IpAddr::V6(*ip)),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Priority(p) => metric = *p,
                _ => {}
            }
        }
        let dst = match dst {
            Some(ip) => IpNet::new(ip, m.header.destination_prefix_length).ok(),
            None => None,
        };
        let Some(dst) = dst else { return Ok(None) };
        let target = if m.header.kind == RouteType::Unreachable {
            RouteTarget::Unreachable
        } else {
            let Some(i) = oif else { return Ok(None) };
            let Some(dev) = self.link_name(i).await? else {
                return Ok(None);
            };
            RouteTarget::Device { dev, src }
        };
        Ok(Some(Route {
            dst,
            target,
            metric,
        }))
    }

    async fn route_message(&self, r: &Route) -> Result<RouteMessage, NetlinkError> {
        let mut msg = match r.dst {
            IpNet::V4(n) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(n.network(), n.prefix_len())
                .build(),
            IpNet::V6(n) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(n.network(), n.prefix_len())
                .build(),
        };
        msg.header.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
        msg.attributes.push(RouteAttribute::Priority(r.metric));
        match &r.target {
            RouteTarget::Unreachable => {
                msg.header.kind = RouteType::Unreachable;
                msg.header.scope = rtnetlink::packet_route::route::RouteScope::Universe;
            }
            RouteTarget::Device { dev, src } => {
                let index = self
                    .link_index(dev)
                    .await?
                    .ok_or_else(|| NetlinkError::NoSuchLink(dev.clone()))?;
                msg.header.scope = rtnetlink::packet_route::route::RouteScope::Link;
                msg.attributes.push(RouteAttribute::Oif(index));
                if let Some(src) = src {
                    msg.attributes
                        .push(RouteAttribute::PrefSource(RouteAddress::from(*src)));
                }
            }
        }
        if msg.header.address_family == AddressFamily::Unspec {
            msg.header.address_family = match r.dst {
                IpNet::V4(_) => AddressFamily::Inet,
                IpNet::V6(_) => AddressFamily::Inet6,
            };
        }
        Ok(msg)
    }

    /// Add a route (EEXIST is success).
    pub async fn add_route(&self, r: &Route) -> Result<(), NetlinkError> {
        let msg = self.route_message(r).await?;
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(NetlinkError::Request {
                what: format!("adding route {} {} metric {}", r.dst, r.target, r.metric),
                source,
            }),
        }
    }

    /// Delete a route (ENOENT/ESRCH is success).
    pub async fn del_route(&self, r: &Route) -> Result<(), NetlinkError> {
        let msg = match self.route_message(r).await {
            Ok(m) => m,
            // The device is gone, so is its route.
            Err(NetlinkError::NoSuchLink(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::ESRCH)) => Ok(()),
            Err(source) => Err(NetlinkError::Request {
                what: format!("deleting route {} {}", r.dst, r.target),
                source,
            }),
        }
    }
}
