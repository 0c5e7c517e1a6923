//! podguard-cni against the spec, exec'd exactly as a runtime does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::cni::CniNode;
use common::*;
use serde_json::json;

const V4: &str = "10.244.1.0/24";
const V6: &str = "fd00:10:244:1::/64";
const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[test]
fn conformance_every_command_and_version() {
    if !require_root("conformance_every_command_and_version") {
        return;
    }
    let mut c = CniNode::new("cc", &[V4, V6]);
    for (i, v) in VERSIONS.iter().enumerate() {
        // VERSION answers with the requested version and every supported one.
        let out = c.call(
            &[("CNI_COMMAND", "VERSION")],
            &json!({"cniVersion": v}).to_string(),
        );
        assert_eq!(out.code, 0, "{}", out.raw);
        assert_eq!(out.json["cniVersion"], *v);
        assert_eq!(out.json["supportedVersions"], json!(VERSIONS));

        let pod = c.n.add(&format!("p{i}"));
        let cid = format!("conf{i}");
        let add = c.cmd("ADD", &cid, &pod, v);
        assert_eq!(add.code, 0, "ADD {v}: {}", add.raw);
        let r = &add.json;
        assert_eq!(r["cniVersion"], *v);
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 2);
        assert_eq!(r["interfaces"][1]["name"], "eth0");
        assert_eq!(r["interfaces"][1]["sandbox"], format!("/run/netns/{pod}"));
        let ips = r["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "one address per podCIDR family");
        for ip in ips {
            assert_eq!(ip["interface"], 1);
            let has_version = ip.get("version").is_some();
            assert_eq!(
                has_version,
                v.starts_with("0."),
                "ips[].version only before 1.0.0: {ip}"
            );
        }
        assert_eq!(r["routes"].as_array().unwrap().len(), 2);
        assert_eq!(r["ips"][0]["gateway"], "10.244.1.1");

        let mut conf = c.conf(v);
        conf["prevResult"] = add.json.clone();
        let check = c.cmd_with("CHECK", &cid, &pod, &conf);
        if v.starts_with("0.3") {
            assert_eq!(check.code, 1, "CHECK at {v} must be refused: {}", check.raw);
            assert_eq!(check.json["code"], 1);
        } else {
            assert_eq!(check.code, 0, "CHECK {v}: {}", check.raw);
        }

        let status = c.cmd("STATUS", "", "", v);
        let gc = c.cmd_with("GC", "", "", &{
            let mut g = c.conf(v);
            g["cni.dev/valid-attachments"] = json!([{"containerID": cid, "ifname": "eth0"}]);
            g
        });
        if *v == "1.1.0" {
            assert_eq!(status.code, 0, "STATUS: {}", status.raw);
            assert!(status.raw.trim().is_empty());
            assert_eq!(gc.code, 0, "GC: {}", gc.raw);
            assert_eq!(c.allocations().len(), 2, "GC must keep valid attachments");
        } else {
            assert_eq!(status.json["code"], 1, "{}", status.raw);
            assert_eq!(gc.json["code"], 1, "{}", gc.raw);
        }

        let del = c.cmd_with("DEL", &cid, &pod, &conf);
        assert_eq!(del.code, 0, "DEL {v}: {}", del.raw);
        assert!(
            c.allocations().is_empty(),
            "DEL {v} left {:?}",
            c.allocations()
        );
        assert!(c.host_veths().is_empty());
    }
}

