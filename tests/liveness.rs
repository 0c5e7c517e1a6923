//! A dead agent is visible cluster-wide: each agent renews a heartbeat
//! Lease (`podguard-<node>` in namespace podguard) while its data plane
//! reconciles; `podguard status` and `podguard audit` name a node whose
//! Lease expired and exit 1, and go green again once it is back. Runs on
//! the lab (real agents, the lab API server), with 4 s Leases.
//!
//! Its peers see it too, from the datapath: traffic to node-3 goes
//! unanswered, so node-1 reports node-3 under PEERS in `podguard status`
//! (`podguard.dev/peer-health`) and on /metrics (`podguard_peer_problem`)
//! once its handshake attempts have gone unanswered for
//! `PODGUARD_PEER_STALE_AFTER` (5 s here; 90 s, REKEY_ATTEMPT_TIME, by
//! default), and stops once node-3 answers again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::lab::{LabAgent, exclusive, podguard};
use common::*;
use serde_json::Value;

const LEASE: &str = "4s";
const PEER_STALE_AFTER: &str = "5s";

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

/// The `podguard_peer_problem` samples of a metrics page.
fn problem_lines(m: &str) -> impl Iterator<Item = &str> {
    m.lines()
        .filter(|l| l.starts_with("podguard_peer_problem{"))
}

