//! Real NetworkPolicy enforcers next to podguard, run per node in the
//! node's network namespace against the lab's real API server:
//!
//! - kube-router's network policy controller alone (`--run-firewall`, no
//!   router, no service proxy): iptables and ipset in the FORWARD chain;
//!   built by tests/kube/kube.sh into the Kubernetes tool cache;
//! - kube-network-policies (SIG Network's reference implementation). It
//!   reads only the in-cluster configuration, so each runs in a private
//!   mount namespace where /var/run/secrets holds a token and the lab's CA.
//!
//! kube-network-policies is not in the suite: it drops packets through nftables' `queue` expression
//! (nfqueue), which the kernel of these machines lacks (`nft add rule ...
//! queue` fails with ENOENT; no nft_queue module). On a kernel that has it:
//!
//! ```sh
//! GOBIN=/tmp/knp go install sigs.k8s.io/kube-network-policies/cmd@v0.8.0
//! install -m 0755 /tmp/knp/cmd "$(bash tests/kube/kube.sh bin)/kube-network-policies"
//! cargo test --test kube_real -- --ignored a_real_network_policy_enforcer
//! ```

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::KillOnDrop;
use super::kubelab::KubeLab;

/// A NetworkPolicy enforcer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcer {
    /// kube-router's network policy controller (iptables, ipset).
    KubeRouter,
    /// kube-network-policies (nftables, nfqueue).
    KubeNetworkPolicies,
}

impl Enforcer {
    /// The release used (tests/kube/kube.sh builds kube-router's; see the
    /// module doc for kube-network-policies).
    pub fn version(self) -> &'static str {
        match self {
            Self::KubeRouter => "v2.1.0",
            Self::KubeNetworkPolicies => "v0.8.0",
        }
    }

    /// Its binary in the tool cache.
    pub fn binary(self) -> PathBuf {
        podguard::lab::kube::bin_dir().join(match self {
            Self::KubeRouter => "kube-router",
            Self::KubeNetworkPolicies => "kube-network-policies",
        })
    }

    /// Whether its binary is there.
    pub fn available(self) -> bool {
        self.binary().exists()
    }

    /// Start it for lab node `i` (in its namespace, named as its Node);
    /// stopped when the guard drops. Returns its log.
    pub fn start(self, lab: &KubeLab, i: usize) -> (KillOnDrop, PathBuf) {
        match self {
            Self::KubeRouter => start_kube_router(lab, i),
            Self::KubeNetworkPolicies => start(lab, i),
        }
    }
}

/// kube-router's firewall alone, with the admin's kubeconfig.
fn start_kube_router(lab: &KubeLab, i: usize) -> (KillOnDrop, PathBuf) {
    let node = &lab.nodes[i];
    let log = lab.n.path(&format!("{}-kube-router.log", node.name));
    let kubeconfig = lab.kubeconfig.display().to_string();
    let child = Command::new("ip")
        .args(["netns", "exec", &node.ns])
        .arg(Enforcer::KubeRouter.binary())
        .args([
            "--run-firewall=true",
            "--run-router=false",
            "--run-service-proxy=false",
            "--enable-cni=false",
            "--health-port=0",
            "--kubeconfig",
            &kubeconfig,
            "--hostname-override",
            &node.name,
            "--v=2",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting kube-router");
    (KillOnDrop(child), log)
}

/// Start kube-network-policies for lab node `i`.
fn start(lab: &KubeLab, i: usize) -> (KillOnDrop, PathBuf) {
    let cp = lab.cp.as_ref().expect("the real control plane");
    let node = &lab.nodes[i];
    let secrets = lab.n.path(&format!("{}-secrets", node.name));
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("token"), cp.token("admin").unwrap()).unwrap();
    std::fs::copy(cp.dir.join("ca.crt"), secrets.join("ca.crt")).unwrap();
    std::fs::write(secrets.join("namespace"), "default").unwrap();
    let log = lab.n.path(&format!("{}-netpol.log", node.name));
    let (host, port) = super::kubelab::API.split_once(':').unwrap();
    // /var/run/secrets is /run/secrets on Debian: an empty mount point on
    // the host (made once), a bind mount of this node's files only inside
    // the enforcer's own mount namespace.
    std::fs::create_dir_all("/run/secrets/kubernetes.io/serviceaccount").unwrap();
    let script = format!(
        "mount --bind {} /run/secrets/kubernetes.io/serviceaccount && \
         exec ip netns exec {} env KUBERNETES_SERVICE_HOST={host} KUBERNETES_SERVICE_PORT={port} \
         {} --hostname-override={} --metrics-bind-address=127.0.0.1:9080 --disable-nri --v=2",
        secrets.display(),
        node.ns,
        Enforcer::KubeNetworkPolicies.binary().display(),
        node.name
    );
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting kube-network-policies");
    (KillOnDrop(child), log)
}

/// A Pod object for an attached lab pod (as a kubelet would report it:
/// on its Node, Running, with its IP and its Node's), labelled `app=<app>`.
pub fn register_pod(lab: &KubeLab, i: usize, name: &str, app: &str) {
    let node = &lab.nodes[i];
    let ip = node.pod_ips[0].clone();
    let (code, body) = lab.api(
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(
            &serde_json::json!({"metadata": {"name": name, "labels": {"app": app}},
            "spec": {"nodeName": node.name, "containers": [{"name": "c", "image": "x"}]}}),
        ),
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = lab.api(
        "PATCH",
        &format!("/api/v1/namespaces/default/pods/{name}/status"),
        Some(
            &serde_json::json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "hostIP": format!("192.0.2.{}", node.idx)}}),
        ),
    );
    assert_eq!(code, 200, "{body}");
}

/// Whether this kernel has nftables' `queue` expression (nft_queue), which
/// the enforcer needs: tried in a scratch namespace.
pub fn kernel_has_nft_queue() -> bool {
    let ns = format!("pgt-nftq-{}", std::process::id());
    let ok = |args: &[&str]| super::run(args).status.success();
    if !ok(&["ip", "netns", "add", &ns]) {
        return false;
    }
    let has = ok(&[
        "ip", "netns", "exec", &ns, "nft", "add", "table", "inet", "t",
    ]) && ok(&[
        "ip",
        "netns",
        "exec",
        &ns,
        "nft",
        "add",
        "chain",
        "inet",
        "t",
        "c",
        "{ type filter hook postrouting priority 0; }",
    ]) && ok(&[
        "ip", "netns", "exec", &ns, "nft", "add", "rule", "inet", "t", "c", "queue", "num", "100",
        "bypass",
    ]);
    let _ = super::run(&["ip", "netns", "del", &ns]);
    has
}
