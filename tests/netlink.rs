//! rtnetlink shell against a real (throwaway) network namespace: creating,
//! adopting, and applying a plan's routes is idempotent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keys::PrivateKey;
use mesh::{Action, Local, MeshConfig, NodeInfo, Observed};
use podguard::netlink::Netlink;

fn plan() -> mesh::Plan {
    let k = PrivateKey::generate().public_key();
    let nodes = vec![
        NodeInfo {
            name: "a".into(),
            pod_cidrs: vec!["10.244.1.0/24".into(), "fd00:10:244:1::/64".into()],
            endpoint: Some("192.0.2.1:51820".into()),
            public_key: Some(k.to_base64()),
            next_public_key: None,
            internal_ips: vec![],
            underlay_mtu: None,
        },
        NodeInfo {
            name: "b".into(),
            pod_cidrs: vec!["10.244.2.0/24".into(), "fd00:10:244:2::/64".into()],
            endpoint: Some("192.0.2.2:51820".into()),
            public_key: Some(PrivateKey::generate().public_key().to_base64()),
            next_public_key: None,
            internal_ips: vec![],
            underlay_mtu: None,
        },
    ];
    let cfg = MeshConfig {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        ],
        ..Default::default()
    };
    mesh::plan(
        &Local {
            name: "a".into(),
            public_key: k,
        },
        &nodes,
        &cfg,
    )
    .unwrap()
}

fn route_actions(a: &[Action]) -> Vec<&Action> {
    a.iter()
        .filter(|a| matches!(a, Action::AddRoute(_) | Action::RemoveRoute(_)))
        .collect()
}

#[test]
fn applying_the_same_plan_twice_changes_nothing() {
    if !require_root("applying_the_same_plan_twice_changes_nothing") {
        return;
    }
    let mut n = Netns::new("nl");
    let ns = n.add("x");
    let p = plan();
    in_netns(&ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let nl = Netlink::connect().unwrap();
            // A stand-in for podguard0: routes only need a link to exist.
            let wg1 = nl.ensure_bridge("podguard0", p.mtu).await.unwrap();
            let wg2 = nl.ensure_bridge("podguard0", p.mtu).await.unwrap();
            assert_eq!(wg1, wg2, "an existing link must be adopted, not recreated");
            let br = nl.ensure_bridge("cbr0", p.mtu).await.unwrap();
            assert_eq!(br, nl.ensure_bridge("cbr0", p.mtu).await.unwrap());
            nl.ensure_addresses("cbr0", &p.bridge_addresses)
                .await
                .unwrap();
            nl.ensure_addresses("cbr0", &p.bridge_addresses)
                .await
                .unwrap();

            let mut observed = Observed {
                peers: Default::default(),
                routes: nl.observe_routes().await.unwrap(),
            };
            assert!(observed.routes.is_empty());
            let actions = mesh::diff(&p, &observed);
            assert_eq!(route_actions(&actions).len(), p.routes.len());
            for a in &actions {
                if let Action::AddRoute(r) = a {
                    nl.add_route(r).await.unwrap();
                }
            }
            observed.routes = nl.observe_routes().await.unwrap();
            assert_eq!(
                observed.routes, p.routes,
                "observed routes differ from the plan"
            );
            assert!(route_actions(&mesh::diff(&p, &observed)).is_empty());
            let table = ok(&["ip", "-n", &ns, "route", "show"])
                + &ok(&["ip", "-n", &ns, "-6", "route", "show"]);

            // Again: EEXIST is success, nothing duplicated.
            for a in &actions {
                if let Action::AddRoute(r) = a {
                    nl.add_route(r).await.unwrap();
                }
            }
            let table2 = ok(&["ip", "-n", &ns, "route", "show"])
                + &ok(&["ip", "-n", &ns, "-6", "route", "show"]);
            assert_eq!(table, table2);
            assert!(
                table.contains("unreachable 10.244.0.0/16 proto 77 metric 9999"),
                "{table}"
            );
            assert!(
                table.contains(
                    "10.244.0.0/16 dev podguard0 proto 77 scope link src 10.244.1.1 metric 100"
                ),
                "{table}"
            );

            // Routes that are not ours are never observed (so never removed).
            ok(&[
                "ip",
                "-n",
                &ns,
                "route",
                "add",
                "10.244.50.0/24",
                "dev",
                "cbr0",
                "proto",
                "static",
            ]);
            assert_eq!(nl.observe_routes().await.unwrap(), p.routes);

            // Deleting twice is fine too.
            let r = p.routes.iter().next().unwrap();
            nl.del_route(r).await.unwrap();
            nl.del_route(r).await.unwrap();
            assert!(!nl.observe_routes().await.unwrap().contains(r));
        });
    });
}

