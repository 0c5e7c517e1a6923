//! Calls to the lab's real control plane from inside its namespace: raw
//! requests over TLS as a chosen user, `kubectl`, and the few operations
//! the lab and the tests need (apply the shipped manifests, register a
//! Node, wait for its podCIDRs).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{ControlPlane, PORT};
use crate::sys;

impl ControlPlane {
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
}
