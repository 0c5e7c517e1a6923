//! `podguard audit` against the lab: NetworkPolicy verdicts next to how
//! traffic travels, the exit code, and the probe. The lab uses fixed names
//! (prefix pglab): one test, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::lab::{api, podguard, up_small};
use common::*;
use serde_json::{Value, json};

fn audit() -> (i32, Value) {
    let o = podguard(&["audit", "--lab", "--pods", "--output", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "audit output: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap(), v)
}

fn cell(r: &Value, from: &str, to: &str) -> Value {
    r["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["from"] == from && c["to"] == to)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn audit_matrix_policies_findings_and_probe() {
    if !require_root("audit_matrix_policies_findings_and_probe") {
        return;
    }
    let _guard = up_small();

    // No policy: everything allowed, every cross-node flow encrypted.
    let (code, r) = audit();
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["ok"], true);
    assert_eq!(r["passed"], true);
    assert_eq!(r["pods"].as_array().unwrap().len(), 6);
    assert!(
        r["pods"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["transport"] == "encrypted")
    );

    // The probe sees WireGuard and nothing else.
    let o = podguard(&["audit", "--lab", "--probe", "--output", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        p["probe"]["encryptedPackets"].as_u64().unwrap() > 0,
        "{p:#}"
    );
    assert_eq!(p["probe"]["plaintextPackets"], 0);

    // Default-deny ingress in team-b: team-a -> team-b is denied, the
    // other direction still encrypted.
    api(
        "POST",
        "/apis/networking.k8s.io/v1/namespaces/team-b/networkpolicies",
        Some(json!({"metadata": {"name": "default-deny-ingress"},
                    "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})),
    );
    let (code, r) = audit();
    assert_eq!(code, 0);
    assert_eq!(cell(&r, "team-a", "team-b")["allowed"], 0, "{r:#}");
    assert_eq!(cell(&r, "team-b", "team-a")["worst"], "encrypted");
    // Allow team-a on the named port `echo` only: allowed again.
    api(
        "POST",
        "/apis/networking.k8s.io/v1/namespaces/team-b/networkpolicies",
        Some(json!({"metadata": {"name": "allow-team-a-echo"},
                    "spec": {"podSelector": {}, "ingress": [{
                        "from": [{"namespaceSelector": {"matchLabels": {"team": "team-a"}}}],
                        "ports": [{"port": "echo"}]}]}})),
    );
    let (_, r) = audit();
    assert_eq!(cell(&r, "team-a", "team-b")["allowed"], 2, "{r:#}");
    // Only the named port, resolved on the destination pod, TCP.
    let echo = format!("{}/TCP", podguard::lab::check::ECHO_PORT);
    assert_eq!(
        cell(&r, "team-a", "team-b")["ports"],
        json!([echo]),
        "{r:#}"
    );
    assert!(
        r["pods"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["from"].as_str().unwrap().starts_with("team-a/")
                && p["to"].as_str().unwrap().starts_with("team-b/"))
            .all(|p| p["ports"] == json!([echo])),
        "{r:#}"
    );
    assert_eq!(cell(&r, "team-b", "team-a")["ports"], json!(["all"]));
    let table =
        String::from_utf8_lossy(&podguard(&["audit", "--lab", "--pods"]).stdout).into_owned();
    assert!(table.contains(&format!("on {echo}")), "{table}");

    // A host-network pod that policy lets talk: plaintext, reported once
    // for its node as a warning (medium): the default gate (high) passes,
    // --fail-on medium fails, --fail-on never always passes.
    api(
        "POST",
        "/api/v1/namespaces/team-a/pods",
        Some(
            json!({"metadata": {"name": "node-exporter", "labels": {"app": "exporter"}},
                    "spec": {"nodeName": "node-1", "hostNetwork": true, "containers": [{"name": "x", "image": "x"}]},
                    "status": {"podIP": "198.18.0.1"}}),
        ),
    );
    let (code, r) = audit();
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["ok"], true);
    let hn: Vec<&Value> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["subject"].as_str().unwrap().contains("host network"))
        .collect();
    assert_eq!(hn.len(), 1, "once per node, not per pair: {r:#}");
    assert_eq!(hn[0]["severity"], "warning");
    assert_eq!(hn[0]["subject"], "node node-1 (host network)");
    assert!(
        hn[0]["message"]
            .as_str()
            .unwrap()
            .contains("team-a/node-exporter")
    );
    let gate = |level: &str| {
        podguard(&["audit", "--lab", "--fail-on", level])
            .status
            .code()
    };
    assert_eq!(gate("medium"), Some(1));
    assert_eq!(gate("low"), Some(1));
    assert_eq!(gate("never"), Some(0));
    let table = String::from_utf8_lossy(&podguard(&["audit", "--lab"]).stdout).into_owned();
    assert!(
        table.contains("PLAINTEXT") && table.contains("WARNING") && !table.contains("FAIL"),
        "{table}"
    );
    // What --fail-on fails, the verdict says: the table's last line and
    // JSON's `passed` (`ok` stays "no high finding").
    let o = podguard(&["audit", "--lab", "--fail-on", "medium"]);
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        table.contains("FAIL: a finding at or above WARNING (--fail-on)")
            && !table.contains("\nOK"),
        "{table}"
    );
    let o = podguard(&["audit", "--lab", "--fail-on", "medium", "--output", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["ok"].clone(), v["passed"].clone()),
        (json!(true), json!(false)),
        "{v:#}"
    );
    api(
        "DELETE",
        "/api/v1/namespaces/team-a/pods/node-exporter",
        None,
    );

    // A node whose agent is gone and whose key is removed: flows to its
    // pods are broken (dropped, fail closed), exit 1.
    for pid in ok(&["ip", "netns", "pids", "pglab-n3"]).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    api(
        "PATCH",
        "/api/v1/nodes/node-3",
        Some(json!({"metadata": {"annotations": {"podguard.dev/public-key": null}}})),
    );
    let (code, r) = audit();
    assert_eq!(code, 1, "{r:#}");
    assert!(
        r["pods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["to"] == "team-a/pod-3-1" && p["transport"] == "broken"),
        "{r:#}"
    );
    assert!(
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["subject"] == "node node-3")
    );
}