#[test]
fn a_dead_agent_is_named_by_status_and_audit_until_it_is_back() {
    if !require_root("a_dead_agent_is_named_by_status_and_audit_until_it_is_back") {
        return;
    }
    let _guard = exclusive();
    let up = common::lab::podguard_command()
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
        .env("PODGUARD_PEER_STALE_AFTER", PEER_STALE_AFTER)
        // No keepalive: no pair holds a session until its pods talk, so
        // node-3's death shows once the pinger's initiations go unanswered
        // for PEER_STALE_AFTER, not once a session expires (180 s after
        // the last handshake, which a keepalive renews for every pair).
        .env("PODGUARD_KEEPALIVE", "0")
        // A rotation waits this long for a dead peer to take the next key,
        // then to drop the old one (60 s and 3 m by default).
        .env("PODGUARD_ROTATION_STAGE_TIMEOUT", "3s")
        .env("PODGUARD_ROTATION_RETIRE_TIMEOUT", "5s")
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
    let (_, v) = status();
    for n in ["node-1", "node-2", "node-3"] {
        assert_eq!(row(&v, n)["peerProblems"], serde_json::json!({}), "{v:#}");
    }
    // Both of node-1's peers judged (sampled every 5 s), neither a problem.
    wait_for(
        "node-1's peers on /metrics",
        Duration::from_secs(15),
        || {
            let m = podguard::lab::cluster::metrics("pglab-n1").unwrap_or_default();
            let lines: Vec<&str> = problem_lines(&m).collect();
            lines.len() == 4
                && ["node-2", "node-3"].iter().all(|n| {
                    lines
                        .iter()
                        .any(|l| l.contains(&format!("peer_node=\"{n}\"")))
                })
        },
    );
    let m = podguard::lab::cluster::metrics("pglab-n1").unwrap_or_default();
    assert!(
        problem_lines(&m).all(|l| l.ends_with(" 0")),
        "healthy peers: {m}"
    );
    let lab = podguard::lab::cluster::load().unwrap();
    let ip_of = |node: &str| {
        lab.pods
            .iter()
            .find(|p| p.node == node)
            .map(|p| (p.netns.clone(), p.ips[0].clone()))
            .unwrap()
    };
    let (pod1, _) = ip_of("node-1");
    let (_, ip3) = ip_of("node-3");

    // node-3's agent dies (kill -9): its Lease runs out.
    let agent3 = LabAgent::kill9(3);
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
    // A rotation of it would only wait for the dead agent: refused up
    // front (exit 2, the reason named), nothing requested.
    let refused = podguard(&["rotate", "--lab", "--node", "node-3"]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("\"node-3\"'s agent is not alive") && err.contains("last heartbeat"),
        "{err}"
    );
    let (_, v) = status();
    assert_eq!(row(&v, "node-3")["rotationRequested"], false, "{v:#}");
    // The agents' namespace is where the Leases are read: asked about
    // another one (a flag, or the environment), status finds no Leases,
    // says so and where, and judges no agent.
    let elsewhere = |o: std::process::Output| {
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            err.contains("no heartbeat Leases in namespace elsewhere")
                && err.contains("--agent-namespace"),
            "{err}"
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_ne!(row(&v, "node-3")["digest"], "agentDown", "{v:#}");
    };
    elsewhere(podguard(&[
        "status",
        "--lab",
        "--output",
        "json",
        "--agent-namespace",
        "elsewhere",
    ]));
    elsewhere(
        common::lab::podguard_command()
            .args(["status", "--lab", "--output", "json"])
            .env("PODGUARD_NAMESPACE", "elsewhere")
            .output()
            .unwrap(),
    );
    // audit says it on stderr too, and carries it in its JSON report for
    // whatever reads that instead.
    let o = podguard(&[
        "audit",
        "--lab",
        "--output",
        "json",
        "--agent-namespace",
        "elsewhere",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no heartbeat Leases in namespace elsewhere"),
        "{err}"
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("no heartbeat Leases in namespace elsewhere")),
        "{v:#}"
    );
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

    // node-1 keeps sending to node-3's pod: nothing answers (the device
    // died with the agent), its handshake attempts go unanswered, and
    // node-1 says so. node-2 sends nothing there, so has nothing to say.
    let _pinger = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &pod1, "ping", "-q", "-i", "0.2", &ip3])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(
        "node-1 to report node-3 without a handshake",
        Duration::from_secs(60),
        || {
            let (code, v) = status();
            code == 1
                && row(&v, "node-1")["peerProblems"]["noHandshake"] == serde_json::json!(["node-3"])
        },
    );
    let (_, v) = status();
    assert_eq!(
        row(&v, "node-2")["peerProblems"],
        serde_json::json!({}),
        "{v:#}"
    );
    let table = String::from_utf8_lossy(&podguard(&["status", "--lab"]).stdout).into_owned();
    assert!(table.contains("NO HANDSHAKE: node-3"), "{table}");
    let m = podguard::lab::cluster::metrics("pglab-n1").unwrap_or_default();
    let firing: Vec<&str> = problem_lines(&m).filter(|l| l.ends_with(" 1")).collect();
    assert!(
        firing.len() == 1
            && firing[0].contains("peer_node=\"node-3\"")
            && firing[0].contains("problem=\"no_handshake\""),
        "{firing:?}"
    );
    assert!(
        m.lines().any(
            |l| l.starts_with("podguard_peer_seconds_without_handshake{")
                && l.contains("peer_node=\"node-3\"")
        ),
        "{m}"
    );

    // Leases read from the wrong namespace judge no agent: a request for
    // node-3 goes out, and no agent will take it on. It blocks every
    // later rotation of node-3, which says how to withdraw it; --cancel
    // does, and a second --cancel finds nothing pending.
    let rotate_elsewhere = || {
        podguard(&[
            "rotate",
            "--lab",
            "--node",
            "node-3",
            "--agent-namespace",
            "elsewhere",
        ])
    };
    let o = rotate_elsewhere();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(row(&status().1, "node-3")["rotationRequested"], true);
    let o = rotate_elsewhere();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("podguard rotate --cancel --node node-3"),
        "{o:?}"
    );
    let o = podguard(&[
        "rotate", "--lab", "--cancel", "--node", "node-3", "-o", "json",
    ]);
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["result"], "withdrawn", "{v:#}");
    assert_eq!(row(&status().1, "node-3")["rotationRequested"], false);
    let o = podguard(&["rotate", "--lab", "--cancel", "--node", "node-3"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("has no pending rotation request"),
        "{o:?}"
    );

    // `rotate --all` with node-3 down: node-1 and node-2 rotate, and
    // neither waits for node-3 to take its new key (it could only time
    // out); node-3 is skipped, named, and the exit code says not all
    // finished.
    let keys_before: Vec<Value> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|n| row(&status().1, n)["key"].clone())
        .collect();
    let o = podguard(&[
        "rotate",
        "--lab",
        "--all",
        "--timeout",
        "60s",
        "--output",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let result = |node: &str| -> &Value {
        r.as_array()
            .unwrap()
            .iter()
            .find(|x| x["node"] == node)
            .unwrap_or_else(|| panic!("{node} in {r:#}"))
    };
    for n in ["node-1", "node-2"] {
        assert_eq!(result(n)["result"], "done", "{r:#}");
        assert_eq!(
            result(n)["agentsDown"],
            serde_json::json!(["node-3"]),
            "{r:#}"
        );
    }
    assert_eq!(result("node-3")["result"], "skipped: agent down", "{r:#}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("node-3: skipped") && err.contains("not waited for node-3"),
        "{err}"
    );
    let (_, v) = status();
    for (i, n) in ["node-1", "node-2", "node-3"].iter().enumerate() {
        assert_eq!(
            row(&v, n)["key"] == keys_before[i],
            *n == "node-3",
            "{n}: {v:#}"
        );
    }

    // The agent comes back (as the DaemonSet would restart it): green again.
    let child = agent3.restart();
    // Green again: alive, it applied both new keys (every digest agrees),
    // and node-1's handshake with node-3 answered.
    wait_for("node-3 alive again", Duration::from_secs(60), || {
        status().0 == 0
    });
    assert_eq!(audit().0, 0);
    // Its peers say so on /metrics too.
    wait_for(
        "node-1's problem metrics to clear",
        Duration::from_secs(15),
        || {
            let m = podguard::lab::cluster::metrics("pglab-n1").unwrap_or_default();
            let lines: Vec<&str> = problem_lines(&m).collect();
            lines.len() == 4 && lines.iter().all(|l| l.ends_with(" 0"))
        },
    );
    drop(child);
}
