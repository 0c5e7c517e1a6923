//! Netlink events that call for a repair at once, not at the next resync:
//! a podguard route (proto 77) deleted, an address removed from `cbr0`, or
//! `podguard0` / `cbr0` deleted or taken down. The periodic resync stays as
//! the backstop for anything this misses.
//!
//! Only removals wake the agent: its own reconcile adds routes and sets
//! links up, so reacting to additions would wake it for its own work.

use std::sync::Arc;

use futures::StreamExt;
use rtnetlink::constants::{
    RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK,
};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use tokio::sync::Notify;

use super::{NetlinkError, ROUTE_PROTOCOL};

fn link_name(attrs: &[LinkAttribute]) -> Option<&str> {
    attrs.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// Whether `msg` removes something the agent keeps. `bridge_index` is the
/// index of `cbr0`, when known.
pub fn needs_repair(msg: &RouteNetlinkMessage, bridge_index: Option<u32>) -> bool {
    let ours = |name: Option<&str>| matches!(name, Some(mesh::WG_IFNAME | mesh::BRIDGE_IFNAME));
    match msg {
        RouteNetlinkMessage::DelRoute(r) => {
            r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
        }
        RouteNetlinkMessage::DelLink(l) => ours(link_name(&l.attributes)),
        RouteNetlinkMessage::NewLink(l) => {
            ours(link_name(&l.attributes)) && !l.header.flags.contains(LinkFlags::Up)
        }
        RouteNetlinkMessage::DelAddress(a) => Some(a.header.index) == bridge_index,
        _ => false,
    }
}

/// Subscribe to link, address and route events of this namespace and
/// `notify_one` on `repair` for each that [`needs_repair`]. Runs until the
/// socket fails.
pub fn spawn(repair: Arc<Notify>) -> Result<(), NetlinkError> {
    let (mut conn, handle, mut messages) =
        rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
    let groups = RTMGRP_LINK
        | RTMGRP_IPV4_IFADDR
        | RTMGRP_IPV6_IFADDR
        | RTMGRP_IPV4_ROUTE
        | RTMGRP_IPV6_ROUTE;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, groups))
        .map_err(NetlinkError::Connect)?;
    tokio::spawn(conn);
    let nl = super::Netlink { handle };
    tokio::spawn(async move {
        let mut bridge_index = None;
        while let Some((msg, _)) = messages.next().await {
            // Events were lost (the socket's buffer overran): whatever they
            // said, look now.
            if matches!(
                msg.payload,
                NetlinkPayload::Overrun(_) | NetlinkPayload::Error(_)
            ) {
                tracing::warn!("netlink events lost; repairing now");
                bridge_index = None;
                repair.notify_one();
                continue;
            }
            if let NetlinkPayload::InnerMessage(m) = msg.payload {
                if bridge_index.is_none() {
                    bridge_index = nl.link_index(mesh::BRIDGE_IFNAME).await.ok().flatten();
                }
                if needs_repair(&m, bridge_index) {
                    tracing::info!(
                        event = event_name(&m),
                        "netlink: podguard state removed; repairing now"
                    );
                    if matches!(m, RouteNetlinkMessage::DelLink(_)) {
                        bridge_index = None;
                    }
                    repair.notify_one();
                }
            }
        }
        tracing::warn!("netlink event stream ended; repairs wait for the resync");
    });
    Ok(())
}

fn event_name(m: &RouteNetlinkMessage) -> &'static str {
    match m {
        RouteNetlinkMessage::DelRoute(_) => "route deleted",
        RouteNetlinkMessage::DelLink(_) => "link deleted",
        RouteNetlinkMessage::NewLink(_) => "link down",
        RouteNetlinkMessage::DelAddress(_) => "address deleted",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::address::AddressMessage;
    use rtnetlink::packet_route::link::LinkMessage;
    use rtnetlink::packet_route::route::RouteMessage;

    fn link(name: &str, up: bool) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.attributes.push(LinkAttribute::IfName(name.into()));
        if up {
            l.header.flags = LinkFlags::Up;
        }
        l
    }

    #[test]
    fn only_removals_of_podguard_state_wake_the_agent() {
        let mut ours = RouteMessage::default();
        ours.header.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
        let mut theirs = RouteMessage::default();
        theirs.header.protocol = RouteProtocol::Boot;
        assert!(needs_repair(
            &RouteNetlinkMessage::DelRoute(ours.clone()),
            None
        ));
        assert!(!needs_repair(&RouteNetlinkMessage::DelRoute(theirs), None));
        assert!(!needs_repair(&RouteNetlinkMessage::NewRoute(ours), None));
        assert!(needs_repair(
            &RouteNetlinkMessage::DelLink(link("podguard0", true)),
            None
        ));
        assert!(needs_repair(
            &RouteNetlinkMessage::DelLink(link("cbr0", true)),
            None
        ));
        assert!(!needs_repair(
            &RouteNetlinkMessage::DelLink(link("eth0", true)),
            None
        ));
        assert!(needs_repair(
            &RouteNetlinkMessage::NewLink(link("cbr0", false)),
            None
        ));
        assert!(!needs_repair(
            &RouteNetlinkMessage::NewLink(link("cbr0", true)),
            None
        ));
        let mut a = AddressMessage::default();
        a.header.index = 7;
        assert!(needs_repair(
            &RouteNetlinkMessage::DelAddress(a.clone()),
            Some(7)
        ));
        assert!(!needs_repair(&RouteNetlinkMessage::DelAddress(a), Some(8)));
    }
}
