//! `podguard lab up / check / down` and crash cleanup. The lab uses fixed
//! names (prefix pglab), so everything runs in one test, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::kubelab::require_real_kube;
use common::lab::{podguard, up_nodes, up_small, up_with};
use common::*;

fn lab_namespaces() -> Vec<String> {
    ok(&["ip", "netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("pglab-"))
        .map(String::from)
        .collect()
}

#[test]
fn lab_up_check_down_and_crash_cleanup() {
    if !require_root("lab_up_check_down_and_crash_cleanup") {
        return;
    }
    let _guard = up_small();
    assert_eq!(lab_namespaces().len(), 1 + 3 + 3);
    let again = podguard(&["lab", "up"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    // `lab demo` refuses an existing lab before touching it (it used to
    // tear it down first, then complain).
    let demo = podguard(&["lab", "demo"]);
    assert!(!demo.status.success());
    assert!(
        String::from_utf8_lossy(&demo.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    assert_eq!(
        lab_namespaces().len(),
        1 + 3 + 3,
        "lab demo touched the lab"
    );
    // A lab test meeting a lab it did not make refuses and leaves it be.
    assert!(common::lab::refuse_foreign().is_err());
    assert_eq!(lab_namespaces().len(), 1 + 3 + 3);

    let check = podguard(&["lab", "check", "--output", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&check.stdout)
        .unwrap_or_else(|_| panic!("check output: {}", String::from_utf8_lossy(&check.stdout)));
    assert!(check.status.success(), "{report:#}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["pairs"].as_array().unwrap().len(), 6);
    assert!(
        report["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["noNat"] == true)
    );
    assert!(report["capture"]["encryptedPackets"].as_u64().unwrap() > 0);
    assert_eq!(report["capture"]["plaintextPackets"], 0);
    assert_eq!(report["capture"]["markerHits"], 0);
    assert_eq!(report["handshakes"].as_array().unwrap().len(), 6);

    // Break a node (kill its agent and delete its tunnel): check fails, non-zero.
    let pids = ok(&["ip", "netns", "pids", "pglab-n2"]);
    for pid in pids.split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    ok(&["ip", "-n", "pglab-n2", "link", "del", "podguard0"]);
    let bad = podguard(&["lab", "check"]);
    assert_eq!(
        bad.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    let table = String::from_utf8_lossy(&bad.stdout);
    assert!(table.contains("FAIL"), "{table}");
    assert!(
        table.contains("0 plaintext packets"),
        "a dead node must not leak: {table}"
    );

    let down = podguard(&["lab", "down"]);
    assert!(down.status.success());
    assert!(lab_namespaces().is_empty());
    assert!(!std::path::Path::new("/run/podguard-lab").exists());

    // Crash: kill -9 `lab up` midway; `lab down` still finds and removes everything.
    let mut child = Command::new(env!("CARGO_BIN_EXE_podguard"))
        .args(["lab", "up", "--nodes", "3"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("lab up to be midway", Duration::from_secs(20), || {
        lab_namespaces().len() >= 3
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!lab_namespaces().is_empty());
    let down = podguard(&["lab", "down"]);
    assert!(down.status.success());
    assert!(
        lab_namespaces().is_empty(),
        "left behind: {:?}",
        lab_namespaces()
    );
    let leftover = ok(&[
        "sh",
        "-c",
        "pgrep -f '[p]odguard-agent --node-name node-' || true",
    ]);
    assert!(
        leftover.trim().is_empty(),
        "agents left running: {leftover}"
    );
}

/// The main job: `podguard lab demo` (3 nodes x 2 pods, dual-stack, what
/// `scripts/demo` runs) builds its own lab, checks it end to end, prints
/// the report (as JSON on stdout with `--output json`, else the table;
/// progress on stderr) and removes the lab.
#[test]
fn lab_demo_checks_its_own_lab_and_removes_it() {
    if !require_root("lab_demo_checks_its_own_lab_and_removes_it") {
        return;
    }
    let _guard = common::lab::exclusive();
    let demo = podguard(&["lab", "demo", "--output", "json"]);
    let stderr = String::from_utf8_lossy(&demo.stderr);
    let report: serde_json::Value = serde_json::from_slice(&demo.stdout).unwrap_or_else(|e| {
        panic!(
            "demo stdout is not the JSON report ({e}): {}\nstderr: {stderr}",
            String::from_utf8_lossy(&demo.stdout)
        )
    });
    assert!(demo.status.success(), "{report:#}\n{stderr}");
    assert_eq!(report["ok"], true);
    assert!(stderr.contains("[3/3] tearing down"), "{stderr}");
    let pairs = report["pairs"].as_array().unwrap();
    // 6 pods, both families: cross-node pairs in IPv4 and IPv6.
    assert!(
        pairs
            .iter()
            .any(|p| p["crossNode"] == true && p["toIp"].as_str().unwrap().contains(':'))
    );
    assert!(
        pairs
            .iter()
            .all(|p| p["ping"] == true && p["tcp"] == true && p["noNat"] == true)
    );
    assert_eq!(report["pods"].as_array().unwrap().len(), 6);
    assert!(report["capture"]["encryptedPackets"].as_u64().unwrap() > 0);
    assert_eq!(report["capture"]["plaintextPackets"], 0);
    assert_eq!(report["capture"]["markerHits"], 0);
    assert!(
        lab_namespaces().is_empty(),
        "left behind: {:?}",
        lab_namespaces()
    );
    assert!(!std::path::Path::new(podguard::lab::cluster::STATE_DIR).exists());

    // And with no flags, as `scripts/demo` runs it: the table.
    let demo = podguard(&["lab", "demo"]);
    let table = String::from_utf8_lossy(&demo.stdout);
    assert!(
        demo.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    assert!(
        table.contains("0 plaintext packets") && !table.contains("FAIL"),
        "{table}"
    );
    assert!(
        lab_namespaces().is_empty(),
        "left behind: {:?}",
        lab_namespaces()
    );
}

/// `podguard lab up --kube real`: the same lab on etcd, kube-apiserver and
/// kube-controller-manager, the shipped manifests applied; podCIDRs from
/// node IPAM; `lab check`, `status`, `rotate` and kubectl work on it.
#[test]
fn lab_on_the_real_control_plane() {
    let name = "lab_on_the_real_control_plane";
    if !require_root(name) || !require_real_kube(name) {
        return;
    }
    let _guard = up_with(3, &["--kube", "real"]);
    let check = podguard(&["lab", "check", "--output", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&check.stdout)
        .unwrap_or_else(|_| panic!("check output: {}", String::from_utf8_lossy(&check.stdout)));
    assert!(check.status.success(), "{report:#}");
    assert_eq!(report["capture"]["plaintextPackets"], 0);
    assert!(report["capture"]["encryptedPackets"].as_u64().unwrap() > 0);

    // kubectl of the pinned release, with the lab's (admin) kubeconfig: the
    // Nodes have the podCIDRs the controller manager allocated.
    let kc = podguard(&["lab", "kubeconfig"]);
    assert!(kc.status.success());
    assert!(String::from_utf8_lossy(&kc.stdout).contains("https://"));
    let kubectl = podguard::lab::kube::bin_dir().join("kubectl");
    let nodes = ok(&[
        "ip",
        "netns",
        "exec",
        "pglab-ul",
        kubectl.to_str().unwrap(),
        "--kubeconfig",
        "/run/podguard-lab/kubeconfig",
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.podCIDR} {end}",
    ]);
    let cidrs: Vec<&str> = nodes.split_whitespace().collect();
    assert_eq!(cidrs.len(), 3, "{nodes}");
    for c in &cidrs {
        assert!(c.contains("=10.244."), "no podCIDR from node IPAM: {nodes}");
    }

    let status = podguard(&["status", "--lab", "--output", "json"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let rotate = podguard(&[
        "rotate",
        "--lab",
        "--node",
        "node-2",
        "--wait",
        "--timeout",
        "90s",
    ]);
    assert!(
        rotate.status.success(),
        "rotate on the real API server: {}{}",
        String::from_utf8_lossy(&rotate.stdout),
        String::from_utf8_lossy(&rotate.stderr)
    );
    let check = podguard(&["lab", "check"]);
    assert!(
        check.status.success(),
        "after the rotation: {}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// A lab left by a test run that was killed (its owner process gone) is
/// removed by the next test run; a lab whose test is alive is not, nor is
/// a lab without a record (someone's own). CI once failed on a lab a
/// killed rehearsal had left on the machine.
#[test]
fn a_killed_test_runs_lab_is_removed_by_the_next_run() {
    if !require_root("a_killed_test_runs_lab_is_removed_by_the_next_run") {
        return;
    }
    let lab_dir = std::path::Path::new(podguard::lab::cluster::STATE_DIR);
    // Under the lock (no other lab test sees the fakes).
    let _guard = common::lab::exclusive();

    // A lab nobody recorded: someone's own, refused and left alone.
    std::fs::create_dir_all(lab_dir).unwrap();
    assert!(common::lab::reclaim_or_refuse().is_err());
    assert!(lab_dir.exists(), "someone's own lab was removed");

    // A lab "made" by a test process that is still running.
    let owner = KillOnDrop(Command::new("sleep").arg("600").spawn().unwrap());
    let owner_id = common::lab::process_id(owner.0.id()).unwrap();
    std::fs::write(common::lab::owner_file(), &owner_id).unwrap();
    assert!(common::lab::reclaim_or_refuse().is_err());
    assert!(lab_dir.exists(), "a live test's lab was removed");

    // Its owner killed: the lab is in the way of nobody's work; removed.
    drop(owner);
    assert_eq!(common::lab::reclaim_or_refuse(), Ok(()));
    assert!(!lab_dir.exists(), "a dead test's lab was left in the way");
}

/// `lab up` records the test process that made it in the lab, and the
/// record goes with the lab.
#[test]
fn a_labs_owner_record_lives_and_dies_with_the_lab() {
    if !require_root("a_labs_owner_record_lives_and_dies_with_the_lab") {
        return;
    }
    let guard = up_nodes(2);
    let me = common::lab::process_id(std::process::id()).unwrap();
    assert_eq!(
        std::fs::read_to_string(common::lab::owner_file()).unwrap(),
        me
    );
    drop(guard);
    assert!(!common::lab::owner_file().exists());
}