#[test]
fn two_pods_talk_del_cleans_check_detects_damage() {
    if !require_root("two_pods_talk_del_cleans_check_detects_damage") {
        return;
    }
    let mut c = CniNode::new("ct", &[V4, V6]);
    let p1 = c.n.add("p1");
    let p2 = c.n.add("p2");
    let a1 = c.cmd("ADD", "pod1", &p1, "1.1.0");
    let a2 = c.cmd("ADD", "pod2", &p2, "1.1.0");
    assert_eq!((a1.code, a2.code), (0, 0), "{} {}", a1.raw, a2.raw);
    let ip = |o: &common::cni::Out, i: usize| {
        o.json["ips"][i]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    assert_ne!(ip(&a1, 0), ip(&a2, 0));
    assert!(pings(&p1, &ip(&a2, 0)), "pod1 -> pod2 v4");
    assert!(pings(&p1, &ip(&a2, 1)), "pod1 -> pod2 v6");
    assert!(pings(&p2, "10.244.1.1"), "pod2 -> gateway");
    assert!(pings(&p2, "fd00:10:244:1::1"), "pod2 -> v6 gateway");
    let mtu = ok(&["ip", "-n", &p1, "link", "show", "eth0"]);
    assert!(mtu.contains("mtu 1440"), "{mtu}");

    let mut conf = c.conf("1.1.0");
    conf["prevResult"] = a1.json.clone();
    assert_eq!(c.cmd_with("CHECK", "pod1", &p1, &conf).code, 0);
    // Damage: remove the address by hand -> CHECK says what is wrong.
    ok(&[
        "ip",
        "-n",
        &p1,
        "addr",
        "del",
        &format!("{}/24", ip(&a1, 0)),
        "dev",
        "eth0",
    ]);
    let chk = c.cmd_with("CHECK", "pod1", &p1, &conf);
    assert_ne!(chk.code, 0);
    assert!(
        chk.json["details"].as_str().unwrap().contains(&ip(&a1, 0)),
        "{}",
        chk.raw
    );
    // Delete the veth by hand -> CHECK fails naming the interface.
    let host = a1.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    ok(&["ip", "-n", &c.node, "link", "del", &host]);
    let chk = c.cmd_with("CHECK", "pod1", &p1, &conf);
    assert_eq!(chk.json["code"], 101, "{}", chk.raw);
    assert!(chk.raw.contains("missing"), "{}", chk.raw);

    // DEL is tolerant: veth already gone, then a second DEL, then DEL without netns.
    assert_eq!(c.cmd_with("DEL", "pod1", &p1, &conf).code, 0);
    assert_eq!(c.cmd_with("DEL", "pod1", &p1, &conf).code, 0);
    assert_eq!(
        c.cmd("DEL", "pod2", "", "1.1.0").code,
        0,
        "DEL without CNI_NETNS"
    );
    assert_eq!(
        c.cmd("DEL", "never-added", &p2, "1.1.0").code,
        0,
        "DEL of an unknown container"
    );
    assert!(c.allocations().is_empty(), "{:?}", c.allocations());
    assert!(c.host_veths().is_empty(), "{:?}", c.host_veths());
    let links = ok(&["ip", "-n", &p2, "-o", "link", "show"]);
    assert!(
        !links.contains("eth0"),
        "DEL must remove the pod side too: {links}"
    );
}

#[test]
fn fifty_parallel_adds_and_dels() {
    if !require_root("fifty_parallel_adds_and_dels") {
        return;
    }
    let mut c = CniNode::new("cp", &[V4, V6]);
    let pods: Vec<String> = (0..50).map(|i| c.n.add(&format!("q{i}"))).collect();
    let results: Vec<common::cni::Out> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let c = &c;
                s.spawn(move || c.cmd("ADD", &format!("par{i}"), p, "1.1.0"))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut v4 = BTreeSet::new();
    for r in &results {
        assert_eq!(r.code, 0, "{}", r.raw);
        v4.insert(r.json["ips"][0]["address"].as_str().unwrap().to_string());
    }
    assert_eq!(v4.len(), 50, "duplicate addresses handed out");
    assert_eq!(c.allocations().len(), 100);
    for a in &v4 {
        let ip = a.split('/').next().unwrap();
        assert!(pings(&c.node, ip), "{ip} unreachable from the node");
    }
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let c = &c;
            s.spawn(move || assert_eq!(c.cmd("DEL", &format!("par{i}"), p, "1.1.0").code, 0));
        }
    });
    assert!(c.allocations().is_empty(), "{:?}", c.allocations());
    assert!(c.host_veths().is_empty(), "{:?}", c.host_veths());
}

