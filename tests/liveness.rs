//! A dead agent is visible cluster-wide: each agent renews a heartbeat
//! Lease (`podguard-<node>` in namespace podguard) while its data plane
//! reconciles; `podguard status` and `podguard audit` name a node whose
//! Lease expired and exit 1, and go green again once it is back. Runs on
//! the lab (real agents, the lab API server), with 4 s Leases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::lab::{exclusive, podguard};
use common::*;
use serde_json::Value;

const LEASE: &str = "4s";

fn json_of(args: &[&str]) -> (i32, Value) {
    let o = podguard(args);
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code().unwrap_or(-1), v)
}

fn status() -> (i32, Value) {
    json_of(&["status", "--lab", "--output", "json"])
}

fn audit() -> (i32, Value) {
    json_of(&["audit", "--lab", "--output", "json"])
}

fn row<'a>(v: &'a Value, node: &str) -> &'a Value {
    v.as_array()
        .and_then(|a| a.iter().find(|r| r["node"] == node))
        .unwrap_or(&Value::Null)
}

/// The pid of the agent in lab node namespace `ns`.
fn agent_pid(ns: &str) -> String {
    ok(&["ip", "netns", "pids", ns])
        .split_whitespace()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "podguard-agent")
        })
        .expect("an agent in the node namespace")
        .to_string()
}

#[test]
fn a_dead_agent_is_named_by_status_and_audit_until_it_is_back() {
    if !require_root("a_dead_agent_is_named_by_status_and_audit_until_it_is_back") {
        return;
    }
    let _guard = exclusive();
    let up = Command::new(env!("CARGO_BIN_EXE_podguard"))
        .args([
            "lab",
            "up",
            "--nodes",
            "3",
            "--pods-per-node",
            "1",
            "--ipv4-only",
        ])
        .env("PODGUARD_LEASE_DURATION", LEASE)
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "lab up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    wait_for(
        "every node agrees and is alive",
        Duration::from_secs(30),
        || status().0 == 0,
    );
    let (code, r) = audit();
    assert_eq!(code, 0, "{r:#}");

    // node-3's agent dies (kill -9): its Lease runs out.
    let pid = agent_pid("pglab-n3");
    let cmdline: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let environ = std::fs::read_to_string(format!("/proc/{pid}/environ")).unwrap();
    ok(&["kill", "-9", &pid]);
    wait_for(
        "status to report node-3's agent down",
        Duration::from_secs(15),
        || {
            let (code, v) = status();
            code == 1 && row(&v, "node-3")["digest"] == "agentDown"
        },
    );
    let (_, v) = status();
    assert_eq!(row(&v, "node-1")["digest"], "agrees", "{v:#}");
    let table = String::from_utf8_lossy(&podguard(&["status", "--lab"]).stdout).into_owned();
    assert!(table.contains("AGENT DOWN"), "{table}");
    let (code, r) = audit();
    assert_eq!(code, 1, "{r:#}");
    assert!(
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["subject"] == "node node-3"
                && f["message"]
                    .as_str()
                    .unwrap()
                    .contains("agent is not alive")),
        "{r:#}"
    );
    assert!(
        r["pods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["transport"] == "agentDown"),
        "{r:#}"
    );

    // The agent comes back (as the DaemonSet would restart it): green again.
    let wg_dir = std::path::Path::new("/run/podguard-lab/node-3/wg");
    let args: Vec<&str> = cmdline.iter().map(String::as_str).collect();
    let mut cmd = podguard::lab::sys::node_command("pglab-n3", wg_dir, &args);
    for kv in environ.split('\0').filter_map(|e| e.split_once('=')) {
        cmd.env(kv.0, kv.1);
    }
    let log = std::fs::File::options()
        .append(true)
        .create(true)
        .open("/run/podguard-lab/node-3/agent.log")
        .unwrap();
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for("node-3 alive again", Duration::from_secs(30), || {
        status().0 == 0
    });
    assert_eq!(audit().0, 0);
    let _ = child.kill();
    let _ = child.wait();
}
