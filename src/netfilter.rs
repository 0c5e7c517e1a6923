//! podguard's own nftables table, `inet podguard`: the fail-closed barrier,
//! and masquerade for pod traffic that leaves the cluster CIDR through the
//! node's uplink.
//!
//! **Barrier.** The routes send the cluster CIDR into `podguard0`, with an
//! `unreachable` backstop; but routes can be deleted (an operator, another
//! agent, `ip route flush`), and then pod traffic would take the default
//! route in plaintext. The `output` and `forward` chains drop every packet
//! to a cluster CIDR that would leave through any interface but
//! `podguard0` (or a key rotation's companion, `podguard0n`/`podguard0p`),
//! `cbr0` or `lo`, whatever the routing table says. The table
//! is kernel state: it stays while the agent is stopped or restarting, and
//! only an explicit uninstall (`nft delete table inet podguard`) removes it.
//!
//! **Spoofed pod sources.** A packet with a cluster CIDR source is a pod's
//! (or a node's tunnel address) only when it comes out of the tunnel, from
//! the pod bridge or from the node itself; one that arrives from the
//! underlay in plaintext is forged, and forwarding it would hand a pod
//! traffic that claims another pod's address (the tunnel's own check, a
//! peer's AllowedIPs, never sees it). The `prerouting` chain, before
//! conntrack, drops every packet with a cluster CIDR source that comes in
//! through any interface but those. Reverse-path filtering would catch
//! the IPv4 case only when strict (`rp_filter=1`); IPv6 has none.
//!
//! **Masquerade.** Pods have addresses of the cluster's podCIDRs, which nothing outside the
//! cluster routes back; traffic to the rest of the world leaves with the
//! node's address, as flannel (`--ip-masq`), Kilo and Calico
//! (`natOutgoing`) do. Never NATed: anything into `podguard0` or `cbr0`
//! (pod to pod, node to pod) and anything to a cluster CIDR.
//!
//! [`ruleset`] builds the whole table as data (pure, unit-tested); [`apply`]
//! hands it to `nft -j -f -` in one transaction (add, flush, fill), so the
//! table is replaced atomically and other tables are never touched.

use std::borrow::Cow;

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Counter, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The table's name (family `inet`).
pub const TABLE: &str = "podguard";
/// The masquerade chain (nat, postrouting, priority srcnat).
pub const NAT_CHAIN: &str = "postrouting";
/// The barrier's chains (filter, priority 0).
pub const BARRIER_CHAINS: [&str; 2] = ["output", "forward"];
/// The chain that drops spoofed pod sources (filter, prerouting, priority
/// raw: before conntrack keeps any state for them).
pub const SPOOF_CHAIN: &str = "prerouting";
/// The WireGuard interfaces: `podguard0` and a key rotation's companions
/// on kernel WireGuard (`mesh::companion`).
pub const TUNNEL_IFS: [&str; 3] = [
    mesh::WG_IFNAME,
    mesh::companion::NEXT_IFNAME,
    mesh::companion::PEERS_NEXT_IFNAME,
];
/// Interfaces cluster-bound traffic may leave through, and the only ones
/// a packet from a cluster CIDR source may come in by.
pub const ALLOWED_OIFS: [&str; 5] = [
    TUNNEL_IFS[0],
    TUNNEL_IFS[1],
    TUNNEL_IFS[2],
    mesh::BRIDGE_IFNAME,
    "lo",
];
/// Priority `srcnat`.
const SRCNAT: i32 = 100;
/// Priority `raw`.
const RAW: i32 = -300;

/// A failure to program nftables.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    /// `nft` could not be run or refused the ruleset.
    #[error(
        "programming nftables table inet {TABLE} (needs the nft binary, package nftables, and CAP_NET_ADMIN)"
    )]
    Nft(#[source] nftables::helper::NftablesError),
}

fn addr_match(field: &'static str, net: &IpNet) -> Statement<'static> {
    let protocol = if net.addr().is_ipv4() { "ip" } else { "ip6" };
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: Cow::Borrowed(protocol),
                field: Cow::Borrowed(field),
            },
        ))),
        right: Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String(Cow::Owned(net.network().to_string()))),
            len: u32::from(net.prefix_len()),
        })),
        op: Operator::EQ,
    })
}

fn oifname(name: &'static str) -> Statement<'static> {
    ifname(MetaKey::Oifname, name)
}

fn ifname(key: MetaKey, name: &'static str) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Meta(Meta { key })),
        right: Expression::String(Cow::Borrowed(name)),
        op: Operator::EQ,
    })
}

fn rule(chain: &'static str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        ..Rule::default()
    })
}

fn table() -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::INet,
        name: Cow::Borrowed(TABLE),
        ..Table::default()
    })
}

