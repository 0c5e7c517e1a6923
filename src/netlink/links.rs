//! Link primitives the CNI plugin needs: a veth pair whose peer is created
//! directly inside a pod's network namespace, addresses with their prefix
//! route, default routes, deletion and inspection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::{Netlink, NetlinkError, errno};

/// What we can see of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC as aa:bb:..
    pub mac: String,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Index of the bridge it is enslaved to.
    pub controller: Option<u32>,
    /// The link's kind (`wireguard`, `tun`, `veth`, `bridge`…), if it has one.
    pub kind: Option<String>,
}

fn mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Netlink {
    /// All links (optionally only those whose name starts with `prefix`).
    pub async fn links(&self, prefix: &str) -> Result<Vec<LinkInfo>, NetlinkError> {
        let mut out = Vec::new();
        let mut s = self.handle.link().get().execute();
        while let Some(m) = s.try_next().await.map_err(|source| NetlinkError::Request {
            what: "listing links".into(),
            source,
        })? {
            let mut info = LinkInfo {
                index: m.header.index,
                name: String::new(),
                mac: String::new(),
                mtu: 0,
                up: m.header.flags.contains(LinkFlags::Up),
                controller: None,
                kind: None,
            };
            for a in &m.attributes {
                match a {
                    LinkAttribute::IfName(n) => info.name = n.clone(),
                    LinkAttribute::Address(b) => info.mac = mac(b),
                    LinkAttribute::Mtu(v) => info.mtu = *v,
                    LinkAttribute::Controller(c) => info.controller = Some(*c),
                    LinkAttribute::LinkInfo(infos) => {
                        info.kind = infos.iter().find_map(|i| match i {
                            NlLinkInfo::Kind(k) => Some(k.to_string()),
                            _ => None,
                        });
                    }
                    _ => {}
                }
            }
            if info.name.starts_with(prefix) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// One link by name.
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        Ok(self.links(name).await?.into_iter().find(|l| l.name == name))
    }

    /// Create veth `host` (MTU `mtu`, enslaved to `bridge`, up) whose peer
    /// `peer` is created directly in the namespace `netns`.
    pub async fn create_veth_into(
        &self,
        host: &str,
        peer: &str,
        mtu: u32,
        bridge: &str,
        netns: &std::fs::File,
    ) -> Result<(), NetlinkError> {
        let bridge_index = self
            .link_index(bridge)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(bridge.to_string()))?;
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|source| NetlinkError::Request {
                what: format!("creating veth {host} with peer {peer} in the pod namespace"),
                source,
            })?;
        let index = self
            .link_index(host)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(host.to_string()))?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge_index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|source| NetlinkError::Request {
                what: format!("attaching {host} to {bridge}"),
                source,
            })
    }

    /// Delete a link by name; a missing link is success. Returns whether it
    /// existed.
    pub async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(source) => Err(NetlinkError::Request {
                what: format!("deleting {name}"),
                source,
            }),
        }
    }

    /// Add `net` to `ifname` with its prefix route (IPv6 without DAD).
    pub async fn add_address(&self, ifname: &str, net: IpNet) -> Result<(), NetlinkError> {
        let index = self
            .link_index(ifname)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(ifname.to_string()))?;
        let mut req = self
            .handle
            .address()
            .add(index, net.addr(), net.prefix_len())
            .replace();
        if net.addr().is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(|source| NetlinkError::Request {
            what: format!("adding {net} to {ifname}"),
            source,
        })
    }

    /// Addresses on `ifname`.
    pub async fn addresses(&self, ifname: &str) -> Result<Vec<IpNet>, NetlinkError> {
        let Some(index) = self.link_index(ifname).await? else {
            return Ok(vec![]);
        };
        let found = self.address_messages(index, ifname).await?;
        Ok(found.into_iter().map(|(net, _)| net).collect())
    }

    /// The addresses on link `index` (named `ifname`, for errors), each
    /// with the message that describes it (to delete it with).
    pub(super) async fn address_messages(
        &self,
        index: u32,
        ifname: &str,
    ) -> Result<Vec<(IpNet, AddressMessage)>, NetlinkError> {
        let mut out = Vec::new();
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(m) = s.try_next().await.map_err(|source| NetlinkError::Request {
            what: format!("listing addresses of {ifname}"),
            source,
        })? {
            let addr = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = addr
                && let Ok(net) = IpNet::new(ip, m.header.prefix_len)
            {
                out.push((net, m));
            }
        }
        Ok(out)
    }

    /// Set `ifname` up with `mtu`.
    pub async fn link_up(&self, ifname: &str) -> Result<(), NetlinkError> {
        self.set_up(ifname, None).await.map(|_| ())
    }

    /// Add a default route via `gw` out of `ifname` (EEXIST is success).
    pub async fn add_default_route(&self, ifname: &str, gw: IpAddr) -> Result<(), NetlinkError> {
        let index = self
            .link_index(ifname)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(ifname.to_string()))?;
        let msg = match gw {
            IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new()
                .output_interface(index)
                .gateway(g)
                .build(),
            IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new()
                .output_interface(index)
                .gateway(g)
                .build(),
        };
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(NetlinkError::Request {
                what: format!("adding default route via {gw} on {ifname}"),
                source,
            }),
        }
    }

    /// Gateways of the default routes (v4 and v6) out of `ifname`.
    pub async fn default_gateways(&self, ifname: &str) -> Result<Vec<IpAddr>, NetlinkError> {
        let Some(index) = self.link_index(ifname).await? else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for msg in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut s = self.handle.route().get(msg).execute();
            while let Some(m) = s.try_next().await.map_err(|source| NetlinkError::Request {
                what: "listing routes".into(),
                source,
            })? {
                if m.header.destination_prefix_length != 0 {
                    continue;
                }
                let oif = m
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
                let gw = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::V4(*g)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(IpAddr::V6(*g)),
                    _ => None,
                });
                if let (true, Some(gw)) = (oif, gw) {
                    out.push(gw);
                }
            }
        }
        Ok(out)
    }
}
