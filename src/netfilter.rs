//! podguard's own nftables table, `inet podguard`: masquerade for pod
//! traffic that leaves the cluster CIDR through the node's uplink.
//!
//! Pods have addresses of the cluster's podCIDRs, which nothing outside the
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
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The table's name (family `inet`).
pub const TABLE: &str = "podguard";
/// The masquerade chain (nat, postrouting, priority srcnat).
pub const NAT_CHAIN: &str = "postrouting";
/// Priority `srcnat`.
const SRCNAT: i32 = 100;

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
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Meta(Meta {
            key: MetaKey::Oifname,
        })),
        right: Expression::String(Cow::Borrowed(name)),
        op: Operator::EQ,
    })
}

fn rule(expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Borrowed(NAT_CHAIN),
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

/// The whole table for a node with `pod_cidrs` in a cluster of
/// `cluster_cidrs`: masquerade when `masquerade`, otherwise the table is
/// removed.
pub fn ruleset(
    pod_cidrs: &[IpNet],
    cluster_cidrs: &[IpNet],
    masquerade: bool,
) -> Nftables<'static> {
    let mut b = Batch::new();
    // `add table` first, so flush and delete never fail on a fresh node.
    b.add(table());
    if !masquerade {
        b.delete(table());
        return b.to_nftables();
    }
    b.add_cmd(NfCmd::Flush(FlushObject::Table(Table {
        family: NfFamily::INet,
        name: Cow::Borrowed(TABLE),
        ..Table::default()
    })));
    b.add(NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(NAT_CHAIN),
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(SRCNAT),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }));
    for dev in [mesh::WG_IFNAME, mesh::BRIDGE_IFNAME] {
        b.add(rule(vec![oifname(dev), Statement::Return(None)]));
    }
    for c in cluster_cidrs {
        b.add(rule(vec![addr_match("daddr", c), Statement::Return(None)]));
    }
    for p in pod_cidrs {
        b.add(rule(vec![
            addr_match("saddr", p),
            Statement::Masquerade(None),
        ]));
    }
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

    fn rules_of(v: &Value) -> Vec<Value> {
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["add"].get("rule").map(|r| r["expr"].clone()))
            .collect()
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
        // One transaction: add table, flush it, then the chain and rules.
        assert_eq!(&cmds[..3], ["add", "flush", "add"]);
        assert_eq!(v["nftables"][2]["add"]["chain"]["hook"], "postrouting");
        assert_eq!(v["nftables"][2]["add"]["chain"]["type"], "nat");
        assert_eq!(v["nftables"][2]["add"]["chain"]["prio"], 100);
        let rules = rules_of(&v);
        let oif = |dev: &str| json!([{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": dev}}, {"return": null}]);
        assert_eq!(rules[0], oif("podguard0"));
        assert_eq!(rules[1], oif("cbr0"));
        assert_eq!(
            rules[2][0]["match"]["left"]["payload"],
            json!({"protocol": "ip", "field": "daddr"})
        );
        assert_eq!(
            rules[2][0]["match"]["right"]["prefix"],
            json!({"addr": "10.244.0.0", "len": 16})
        );
        assert_eq!(rules[3][0]["match"]["left"]["payload"]["protocol"], "ip6");
        assert_eq!(rules[4][0]["match"]["left"]["payload"]["field"], "saddr");
        assert_eq!(rules[4][1], json!({"masquerade": null}));
        assert_eq!(
            rules[5][0]["match"]["right"]["prefix"]["addr"],
            "fd00:10:244:1::"
        );
        assert_eq!(rules.len(), 6);
        // Exclusions come before any masquerade: order is the semantics.
        assert!(rules[..4].iter().all(|r| r[1] == json!({"return": null})));
    }

    #[test]
    fn turned_off_the_table_is_removed() {
        let v = serde_json::to_value(ruleset(&nets(&["10.244.1.0/24"]), &[], false)).unwrap();
        assert_eq!(v["nftables"][0]["add"]["table"]["name"], "podguard");
        assert_eq!(v["nftables"][1]["delete"]["table"]["name"], "podguard");
        assert_eq!(v["nftables"].as_array().unwrap().len(), 2);
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
