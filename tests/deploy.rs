//! deploy/: the kustomization renders, every object validates against the
//! Kubernetes 1.30 schemas, and the DaemonSet's arguments and environment
//! are accepted by the agent's real argument parser.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use clap::CommandFactory;
use clap::Parser;
use podguard::agent::cli::Args;
use serde::Deserialize;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{name} is required under CI (scripts/test installs it)");
        }
        eprintln!("SKIPPED: {name} not installed");
    }
    found
}

fn render() -> Option<String> {
    if !tool("kubectl") {
        return None;
    }
    let o = Command::new("kubectl")
        .args(["kustomize", DEPLOY])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Some(String::from_utf8(o.stdout).unwrap())
}

#[test]
fn kustomization_renders_and_validates_against_1_30() {
    let Some(yaml) = render() else { return };
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "DaemonSet",
    ] {
        assert!(
            yaml.contains(&format!("kind: {kind}")),
            "{kind} missing from the rendered install"
        );
    }
    if !tool("kubernetes-validate") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("rendered.yaml");
    std::fs::write(&f, &yaml).unwrap();
    let o = Command::new("kubernetes-validate")
        .args(["-k", "1.30.0", "--strict"])
        .arg(&f)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "schema validation failed:\n{out}");
    assert_eq!(out.matches(" passed for resource ").count(), 15, "{out}");
}

#[derive(Deserialize)]
struct Obj {
    kind: String,
    #[serde(default)]
    spec: serde_yaml::Value,
}

/// argv for a container: command + args + env turned into their flags.
fn argv(container: &serde_yaml::Value) -> Vec<String> {
    let flags: Vec<(String, String)> = Args::command()
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?.to_string();
            Some((env, a.get_long()?.to_string()))
        })
        .collect();
    let mut argv: Vec<String> = container["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    argv.extend(
        container["args"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap().to_string()),
    );
    for e in container["env"].as_sequence().into_iter().flatten() {
        let name = e["name"].as_str().unwrap();
        if name == "RUST_LOG" {
            continue;
        }
        let (_, long) = flags
            .iter()
            .find(|(env, _)| env == name)
            .unwrap_or_else(|| panic!("env {name} is not read by podguard-agent (typo?)"));
        let value = match e["value"].as_str() {
            Some(v) => v.to_string(),
            None => "node-from-downward-api".to_string(),
        };
        argv.push(format!("--{long}={value}"));
    }
    argv
}

#[test]
fn daemonset_args_and_env_are_accepted_by_the_agent_parser() {
    let text = std::fs::read_to_string(format!("{DEPLOY}/daemonset.yaml")).unwrap();
    let ds: Obj = serde_yaml::from_str(&text).unwrap();
    assert_eq!(ds.kind, "DaemonSet");
    let pod = &ds.spec["template"]["spec"];
    let mut seen = 0;
    for list in ["initContainers", "containers"] {
        for c in pod[list].as_sequence().unwrap() {
            assert_eq!(c["command"][0].as_str(), Some("podguard-agent"));
            let argv = argv(c);
            let parsed = Args::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert_eq!(parsed.node_name, "node-from-downward-api");
            if list == "initContainers" {
                assert!(parsed.install_cni && parsed.install_only);
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 2);
    // Probes point at the agent's metrics port.
    let main = &pod["containers"][0];
    assert_eq!(
        main["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    let port = main["livenessProbe"]["httpGet"]["port"].as_u64().unwrap();
    let defaults = Args::try_parse_from([
        "podguard-agent",
        "--node-name",
        "x",
        "--cluster-cidr",
        "10.0.0.0/8",
    ])
    .unwrap();
    assert_eq!(defaults.metrics_addr.port() as u64, port);
}

#[test]
fn bad_agent_arguments_are_refused_with_the_bad_input_named() {
    let e = Args::try_parse_from([
        "podguard-agent",
        "--node-name",
        "x",
        "--cluster-cidr",
        "10.0.0.1/33",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("10.0.0.1/33"), "{e}");
    let e = Args::try_parse_from([
        "podguard-agent",
        "--node-name",
        "x",
        "--cluster-cidr",
        "10.0.0.0/8",
        "--resync",
        "5 fortnights",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("5 fortnights"), "{e}");
    let e = Args::try_parse_from([
        "podguard-agent",
        "--node-name",
        "x",
        "--cluster-cidr",
        "10.0.0.0/8",
        "--install-only",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("--install-cni"), "{e}");
}
