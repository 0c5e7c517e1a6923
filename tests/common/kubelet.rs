//! A cluster of real kubelets: the real control plane (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler) in the underlay
//! namespace, and per node a network namespace with containerd's CRI plugin
//! (`rt.sh node-up` with `PGRT_KUBELET=1`), kubelet and kube-proxy of the
//! pinned release. The shipped manifests (deploy/) are applied as they are
//! and the image deploy/image.sh builds is imported into each node's
//! containerd, so the DaemonSet runs exactly as it would on a cluster:
//! scheduled, started by kubelet through CRI, its ServiceAccount token
//! projected, the API reached through the `kubernetes` Service.
//!
//! What differs from a production node, and why:
//! - kubelet runs with `cgroupsPerQOS: false` and `cgroupRoot: /pgrt-ID`
//!   (no systemd here; one kubelet per node on one host; node-down removes
//!   the cgroups), `failCgroupV1: false` (these hosts have cgroup v1);
//! - containerd: `restrict_oom_score_adj` (kubelet asks for negative OOM
//!   scores, which need CAP_SYS_RESOURCE, which root lacks on these
//!   machines) and `disable_apparmor` (loading its profile would change
//!   the host);
//! - the host-wide kernel settings kubelet wants are bound into the node's
//!   mount namespace (rt.sh), so it never changes the host's;
//! - `loopback` and `portmap` come from Debian's containernetworking-plugins
//!   in the node's /opt/cni/bin, as kubeadm's kubernetes-cni puts them there.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use podguard::lab::kube::ControlPlane;
use serde_json::Value;

use super::runtime::RtNode;
use config::{kubelet_config, proxy_config_text};

mod config;
use super::{Netns, dump_logs_on_panic, wait_for};

/// The shipped DaemonSet's cluster CIDR (PODGUARD_CLUSTER_CIDRS).
pub const CLUSTER: &str = "10.244.0.0/16";
/// The API server on the underlay.
pub const API_IP: &str = "192.0.2.100";

/// The image deploy/image.sh builds from this build's binaries, once per
/// test binary, into a fixed directory each run overwrites: the OCI archive
/// to import.
fn image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubelet-image");
        // No archive of an earlier version may be picked up.
        let _ = std::fs::remove_dir_all(&out);
        let bin = Path::new(env!("CARGO_BIN_EXE_podguard-agent"))
            .parent()
            .unwrap()
            .to_path_buf();
        let o = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/image.sh"))
            .arg(&out)
            .env("BIN_DIR", bin)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "deploy/image.sh: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".oci.tar"))
            .expect("deploy/image.sh wrote no .oci.tar")
    })
}

pub struct KubeletNode {
    pub name: String,
    pub ip: String,
    pub rt: RtNode,
    pub kubelet_log: PathBuf,
    pub proxy_log: PathBuf,
}

pub struct KubeletCluster {
    /// Dropped first: every container, kubelet and kube-proxy goes with its
    /// node (rt.sh node-down), before the namespaces.
    pub nodes: Vec<KubeletNode>,
    pub cp: ControlPlane,
    pub ul: String,
    pub n: Netns,
}

impl KubeletCluster {
    /// The control plane, `count` nodes (192.0.2.1, .2, ...) each running
    /// kubelet and kube-proxy, and the shipped manifests applied. Returns
    /// once every Node is Ready and the DaemonSet's Pods are ready.
    pub fn up(tag: &str, count: usize) -> Self {
        let c = Self::start(tag, count, CLUSTER);
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        c.cp.apply_kustomization(&deploy)
            .unwrap_or_else(|e| panic!("{e:#}"));
        c.wait_ready("podguard");
        c
    }

    /// The control plane (pod network `cluster_cidrs`) and `count` nodes
    /// running kubelet and kube-proxy; nothing installed yet.
    pub fn start(tag: &str, count: usize, cluster_cidrs: &str) -> Self {
        let mut n = Netns::new(tag);
        let ul = n.underlay(Some(&format!("{API_IP}/24")));
        let mut cp = ControlPlane::start(&ul, &n.path("kube"), API_IP, cluster_cidrs)
            .unwrap_or_else(|e| panic!("starting the real control plane: {e:#}"));
        cp.run_workloads()
            .unwrap_or_else(|e| panic!("starting kube-scheduler: {e:#}"));
        let proxy_kc = cp
            .cert_kubeconfig("kube-proxy", "system:kube-proxy", None)
            .unwrap();
        let mut c = Self {
            nodes: Vec::new(),
            cp,
            ul,
            n,
        };
        for i in 0..count {
            c.add_node(
                &format!("n{}", i + 1),
                i as u8 + 1,
                &proxy_kc,
                cluster_cidrs,
            );
        }
        c
    }