#[test]
fn kill_during_add_leaks_nothing_after_del_and_gc() {
    if !require_root("kill_during_add_leaks_nothing_after_del_and_gc") {
        return;
    }
    let mut c = CniNode::new("ck", &[V4, V6]);
    let mut rounds = Vec::new();
    for i in 0..30 {
        let pod = c.n.add(&format!("k{i}"));
        let cid = format!("kill{i}");
        let env = common::cni::env_for("ADD", &cid, &pod);
        let mut child = common::cni::spawn_in(
            &c.node,
            &common::cni::env_refs(&env),
            &c.conf("1.1.0").to_string(),
        );
        // Kill at a spread of points through the ADD (0-12 ms).
        std::thread::sleep(std::time::Duration::from_micros((i as u64 * 397) % 12_000));
        let _ = child.kill();
        let _ = child.wait();
        rounds.push((cid, pod));
    }
    // Some rounds were killed early, some late: DEL half of them, GC the rest.
    for (cid, pod) in rounds.iter().take(15) {
        let d = c.cmd("DEL", cid, pod, "1.1.0");
        assert_eq!(d.code, 0, "{}", d.raw);
    }
    let gc = c.cmd_with("GC", "", "", &{
        let mut g = c.conf("1.1.0");
        g["cni.dev/valid-attachments"] = json!([]);
        g
    });
    assert_eq!(gc.code, 0, "{}", gc.raw);
    assert!(
        c.allocations().is_empty(),
        "leaked addresses: {:?}",
        c.allocations()
    );
    assert!(
        c.host_veths().is_empty(),
        "leaked veths: {:?}",
        c.host_veths()
    );
    // The store still works.
    let pod = c.n.add("after");
    assert_eq!(c.cmd("ADD", "after", &pod, "1.1.0").code, 0);
}