/// cbr0 keeps the MAC podguard gives it when ports come and go (a bridge
/// without one takes its lowest port's MAC, and pods' ARP entries for the
/// gateway go stale when that port is removed).
#[test]
fn bridge_keeps_its_mac_when_ports_come_and_go() {
    if !require_root("bridge_keeps_its_mac_when_ports_come_and_go") {
        return;
    }
    let mut n = Netns::new("nlmac");
    let ns = n.add("x");
    let mac = mesh::bridge_mac("node-x");
    let want: String = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let mac_now = || {
        let o = ok(&["ip", "-n", &ns, "-o", "link", "show", "cbr0"]);
        o.split("link/ether ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    };
    let ensure = || {
        in_netns(&ns, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let nl = Netlink::connect().unwrap();
                    nl.ensure_bridge_with_mac("cbr0", 1400, Some(mac))
                        .await
                        .unwrap();
                })
        })
    };
    ensure();
    assert_eq!(mac_now(), want);
    // A port with a lower MAC joins, then leaves: the bridge's MAC stays.
    ok(&[
        "ip",
        "-n",
        &ns,
        "link",
        "add",
        "v0",
        "address",
        "00:00:00:00:00:01",
        "type",
        "veth",
        "peer",
        "name",
        "v1",
    ]);
    ok(&["ip", "-n", &ns, "link", "set", "v0", "master", "cbr0", "up"]);
    assert_eq!(mac_now(), want);
    ok(&["ip", "-n", &ns, "link", "del", "v0"]);
    assert_eq!(mac_now(), want);
    // An adopted bridge with another MAC gets podguard's.
    ok(&[
        "ip",
        "-n",
        &ns,
        "link",
        "set",
        "cbr0",
        "address",
        "02:11:22:33:44:55",
    ]);
    ensure();
    assert_eq!(mac_now(), want);
}

/// Counts netlink-proto's "failed to forward response back to the handle"
/// warnings: each is a message of a dump that nobody read to its end.
struct Undelivered(std::sync::atomic::AtomicUsize);

impl log::Log for Undelivered {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        // Only this test's runtime threads: other tests in this binary run
        // in parallel.
        let ours = std::thread::current()
            .name()
            .is_some_and(|n| n == UNDELIVERED_THREADS);
        if ours
            && record
                .args()
                .to_string()
                .contains("failed to forward response")
        {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    fn flush(&self) {}
}

const UNDELIVERED_THREADS: &str = "whole-dumps-test";

static UNDELIVERED: Undelivered = Undelivered(std::sync::atomic::AtomicUsize::new(0));

#[test]
fn finding_the_underlay_mtu_reads_whole_dumps() {
    if !require_root("finding_the_underlay_mtu_reads_whole_dumps") {
        return;
    }
    log::set_logger(&UNDELIVERED).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let mut n = Netns::new("nd");
    let ns = n.add("x");
    // The underlay address first, then many more addresses after it: the
    // search stops at the first, the dump goes on.
    ok(&[
        "ip", "-n", &ns, "link", "add", "eth0", "mtu", "9000", "type", "bridge",
    ]);
    ok(&[
        "ip",
        "-n",
        &ns,
        "addr",
        "add",
        "192.0.2.1/24",
        "dev",
        "eth0",
    ]);
    ok(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
    // Enough that the dump takes several reads (the kernel fills one
    // buffer of about 100 address messages per read).
    ok(&["ip", "-n", &ns, "link", "add", "many", "type", "bridge"]);
    let batch = n.path("addresses");
    let lines: String = (0..400)
        .map(|i| {
            format!(
                "addr add 198.51.{}.{}/32 dev many\n",
                100 + i / 200,
                1 + i % 200
            )
        })
        .collect();
    std::fs::write(&batch, lines).unwrap();
    ok(&["ip", "-n", &ns, "-batch", batch.to_str().unwrap()]);
    in_netns(&ns, || {
        // As the agent runs it: the connection task on a worker thread.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(UNDELIVERED_THREADS)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let nl = Netlink::connect().unwrap();
            for _ in 0..5 {
                let found = nl
                    .underlay_mtu(Some("192.0.2.1".parse().unwrap()))
                    .await
                    .unwrap();
                assert_eq!(found, Some(("eth0".to_string(), 9000)));
            }
            // Let the connection task receive whatever was left.
            let _ = nl.links("").await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        });
    });
    assert_eq!(
        UNDELIVERED.0.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "dump messages nobody read (netlink-proto warned for each)"
    );
}
