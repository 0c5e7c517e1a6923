//! The real Kubernetes control plane for the lab and the tests
//! (`podguard lab up --kube real`): etcd, kube-apiserver and
//! kube-controller-manager of one pinned release, run inside a network
//! namespace of the lab. The embedded API server is a fast stand-in; this
//! is the counterpart users run: TLS, ServiceAccount token signing, RBAC,
//! ValidatingAdmissionPolicy, defaulting and validation, podCIDRs from the
//! controller manager's node IPAM, and an audit log of every call the agent
//! makes. The binaries are built by `tests/kube/kube.sh setup` into a cache
//! outside the repo.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::sys;

mod client;
mod credentials;

/// Port of kube-apiserver.
pub const PORT: u16 = 6443;
/// The ServiceAccount the shipped DaemonSet runs as.
pub const AGENT_NAMESPACE: &str = "podguard";
/// Its name.
pub const AGENT_SERVICE_ACCOUNT: &str = "podguard";
/// The Service range of the lab cluster (kept off the pod network).
pub const SERVICE_CIDR: &str = "10.96.0.0/24";

/// Where the control plane's binaries are: `$PODGUARD_KUBE_BIN`, else the
/// cache `tests/kube/kube.sh setup` fills.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("PODGUARD_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/podguard-kube/bin"))
}

/// Fail with the fix if a binary is missing.
pub fn check_bins(bin: &Path) -> anyhow::Result<()> {
    const BINS: [&str; 7] = [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
        "kubelet",
        "kube-proxy",
    ];
    for b in BINS {
        if !bin.join(b).is_file() {
            bail!(
                "{} is missing: build the real control plane with `bash tests/kube/kube.sh setup` \
                 (or point PODGUARD_KUBE_BIN at a directory with {})",
                bin.join(b).display(),
                BINS.join(", ")
            );
        }
    }
    Ok(())
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// The namespace it runs in.
    pub ns: String,
    /// Its files: certificates, tokens, etcd data, logs, kubeconfigs.
    pub dir: PathBuf,
    /// The API server's address in `ns` (reachable from the nodes).
    pub ip: String,
    bin: PathBuf,
    cluster_cidrs: String,
    apiserver_pid: Option<u32>,
    controller_manager_pid: Option<u32>,
    scheduler_pid: Option<u32>,
    /// Whether kubelets run Pods here (`run_workloads`).
    workloads: bool,
}

fn kill_wait(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, None);
}

impl ControlPlane {
    /// Start etcd, kube-apiserver and kube-controller-manager in `ns`
    /// (which must have `lo` up and `ip` assigned), keeping files in `dir`;
    /// returns once the API server is ready.
    pub fn start(ns: &str, dir: &Path, ip: &str, cluster_cidrs: &str) -> anyhow::Result<Self> {
        let bin = bin_dir();
        check_bins(&bin)?;
        std::fs::create_dir_all(dir.join("etcd"))?;
        let mut cp = Self {
            ns: ns.into(),
            dir: dir.into(),
            ip: ip.into(),
            bin,
            cluster_cidrs: cluster_cidrs.into(),
            apiserver_pid: None,
            controller_manager_pid: None,
            scheduler_pid: None,
            workloads: false,
        };
        cp.write_credentials()?;
        let etcd = cp.bin.join("etcd");
        let data = dir.join("etcd");
        sys::spawn_in(
            ns,
            &[
                s(&etcd),
                "--name",
                "lab",
                "--data-dir",
                s(&data),
                "--listen-client-urls",
                "http://127.0.0.1:2379",
                "--advertise-client-urls",
                "http://127.0.0.1:2379",
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "lab=http://127.0.0.1:2380",
                // A lab on tmpfs: durability buys nothing.
                "--unsafe-no-fsync",
            ],
            &dir.join("etcd.log"),
            None,
            &[],
        )?;
        cp.start_apiserver()?;
        cp.start_controller_manager()?;
        Ok(cp)
    }

