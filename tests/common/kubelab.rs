//! N nodes in network namespaces running the real agent against the lab's
//! embedded API server, or against the real control plane (etcd,
//! kube-apiserver, kube-controller-manager: `KubeLab::real`), in the
//! underlay namespace, with pods attached by the real CNI plugin.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use podguard::lab::kube::ControlPlane;
use serde_json::{Value, json};

use super::{Netns, dump_logs_on_panic, run, wait_for};

/// Whether the real control plane's binaries are built (tests/kube/kube.sh
/// setup); without them a `::real` test is skipped, except under CI=true,
/// where that is a failure.
pub fn require_real_kube(test: &str) -> bool {
    let Err(e) = podguard::lab::kube::check_bins(&podguard::lab::kube::bin_dir()) else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {e:#}; under CI=true this is a failure, not a skip");
    }
    eprintln!("skipping {test}: {e:#}");
    false
}

/// Which API server a lab runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kube {
    /// The embedded stand-in (`podguard lab api-server`).
    Embedded,
    /// etcd + kube-apiserver + kube-controller-manager, with the shipped
    /// manifests applied and each agent on its ServiceAccount token.
    Real,
}

pub const CLUSTER: &str = "10.244.0.0/16,fd00:10:244::/56";
pub const API: &str = "192.0.2.100:6443";

pub struct KNode {
    pub name: String,
    pub idx: u8,
    pub ns: String,
    pub pod_ns: Option<String>,
    pub pod_ips: Vec<String>,
    pub key_file: PathBuf,
    pub wg_dir: PathBuf,
    pub state_file: PathBuf,
    pub ipam_dir: PathBuf,
    pub log: PathBuf,
    /// Real mode: the agent's kubeconfig (its bound ServiceAccount token).
    pub kubeconfig: Option<PathBuf>,
}

pub struct KubeLab {
    pub n: Netns,
    pub ul: String,
    pub kubeconfig: PathBuf,
    pub api_state: PathBuf,
    pub nodes: Vec<KNode>,
    /// Extra arguments for every agent started from now on.
    pub agent_args: Vec<String>,
    /// The real control plane (`Kube::Real`).
    pub cp: Option<ControlPlane>,
}

fn bin(name: &str) -> String {
    match name {
        "agent" => env!("CARGO_BIN_EXE_podguard-agent").into(),
        _ => env!("CARGO_BIN_EXE_podguard").into(),
    }
}

impl KubeLab {
    pub fn new(tag: &str) -> Self {
        Self::with(tag, Kube::Embedded)
    }

    /// A lab on the real control plane.
    pub fn real(tag: &str) -> Self {
        Self::with(tag, Kube::Real)
    }

