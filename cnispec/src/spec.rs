//! The CNI protocol as the spec (1.1.0) defines it: environment and stdin
//! in, a result or an error JSON out, in the format of the requested
//! `cniVersion`. Parsing and formatting only — no IO.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest supported version.
pub const LATEST: &str = "1.1.0";
/// The plugin's `type`: the binary's name, which runtimes look up in their
/// plugin directories.
pub const PLUGIN_TYPE: &str = "podguard-cni";

/// Well-known error codes (CNI spec, "Error").
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_LATER: u32 = 11;
    /// Plugin not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin not available, existing containers may be damaged (STATUS).
    pub const NOT_AVAILABLE_DAMAGED: u32 = 51;
    /// podguard: the podCIDR has no free address.
    pub const ADDRESS_EXHAUSTED: u32 = 100;
    /// podguard: CHECK found the attachment not as ADD left it.
    pub const CHECK_FAILED: u32 = 101;
    /// podguard: a netlink or namespace operation failed.
    pub const NETWORK_SETUP: u32 = 102;
}

/// A CNI error result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    /// The spec's code (or ≥ 100 for ours).
    pub code: u32,
    /// Short message naming the problem.
    pub msg: String,
    /// Longer details.
    pub details: String,
}

impl CniError {
    /// A new error.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// With details.
    pub fn details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }

    /// The JSON the spec wants on stdout.
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({"cniVersion": version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = self.details.clone().into();
        }
        v
    }
}

/// CNI_COMMAND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach.
    Del,
    /// Verify.
    Check,
    /// Report versions.
    Version,
    /// Readiness (1.1.0).
    Status,
    /// Garbage-collect (1.1.0).
    Gc,
}

/// The plugin's entry of the network configuration (stdin).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Requested CNI version.
    pub cni_version: String,
    /// Network name.
    #[serde(default)]
    pub name: String,
    /// Plugin type (must be [`PLUGIN_TYPE`]).
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// Bridge to attach to (default: from the node state, `cbr0`).
    #[serde(default)]
    pub bridge: Option<String>,
    /// MTU override (default: from the node state).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Node state file (default `/run/podguard/node.json`).
    #[serde(default)]
    pub node_state_file: Option<PathBuf>,
    /// IPAM store directory (default `/var/lib/podguard/ipam`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Previous result (CHECK, DEL).
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC: the attachments that are still valid. Absent: `None`; `null`
    /// (a Go runtime's empty list: libcni marshals a nil slice so, as
    /// when no pod is left): `Some(None)`, nothing valid.
    #[serde(
        default,
        rename = "cni.dev/valid-attachments",
        deserialize_with = "present"
    )]
    pub valid_attachments: Option<Option<Vec<Attachment>>>,
    /// Everything else (runtimeConfig, args, capabilities, ipam, dns...).
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// A field that is present, even as `null` (`Some(None)`); an absent one
/// is `None` through `#[serde(default)]`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// Container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

/// A fully validated invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// CNI_COMMAND.
    pub command: Command,
    /// The network configuration (absent only for VERSION with bad stdin).
    pub conf: NetConf,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_NETNS (may be empty for DEL).
    pub netns: Option<PathBuf>,
    /// CNI_IFNAME.
    pub ifname: String,
}

fn version_tuple(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// Whether a supported version is at least `min`.
pub fn at_least(v: &str, min: &str) -> bool {
    matches!((version_tuple(v), version_tuple(min)), (Some(a), Some(b)) if a >= b)
}

/// The VERSION answer.
pub fn version_result(requested: &str) -> Value {
    let v = if SUPPORTED_VERSIONS.contains(&requested) {
        requested
    } else {
        LATEST
    };
    json!({"cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS})
}

fn env<'a>(envs: &'a BTreeMap<String, String>, k: &str) -> Option<&'a str> {
    envs.get(k).map(String::as_str).filter(|s| !s.is_empty())
}

/// Check an interface name the way the kernel would.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.contains(['/', ':'])
        && !name.chars().any(|c| c.is_whitespace())
}

