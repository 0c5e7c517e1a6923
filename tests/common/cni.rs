//! Drives `podguard-cni` exactly as a runtime does: environment + stdin,
//! reading stdout and the exit code, inside a node namespace.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use super::{Netns, ok};

pub fn cni_bin() -> &'static str {
    env!("CARGO_BIN_EXE_podguard-cni")
}

/// Start the plugin in node namespace `node` as a runtime does: only
/// `env` (and PATH) in its environment, `stdin` written and closed; its
/// stdout and stderr are piped.
pub fn spawn_in(node: &str, env: &[(&str, &str)], stdin: &str) -> Child {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", node, cni_bin()])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child
}

/// Run the plugin in node namespace `node` to completion.
pub fn call_in(node: &str, env: &[(&str, &str)], stdin: &str) -> Out {
    let o = spawn_in(node, env, stdin).wait_with_output().unwrap();
    let raw = String::from_utf8_lossy(&o.stdout).to_string();
    Out {
        code: o.status.code().unwrap_or(-1),
        json: serde_json::from_str(raw.trim()).unwrap_or(Value::Null),
        raw,
    }
}

/// The environment of an ADD/DEL/CHECK for container `cid` in namespace
/// `netns` (none when empty).
pub fn env_for(command: &str, cid: &str, netns: &str) -> Vec<(&'static str, String)> {
    let nspath = if netns.is_empty() {
        String::new()
    } else {
        format!("/run/netns/{netns}")
    };
    vec![
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", cid.to_string()),
        ("CNI_NETNS", nspath),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", "/opt/cni/bin".to_string()),
    ]
}

/// Borrowed view of [`env_for`]'s pairs.
pub fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A node namespace with `cbr0` and a node state file, but no agent.
pub struct CniNode {
    pub n: Netns,
    pub node: String,
    pub state_file: PathBuf,
    pub data_dir: PathBuf,
}

pub struct Out {
    pub code: i32,
    pub json: Value,
    pub raw: String,
}

impl CniNode {
    pub fn new(tag: &str, pod_cidrs: &[&str]) -> Self {
        let mut n = Netns::new(tag);
        let node = n.add("node");
        // A fixed MAC, as the agent gives cbr0 (a bridge without one follows
        // its ports and pods' ARP entries for the gateway go stale).
        ok(&[
            "ip",
            "-n",
            &node,
            "link",
            "add",
            "cbr0",
            "address",
            "02:00:00:00:00:01",
            "type",
            "bridge",
        ]);
        ok(&["ip", "-n", &node, "link", "set", "cbr0", "up"]);
        let mut gateways = Vec::new();
        for c in pod_cidrs {
            let net: ipnet::IpNet = c.parse().unwrap();
            let gw = mesh::ipam::gateway(&net).unwrap();
            let mut args = vec!["ip", "-n", &node, "addr", "add"];
            let a = format!("{gw}/{}", net.prefix_len());
            args.push(&a);
            args.extend(["dev", "cbr0"]);
            if gw.is_ipv6() {
                args.push("nodad");
            }
            ok(&args);
            gateways.push(gw.to_string());
        }
        let state_file = n.path("node.json");
        let data_dir = n.path("ipam");
        std::fs::write(
            &state_file,
            json!({"nodeName": "n", "bridge": "cbr0", "mtu": 1440, "podCIDRs": pod_cidrs, "gateways": gateways}).to_string(),
        )
        .unwrap();
        Self {
            n,
            node,
            state_file,
            data_dir,
        }
    }

    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "podguard",
            "type": "podguard-cni",
            "nodeStateFile": self.state_file,
            "dataDir": self.data_dir,
        })
    }

    /// Run the plugin with `env` and `stdin`.
    pub fn call(&self, env: &[(&str, &str)], stdin: &str) -> Out {
        call_in(&self.node, env, stdin)
    }

    pub fn cmd(&self, command: &str, cid: &str, netns: &str, version: &str) -> Out {
        self.cmd_with(command, cid, netns, &self.conf(version))
    }

    pub fn cmd_with(&self, command: &str, cid: &str, netns: &str, conf: &Value) -> Out {
        let env = env_for(command, cid, netns);
        self.call(&env_refs(&env), &conf.to_string())
    }

    /// Allocation files in the store.
    pub fn allocations(&self) -> Vec<String> {
        allocations_in(&self.data_dir)
    }

    /// podguard host veths in the node namespace.
    pub fn host_veths(&self) -> Vec<String> {
        host_veths_in(&self.node)
    }
}

/// Allocation files (addresses) in an IPAM store directory, sorted.
pub fn allocations_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    v.sort();
    v
}

/// podguard host veths (`pgv*`) in namespace `ns`.
pub fn host_veths_in(ns: &str) -> Vec<String> {
    ok(&["ip", "-n", ns, "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|s| s.split('@').next().unwrap_or(s).to_string())
        .filter(|n| n.starts_with("pgv"))
        .collect()
}
