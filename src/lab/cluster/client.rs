//! Talking to a running lab from outside its namespaces: the API server
//! (embedded or real) and the agents' metrics pages, each reached from
//! inside the namespace that can route to it.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};

use super::super::plan;
use super::{dir, underlay};
use crate::sys::in_netns;

/// The real control plane of the running lab, if it runs one.
pub fn real_control_plane() -> Option<crate::lab::kube::ControlPlane> {
    let d = dir().join("kube");
    let addr = plan::api_addr(&underlay());
    let ip = addr.split(':').next().unwrap_or_default();
    d.join("admin.token")
        .exists()
        .then(|| crate::lab::kube::ControlPlane::attach(&plan::underlay_netns(), &d, ip))
}

/// One request to the lab's API server (from inside the underlay; as the
/// cluster admin on a `--kube real` lab).
pub fn api(
    ul: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    if let Some(cp) = real_control_plane() {
        return cp.call(method, path, body);
    }
    let (code, text) = http(
        ul,
        &plan::api_addr(&underlay()),
        method,
        path,
        body.map(|b| b.to_string()).as_deref(),
    )?;
    if !(200..300).contains(&code) {
        bail!("{method} {path}: HTTP {code}: {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// A minimal HTTP/1.1 request from inside `ns` (Connection: close).
pub fn http(
    ns: &str,
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    use std::io::Read;
    let addr: std::net::SocketAddr = addr.parse()?;
    let (method, path, body) = (
        method.to_string(),
        path.to_string(),
        body.unwrap_or("").to_string(),
    );
    in_netns(ns, move || -> anyhow::Result<(u16, String)> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let ct = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: lab\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("malformed HTTP response")?;
        Ok((
            code,
            resp.split_once("\r\n\r\n")
                .map(|x| x.1.to_string())
                .unwrap_or_default(),
        ))
    })?
}

/// An agent's metrics page, from inside its node namespace.
pub fn metrics(ns: &str) -> Option<String> {
    http(ns, "127.0.0.1:9721", "GET", "/metrics", None)
        .ok()
        .map(|x| x.1)
}

/// One sample of metric `name` (the first, whatever its labels) from an
/// agent's metrics.
pub fn metric(ns: &str, name: &str) -> Option<f64> {
    let m = metrics(ns)?;
    m.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
