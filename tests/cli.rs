//! The `podguard` CLI's own rules, checked before it talks to any API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn podguard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_podguard"))
        .args(args)
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .unwrap()
}

#[test]
fn a_timeout_without_wait_is_a_usage_error() {
    let o = podguard(&["rotate", "--node", "node-1", "--timeout", "5"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--timeout needs --wait"), "{err}");
    // With --wait it is accepted (and then fails for the missing cluster,
    // not for the flags).
    let o = podguard(&["rotate", "--node", "node-1", "--wait", "--timeout", "5s"]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("--timeout needs"));
}

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_podguard-agent"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn agent_logs_as_json_and_checks_its_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("private.key");
    // Starts (logs), then fails at once installing into a missing dir.
    let o = agent(&[
        "--node-name",
        "n1",
        "--nodes-file",
        "/nonexistent",
        "--cluster-cidr",
        "10.244.0.0/16",
        "--key-file",
        key.to_str().unwrap(),
        "--install-cni",
        "--cni-bin-dir",
        "/proc/version/bin",
        "--cni-conf-dir",
        "/proc/version/conf",
        "--log-format",
        "json",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let start = lines
        .iter()
        .find(|v| v["fields"]["message"] == "podguard-agent starting")
        .unwrap_or_else(|| panic!("no start line: {err}"));
    assert_eq!(start["level"], "INFO");
    assert_eq!(start["fields"]["node"], "n1");

    let o = agent(&[
        "--node-name",
        "n1",
        "--log-level",
        "loud[",
        "--print-public-key",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--log-level") && err.contains("give a level"),
        "{err}"
    );
}