fn chain(name: &'static str, kind: NfChainType, hook: NfHook, prio: i32) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(name),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(None))
}

/// The whole table for a node with `pod_cidrs` in a cluster of
/// `cluster_cidrs`: the barrier always, masquerade when `masquerade`.
/// One transaction that replaces whatever the table held.
pub fn ruleset(
    pod_cidrs: &[IpNet],
    cluster_cidrs: &[IpNet],
    masquerade: bool,
) -> Nftables<'static> {
    let mut b = Batch::new();
    // `add` is idempotent, so flush and delete never fail on a fresh node.
    b.add(table());
    b.add_cmd(NfCmd::Flush(FlushObject::Table(Table {
        family: NfFamily::INet,
        name: Cow::Borrowed(TABLE),
        ..Table::default()
    })));
    // Each guard chain: what passes the allowed interfaces (by `dev`)
    // returns, what else has a cluster address (in `field`) is dropped.
    let guards = [
        (
            BARRIER_CHAINS[0],
            NfHook::Output,
            0,
            MetaKey::Oifname,
            "daddr",
        ),
        (
            BARRIER_CHAINS[1],
            NfHook::Forward,
            0,
            MetaKey::Oifname,
            "daddr",
        ),
        (
            SPOOF_CHAIN,
            NfHook::Prerouting,
            RAW,
            MetaKey::Iifname,
            "saddr",
        ),
    ];
    for (name, hook, prio, dev_key, field) in guards {
        b.add(chain(name, NfChainType::Filter, hook, prio));
        for dev in ALLOWED_OIFS {
            b.add(rule(
                name,
                vec![ifname(dev_key, dev), Statement::Return(None)],
            ));
        }
        for c in cluster_cidrs {
            b.add(rule(
                name,
                vec![addr_match(field, c), counter(), Statement::Drop(None)],
            ));
        }
    }
    let nat = chain(NAT_CHAIN, NfChainType::NAT, NfHook::Postrouting, SRCNAT);
    b.add(nat.clone());
    if !masquerade {
        b.delete(nat);
        return b.to_nftables();
    }
    for dev in TUNNEL_IFS.into_iter().chain([mesh::BRIDGE_IFNAME]) {
        b.add(rule(NAT_CHAIN, vec![oifname(dev), Statement::Return(None)]));
    }
    for c in cluster_cidrs {
        b.add(rule(
            NAT_CHAIN,
            vec![addr_match("daddr", c), Statement::Return(None)],
        ));
    }
    for p in pod_cidrs {
        b.add(rule(
            NAT_CHAIN,
            vec![addr_match("saddr", p), Statement::Masquerade(None)],
        ));
    }
    b.to_nftables()
}

/// The transaction that removes the table (uninstall): added first, so it
/// never fails where the table is already gone.
pub fn removal() -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(table());
    b.delete(table());
    b.to_nftables()
}