    /// Every Node Ready and the agent DaemonSet (in `namespace`) ready on
    /// each.
    pub fn wait_ready(&self, namespace: &str) {
        for node in &self.nodes {
            let name = node.name.clone();
            wait_for(
                &format!("Node {name} Ready"),
                Duration::from_secs(120),
                || self.node_ready(&name),
            );
        }
        wait_for(
            "the podguard-agent DaemonSet's Pods ready on every node",
            Duration::from_secs(120),
            || {
                let ds = self.get(&["-n", namespace, "daemonset", "podguard-agent"]);
                ds["status"]["numberReady"].as_u64() == Some(self.nodes.len() as u64)
            },
        );
    }

    /// `helm install podguard deploy/chart` into `namespace` with `--set`
    /// `values`, as the cluster admin (helm of tests/kube/kube.sh).
    pub fn helm_install(&self, namespace: &str, values: &[&str]) -> String {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ul, "timeout", "300"])
            .arg(podguard::lab::kube::bin_dir().join("helm"))
            .arg("--kubeconfig")
            .arg(self.cp.admin_kubeconfig())
            .args(["install", "podguard"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/chart"))
            .args(["--namespace", namespace, "--create-namespace"]);
        for v in values {
            cmd.args(["--set", v]);
        }
        // helm's caches and config stay out of the caller's home, and
        // nothing of the caller's helm setup applies.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HELM_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HELM_CACHE_HOME", self.n.path("helm/cache"))
            .env("HELM_CONFIG_HOME", self.n.path("helm/config"))
            .env("HELM_DATA_HOME", self.n.path("helm/data"))
            .env("KUBECACHEDIR", self.n.path("kube-cache"));
        super::stdout_of_success("helm install", cmd.output().unwrap())
    }

    fn add_node(&mut self, name: &str, idx: u8, proxy_kc: &Path, cluster_cidrs: &str) {
        let ns = self.n.underlay_node(&self.ul, name, idx);
        let ip = format!("192.0.2.{idx}");
        // A node has a default route (here: the underlay host): without
        // one, connecting to a Service's ClusterIP fails before kube-proxy's
        // DNAT could apply.
        super::ok(&["ip", "-n", &ns, "route", "add", "default", "via", API_IP]);
        // So that the agent is what turns it on.
        super::forwarding_off(&ns);
        let id = format!("{}-{name}", self.n.prefix);
        let rt = RtNode::up_with(&id, &ns, &[("PGRT_KUBELET", "1")]);
        let bin_dir = rt.dir("PGRT_CNI_BIN_DIR");
        for plugin in ["loopback", "portmap"] {
            std::fs::copy(Path::new("/usr/lib/cni").join(plugin), bin_dir.join(plugin))
                .unwrap_or_else(|e| {
                    panic!("/usr/lib/cni/{plugin} (containernetworking-plugins): {e}")
                });
        }
        let tar = image().to_str().unwrap();
        rt.ctr(&["-n", "k8s.io", "image", "import", tar]);

        let kc = self
            .cp
            .cert_kubeconfig(
                &format!("kubelet-{name}"),
                &format!("system:node:{name}"),
                Some("system:nodes"),
            )
            .unwrap();
        let dir = self.n.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("kubelet.yaml");
        std::fs::write(
            &config,
            kubelet_config(&id, &ip, &self.cp.dir.join("ca.crt")),
        )
        .unwrap();
        let kubelet_log = dir.join("kubelet.log");
        let kubelet = podguard::lab::kube::bin_dir().join("kubelet");
        let mut cmd = rt.cmd(&[
            kubelet.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--hostname-override",
            name,
            "--node-ip",
            &ip,
            "--v=2",
        ]);
        self.n
            .spawn_logged(&format!("kubelet-{name}"), &mut cmd, &kubelet_log);

        let proxy_config = dir.join("kube-proxy.yaml");
        std::fs::write(
            &proxy_config,
            proxy_config_text(name, proxy_kc, cluster_cidrs),
        )
        .unwrap();
        let proxy_log = dir.join("kube-proxy.log");
        let proxy = podguard::lab::kube::bin_dir().join("kube-proxy");
        let mut cmd = rt.cmd(&[
            proxy.to_str().unwrap(),
            "--config",
            proxy_config.to_str().unwrap(),
        ]);
        self.n
            .spawn_logged(&format!("kube-proxy-{name}"), &mut cmd, &proxy_log);
        self.nodes.push(KubeletNode {
            name: name.into(),
            ip,
            rt,
            kubelet_log,
            proxy_log,
        });
    }

    /// `kubectl args` as the admin.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        // Requests time out (an exec's stream is bounded by the command
        // the test runs in it).
        let mut a = vec!["--request-timeout=30s"];
        a.extend_from_slice(args);
        let mut cmd = self.cp.kubectl(&a);
        cmd.env("KUBECACHEDIR", self.n.path("kube-cache"));
        cmd.output().unwrap()
    }

    /// `kubectl args` that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        super::stdout_of_success(&format!("kubectl {args:?}"), self.kubectl(args))
    }

    /// `kubectl get args -o json` (Null if it fails).
    pub fn get(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        let o = self.kubectl(&a);
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
    }

    /// The `podguard` CLI inside the underlay, as the cluster admin: its
    /// exit code, its JSON (`--output json` is added) and its stderr.
    pub fn podguard(&self, args: &[&str]) -> (i32, Value, String) {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.ul, "timeout", "60"])
            .arg(env!("CARGO_BIN_EXE_podguard"))
            .args(args)
            .arg("--kubeconfig")
            .arg(self.cp.admin_kubeconfig())
            .args(["--output", "json"])
            .env_remove("PODGUARD_NAMESPACE")
            .output()
            .unwrap();
        let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
            Value::String(format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ))
        });
        (
            o.status.code().unwrap_or(-1),
            v,
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    pub fn node_ready(&self, name: &str) -> bool {
        let node = self.get(&["node", name]);
        node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    }

    /// `kubectl apply -f` of `yaml`.
    pub fn apply(&self, yaml: &str) -> String {
        let f = self.n.path("apply.yaml");
        std::fs::write(&f, yaml).unwrap();
        self.kubectl_ok(&["apply", "-f", f.to_str().unwrap()])
    }
}