#[test]
fn bad_input_gets_the_right_code_and_leaves_nothing() {
    if !require_root("bad_input_gets_the_right_code_and_leaves_nothing") {
        return;
    }
    let mut c = CniNode::new("cb", &["10.244.9.0/30"]);
    let pod = c.n.add("p");
    let nspath = format!("/run/netns/{pod}");
    let conf = c.conf("1.0.0").to_string();
    let full = |cmd: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", "bad".to_string()),
            ("CNI_NETNS", nspath.clone()),
            ("CNI_IFNAME", "eth0".to_string()),
        ]
    };
    let without = |k: &str| -> Vec<(&'static str, String)> {
        full("ADD").into_iter().filter(|(n, _)| *n != k).collect()
    };
    let with = |k: &'static str, v: &str| -> Vec<(&'static str, String)> {
        full("ADD")
            .into_iter()
            .map(|(n, x)| if n == k { (n, v.to_string()) } else { (n, x) })
            .collect()
    };
    type Env = Vec<(&'static str, String)>;
    let cases: Vec<(&str, Env, String, u64, &str)> = vec![
        (
            "malformed JSON",
            full("ADD"),
            "{\"cniVersion\":".into(),
            6,
            "not valid JSON",
        ),
        (
            "unknown cniVersion",
            full("ADD"),
            conf.replace("1.0.0", "7.0.0"),
            1,
            "7.0.0",
        ),
        (
            "missing CNI_COMMAND",
            without("CNI_COMMAND"),
            conf.clone(),
            4,
            "CNI_COMMAND",
        ),
        (
            "missing CNI_CONTAINERID",
            without("CNI_CONTAINERID"),
            conf.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "missing CNI_NETNS",
            without("CNI_NETNS"),
            conf.clone(),
            4,
            "CNI_NETNS",
        ),
        (
            "nonexistent netns",
            with("CNI_NETNS", "/run/netns/does-not-exist"),
            conf.clone(),
            4,
            "/run/netns/does-not-exist",
        ),
        (
            "bad ifname",
            with("CNI_IFNAME", "way-too-long-interface"),
            conf.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            "wrong type",
            full("ADD"),
            conf.replace("\"type\":\"podguard-cni\"", "\"type\":\"bridge\""),
            7,
            "bridge",
        ),
        (
            "delegated ipam",
            full("ADD"),
            conf.replace(
                "\"type\":\"podguard-cni\"",
                "\"type\":\"podguard-cni\",\"ipam\":{\"type\":\"host-local\"}",
            ),
            2,
            "ipam",
        ),
        (
            // The binary is podguard-cni; "podguard" is what the first
            // shipped conflist said (runtimes found no such binary).
            "old type name",
            full("ADD"),
            conf.replace("\"type\":\"podguard-cni\"", "\"type\":\"podguard\""),
            7,
            "podguard-cni",
        ),
        (
            "network name is a path",
            full("ADD"),
            conf.replace("\"name\":\"podguard\"", "\"name\":\"../../escape\""),
            7,
            "network name \"../../escape\"",
        ),
        (
            "CNI_NETNS is the node's own namespace",
            with("CNI_NETNS", &format!("/run/netns/{}", c.node)),
            conf.clone(),
            4,
            "the node's own network namespace",
        ),
        (
            "CNI_NETNS is the plugin's own namespace via /proc",
            with("CNI_NETNS", "/proc/self/ns/net"),
            conf.clone(),
            4,
            "the node's own network namespace",
        ),
    ];
    for (what, env, stdin, want, needle) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = c.call(&env, &stdin);
        assert_ne!(out.code, 0, "{what}: {}", out.raw);
        assert_eq!(out.json["code"], want, "{what}: {}", out.raw);
        assert!(
            out.json["msg"].as_str().unwrap().contains(needle),
            "{what}: message should name {needle}: {}",
            out.raw
        );
        assert!(
            c.allocations().is_empty(),
            "{what} left {:?}",
            c.allocations()
        );
        assert!(c.host_veths().is_empty(), "{what} left a veth");
        assert!(
            !c.data_dir.parent().unwrap().join("escape").exists()
                && !c.data_dir.join("..").join("..").join("escape").exists(),
            "{what}: wrote outside the data dir"
        );
        assert!(
            !ok(&["ip", "-n", &c.node, "-o", "link"]).contains(": eth0"),
            "{what}: an interface was added to the node's namespace"
        );
    }

    // podCIDR exhausted: a /30 has one pod address.
    assert_eq!(c.cmd("ADD", "first", &pod, "1.0.0").code, 0);
    let pod2 = c.n.add("p2");
    let out = c.cmd("ADD", "second", &pod2, "1.0.0");
    assert_eq!(out.json["code"], 100, "{}", out.raw);
    assert!(
        out.raw.contains("10.244.9.0/30 is exhausted"),
        "{}",
        out.raw
    );
    assert_eq!(c.allocations().len(), 1);
    assert_eq!(
        c.host_veths().len(),
        1,
        "the failed ADD must not leave a veth"
    );

    // An ADD for an interface that already exists changes nothing.
    let again = c.cmd("ADD", "first", &pod, "1.0.0");
    assert_eq!(again.json["code"], 4, "{}", again.raw);
    assert!(
        pings(&pod, "10.244.9.1"),
        "the existing attachment must survive a bad ADD"
    );

    // Bridge gone while the node state exists: STATUS says existing pods are damaged.
    ok(&[
        "ip",
        "-n",
        &c.node,
        "link",
        "set",
        "cbr0",
        "name",
        "cbr0-away",
    ]);
    let st = c.cmd("STATUS", "", "", "1.1.0");
    assert_eq!(st.json["code"], 51, "{}", st.raw);
    ok(&[
        "ip",
        "-n",
        &c.node,
        "link",
        "set",
        "cbr0-away",
        "name",
        "cbr0",
    ]);
    assert_eq!(c.cmd("STATUS", "", "", "1.1.0").code, 0);

    // Node state missing: ADD says try later, STATUS says not ready.
    std::fs::remove_file(&c.state_file).unwrap();
    let out = c.cmd("ADD", "third", &pod2, "1.1.0");
    assert_eq!(out.json["code"], 11, "{}", out.raw);
    assert!(out.raw.contains("node state file"), "{}", out.raw);
    let st = c.cmd("STATUS", "", "", "1.1.0");
    assert_eq!(st.json["code"], 50, "{}", st.raw);
    assert_eq!(c.allocations().len(), 1);
}

#[test]
fn shipped_conflist_parses_with_the_plugin_parser() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/10-podguard.conflist"
    ))
    .unwrap();
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["name"], "podguard");
    let mut entry = list["plugins"][0].clone();
    entry["cniVersion"] = list["cniVersion"].clone();
    entry["name"] = list["name"].clone();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "x"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let req = podguard::cni::spec::parse(&env, entry.to_string().as_bytes()).unwrap();
    assert_eq!(req.conf.bridge.as_deref(), Some("cbr0"));
    assert!(podguard::cni::spec::SUPPORTED_VERSIONS.contains(&req.conf.cni_version.as_str()));
}

