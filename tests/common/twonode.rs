//! A two-node cluster in network namespaces: an underlay namespace with a
//! bridge, two node namespaces each running the real `podguard-agent`
//! from a nodes file, and one pod namespace per node on `cbr0`.
//!
//! Pods are attached by hand with `ip`, so the datapath tests do not
//! depend on the CNI plugin (tests/cni.rs and the KubeLab tests use it).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use super::{Netns, dump_logs_on_panic, ok, run, wait_for, write_file};

pub const CLUSTER: &str = "10.244.0.0/16,fd00:10:244::/56";

pub struct Node {
    pub name: String,
    pub idx: u8,
    pub ns: String,
    pub pod_ns: String,
    pub underlay_ip: String,
    pub key_file: PathBuf,
    pub wg_dir: PathBuf,
    pub state_file: PathBuf,
    pub log: PathBuf,
    pub public_key: String,
}

impl Node {
    pub fn pod_ip4(&self) -> String {
        format!("10.244.{}.2", self.idx)
    }
    pub fn pod_ip6(&self) -> String {
        format!("fd00:10:244:{}::2", self.idx)
    }
}

pub struct TwoNode {
    pub n: Netns,
    pub ul: String,
    pub nodes: Vec<Node>,
    pub nodes_file: PathBuf,
}

fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_podguard-agent")
}

impl TwoNode {
    /// Build the topology, start both agents, attach the pods, and wait
    /// until pod A reaches pod B.
    pub fn up(tag: &str) -> Self {
        Self::up_with(tag, [&[], &[]])
    }

    /// As [`TwoNode::up`], starting node `i`'s agent with `extra[i]`.
    pub fn up_with(tag: &str, extra: [&[&str]; 2]) -> Self {
        Self::up_on(tag, [1500, 1500], extra, |_, _| {})
    }

    /// As [`TwoNode::up_with`], with node `i`'s underlay link (both ends of
    /// its veth) at MTU `underlay_mtu[i]` and the nodes file edited by
    /// `edit` before the agents start.
    pub fn up_on(
        tag: &str,
        underlay_mtu: [u32; 2],
        extra: [&[&str]; 2],
        edit: impl Fn(usize, &mut serde_json::Value),
    ) -> Self {
        std::fs::create_dir_all("/run/wireguard").unwrap();
        let mut n = Netns::new(tag);
        let ul = n.underlay(None);
        let mut nodes = Vec::new();
        for (i, name) in ["a", "b"].iter().enumerate() {
            let idx = i as u8 + 1;
            let ns = n.underlay_node(&ul, name, idx);
            let mtu = underlay_mtu[i].to_string();
            ok(&["ip", "-n", &ns, "link", "set", "eth0", "mtu", &mtu]);
            ok(&[
                "ip",
                "-n",
                &ul,
                "link",
                "set",
                &format!("ul-{name}"),
                "mtu",
                &mtu,
            ]);
            let pod_ns = n.add(&format!("p{name}"));
            let underlay_ip = format!("192.0.2.{idx}");
            let dir = n.path(name);
            std::fs::create_dir_all(dir.join("wg")).unwrap();
            let key_file = dir.join("private.key");
            let public_key = ok(&[
                agent_bin(),
                "--node-name",
                name,
                "--nodes-file",
                "/nonexistent",
                "--cluster-cidr",
                CLUSTER,
                "--key-file",
                key_file.to_str().unwrap(),
                "--print-public-key",
            ])
            .trim()
            .to_string();
            nodes.push(Node {
                name: name.to_string(),
                idx,
                ns,
                pod_ns,
                underlay_ip,
                key_file,
                wg_dir: dir.join("wg"),
                state_file: dir.join("node.json"),
                log: dir.join("agent.log"),
                public_key,
            });
        }
        let nodes_file = n.path("nodes.json");
        let mut c = Self {
            n,
            ul,
            nodes,
            nodes_file,
        };
        c.write_nodes(edit);
        c.start_agent_with(0, extra[0]);
        c.start_agent_with(1, extra[1]);
        for i in 0..2 {
            let ns = c.nodes[i].ns.clone();
            let state = c.nodes[i].state_file.clone();
            wait_for("cbr0 and the node state", Duration::from_secs(60), || {
                run(&["ip", "-n", &ns, "link", "show", "cbr0"])
                    .status
                    .success()
                    && state.exists()
            });
            c.attach_pod(i);
        }
        let (pa, b4) = (c.nodes[0].pod_ns.clone(), c.nodes[1].pod_ip4());
        // Generous: under QEMU's emulation a lost first handshake costs
        // WireGuard's 5 s retry, and a loaded host slows every step.
        wait_for("pod A to reach pod B", Duration::from_secs(45), || {
            super::pings(&pa, &b4)
        });
        c
    }