    /// The control plane a running lab started (in `ns`, files in `dir`),
    /// to talk to it.
    pub fn attach(ns: &str, dir: &Path, ip: &str) -> Self {
        Self {
            ns: ns.into(),
            dir: dir.into(),
            ip: ip.into(),
            bin: bin_dir(),
            cluster_cidrs: String::new(),
            apiserver_pid: None,
            controller_manager_pid: None,
            scheduler_pid: None,
            workloads: false,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Start (or restart) kube-apiserver; returns once it is ready. After
    /// an outage the controller manager is restarted too: a running one can
    /// take over a minute to notice the new API server (client-go's watch
    /// backoff), and node IPAM is not what the outage tests are about.
    pub fn start_apiserver(&mut self) -> anyhow::Result<()> {
        let d = |n: &str| self.path(n).to_string_lossy().into_owned();
        let args = [
            format!("--advertise-address={}", self.ip),
            format!("--bind-address={}", self.ip),
            format!("--secure-port={PORT}"),
            "--etcd-servers=http://127.0.0.1:2379".into(),
            format!("--tls-cert-file={}", d("apiserver.crt")),
            format!("--tls-private-key-file={}", d("apiserver.key")),
            format!("--client-ca-file={}", d("ca.crt")),
            format!("--token-auth-file={}", d("tokens.csv")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--authorization-mode=Node,RBAC".into(),
            format!("--audit-policy-file={}", d("audit-policy.yaml")),
            format!("--audit-log-path={}", d("audit.log")),
            "--audit-log-format=json".into(),
            format!("--cert-dir={}", d("apiserver-certs")),
            // Logs, exec and port-forward through real kubelets: the API
            // server's client certificate, and the Node's InternalIP (the
            // lab's node names are not in any DNS).
            format!(
                "--kubelet-client-certificate={}",
                d("apiserver-kubelet-client.crt")
            ),
            format!("--kubelet-client-key={}", d("apiserver-kubelet-client.key")),
            "--kubelet-preferred-address-types=InternalIP".into(),
        ];
        let apiserver = self.bin.join("kube-apiserver");
        let mut argv = vec![s(&apiserver)];
        argv.extend(args.iter().map(String::as_str));
        let pid = sys::spawn_in(&self.ns, &argv, &self.path("kube-apiserver.log"), None, &[])?;
        self.apiserver_pid = Some(pid);
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = self.request("GET", "/readyz", None, "admin") {
                if let Some(pid) = self.controller_manager_pid.take() {
                    kill_wait(pid);
                    self.start_controller_manager()?;
                }
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(90) {
                bail!(
                    "kube-apiserver did not become ready in 90 s; its log: {}",
                    self.path("kube-apiserver.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Kill kube-apiserver (etcd and the controller manager stay): an API
    /// outage.
    pub fn stop_apiserver(&mut self) {
        if let Some(pid) = self.apiserver_pid.take() {
            kill_wait(pid);
        }
    }

    /// Let real kubelets run Pods: restart the controller manager with the
    /// controllers workloads need (DaemonSets, the `kube-root-ca.crt`
    /// ConfigMap every ServiceAccount token volume mounts, Services'
    /// EndpointSlices, garbage collection) and start kube-scheduler, which
    /// places DaemonSet Pods.
    pub fn run_workloads(&mut self) -> anyhow::Result<()> {
        self.workloads = true;
        if let Some(pid) = self.controller_manager_pid.take() {
            kill_wait(pid);
        }
        self.start_controller_manager()?;
        let scheduler = self.bin.join("kube-scheduler");
        let kubeconfig = format!("--kubeconfig={}", self.admin_kubeconfig().display());
        let pid = sys::spawn_in(
            &self.ns,
            &[
                s(&scheduler),
                &kubeconfig,
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
            ],
            &self.path("kube-scheduler.log"),
            None,
            &[],
        )?;
        self.scheduler_pid = Some(pid);
        Ok(())
    }

    fn start_controller_manager(&mut self) -> anyhow::Result<()> {
        let cm = self.bin.join("kube-controller-manager");
        let v4v6: Vec<&str> = self.cluster_cidrs.split(',').collect();
        let controllers = if self.workloads {
            "--controllers=nodeipam,serviceaccount,daemonset,root-ca-cert-publisher,garbagecollector,podgc,endpointslice"
        } else {
            // Node IPAM (podCIDRs) and the default ServiceAccounts Pods
            // need; no kubelet runs, so nothing that judges node health.
            "--controllers=nodeipam,serviceaccount"
        };
        let args = [
            format!("--kubeconfig={}", self.admin_kubeconfig().display()),
            controllers.into(),
            format!("--root-ca-file={}", self.path("ca.crt").display()),
            "--allocate-node-cidrs=true".into(),
            format!("--cluster-cidr={}", v4v6.join(",")),
            // A /24 and a /64 per node, as the embedded lab plans them (the
            // per-family flags are refused on a single-stack cluster).
            if v4v6.len() > 1 {
                "--node-cidr-mask-size-ipv4=24 --node-cidr-mask-size-ipv6=64".into()
            } else {
                "--node-cidr-mask-size=24".into()
            },
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!(
                "--cert-dir={}",
                self.path("controller-manager-certs").display()
            ),
        ];
        let mut argv = vec![s(&cm)];
        argv.extend(args.iter().flat_map(|a| a.split(' ')));
        let pid = sys::spawn_in(
            &self.ns,
            &argv,
            &self.path("kube-controller-manager.log"),
            None,
            &[],
        )?;
        self.controller_manager_pid = Some(pid);
        Ok(())
    }
}

/// The shipped manifests (deploy/, as built into this binary), written to
/// `dir` for `kubectl apply -k`.
pub fn write_manifests(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in [
        (
            "kustomization.yaml",
            include_str!("../../deploy/kustomization.yaml"),
        ),
        (
            "namespace.yaml",
            include_str!("../../deploy/namespace.yaml"),
        ),
        ("rbac.yaml", include_str!("../../deploy/rbac.yaml")),
        (
            "daemonset.yaml",
            include_str!("../../deploy/daemonset.yaml"),
        ),
        (
            "admission-policy.yaml",
            include_str!("../../deploy/admission-policy.yaml"),
        ),
    ] {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}