impl Drop for KubeletCluster {
    fn drop(&mut self) {
        let cp = [
            ("kube-apiserver", self.cp.dir.join("kube-apiserver.log")),
            (
                "kube-controller-manager",
                self.cp.dir.join("kube-controller-manager.log"),
            ),
            ("kube-scheduler", self.cp.dir.join("kube-scheduler.log")),
        ];
        let nodes = self.nodes.iter().flat_map(|n| {
            [
                (n.name.as_str(), n.kubelet_log.as_path()),
                (n.name.as_str(), n.proxy_log.as_path()),
            ]
        });
        dump_logs_on_panic(nodes.chain(cp.iter().map(|(l, p)| (*l, p.as_path()))));
        if std::thread::panicking() {
            for node in &self.nodes {
                // The agent's and CNI's view: containers and pod logs.
                let o = node.rt.run(&["ctr", "-n", "k8s.io", "containers", "ls"]);
                eprintln!(
                    "---- {} containers ----\n{}",
                    node.name,
                    String::from_utf8_lossy(&o.stdout)
                );
                let o = node
                    .rt
                    .run(&["sh", "-c", "tail -n 50 /var/log/pods/*/*/*.log"]);
                eprintln!(
                    "---- {} pod logs ----\n{}{}",
                    node.name,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
        if std::thread::panicking() && std::env::var_os("PODGUARD_TEST_HOLD").is_some() {
            eprintln!(
                "PODGUARD_TEST_HOLD: keeping the cluster for 15 minutes; admin kubeconfig {} in netns {}",
                self.cp.admin_kubeconfig().display(),
                self.ul
            );
            std::thread::sleep(Duration::from_secs(900));
        }
        self.nodes.clear();
    }
}
