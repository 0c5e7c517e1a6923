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

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::sys::{self, run};

/// Port of kube-apiserver.
pub const PORT: u16 = 6443;
/// The ServiceAccount the shipped DaemonSet runs as.
pub const AGENT_NAMESPACE: &str = "podguard";
/// Its name.
pub const AGENT_SERVICE_ACCOUNT: &str = "podguard";
/// The Service range of the lab cluster (kept off the pod network).
pub const SERVICE_CIDR: &str = "10.96.0.0/24";
/// Users of the static token file: name, groups. `intruder` has no role
/// until a test binds one: an account that may patch Nodes but is neither
/// an agent nor an admin.
const USERS: [(&str, &str); 3] = [
    ("admin", "system:masters"),
    ("ops", "podguard:admins"),
    ("intruder", "example:others"),
];

/// Where the control plane's binaries are: `$PODGUARD_KUBE_BIN`, else the
/// cache `tests/kube/kube.sh setup` fills.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("PODGUARD_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/podguard-kube/bin"))
}

/// Fail with the fix if a binary is missing.
pub fn check_bins(bin: &Path) -> anyhow::Result<()> {
    for b in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
    ] {
        if !bin.join(b).is_file() {
            bail!(
                "{} is missing: build the real control plane with `bash tests/kube/kube.sh setup` \
                 (or point PODGUARD_KUBE_BIN at a directory with etcd, kube-apiserver, \
                 kube-controller-manager and kubectl)",
                bin.join(b).display()
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
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The CA, the serving certificate (for `ip`), the ServiceAccount
    /// signing key, the static tokens and the admin kubeconfig.
    fn write_credentials(&self) -> anyhow::Result<()> {
        let d = |n: &str| self.path(n).to_string_lossy().into_owned();
        run(&[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=podguard-lab-ca",
            "-keyout",
            &d("ca.key"),
            "-out",
            &d("ca.crt"),
        ])
        .context("creating the lab CA (openssl)")?;
        run(&[
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=kube-apiserver",
            "-keyout",
            &d("apiserver.key"),
            "-out",
            &d("apiserver.csr"),
        ])?;
        std::fs::write(
            self.path("apiserver.ext"),
            format!(
                "subjectAltName=IP:{},IP:127.0.0.1,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default.svc\n",
                self.ip
            ),
        )?;
        run(&[
            "openssl",
            "x509",
            "-req",
            "-in",
            &d("apiserver.csr"),
            "-CA",
            &d("ca.crt"),
            "-CAkey",
            &d("ca.key"),
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &d("apiserver.ext"),
            "-out",
            &d("apiserver.crt"),
        ])?;
        run(&["openssl", "genrsa", "-out", &d("sa.key"), "2048"])?;
        run(&[
            "openssl",
            "rsa",
            "-in",
            &d("sa.key"),
            "-pubout",
            "-out",
            &d("sa.pub"),
        ])?;
        let mut tokens = String::new();
        for (i, (user, groups)) in USERS.iter().enumerate() {
            let t = random_token()?;
            std::fs::write(self.path(&format!("{user}.token")), &t)?;
            tokens.push_str(&format!("{t},{user},uid-{i},\"{groups}\"\n"));
        }
        write_private(&self.path("tokens.csv"), &tokens)?;
        std::fs::write(
            self.path("audit-policy.yaml"),
            format!(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
                 - level: Metadata\n  users: [\"system:serviceaccount:{AGENT_NAMESPACE}:{AGENT_SERVICE_ACCOUNT}\"]\n\
                 - level: None\n"
            ),
        )?;
        let admin = self.token("admin")?;
        write_private(&self.admin_kubeconfig(), &self.kubeconfig("admin", &admin))?;
        Ok(())
    }

    /// The static token of `user` ("admin": system:masters; "ops": group
    /// podguard:admins).
    pub fn token(&self, user: &str) -> anyhow::Result<String> {
        std::fs::read_to_string(self.path(&format!("{user}.token")))
            .with_context(|| format!("no token for {user}"))
    }

    /// A kubeconfig for `user` with bearer `token`.
    pub fn kubeconfig(&self, user: &str, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: podguard-lab\n  cluster:\n    server: https://{}:{PORT}\n    certificate-authority: {}\n\
             users:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: podguard-lab\n  context: {{cluster: podguard-lab, user: {user}}}\n\
             current-context: podguard-lab\n",
            self.ip,
            self.path("ca.crt").display()
        )
    }

    /// The cluster admin's kubeconfig.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.path("admin.kubeconfig")
    }

    /// The API server's audit log: the agent's calls (JSON lines).
    pub fn audit_log(&self) -> PathBuf {
        self.path("audit.log")
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

    fn start_controller_manager(&mut self) -> anyhow::Result<()> {
        let cm = self.bin.join("kube-controller-manager");
        let v4v6: Vec<&str> = self.cluster_cidrs.split(',').collect();
        let args = [
            format!("--kubeconfig={}", self.admin_kubeconfig().display()),
            // Node IPAM (podCIDRs) and the default ServiceAccounts Pods
            // need; no kubelet runs, so nothing that judges node health.
            "--controllers=nodeipam,serviceaccount".into(),
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

    /// One API request as `user` (from inside the namespace, over TLS):
    /// the status code and the body. PATCH bodies are merge patches.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        user: &str,
    ) -> anyhow::Result<(u16, String)> {
        let token = self.token(user)?;
        self.request_with_token(method, path, body, &token)
    }

    /// One API request with bearer `token`.
    pub fn request_with_token(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: &str,
    ) -> anyhow::Result<(u16, String)> {
        use std::io::Write;
        let ct = if method == "PATCH" {
            "Content-Type: application/merge-patch+json"
        } else {
            "Content-Type: application/json"
        };
        let url = format!("https://{}:{PORT}{path}", self.ip);
        let ca = self.path("ca.crt");
        let auth = format!("Authorization: Bearer {}", token.trim());
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.ns, "curl", "-sS", "--max-time", "10"])
            .arg("--cacert")
            .arg(&ca)
            .args(["-X", method, "-H", ct, "-H", &auth, "-w", "\n%{http_code}"]);
        if body.is_some() {
            c.args(["--data-binary", "@-"]);
        }
        c.arg(&url)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().context("running curl (apt-get install curl)")?;
        if let (Some(b), Some(mut stdin)) = (body, child.stdin.take()) {
            stdin.write_all(b.as_bytes())?;
        }
        let o = child.wait_with_output()?;
        if !o.status.success() {
            bail!(
                "{method} {url}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        let out = String::from_utf8_lossy(&o.stdout);
        let (text, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        Ok((
            code.trim().parse().context("curl printed no status")?,
            text.to_string(),
        ))
    }

    /// A request that must succeed (2xx); its JSON.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (code, text) = self.request(
            method,
            path,
            body.map(|b| b.to_string()).as_deref(),
            "admin",
        )?;
        if !(200..300).contains(&code) {
            bail!("{method} {path}: HTTP {code}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `kubectl` of the same release, as the admin, from inside the
    /// namespace.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.ns])
            .arg(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.admin_kubeconfig())
            .args(args);
        c
    }

    /// `kubectl apply -k dir` (the shipped manifests).
    pub fn apply_kustomization(&self, dir: &Path) -> anyhow::Result<String> {
        let mut c = self.kubectl(&["apply", "-k"]);
        c.arg(dir);
        sys::run_command(c).context("kubectl apply -k (the shipped manifests)")
    }

    /// Register Node `name` as a kubelet would: the object, then its
    /// status (addresses); the controller manager gives it podCIDRs.
    pub fn register_node(
        &self,
        name: &str,
        internal_ip: &str,
        annotations: &Value,
    ) -> anyhow::Result<()> {
        self.call(
            "POST",
            "/api/v1/nodes",
            Some(
                &json!({"metadata": {"name": name, "annotations": annotations,
                "labels": {"kubernetes.io/hostname": name}}}),
            ),
        )?;
        self.call(
            "PATCH",
            &format!("/api/v1/nodes/{name}/status"),
            Some(&json!({"status": {"addresses": [
                {"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}]}})),
        )?;
        Ok(())
    }

    /// The podCIDRs the controller manager gave Node `name` (waits up to
    /// 30 s).
    pub fn pod_cidrs(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let start = Instant::now();
        loop {
            let n = self.call("GET", &format!("/api/v1/nodes/{name}"), None)?;
            let c: Vec<String> =
                serde_json::from_value(n["spec"]["podCIDRs"].clone()).unwrap_or_default();
            if !c.is_empty() {
                return Ok(c);
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("the controller manager gave Node {name} no podCIDRs in 30 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Credentials the shipped DaemonSet's pod on `node` would have: a
    /// stand-in Pod of the agent's ServiceAccount bound to `node` (no
    /// kubelet runs it) and a TokenRequest bound to that Pod, so the token
    /// carries the node-name claim the admission policy checks. Returns a
    /// kubeconfig file for the agent.
    pub fn agent_kubeconfig(&self, node: &str) -> anyhow::Result<PathBuf> {
        let pod = format!("podguard-agent-{node}");
        let ns = AGENT_NAMESPACE;
        let created = self.request(
            "POST",
            &format!("/api/v1/namespaces/{ns}/pods"),
            Some(
                &json!({"metadata": {"name": pod, "labels": {"app.kubernetes.io/name": "podguard"}},
                    "spec": {"nodeName": node, "serviceAccountName": AGENT_SERVICE_ACCOUNT,
                        "automountServiceAccountToken": false,
                        "containers": [{"name": "agent", "image": "ghcr.io/podguard/podguard:latest"}]}})
                .to_string(),
            ),
            "admin",
        )?;
        if created.0 != 201 && created.0 != 409 {
            bail!(
                "creating the stand-in agent Pod {ns}/{pod}: HTTP {}: {}",
                created.0,
                created.1
            );
        }
        let p = self.call("GET", &format!("/api/v1/namespaces/{ns}/pods/{pod}"), None)?;
        let uid = p["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let tr = self.call(
            "POST",
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/{AGENT_SERVICE_ACCOUNT}/token"),
            Some(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": 86400,
                    "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}}})),
        )?;
        let token = tr["status"]["token"]
            .as_str()
            .context("TokenRequest returned no token")?;
        write_private(&self.path(&format!("agent-{node}.token")), token)?;
        let file = self.path(&format!("agent-{node}.kubeconfig"));
        write_private(&file, &self.kubeconfig(&format!("agent-{node}"), token))?;
        Ok(file)
    }

    /// The bound token [`Self::agent_kubeconfig`] made for `node`'s agent.
    pub fn agent_token(&self, node: &str) -> anyhow::Result<String> {
        std::fs::read_to_string(self.path(&format!("agent-{node}.token")))
            .with_context(|| format!("no agent token for {node}: call agent_kubeconfig first"))
    }

    /// A kubeconfig file for static user `user` (see [`Self::token`]).
    pub fn user_kubeconfig(&self, user: &str) -> anyhow::Result<PathBuf> {
        let file = self.path(&format!("{user}.kubeconfig"));
        write_private(&file, &self.kubeconfig(user, &self.token(user)?))?;
        Ok(file)
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

fn random_token() -> anyhow::Result<String> {
    Ok(run(&["openssl", "rand", "-hex", "24"])?.trim().to_string())
}

/// Write a file only its owner can read (tokens, kubeconfigs).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
