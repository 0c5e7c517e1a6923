//! `podguard-agent --uninstall` leaves a node as it was before the install:
//! links, addresses, routes (both families), rules, the nftables ruleset
//! and the CNI directories compared before and after, in a node namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// What a node's network and podguard's directories look like.
fn snapshot(ns: &str, dirs: &[&std::path::Path]) -> Vec<String> {
    let mut out = Vec::new();
    for args in [
        &["link", "show"][..],
        &["addr", "show"],
        &["-4", "route", "show", "table", "all"],
        &["-6", "route", "show", "table", "all"],
        &["-4", "rule", "show"],
        &["-6", "rule", "show"],
    ] {
        let mut a = vec!["ip", "-n", ns];
        a.extend_from_slice(args);
        // Counters and the like change; names and destinations do not.
        let text = ok(&a);
        out.push(format!("ip {}:\n{}", args.join(" "), text));
    }
    out.push(format!(
        "nft:\n{}",
        ok(&["ip", "netns", "exec", ns, "nft", "list", "ruleset"])
    ));
    for d in dirs {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        out.push(format!("{}: {names:?}", d.display()));
    }
    out
}

#[test]
fn uninstall_leaves_the_node_as_it_was() {
    if !require_root("uninstall_leaves_the_node_as_it_was") {
        return;
    }
    std::fs::create_dir_all("/run/wireguard").unwrap();
    let mut n = Netns::new("un");
    let ul = n.underlay(None);
    let ns = n.underlay_node(&ul, "a", 1);
    let root = n.path("node");
    let (bin_dir, conf_dir, lib_dir, run_dir, wg_dir) = (
        root.join("opt-cni-bin"),
        root.join("etc-cni-net.d"),
        root.join("var-lib-podguard"),
        root.join("run-podguard"),
        root.join("wg"),
    );
    for d in [&bin_dir, &conf_dir, &wg_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    // Someone else's CNI files stay.
    std::fs::write(conf_dir.join("99-other.conflist"), "{}").unwrap();
    std::fs::write(bin_dir.join("bridge"), "").unwrap();
    let (key, state, ipam) = (
        lib_dir.join("private.key"),
        run_dir.join("node.json"),
        lib_dir.join("ipam"),
    );
    let before = snapshot(&ns, &[&bin_dir, &conf_dir, &root]);

    let public_key = ok(&[
        env!("CARGO_BIN_EXE_podguard-agent"),
        "--node-name",
        "a",
        "--cluster-cidr",
        "10.244.0.0/16,fd00:10:244::/56",
        "--key-file",
        key.to_str().unwrap(),
        "--print-public-key",
    ])
    .trim()
    .to_string();
    let nodes = n.path("nodes.json");
    std::fs::write(
        &nodes,
        json!([{"name": "a", "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"],
            "endpoint": "192.0.2.1:51820", "publicKey": public_key},
            {"name": "b", "podCIDRs": ["10.244.2.0/24"], "endpoint": "192.0.2.2:51820",
            "publicKey": keys::PrivateKey::generate().public_key().to_base64()}])
        .to_string(),
    )
    .unwrap();
    let common_args = [
        "--node-name",
        "a",
        "--key-file",
        key.to_str().unwrap(),
        "--state-file",
        state.to_str().unwrap(),
        "--cni-bin-dir",
        bin_dir.to_str().unwrap(),
        "--cni-conf-dir",
        conf_dir.to_str().unwrap(),
    ];
    let mut cmd = node_command(
        &ns,
        &wg_dir,
        &[
            &[
                env!("CARGO_BIN_EXE_podguard-agent"),
                "--nodes-file",
                nodes.to_str().unwrap(),
                "--cluster-cidr",
                "10.244.0.0/16,fd00:10:244::/56",
                "--install-cni",
                "--resync",
                "1s",
            ][..],
            &common_args,
        ]
        .concat(),
    );
    n.spawn_logged("agent", &mut cmd, &n.path("agent.log"));
    wait_for("the agent to be ready", Duration::from_secs(20), || {
        state.exists()
            && run(&["ip", "-n", &ns, "link", "show", "podguard0"])
                .status
                .success()
            && ok(&["ip", "netns", "exec", &ns, "nft", "list", "ruleset"]).contains("podguard")
    });
    // A pod comes and goes, as a runtime drives the installed plugin.
    let pod = n.add("pod");
    let conf = json!({"cniVersion": "1.0.0", "name": "podguard", "type": "podguard-cni",
        "nodeStateFile": state, "dataDir": ipam});
    for cmd in ["ADD", "DEL"] {
        let env = common::cni::env_for(cmd, "pod-1", &pod);
        let out = common::cni::call_in(&ns, &common::cni::env_refs(&env), &conf.to_string());
        assert_eq!(out.code, 0, "CNI {cmd}: {}", out.raw);
    }
    assert!(ipam.exists() && bin_dir.join("podguard-cni").exists());
    assert!(conf_dir.join("10-podguard.conflist").exists());
    n.kill("agent");

    let uninstall = || {
        node_command(
            &ns,
            &wg_dir,
            &[
                &[
                    env!("CARGO_BIN_EXE_podguard-agent"),
                    "--uninstall",
                    "--ipam-dir",
                    ipam.to_str().unwrap(),
                ][..],
                &common_args,
            ]
            .concat(),
        )
        .output()
        .unwrap()
    };
    let o = uninstall();
    assert!(o.status.success(), "{o:?}");
    let removed = String::from_utf8_lossy(&o.stdout);
    for what in [
        "link cbr0",
        "nftables table inet podguard",
        "podguard-cni",
        "10-podguard.conflist",
        "private.key",
    ] {
        assert!(removed.contains(what), "{what} not reported:\n{removed}");
    }
    let after = snapshot(&ns, &[&bin_dir, &conf_dir, &root]);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a, "the node differs after --uninstall");
    }
    assert!(!key.exists() && !state.exists() && !ipam.exists());
    // Again: nothing left, still fine.
    let o = uninstall();
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .all(|l| l.contains("nftables"))
    );
}