    /// Node `i`'s state file (`node.json`) as the agent wrote it.
    pub fn state(&self, i: usize) -> serde_json::Value {
        let bytes = std::fs::read(&self.nodes[i].state_file).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// The MTU of `ifname` in node `i`'s namespace.
    pub fn link_mtu(&self, i: usize, ifname: &str) -> u32 {
        let path = format!("/sys/class/net/{ifname}/mtu");
        let o = run(&["ip", "netns", "exec", &self.nodes[i].ns, "cat", &path]);
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Attach node `i`'s pod with the MTU its agent chose, as the CNI
    /// plugin does.
    fn attach_pod(&self, i: usize) {
        let node = &self.nodes[i];
        let (ns, pns, idx) = (&node.ns, &node.pod_ns, node.idx);
        let mtu = self.state(i)["mtu"].as_u64().unwrap().to_string();
        ok(&[
            "ip", "-n", ns, "link", "add", "vpod", "mtu", &mtu, "type", "veth", "peer", "name",
            "eth0", "mtu", &mtu, "netns", pns,
        ]);
        ok(&[
            "ip", "-n", ns, "link", "set", "vpod", "master", "cbr0", "up",
        ]);
        ok(&["ip", "-n", pns, "link", "set", "eth0", "up"]);
        ok(&[
            "ip",
            "-n",
            pns,
            "addr",
            "add",
            &format!("{}/24", node.pod_ip4()),
            "dev",
            "eth0",
        ]);
        ok(&[
            "ip",
            "-n",
            pns,
            "addr",
            "add",
            &format!("{}/64", node.pod_ip6()),
            "dev",
            "eth0",
            "nodad",
        ]);
        ok(&[
            "ip",
            "-n",
            pns,
            "route",
            "add",
            "default",
            "via",
            &format!("10.244.{idx}.1"),
        ]);
        ok(&[
            "ip",
            "-n",
            pns,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd00:10:244:{idx}::1"),
        ]);
    }

    /// Write the nodes file; `edit` may change each node's JSON object.
    pub fn write_nodes(&self, edit: impl Fn(usize, &mut serde_json::Value)) {
        let list: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut v = serde_json::json!({
                    "name": n.name,
                    "podCIDRs": [format!("10.244.{}.0/24", n.idx), format!("fd00:10:244:{}::/64", n.idx)],
                    "endpoint": format!("{}:51820", n.underlay_ip),
                    "publicKey": n.public_key,
                });
                edit(i, &mut v);
                v
            })
            .collect();
        write_file(
            &self.nodes_file,
            &serde_json::to_string_pretty(&list).unwrap(),
        );
    }

    /// Run a command inside node `i`'s namespace with its own
    /// /run/wireguard (so `wg` finds that node's UAPI socket).
    pub fn node_cmd(&self, i: usize, args: &[&str]) -> Command {
        super::node_command(&self.nodes[i].ns, &self.nodes[i].wg_dir, args)
    }

    pub fn wg(&self, i: usize, args: &[&str]) -> Output {
        let mut full = vec!["wg"];
        full.extend_from_slice(args);
        self.node_cmd(i, &full).output().unwrap()
    }

    /// The endpoint node `i` has for the peer with `peer_key` ("" if none).
    pub fn endpoint(&self, i: usize, peer_key: &str) -> String {
        let o = self.wg(i, &["show", "podguard0", "endpoints"]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.starts_with(peer_key))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("")
            .to_string()
    }

    pub fn start_agent(&mut self, i: usize) {
        self.start_agent_with(i, &[]);
    }

    /// Start node `i`'s agent with `extra` arguments.
    pub fn start_agent_with(&mut self, i: usize, extra: &[&str]) {
        let node = &self.nodes[i];
        let mut args = vec![
            agent_bin(),
            "--node-name",
            &node.name,
            "--nodes-file",
            self.nodes_file.to_str().unwrap(),
            "--cluster-cidr",
            CLUSTER,
            "--key-file",
            node.key_file.to_str().unwrap(),
            "--state-file",
            node.state_file.to_str().unwrap(),
        ];
        if !extra.contains(&"--resync") {
            args.extend(["--resync", "1s"]);
        }
        args.extend_from_slice(extra);
        let mut cmd = self.node_cmd(i, &args);
        let (label, log) = (format!("agent-{}", node.name), node.log.clone());
        self.n.spawn_logged(&label, &mut cmd, &log);
    }

    /// The kind of node `i`'s `podguard0` (`wireguard`, `tun`), "" if none.
    pub fn link_kind(&self, i: usize) -> String {
        let o = run(&[
            "ip",
            "-n",
            &self.nodes[i].ns,
            "-d",
            "link",
            "show",
            "podguard0",
        ]);
        let text = String::from_utf8_lossy(&o.stdout);
        ["wireguard", "tun"]
            .iter()
            .find(|k| text.lines().any(|l| l.trim_start().starts_with(*k)))
            .map(|k| k.to_string())
            .unwrap_or_default()
    }

    /// kill -9 node `i`'s agent (the process that owns its device).
    pub fn kill_agent(&mut self, i: usize) {
        let label = format!("agent-{}", self.nodes[i].name);
        self.n.kill(&label);
    }

    /// Send `sig` to node `i`'s agent (SIGSTOP: alive, but doing nothing).
    pub fn signal_agent(&self, i: usize, sig: nix::sys::signal::Signal) {
        self.n.signal(&format!("agent-{}", self.nodes[i].name), sig);
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }
}

impl Drop for TwoNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What each device and routing table held when the test gave
            // up (`wg show` hides private keys): was a handshake tried?
            for (i, node) in self.nodes.iter().enumerate() {
                let Ok(wg) = self.node_cmd(i, &["timeout", "5", "wg", "show"]).output() else {
                    continue;
                };
                let routes: String = ["-4", "-6"]
                    .iter()
                    .map(|f| run(&["ip", f, "-n", &node.ns, "route"]).stdout)
                    .map(|o| String::from_utf8_lossy(&o).into_owned())
                    .collect();
                eprintln!(
                    "---- {} wg show ----\n{}{}\n---- {} routes ----\n{}",
                    node.name,
                    String::from_utf8_lossy(&wg.stdout),
                    String::from_utf8_lossy(&wg.stderr),
                    node.name,
                    routes
                );
            }
        }
        dump_logs_on_panic(
            self.nodes
                .iter()
                .map(|n| (n.name.as_str(), n.log.as_path())),
        );
    }
}