/// A network name or container ID as the spec allows them: a letter or
/// digit, then letters, digits, `_`, `.` or `-` (so never a path).
pub fn valid_id(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// At most 64 characters of outside input, for error messages.
fn cut(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out
}

/// The `cniVersion` stdin asks for, if stdin is JSON that names one
/// (whether or not it is supported, or the rest of the request valid).
pub fn requested_version(stdin: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(stdin).ok().and_then(|v| {
        v.get("cniVersion")
            .and_then(Value::as_str)
            .map(String::from)
    })
}

/// Parse the invocation. The error names the bad variable or field.
pub fn parse(envs: &BTreeMap<String, String>, stdin: &[u8]) -> Result<Request, CniError> {
    let command = match env(envs, "CNI_COMMAND") {
        Some("ADD") => Command::Add,
        Some("DEL") => Command::Del,
        Some("CHECK") => Command::Check,
        Some("VERSION") => Command::Version,
        Some("STATUS") => Command::Status,
        Some("GC") => Command::Gc,
        Some(other) => {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"),
            ));
        }
        None => return Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set")),
    };
    if command == Command::Version {
        // VERSION must answer whatever stdin holds.
        let requested = requested_version(stdin).unwrap_or_else(|| LATEST.to_string());
        return Ok(Request {
            command,
            conf: NetConf {
                cni_version: requested,
                name: String::new(),
                plugin_type: String::new(),
                bridge: None,
                mtu: None,
                node_state_file: None,
                data_dir: None,
                prev_result: None,
                valid_attachments: None,
                other: BTreeMap::new(),
            },
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
        });
    }
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE,
            "the network configuration on stdin is not valid JSON",
        )
        .details(e.to_string())
    })?;
    let conf: NetConf = serde_path_to_error::deserialize(value).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!(
                "the network configuration on stdin has a bad field: {}",
                e.path()
            ),
        )
        .details(e.inner().to_string())
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {:?} is not supported (supported: {})",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    if conf.plugin_type != PLUGIN_TYPE {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "type {:?}: this plugin is {PLUGIN_TYPE:?} (the type names the binary runtimes run)",
                conf.plugin_type
            ),
        ));
    }
    if !valid_id(&conf.name) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "network name {:?} is not valid: it must start with a letter or digit, followed by letters, digits, '_', '.' or '-'",
                cut(&conf.name)
            ),
        ));
    }
    if let Some(ipam) = conf.other.get("ipam")
        && ipam
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty())
    {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            format!(
                "unsupported field ipam (type {}): podguard allocates addresses from the node's podCIDRs itself",
                ipam["type"]
            ),
        ));
    }
    if let Some(b) = &conf.bridge
        && !valid_ifname(b)
    {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("bridge {b:?} is not a valid interface name"),
        ));
    }
    if let Some(m) = conf.mtu
        && !(576..=65535).contains(&m)
    {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("mtu {m} is outside 576-65535"),
        ));
    }
    match command {
        Command::Check if !at_least(&conf.cni_version, "0.4.0") => {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "CHECK needs cniVersion 0.4.0 or newer, got {}",
                    conf.cni_version
                ),
            ));
        }
        Command::Status | Command::Gc if !at_least(&conf.cni_version, "1.1.0") => {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "STATUS and GC need cniVersion 1.1.0, got {}",
                    conf.cni_version
                ),
            ));
        }
        _ => {}
    }
    let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
    let mut missing = Vec::new();
    let container_id = env(envs, "CNI_CONTAINERID").unwrap_or_default().to_string();
    let ifname = env(envs, "CNI_IFNAME").unwrap_or_default().to_string();
    let netns = env(envs, "CNI_NETNS").map(PathBuf::from);
    if needs_container {
        if container_id.is_empty() {
            missing.push("CNI_CONTAINERID");
        }
        if ifname.is_empty() {
            missing.push("CNI_IFNAME");
        }
        if netns.is_none() && command != Command::Del {
            missing.push("CNI_NETNS");
        }
    }
    if !missing.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("{} not set", missing.join(", ")),
        ));
    }
    if needs_container {
        if !valid_ifname(&ifname) {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_IFNAME {ifname:?} is not a valid interface name"),
            ));
        }
        if !valid_id(&container_id) {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_CONTAINERID {:?} is not valid: it must start with a letter or digit, followed by letters, digits, '_', '.' or '-'",
                    cut(&container_id)
                ),
            ));
        }
    }
    if command == Command::Gc && conf.valid_attachments.is_none() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments in the configuration (an empty list, or null, when no attachment is valid)",
        ));
    }
    if command == Command::Check && conf.prev_result.is_none() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult in the configuration",
        ));
    }
    Ok(Request {
        command,
        conf,
        container_id,
        netns,
        ifname,
    })
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultInterface {
    /// Name.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// Netns path for the container side.
    pub sandbox: Option<String>,
}

/// The outcome of ADD, independent of the output version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddResult {
    /// Host veth, then container interface.
    pub interfaces: Vec<ResultInterface>,
    /// Addresses (with prefix) and their gateways, on interface index 1.
    pub ips: Vec<(IpNet, IpAddr)>,
    /// MTU used.
    pub mtu: u32,
}

/// Format an ADD result for `version`.
pub fn format_add(r: &AddResult, version: &str) -> Value {
    let interfaces: Vec<Value> = r
        .interfaces
        .iter()
        .map(|i| {
            let mut v = json!({"name": i.name, "mac": i.mac});
            if let Some(s) = &i.sandbox {
                v["sandbox"] = s.clone().into();
            }
            if at_least(version, "1.1.0") {
                v["mtu"] = r.mtu.into();
            }
            v
        })
        .collect();
    let pre_1 = !at_least(version, "1.0.0");
    let ips: Vec<Value> = r
        .ips
        .iter()
        .map(|(net, gw)| {
            let mut v =
                json!({"address": net.to_string(), "gateway": gw.to_string(), "interface": 1});
            if pre_1 {
                v["version"] = if net.addr().is_ipv4() { "4" } else { "6" }.into();
            }
            v
        })
        .collect();
    let routes: Vec<Value> = r
        .ips
        .iter()
        .map(|(net, gw)| {
            let dst = if net.addr().is_ipv4() {
                "0.0.0.0/0"
            } else {
                "::/0"
            };
            json!({"dst": dst, "gw": gw.to_string()})
        })
        .collect();
    json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": {},
    })
}

/// The addresses a previous result lists (for CHECK), in either format.
pub fn prev_result_ips(prev: &Value) -> Result<Vec<(IpNet, Option<IpAddr>)>, CniError> {
    let bad = |m: &str| CniError::new(code::DECODE, format!("prevResult: {m}"));
    let ips = prev
        .get("ips")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no ips list"))?;
    ips.iter()
        .map(|ip| {
            let addr = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("an ip without address"))?;
            let net: IpNet = addr
                .parse()
                .map_err(|_| bad(&format!("address {addr:?} is not a CIDR")))?;
            let gw = ip
                .get("gateway")
                .and_then(Value::as_str)
                .map(|g| {
                    g.parse()
                        .map_err(|_| bad(&format!("gateway {g:?} is not an IP")))
                })
                .transpose()?;
            Ok((net, gw))
        })
        .collect()
}

#[cfg(test)]
mod tests;