/// Two conflists that differ only in `name` (as a second runtime or a
/// Multus setup makes them) draw from the node's one range: distinct
/// addresses. Before, each name had its own store and both pods got .2.
#[test]
fn two_network_names_never_share_an_address() {
    if !require_root("two_network_names_never_share_an_address") {
        return;
    }
    let mut c = CniNode::new("c2n", &[V4]);
    let (p1, p2) = (c.n.add("p1"), c.n.add("p2"));
    let mut other = c.conf("1.0.0");
    other["name"] = json!("second-net");
    let a = c.cmd("ADD", "pod-one", &p1, "1.0.0");
    let b = c.cmd_with("ADD", "pod-two", &p2, &other);
    assert_eq!((a.code, b.code), (0, 0), "{} {}", a.raw, b.raw);
    let ip = |o: &common::cni::Out| o.json["ips"][0]["address"].as_str().unwrap().to_string();
    assert_ne!(ip(&a), ip(&b), "two networks handed out the same address");
    assert_eq!(c.allocations().len(), 2);
    let b_ip = ip(&b);
    let b_ip = b_ip.split('/').next().unwrap();
    assert!(pings(&p1, b_ip), "pods of both networks share cbr0");
}

/// GC releases and removes exactly the attachments of its own network
/// that are not valid; another network's GC, or an empty list for it,
/// leaves them alone. Before, any GC deleted every podguard veth and left
/// the addresses allocated.
#[test]
fn gc_touches_only_its_own_network_and_releases_what_it_removes() {
    if !require_root("gc_touches_only_its_own_network_and_releases_what_it_removes") {
        return;
    }
    let mut c = CniNode::new("cgc", &[V4]);
    let (p1, p2, p3) = (c.n.add("p1"), c.n.add("p2"), c.n.add("p3"));
    let mut other = c.conf("1.1.0");
    other["name"] = json!("second-net");
    assert_eq!(c.cmd("ADD", "mine", &p1, "1.1.0").code, 0);
    assert_eq!(c.cmd_with("ADD", "theirs", &p2, &other).code, 0);
    let gc = |name: &str, valid: serde_json::Value| {
        let mut g = c.conf("1.1.0");
        g["name"] = json!(name);
        g["cni.dev/valid-attachments"] = valid;
        let o = c.cmd_with("GC", "", "", &g);
        assert_eq!(o.code, 0, "GC {name}: {}", o.raw);
    };
    // A network nobody uses, with nothing valid: nothing changes.
    gc("unrelated", json!([]));
    assert_eq!(c.allocations().len(), 2);
    assert_eq!(c.host_veths().len(), 2);
    assert!(pings(&p1, "10.244.1.1") && pings(&p2, "10.244.1.1"));
    // second-net's GC with nothing valid, as a Go runtime sends it when no
    // pod is left (null, libcni's nil slice): only its attachment goes,
    // address and veth both.
    gc("second-net", json!(null));
    assert_eq!(c.allocations().len(), 1, "{:?}", c.allocations());
    assert_eq!(c.host_veths().len(), 1);
    assert!(pings(&p1, "10.244.1.1"), "podguard's pod must survive");
    assert!(!pings(&p2, "10.244.1.1"), "second-net's pod was collected");
    // podguard's GC keeping its pod: nothing changes.
    gc(
        "podguard",
        json!([{"containerID": "mine", "ifname": "eth0"}]),
    );
    assert_eq!(c.allocations().len(), 1);
    assert!(pings(&p1, "10.244.1.1"));
    // A pod of another podguard store (another dataDir) on the same node.
    let mut elsewhere = c.conf("1.1.0");
    elsewhere["dataDir"] = json!(c.n.path("ipam-elsewhere"));
    elsewhere["name"] = json!("elsewhere");
    assert_eq!(c.cmd_with("ADD", "far", &p3, &elsewhere).code, 0);
    // And with an empty list: released and removed; the other store's pod
    // is not podguard's network's to collect.
    gc("podguard", json!([]));
    assert!(c.allocations().is_empty(), "{:?}", c.allocations());
    assert_eq!(
        c.host_veths().len(),
        1,
        "only the other store's veth is left"
    );
    assert!(pings(&p3, "10.244.1.1"), "another store's pod must survive");
}
