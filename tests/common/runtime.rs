//! Real container runtimes drive podguard-cni as installed: podman 4.3 (CNI
//! backend) and containerd 1.6 (`ctr run --cni`) from Debian, each node in
//! its own network namespace, through `tests/runtime/rt.sh`.
//!
//! Environment facts (details and the reasons in rt.sh's header):
//! - each node is a holder process in a private mount namespace that binds
//!   the node's own dirs over /etc/cni/net.d, /opt/cni/bin, /run/podguard,
//!   /var/lib/podguard, /run/wireguard, podman's and containerd's state;
//!   every command of the node runs through `nsenter` into it, so the agent,
//!   the runtime and the plugin it execs see one node, as on a real host;
//! - podman needs `network_backend = "cni"`, `cni_plugin_dirs` with only
//!   /opt/cni/bin (else Debian's /usr/lib/cni plugins stand in), `runtime =
//!   "runc"` (crun fails on the hybrid cgroup setup), `default_ulimits`
//!   (no CAP_SYS_RESOURCE here); no registry, so the busybox image is built
//!   from `busybox-static` and imported; containerd is started by hand (PID 1
//!   is not systemd), with its own root, state and socket;
//! - `ctr run -d` never calls CNI DEL; a foreground `ctr run` does when the
//!   task exits, with an empty CNI_NETNS (rt.sh ctr-run-bg / ctr-stop).
//!
//! The agent runs inside the node with `--install-cni` and its defaults, so
//! the runtimes use exactly the binary and conflist it installs.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use super::{Netns, dump_logs_on_panic, pings, require_root, wait_for, write_file};

pub const CLUSTER: &str = "10.244.0.0/16,fd00:10:244::/56";
/// The "internet": a host on the underlay outside every cluster CIDR.
pub const INTERNET: &str = "192.0.2.200";

pub fn rt_sh() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/runtime/rt.sh")
}

fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_podguard-agent")
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether the runtimes can run here (root, and `rt.sh setup` succeeded,
/// once per test binary). Under CI=true a failure panics.
pub fn require_runtimes(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    static SETUP: OnceLock<Result<(), String>> = OnceLock::new();
    let r = SETUP.get_or_init(|| {
        let o = Command::new("bash")
            .args([rt_sh(), "setup"])
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    });
    match r {
        Ok(()) => true,
        Err(e) if ci() => panic!("{test}: rt.sh setup failed under CI=true: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: {test}: rt.sh setup failed: {e}");
            false
        }
    }
}

/// One node's runtimes (holder mount namespace, containerd); `node-down`
/// on drop removes every container and process of the node.
pub struct RtNode {
    pub id: String,
    pub ns: String,
    pub info: BTreeMap<String, String>,
}

fn checked(what: &str, o: Output) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

impl RtNode {
    pub fn up(id: &str, ns: &str) -> Self {
        Self::up_with(id, ns, &[])
    }

    /// `up` with extra environment for `rt.sh node-up` (`PGRT_KUBELET=1`:
    /// containerd's CRI plugin on, for a kubelet).
    pub fn up_with(id: &str, ns: &str, env: &[(&str, &str)]) -> Self {
        let o = Command::new("bash")
            .args([rt_sh(), "node-up", id, ns])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let out = checked(&format!("rt.sh node-up {id}"), o);
        let info = out
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self {
            id: id.to_string(),
            ns: ns.to_string(),
            info,
        }
    }

    /// A node directory from `rt.sh info` (`PGRT_CNI_BIN_DIR`, ...).
    pub fn dir(&self, key: &str) -> PathBuf {
        PathBuf::from(
            self.info
                .get(key)
                .unwrap_or_else(|| panic!("rt.sh info has no {key}")),
        )
    }

    /// `args` as a command inside the node (mount + network namespace).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("bash");
        c.args([rt_sh(), "in", &self.id, "--"]).args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Run `args` in the node; panic with its output unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        checked(&args.join(" "), self.run(args))
    }

    pub fn podman(&self, args: &[&str]) -> String {
        let mut full = vec!["podman"];
        full.extend_from_slice(args);
        self.ok(&full)
    }

    pub fn ctr(&self, args: &[&str]) -> String {
        let mut full = vec!["ctr"];
        full.extend_from_slice(args);
        self.ok(&full)
    }

    pub fn image(&self) -> String {
        self.info["PGRT_IMAGE"].clone()
    }

    /// `podman run -d --network podguard` a busybox container `name`
    /// running `cmd`, with `extra` podman flags; returns its pod IP.
    pub fn podman_run(&self, name: &str, extra: &[&str], cmd: &[&str]) -> String {
        let image = self.image();
        let mut args = vec!["run", "-d", "--network", "podguard", "--name", name];
        args.extend_from_slice(extra);
        args.push(&image);
        args.extend_from_slice(cmd);
        self.podman(&args);
        self.podman_ip(name)
    }

    pub fn podman_ip(&self, name: &str) -> String {
        self.podman(&[
            "inspect",
            "-f",
            "{{(index .NetworkSettings.Networks \"podguard\").IPAddress}}",
            name,
        ])
    }

    /// Run `cmd` inside podman container `name`.
    pub fn exec(&self, name: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["podman", "exec", name];
        args.extend_from_slice(cmd);
        self.run(&args)
    }

    /// Allocation files in the node's IPAM store (/var/lib/podguard/ipam).
    pub fn allocations(&self) -> Vec<String> {
        super::cni::allocations_in(&self.dir("PGRT_VAR_LIB_PODGUARD").join("ipam"))
    }

    /// podguard's host veths in the node namespace.
    pub fn host_veths(&self) -> Vec<String> {
        super::cni::host_veths_in(&self.ns)
    }

    /// No address held and no podguard veth left on the node.
    pub fn assert_nothing_leaked(&self) {
        assert!(
            self.allocations().is_empty(),
            "leaked {:?}",
            self.allocations()
        );
        assert!(
            self.host_veths().is_empty(),
            "leaked {:?}",
            self.host_veths()
        );
    }

    /// `rt.sh ARGS...` on the host (ctr-run-bg, ctr-stop); panics on failure.
    pub fn rt(&self, args: &[&str]) {
        let o = Command::new("bash")
            .arg(rt_sh())
            .args(args)
            .output()
            .unwrap();
        checked(&format!("rt.sh {}", args.join(" ")), o);
    }
}

