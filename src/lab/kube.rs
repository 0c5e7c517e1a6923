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

/// How `tests/kube/kube.sh` builds the Kubernetes binaries (its
/// `KUBE_RECIPE`, written to `kube.recipe` in the cache): a cache of
/// another recipe is stale (before 2, the binaries reported
/// `v0.0.0-master`, which helm refuses against the chart's `kubeVersion`).
pub const KUBE_RECIPE: &str = "2";

/// Whether [`bin_dir`] is `kube.sh`'s cache (no `$PODGUARD_KUBE_BIN`).
fn bin_is_cache() -> bool {
    std::env::var_os("PODGUARD_KUBE_BIN").is_none()
}

/// Where the control plane's binaries are: `$PODGUARD_KUBE_BIN`, else the
/// cache `tests/kube/kube.sh setup` fills (`$PODGUARD_KUBE_CACHE/bin`, as
/// kube.sh reads it; default `/var/cache/podguard-kube/bin`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PODGUARD_KUBE_BIN") {
        return PathBuf::from(dir);
    }
    std::env::var_os("PODGUARD_KUBE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/podguard-kube"))
        .join("bin")
}

/// Fail with the fix if a binary is missing, or if `bin` is kube.sh's
/// cache and was built by another recipe (a directory of the operator's
/// own, `$PODGUARD_KUBE_BIN`, is checked only if it has a `kube.recipe`).
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
    check_recipe(bin, bin_is_cache())
}

/// The recipe half of [`check_bins`].
fn check_recipe(bin: &Path, is_cache: bool) -> anyhow::Result<()> {
    let file = bin.join("kube.recipe");
    let found = match std::fs::read_to_string(&file) {
        Ok(r) => r.trim().to_string(),
        Err(_) if !is_cache => return Ok(()),
        Err(_) => "none".into(),
    };
    if found != KUBE_RECIPE {
        bail!(
            "{} holds binaries of build recipe {found} ({}), this checkout needs recipe {KUBE_RECIPE}: \
             rebuild them with `bash tests/kube/kube.sh setup`",
            bin.display(),
            file.display()
        );
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
        // Like etcd, it runs until the namespace's processes are killed:
        // nothing restarts or stops it on its own.
        sys::spawn_in(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipe_is_the_one_kube_sh_builds() {
        let sh = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kube/kube.sh"),
        )
        .unwrap();
        assert!(
            sh.lines()
                .any(|l| l == format!("KUBE_RECIPE={KUBE_RECIPE}")),
            "tests/kube/kube.sh and KUBE_RECIPE disagree"
        );
    }

    #[test]
    fn a_cache_of_another_recipe_or_none_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_recipe(dir.path(), true).unwrap_err().to_string();
        assert!(
            e.contains("recipe none") && e.contains("kube.sh setup"),
            "{e}"
        );
        std::fs::write(dir.path().join("kube.recipe"), "1\n").unwrap();
        let e = check_recipe(dir.path(), true).unwrap_err().to_string();
        assert!(
            e.contains("recipe 1") && e.contains(&format!("needs recipe {KUBE_RECIPE}")),
            "{e}"
        );
        std::fs::write(dir.path().join("kube.recipe"), format!("{KUBE_RECIPE}\n")).unwrap();
        check_recipe(dir.path(), true).unwrap();
    }

    #[test]
    fn an_operators_own_directory_needs_no_recipe_but_a_stale_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        check_recipe(dir.path(), false).unwrap();
        std::fs::write(dir.path().join("kube.recipe"), "1\n").unwrap();
        assert!(check_recipe(dir.path(), false).is_err());
    }
}
