//! `kubectl` (the pinned release's, built by tests/kube/kube.sh) against the
//! lab's embedded API server: discovery, apply, annotate, patch and get for
//! the kinds it serves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::kubelab::{KubeLab, require_real_kube};
use common::*;
use serde_json::{Value, json};

fn kubectl(lab: &KubeLab, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &lab.ul])
        .arg(podguard::lab::kube::bin_dir().join("kubectl"))
        .arg("--kubeconfig")
        .arg(&lab.kubeconfig)
        .args(args)
        .output()
        .unwrap()
}

fn ok(lab: &KubeLab, args: &[&str]) -> String {
    let o = kubectl(lab, args);
    assert!(
        o.status.success(),
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn get_json(lab: &KubeLab, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&ok(lab, &a)).unwrap()
}

#[test]
fn kubectl_applies_annotates_patches_and_gets_on_the_embedded_api_server() {
    let name = "kubectl_applies_annotates_patches_and_gets_on_the_embedded_api_server";
    if !require_root(name) || !require_real_kube(name) {
        return;
    }
    let lab = KubeLab::new("kc");
    lab.create_node("a", 1, json!({}));

    // Discovery: what the server serves, with short names.
    let resources = ok(&lab, &["api-resources", "--no-headers"]);
    for r in [
        "nodes",
        "namespaces",
        "pods",
        "networkpolicies",
        "leases",
        "events",
    ] {
        assert!(resources.contains(r), "{r} missing from:\n{resources}");
    }

    let manifest = lab.n.path("objects.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-x, labels: {team: x}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: team-x, labels: {app: web}}\n\
         spec:\n  nodeName: a\n  containers: [{name: web, image: nginx}]\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: deny-ingress, namespace: team-x}\n\
         spec: {podSelector: {}, policyTypes: [Ingress]}\n",
    )
    .unwrap();
    let out = ok(&lab, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(out.contains("created"), "{out}");
    assert_eq!(
        get_json(&lab, &["namespace", "team-x"])["metadata"]["labels"]["team"],
        "x"
    );
    assert_eq!(
        get_json(&lab, &["pod", "web", "-n", "team-x"])["spec"]["nodeName"],
        "a"
    );
    let np = get_json(&lab, &["netpol", "-n", "team-x"]);
    assert_eq!(np["items"][0]["metadata"]["name"], "deny-ingress", "{np:#}");

    // annotate and patch a Node, read them back (also through the API).
    ok(&lab, &["annotate", "node", "a", "example.com/owner=ops"]);
    ok(
        &lab,
        &[
            "patch",
            "node",
            "a",
            "-p",
            r#"{"metadata":{"labels":{"zone":"z1"}}}"#,
        ],
    );
    let node = get_json(&lab, &["node", "a"]);
    assert_eq!(node["metadata"]["annotations"]["example.com/owner"], "ops");
    assert_eq!(node["metadata"]["labels"]["zone"], "z1");
    assert_eq!(lab.annotations("a")["example.com/owner"], "ops");
    let table = ok(&lab, &["get", "nodes"]);
    assert!(table.lines().any(|l| l.starts_with("a ")), "{table}");
}
