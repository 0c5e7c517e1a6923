//! The lab control plane's credentials: its CA and serving certificate,
//! the ServiceAccount signing key, static tokens for the admin and test
//! users, and kubeconfigs, among them the agent's, bound to a node the way
//! the shipped DaemonSet's pod would be. Every secret file is 0600.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::json;

use super::{AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT, ControlPlane, PORT};
use crate::sys::run;

/// Users of the static token file: name, groups. `intruder` has no role
/// until a test binds one: an account that may patch Nodes but is neither
/// an agent nor an admin.
const USERS: [(&str, &str); 3] = [
    ("admin", "system:masters"),
    ("ops", "podguard:admins"),
    ("intruder", "example:others"),
];

impl ControlPlane {
    /// The CA, the serving certificate (for `ip`), the ServiceAccount
    /// signing key, the static tokens and the admin kubeconfig.
    pub(super) fn write_credentials(&self) -> anyhow::Result<()> {
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
        self.issue(
            "apiserver",
            "/CN=kube-apiserver",
            &format!(
                "subjectAltName=IP:{},IP:127.0.0.1,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default.svc\n",
                self.ip
            ),
        )?;
        // The API server's client certificate for kubelets' APIs (logs,
        // exec), as kubeadm names it.
        self.client_cert(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
        )?;
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

    /// A client certificate and key signed by the lab CA, `NAME.crt` and
    /// `NAME.key` in the control plane's directory, for subject CN=`cn`
    /// (the user), O=`org` (a group).
    fn client_cert(&self, name: &str, cn: &str, org: Option<&str>) -> anyhow::Result<()> {
        let subj = match org {
            Some(o) => format!("/O={o}/CN={cn}"),
            None => format!("/CN={cn}"),
        };
        self.issue(name, &subj, "extendedKeyUsage=clientAuth\n")
    }

    /// A key and a certificate signed by the lab CA: `NAME.key`,
    /// `NAME.crt`, for subject `subj` with the X.509 extensions `ext`
    /// (openssl's extfile syntax).
    fn issue(&self, name: &str, subj: &str, ext: &str) -> anyhow::Result<()> {
        let d = |n: &str| self.path(n).to_string_lossy().into_owned();
        let (key, csr, ext_file, crt) = (
            d(&format!("{name}.key")),
            d(&format!("{name}.csr")),
            d(&format!("{name}.ext")),
            d(&format!("{name}.crt")),
        );
        run(&[
            "openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", subj, "-keyout", &key,
            "-out", &csr,
        ])
        .with_context(|| format!("creating the key of {subj} (openssl)"))?;
        std::fs::write(&ext_file, ext)?;
        run(&[
            "openssl",
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &d("ca.crt"),
            "-CAkey",
            &d("ca.key"),
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &ext_file,
            "-out",
            &crt,
        ])
        .with_context(|| format!("signing the certificate of {subj} (openssl)"))?;
        Ok(())
    }

    /// A kubeconfig file that authenticates with a client certificate for
    /// user `cn` in group `org`: a kubelet's (`system:node:NAME`,
    /// `system:nodes`) or kube-proxy's (`system:kube-proxy`).
    pub fn cert_kubeconfig(
        &self,
        name: &str,
        cn: &str,
        org: Option<&str>,
    ) -> anyhow::Result<PathBuf> {
        self.client_cert(name, cn, org)?;
        let file = self.path(&format!("{name}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: podguard-lab\n  cluster:\n    server: https://{}:{PORT}\n    certificate-authority: {}\n\
             users:\n- name: {cn}\n  user:\n    client-certificate: {}\n    client-key: {}\n\
             contexts:\n- name: podguard-lab\n  context: {{cluster: podguard-lab, user: {cn}}}\ncurrent-context: podguard-lab\n",
            self.ip,
            self.path("ca.crt").display(),
            self.path(&format!("{name}.crt")).display(),
            self.path(&format!("{name}.key")).display(),
        );
        write_private(&file, &text)?;
        Ok(file)
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