impl Drop for RtNode {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args([rt_sh(), "node-down", &self.id])
            .output();
    }
}

/// Nodes on one underlay, each with its runtimes and the real agent
/// (nodes file, `--install-cni`, every path at its default), plus the
/// "internet" host. Node `i` is 192.0.2.(i+1) with podCIDR 10.244.(i+1).0/24.
pub struct RtCluster {
    /// Dropped first: containers and agents go before their namespaces.
    pub nodes: Vec<RtNode>,
    pub names: Vec<String>,
    pub ul: String,
    pub inet: String,
    pub nodes_file: PathBuf,
    logs: Vec<(String, PathBuf)>,
    pub n: Netns,
}

impl RtCluster {
    pub fn up(tag: &str, count: usize) -> Self {
        let mut n = Netns::new(tag);
        let ul = n.underlay(None);
        let inet = n.underlay_node(&ul, "inet", 200);
        let mut nodes = Vec::new();
        let mut names = Vec::new();
        let mut keys = Vec::new();
        for i in 0..count {
            let name = format!("n{}", i + 1);
            let ns = n.underlay_node(&ul, &name, i as u8 + 1);
            let node = RtNode::up(&format!("{}-{name}", n.prefix), &ns);
            // hostPort needs portmap next to our plugin, as on a kubeadm
            // node (kubernetes-cni) or with containernetworking-plugins.
            std::fs::copy(
                "/usr/lib/cni/portmap",
                node.dir("PGRT_CNI_BIN_DIR").join("portmap"),
            )
            .expect("portmap from containernetworking-plugins");
            keys.push(node.ok(&[
                agent_bin(),
                "--node-name",
                &name,
                "--nodes-file",
                "/nonexistent",
                "--cluster-cidr",
                CLUSTER,
                "--print-public-key",
            ]));
            nodes.push(node);
            names.push(name);
        }
        let nodes_file = n.path("nodes.json");
        let list: Vec<serde_json::Value> = (0..count)
            .map(|i| {
                serde_json::json!({
                    "name": names[i],
                    "podCIDRs": [format!("10.244.{}.0/24", i + 1), format!("fd00:10:244:{}::/64", i + 1)],
                    "endpoint": format!("192.0.2.{}:51820", i + 1),
                    "publicKey": keys[i],
                })
            })
            .collect();
        write_file(&nodes_file, &serde_json::to_string_pretty(&list).unwrap());
        let mut c = Self {
            nodes,
            names,
            ul,
            inet,
            nodes_file,
            logs: Vec::new(),
            n,
        };
        for i in 0..count {
            c.start_agent(i);
        }
        for i in 0..count {
            let conf = c.nodes[i]
                .dir("PGRT_CNI_CONF_DIR")
                .join("10-podguard.conflist");
            let state = c.nodes[i].dir("PGRT_RUN_PODGUARD").join("node.json");
            wait_for(
                "the agent to install the CNI plugin and set up the node",
                Duration::from_secs(30),
                || conf.exists() && state.exists(),
            );
        }
        for i in 1..count {
            let (from, to) = (c.nodes[0].ns.clone(), format!("10.244.{}.1", i + 1));
            wait_for(
                &format!("node 1 to reach {to} through the mesh"),
                Duration::from_secs(30),
                || pings(&from, &to),
            );
        }
        c
    }

    fn start_agent(&mut self, i: usize) {
        let log = self.n.path(&format!("agent-{}.log", self.names[i]));
        let nodes_file = self.nodes_file.display().to_string();
        let mut cmd = self.nodes[i].cmd(&[
            agent_bin(),
            "--node-name",
            &self.names[i],
            "--nodes-file",
            &nodes_file,
            "--cluster-cidr",
            CLUSTER,
            "--install-cni",
            "--resync",
            "1s",
        ]);
        self.n.spawn_logged(&format!("agent-{i}"), &mut cmd, &log);
        self.logs.push((format!("agent {}", self.names[i]), log));
    }

    /// Node `i`'s underlay address.
    pub fn node_ip(&self, i: usize) -> String {
        format!("192.0.2.{}", i + 1)
    }
}

impl Drop for RtCluster {
    fn drop(&mut self) {
        dump_logs_on_panic(self.logs.iter().map(|(l, p)| (l.as_str(), p.as_path())));
    }
}