    pub fn with(tag: &str, kube: Kube) -> Self {
        std::fs::create_dir_all("/run/wireguard").unwrap();
        // One scenario runs on both API servers at once: distinct names.
        let tag = match kube {
            Kube::Embedded => format!("{tag}e"),
            Kube::Real => format!("{tag}r"),
        };
        let mut n = Netns::new(&tag);
        let ul = n.underlay(Some("192.0.2.100/24"));
        if kube == Kube::Real {
            let cp = ControlPlane::start(&ul, &n.path("kube"), "192.0.2.100", CLUSTER)
                .unwrap_or_else(|e| panic!("starting the real control plane: {e:#}"));
            let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
            cp.apply_kustomization(&deploy)
                .unwrap_or_else(|e| panic!("{e:#}"));
            return Self {
                kubeconfig: cp.admin_kubeconfig(),
                api_state: n.path("unused"),
                n,
                ul,
                nodes: Vec::new(),
                agent_args: Vec::new(),
                cp: Some(cp),
            };
        }
        let kubeconfig = n.path("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster: {{server: \"http://{API}\"}}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: lab}}\ncurrent-context: lab\nusers:\n- name: lab\n  user: {{}}\n"
            ),
        )
        .unwrap();
        let api_state = n.path("api-state.json");
        let mut lab = Self {
            n,
            ul,
            kubeconfig,
            api_state,
            nodes: Vec::new(),
            agent_args: Vec::new(),
            cp: None,
        };
        lab.start_api();
        lab
    }

    pub fn is_real(&self) -> bool {
        self.cp.is_some()
    }

    pub fn start_api(&mut self) {
        if let Some(cp) = self.cp.as_mut() {
            cp.start_apiserver().unwrap_or_else(|e| panic!("{e:#}"));
            return;
        }
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ul,
            &bin("cli"),
            "lab",
            "api-server",
            "--listen",
            API,
            "--state",
        ])
        .arg(&self.api_state);
        let log = self.n.path("api.log");
        self.n.spawn_logged("api", &mut cmd, &log);
        wait_for("the API server", Duration::from_secs(10), || {
            self.try_api("GET", "/healthz", None).is_some()
        });
    }

    pub fn stop_api(&mut self) {
        if let Some(cp) = self.cp.as_mut() {
            cp.stop_apiserver();
            return;
        }
        self.n.kill("api");
    }

    fn try_api(&self, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
        let body = body.map(|b| b.to_string());
        let (code, text) = match &self.cp {
            Some(cp) => cp.request(method, path, body.as_deref(), "admin").ok()?,
            None => {
                podguard::lab::cluster::http(&self.ul, API, method, path, body.as_deref()).ok()?
            }
        };
        Some((code, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Call the API (panics if it is unreachable).
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.try_api(method, path, body)
            .unwrap_or_else(|| panic!("API server unreachable for {method} {path}"))
    }

    /// Create a Node object.
    pub fn create_node(&self, name: &str, idx: u8, annotations: Value) {
        self.create_node_with(name, idx, annotations, Some(Self::pod_cidrs(idx)));
    }

    pub fn pod_cidrs(idx: u8) -> Value {
        json!([
            format!("10.244.{idx}.0/24"),
            format!("fd00:10:244:{idx:x}::/64")
        ])
    }

    pub fn create_node_with(
        &self,
        name: &str,
        idx: u8,
        annotations: Value,
        pod_cidrs: Option<Value>,
    ) {
        if let Some(cp) = &self.cp {
            // A kubelet's registration; podCIDRs come from the controller
            // manager.
            cp.register_node(name, &format!("192.0.2.{idx}"), &annotations)
                .unwrap_or_else(|e| panic!("registering node {name}: {e:#}"));
            return;
        }
        let mut spec = json!({});
        if let Some(c) = pod_cidrs {
            spec["podCIDRs"] = c;
        }
        let (code, body) = self.api(
            "POST",
            "/api/v1/nodes",
            Some(&json!({
                "metadata": {"name": name, "annotations": annotations},
                "spec": spec,
                "status": {"addresses": [{"type": "InternalIP", "address": format!("192.0.2.{idx}")}]},
            })),
        );
        assert_eq!(code, 201, "creating node {name}: {body}");
    }

    /// `kubectl` of the pinned release inside the underlay, as the admin
    /// (real) or with the lab's kubeconfig (embedded).
    pub fn kubectl(&self, args: &[&str]) -> Command {
        if let Some(cp) = &self.cp {
            return cp.kubectl(args);
        }
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ul])
            .arg(podguard::lab::kube::bin_dir().join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args);
        c
    }

    /// `kubectl args` that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        super::stdout_of_success(
            &format!("kubectl {args:?}"),
            self.kubectl(args).output().unwrap(),
        )
    }

    /// `kubectl get args -o json`.
    pub fn kubectl_get(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&a)).unwrap()
    }

    /// `kubectl apply -f` of `yaml`; its stdout.
    pub fn kubectl_apply(&self, yaml: &str) -> String {
        let f = self.n.path("apply.yaml");
        std::fs::write(&f, yaml).unwrap();
        self.kubectl_ok(&["apply", "-f", f.to_str().unwrap()])
    }

    /// Node `name`'s spec.podCIDRs as the API server has them; on a real control plane node IPAM assigns them
    /// shortly after registration, so this waits for them (up to 30 s).
    pub fn node_pod_cidrs(&self, name: &str) -> Vec<String> {
        let get = || -> Vec<String> {
            let (_, n) = self.api("GET", &format!("/api/v1/nodes/{name}"), None);
            serde_json::from_value(n["spec"]["podCIDRs"].clone()).unwrap_or_default()
        };
        let mut cidrs = get();
        if self.is_real() {
            wait_for(
                &format!("node IPAM to give {name} podCIDRs"),
                Duration::from_secs(30),
                || {
                    cidrs = get();
                    !cidrs.is_empty()
                },
            );
        }
        cidrs
    }

    pub fn annotations(&self, name: &str) -> BTreeMap<String, String> {
        let (_, n) = self.api("GET", &format!("/api/v1/nodes/{name}"), None);
        serde_json::from_value(n["metadata"]["annotations"].clone()).unwrap_or_default()
    }

    /// A node namespace on the underlay, its Node object, and its agent.
    pub fn add_node(&mut self, name: &str, idx: u8) -> usize {
        self.add_node_with(name, idx, true)
    }

    /// Like `add_node`; without podCIDRs when `with_cidrs` is false.
    pub fn add_node_with(&mut self, name: &str, idx: u8, with_cidrs: bool) -> usize {
        let ul = self.ul.clone();
        let ns = self.n.underlay_node(&ul, name, idx);
        let dir = self.n.path(name);
        std::fs::create_dir_all(dir.join("wg")).unwrap();
        self.create_node_with(
            name,
            idx,
            json!({}),
            with_cidrs.then(|| Self::pod_cidrs(idx)),
        );
        self.nodes.push(KNode {
            name: name.into(),
            idx,
            ns,
            pod_ns: None,
            pod_ips: vec![],
            key_file: dir.join("private.key"),
            wg_dir: dir.join("wg"),
            state_file: dir.join("node.json"),
            ipam_dir: dir.join("ipam"),
            log: dir.join("agent.log"),
            kubeconfig: self.cp.as_ref().map(|cp| {
                cp.agent_kubeconfig(name)
                    .unwrap_or_else(|e| panic!("credentials for {name}'s agent: {e:#}"))
            }),
        });
        let i = self.nodes.len() - 1;
        // Create the key first, so the test knows it before the agent runs.
        let _ = self.public_key(i);
        self.start_agent(i);
        i
    }

    /// Nodes a (index 1) and b (index 2), a pod on each, and pod a
    /// reaching pod b. Returns the lab and the two node indices.
    pub fn connected_pair(tag: &str, kube: Kube) -> (Self, usize, usize) {
        let mut lab = Self::with(tag, kube);
        let a = lab.add_node("a", 1);
        let b = lab.add_node("b", 2);
        lab.attach_pod(a);
        lab.attach_pod(b);
        let (pa, _) = lab.pod(a);
        let (_, ipb) = lab.pod(b);
        wait_for("pod a -> pod b", Duration::from_secs(20), || {
            super::pings(&pa, &ipb)
        });
        (lab, a, b)
    }

    pub fn node_cmd(&self, i: usize, args: &[&str]) -> Command {
        super::node_command(&self.nodes[i].ns, &self.nodes[i].wg_dir, args)
    }

    pub fn wg_peers(&self, i: usize) -> String {
        let o = self
            .node_cmd(i, &["wg", "show", "podguard0", "peers"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    pub fn public_key(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let o = run(&[
            &bin("agent"),
            "--node-name",
            &node.name,
            "--cluster-cidr",
            CLUSTER,
            "--key-file",
            node.key_file.to_str().unwrap(),
            "--print-public-key",
        ]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    pub fn start_agent(&mut self, i: usize) {
        let node = &self.nodes[i];
        let mut cmd = self.node_cmd(
            i,
            &[
                &bin("agent"),
                "--node-name",
                &node.name,
                "--cluster-cidr",
                CLUSTER,
                "--key-file",
                node.key_file.to_str().unwrap(),
                "--state-file",
                node.state_file.to_str().unwrap(),
                "--resync",
                "2s",
            ],
        );
        cmd.args(&self.agent_args);
        match &node.kubeconfig {
            Some(kc) => {
                cmd.env("KUBECONFIG", kc);
                cmd.env("POD_NAMESPACE", podguard::lab::kube::AGENT_NAMESPACE);
            }
            None => {
                cmd.env("KUBECONFIG", &self.kubeconfig);
            }
        }
        let (label, log) = (format!("agent-{}", node.name), node.log.clone());
        self.n.spawn_logged(&label, &mut cmd, &log);
    }

    pub fn kill_agent(&mut self, i: usize) {
        let label = format!("agent-{}", self.nodes[i].name);
        self.n.kill(&label);
    }

    /// Attach a pod with the real CNI plugin, once the agent is ready.
    pub fn attach_pod(&mut self, i: usize) {
        let state = self.nodes[i].state_file.clone();
        wait_for("the agent's node state", Duration::from_secs(20), || {
            state.exists()
        });
        let pod = self.n.add(&format!("p{}", self.nodes[i].name));
        let node = &self.nodes[i];
        let conf = json!({"cniVersion": "1.1.0", "name": "podguard", "type": "podguard-cni",
            "nodeStateFile": node.state_file, "dataDir": node.ipam_dir});
        let env = super::cni::env_for("ADD", &format!("pod-{}", node.name), &pod);
        let out = super::cni::call_in(&node.ns, &super::cni::env_refs(&env), &conf.to_string());
        let res = out.json;
        assert_eq!(out.code, 0, "CNI ADD: {}", out.raw);
        let ips = res["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ip| {
                ip["address"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let node = &mut self.nodes[i];
        node.pod_ns = Some(pod);
        node.pod_ips = ips;
    }

    pub fn pod(&self, i: usize) -> (String, String) {
        (
            self.nodes[i].pod_ns.clone().unwrap(),
            self.nodes[i].pod_ips[0].clone(),
        )
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    pub fn events(&self) -> Vec<Value> {
        let (_, v) = self.api("GET", "/apis/events.k8s.io/v1/events", None);
        v["items"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for KubeLab {
    fn drop(&mut self) {
        let mut extra = vec![(
            "api",
            match &self.cp {
                Some(cp) => cp.dir.join("kube-apiserver.log"),
                None => self.n.path("api.log"),
            },
        )];
        if let Some(cp) = &self.cp {
            extra.push((
                "controller-manager",
                cp.dir.join("kube-controller-manager.log"),
            ));
        }
        dump_logs_on_panic(
            self.nodes
                .iter()
                .map(|n| (n.name.as_str(), n.log.as_path()))
                .chain(extra.iter().map(|(l, p)| (*l, p.as_path()))),
        );
    }
}
