//! `kubectl` (the pinned release's, built by tests/kube/kube.sh) against the
//! lab's embedded API server: discovery, apply, annotate, patch and get for
//! the kinds it serves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::kubelab::{KubeLab, require_real_kube};
use common::*;
use serde_json::json;

#[test]
fn kubectl_applies_annotates_patches_and_gets_on_the_embedded_api_server() {
    let name = "kubectl_applies_annotates_patches_and_gets_on_the_embedded_api_server";
    if !require_root(name) || !require_real_kube(name) {
        return;
    }
    let lab = KubeLab::new("kc");
    lab.create_node("a", 1, json!({}));

    // Discovery: what the server serves, with short names.
    let resources = lab.kubectl_ok(&["api-resources", "--no-headers"]);
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

    let out = lab.kubectl_apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-x, labels: {team: x}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: team-x, labels: {app: web}}\n\
         spec:\n  nodeName: a\n  containers: [{name: web, image: nginx}]\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: deny-ingress, namespace: team-x}\n\
         spec: {podSelector: {}, policyTypes: [Ingress]}\n",
    );
    assert!(out.contains("created"), "{out}");
    assert_eq!(
        lab.kubectl_get(&["namespace", "team-x"])["metadata"]["labels"]["team"],
        "x"
    );
    assert_eq!(
        lab.kubectl_get(&["pod", "web", "-n", "team-x"])["spec"]["nodeName"],
        "a"
    );
    let np = lab.kubectl_get(&["netpol", "-n", "team-x"]);
    assert_eq!(np["items"][0]["metadata"]["name"], "deny-ingress", "{np:#}");

    // annotate and patch a Node, read them back (also through the API).
    lab.kubectl_ok(&["annotate", "node", "a", "example.com/owner=ops"]);
    lab.kubectl_ok(&[
        "patch",
        "node",
        "a",
        "-p",
        r#"{"metadata":{"labels":{"zone":"z1"}}}"#,
    ]);
    let node = lab.kubectl_get(&["node", "a"]);
    assert_eq!(node["metadata"]["annotations"]["example.com/owner"], "ops");
    assert_eq!(node["metadata"]["labels"]["zone"], "z1");
    assert_eq!(lab.annotations("a")["example.com/owner"], "ops");
    let table = lab.kubectl_ok(&["get", "nodes"]);
    assert!(table.lines().any(|l| l.starts_with("a ")), "{table}");
}