/// Apply a [`ruleset`] (one `nft` transaction).
pub fn apply(rules: &Nftables<'_>) -> Result<(), NetfilterError> {
    nftables::helper::apply_ruleset(rules).map_err(NetfilterError::Nft)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter()
            .map(|n| n.parse().unwrap_or_else(|_| panic!("{n}")))
            .collect()
    }

    fn chain_rules(v: &Value, chain: &str) -> Vec<Value> {
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["add"].get("rule"))
            .filter(|r| r["chain"] == chain)
            .map(|r| r["expr"].clone())
            .collect()
    }

    fn oif(dev: &str) -> Value {
        json!([{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": dev}}, {"return": null}])
    }

    #[test]
    fn barrier_drops_cluster_traffic_leaving_by_any_other_interface() {
        let r = ruleset(
            &nets(&["10.244.1.0/24"]),
            &nets(&["10.244.0.0/16", "fd00:10:244::/56"]),
            true,
        );
        let v = serde_json::to_value(&r).unwrap();
        for (chain, hook) in [("output", "output"), ("forward", "forward")] {
            let c = v["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["add"]["chain"]["name"] == chain)
                .unwrap_or_else(|| panic!("no {chain} chain"));
            assert_eq!(c["add"]["chain"]["hook"], hook);
            assert_eq!(c["add"]["chain"]["type"], "filter");
            let rules = chain_rules(&v, chain);
            assert_eq!(
                rules[..5],
                [
                    oif("podguard0"),
                    oif("podguard0n"),
                    oif("podguard0p"),
                    oif("cbr0"),
                    oif("lo")
                ]
            );
            assert_eq!(
                rules[5][0]["match"]["right"]["prefix"]["addr"],
                "10.244.0.0"
            );
            assert_eq!(rules[5][2], json!({"drop": null}));
            assert_eq!(rules[6][0]["match"]["left"]["payload"]["protocol"], "ip6");
            assert_eq!(rules[6][2], json!({"drop": null}));
            assert_eq!(rules.len(), 7);
        }
    }

    #[test]
    fn cluster_sources_come_in_only_from_the_tunnel_the_bridge_or_the_node() {
        let r = ruleset(
            &nets(&["10.244.1.0/24"]),
            &nets(&["10.244.0.0/16", "fd00:10:244::/56"]),
            false,
        );
        let v = serde_json::to_value(&r).unwrap();
        let c = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["add"]["chain"]["name"] == "prerouting")
            .expect("no prerouting chain");
        assert_eq!(c["add"]["chain"]["hook"], "prerouting");
        assert_eq!(c["add"]["chain"]["type"], "filter");
        assert_eq!(c["add"]["chain"]["prio"], -300);
        let rules = chain_rules(&v, "prerouting");
        let iif = |dev: &str| json!([{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": dev}}, {"return": null}]);
        assert_eq!(
            rules[..5],
            [
                iif("podguard0"),
                iif("podguard0n"),
                iif("podguard0p"),
                iif("cbr0"),
                iif("lo")
            ]
        );
        for (rule, (protocol, addr)) in rules[5..]
            .iter()
            .zip([("ip", "10.244.0.0"), ("ip6", "fd00:10:244::")])
        {
            assert_eq!(
                rule[0]["match"]["left"]["payload"],
                json!({"protocol": protocol, "field": "saddr"})
            );
            assert_eq!(rule[0]["match"]["right"]["prefix"]["addr"], addr);
            assert_eq!(rule[2], json!({"drop": null}));
        }
        assert_eq!(rules.len(), 7);
    }

    #[test]
    fn masquerade_off_keeps_the_barrier_and_removes_the_nat_chain() {
        let v = serde_json::to_value(ruleset(
            &nets(&["10.244.1.0/24"]),
            &nets(&["10.244.0.0/16"]),
            false,
        ))
        .unwrap();
        assert_eq!(chain_rules(&v, "output").len(), 6);
        assert_eq!(chain_rules(&v, "forward").len(), 6);
        assert!(chain_rules(&v, "postrouting").is_empty());
        let last = v["nftables"].as_array().unwrap().last().unwrap();
        assert_eq!(last["delete"]["chain"]["name"], "postrouting");
    }

    #[test]
    fn masquerades_only_pod_traffic_leaving_the_cluster_and_never_into_the_tunnel() {
        let r = ruleset(
            &nets(&["10.244.1.0/24", "fd00:10:244:1::/64"]),
            &nets(&["10.244.0.0/16", "fd00:10:244::/56"]),
            true,
        );
        let v = serde_json::to_value(&r).unwrap();
        let cmds: Vec<String> = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_object().unwrap().keys().next().unwrap().clone())
            .collect();
        // One transaction: add table, flush it, then chains and rules.
        assert_eq!(&cmds[..2], ["add", "flush"]);
        let nat = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["add"]["chain"]["name"] == "postrouting")
            .unwrap();
        assert_eq!(nat["add"]["chain"]["hook"], "postrouting");
        assert_eq!(nat["add"]["chain"]["type"], "nat");
        assert_eq!(nat["add"]["chain"]["prio"], 100);
        let rules = chain_rules(&v, "postrouting");
        assert_eq!(rules[0], oif("podguard0"));
        assert_eq!(rules[1], oif("podguard0n"));
        assert_eq!(rules[2], oif("podguard0p"));
        assert_eq!(rules[3], oif("cbr0"));
        assert_eq!(
            rules[4][0]["match"]["left"]["payload"],
            json!({"protocol": "ip", "field": "daddr"})
        );
        assert_eq!(
            rules[4][0]["match"]["right"]["prefix"],
            json!({"addr": "10.244.0.0", "len": 16})
        );
        assert_eq!(rules[5][0]["match"]["left"]["payload"]["protocol"], "ip6");
        assert_eq!(rules[6][0]["match"]["left"]["payload"]["field"], "saddr");
        assert_eq!(rules[6][1], json!({"masquerade": null}));
        assert_eq!(
            rules[7][0]["match"]["right"]["prefix"]["addr"],
            "fd00:10:244:1::"
        );
        assert_eq!(rules.len(), 8);
        // Exclusions come before any masquerade: order is the semantics.
        assert!(rules[..6].iter().all(|r| r[1] == json!({"return": null})));
    }

    #[test]
    fn same_input_same_bytes() {
        let a = ruleset(&nets(&["10.244.1.0/24"]), &nets(&["10.244.0.0/16"]), true);
        let b = ruleset(&nets(&["10.244.1.0/24"]), &nets(&["10.244.0.0/16"]), true);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
    }
}
