//! `podguard lab up` / `down`: build and remove a cluster in network
//! namespaces. Every resource is named with the `pglab` prefix and found by
//! it, so `down` also cleans up after a crash or kill -9 of the lab.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::plan::{self, LabSpec, NodePlan};
use crate::sys;

mod build;
mod client;

use build::build;
pub use client::{api, http, metric, metrics, real_control_plane};

/// Where a lab keeps its files (tmpfs, gone at reboot).
pub const STATE_DIR: &str = "/run/podguard-lab";

/// A pod of a running lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    /// Name.
    pub name: String,
    /// Node name.
    pub node: String,
    /// Network namespace.
    pub netns: String,
    /// Addresses (IPv4 first).
    pub ips: Vec<String>,
}

/// What `up` built (kept in `state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// The spec.
    pub spec: LabSpec,
    /// Pods.
    pub pods: Vec<Pod>,
}

/// Paths of the binaries the lab runs (next to `podguard`).
#[derive(Debug, Clone)]
pub struct Binaries {
    /// podguard (for the API server).
    pub podguard: PathBuf,
    /// podguard-agent.
    pub agent: PathBuf,
    /// podguard-cni.
    pub cni: PathBuf,
}

impl Binaries {
    /// Find the sibling binaries of the running executable.
    pub fn find() -> anyhow::Result<Self> {
        let me = std::env::current_exe().context("locating the podguard binary")?;
        let dir = me.parent().context("podguard has no directory")?;
        let b = Self {
            podguard: me.clone(),
            agent: dir.join("podguard-agent"),
            cni: dir.join("podguard-cni"),
        };
        for p in [&b.agent, &b.cni] {
            if !p.exists() {
                bail!(
                    "{} is missing: build all binaries (cargo build --release --bins)",
                    p.display()
                );
            }
        }
        Ok(b)
    }
}

fn dir() -> PathBuf {
    PathBuf::from(STATE_DIR)
}

fn node_dir(n: &NodePlan) -> PathBuf {
    dir().join(&n.name)
}

/// Preconditions: root, iproute2, /dev/net/tun.
pub fn preflight() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab needs root (network namespaces): run it with sudo");
    }
    if !sys::have("ip") {
        bail!("`ip` is missing: apt-get install -y iproute2");
    }
    if !Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing: the userspace WireGuard device needs the tun driver");
    }
    Ok(())
}

/// This machine's IPv4 route destinations (all tables; `default` left out).
fn root_routes() -> Vec<ipnet::IpNet> {
    sys::run(&["ip", "-4", "-o", "route", "show", "table", "all"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            // `[type] dst ...`; `default` is skipped (it overlaps everything).
            let mut w = l.split_whitespace();
            let mut dst = w.next()?;
            if matches!(
                dst,
                "local"
                    | "broadcast"
                    | "unicast"
                    | "unreachable"
                    | "blackhole"
                    | "prohibit"
                    | "multicast"
                    | "anycast"
                    | "throw"
                    | "nat"
            ) {
                dst = w.next()?;
            }
            dst.parse::<ipnet::IpNet>()
                .ok()
                .or_else(|| dst.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
        })
        .collect()
}

/// The underlay for a new lab: the first candidate no route of this
/// machine overlaps, or an error naming every candidate and its route.
pub fn choose_underlay() -> anyhow::Result<&'static str> {
    plan::pick_underlay(&root_routes()).map_err(|taken| {
        let list = taken
            .iter()
            .map(|(c, r)| format!("{c} (overlaps route {r})"))
            .collect::<Vec<_>>()
            .join(", ");
        anyhow::anyhow!(
            "no lab underlay fits this machine: every candidate overlaps a route here: {list}; the lab would shadow them inside its namespaces"
        )
    })
}

/// The running lab's underlay prefix (written by `lab up`).
pub fn underlay() -> String {
    std::fs::read_to_string(dir().join("underlay"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| plan::DEFAULT_UNDERLAY.to_string())
}

/// Whether a lab (or its remains) exists.
pub fn exists() -> bool {
    sys::netns_list().iter().any(|n| plan::is_lab_netns(n)) || dir().exists()
}

/// Remove every lab resource. Safe to run at any time, any number of times.
pub fn down() -> anyhow::Result<usize> {
    if !nix::unistd::geteuid().is_root() && exists() {
        bail!("removing the lab needs root (network namespaces): run it with sudo");
    }
    let mut removed = 0;
    for ns in sys::netns_list()
        .into_iter()
        .filter(|n| plan::is_lab_netns(n))
    {
        sys::netns_destroy(&ns);
        removed += 1;
    }
    if dir().exists() {
        std::fs::remove_dir_all(dir()).with_context(|| format!("removing {STATE_DIR}"))?;
    }
    Ok(removed)
}

/// Build the lab. On failure everything built so far is removed.
pub fn up(spec: &LabSpec, bins: &Binaries) -> anyhow::Result<LabState> {
    spec.check()?;
    preflight()?;
    if exists() {
        bail!("a lab already exists: run `podguard lab down` first");
    }
    let mut spec = spec.clone();
    spec.underlay = choose_underlay()?.to_string();
    match build(&spec, bins) {
        Ok(s) => Ok(s),
        Err(e) => {
            let kept = keep_logs();
            let _ = down();
            Err(e.context(format!(
                "lab up failed and was removed; its logs are kept in {}",
                kept.display()
            )))
        }
    }
}

/// Where a failed `lab up` leaves its logs (the lab itself is removed).
pub const FAILED_LOGS: &str = "/run/podguard-lab.failed";

/// Copy every log of the lab (API server, agents) to [`FAILED_LOGS`].
fn keep_logs() -> PathBuf {
    let out = PathBuf::from(FAILED_LOGS);
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::create_dir_all(&out);
    let copy = |from: &Path, name: String| {
        let _ = std::fs::copy(from, out.join(name));
    };
    if let Ok(entries) = std::fs::read_dir(dir()) {
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".log") {
                copy(&p, name);
            } else if p.join("agent.log").exists() {
                copy(&p.join("agent.log"), format!("{name}-agent.log"));
            }
        }
    }
    out
}

/// A label `lab up` records in the lab's state directory (file `owner`)
/// when this variable is set: test harnesses name their process in it, so
/// that a later run can tell a lab a killed test left from someone's own.
/// Removed with the lab.
pub const OWNER_ENV: &str = "PODGUARD_LAB_OWNER";

/// The state of the running lab.
pub fn load() -> anyhow::Result<LabState> {
    let p = dir().join("state.json");
    let b = std::fs::read(&p).with_context(|| {
        format!(
            "no lab is up ({} missing): run `podguard lab up`",
            p.display()
        )
    })?;
    serde_json::from_slice(&b)
        .with_context(|| format!("{} is corrupt: run `podguard lab down`", p.display()))
}
