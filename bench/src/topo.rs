//! The two-node topology, identical for every contender: an underlay
//! bridge, node namespaces A and B (192.0.2.1/.2), and a pod namespace
//! behind each node's bridge `cbr0` (10.244.1.2 and 10.244.2.2, MTU 1440
//! on the default 1500-byte underlay; see [`set_underlay_mtu`]).
//! Only the tunnel between the nodes differs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use podguard::sys::{self, netns_add, run, spawn_in};

pub use crate::contender::{Contender, wireguard_go_from};

/// Prefix of every namespace the bench creates.
pub const PREFIX: &str = "pgbench";
/// MTU of the underlay links (1500 unless [`set_underlay_mtu`] says).
static UNDERLAY_MTU: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Run every contender on an underlay of `mtu` bytes (e.g. 9000, jumbo
/// frames); pods and tunnels get `mtu - 60`. podguard is not told: its
/// agent finds the underlay's MTU by itself. Set once, before any build.
pub fn set_underlay_mtu(mtu: u32) {
    let _ = UNDERLAY_MTU.set(mtu);
}

/// MTU of the underlay links.
pub fn underlay_mtu() -> u32 {
    *UNDERLAY_MTU.get().unwrap_or(&1500)
}

/// MTU of pods and tunnels: the underlay's minus WireGuard over IPv4.
pub fn mtu() -> u32 {
    underlay_mtu() - 60
}

/// One built topology.
#[derive(Debug)]
pub struct Topo {
    /// Node namespaces.
    pub nodes: [String; 2],
    /// Pod namespaces.
    pub pods: [String; 2],
    /// Pod addresses.
    pub pod_ips: [String; 2],
    /// The nodes' WireGuard public keys (base64).
    pub public_keys: [String; 2],
    dir: PathBuf,
}

impl Topo {
    /// Add the attacker: a namespace on the underlay bridge holding
    /// [`crate::flood::ATTACKER_IP`]; returns its name.
    pub fn attacker(&self) -> anyhow::Result<String> {
        let (ul, x) = (format!("{PREFIX}-ul"), format!("{PREFIX}-x"));
        netns_add(&x)?;
        run(&[
            "ip", "-n", &ul, "link", "add", "ulx", "type", "veth", "peer", "name", "eth0", "netns",
            &x,
        ])?;
        run(&["ip", "-n", &ul, "link", "set", "ulx", "master", "br0", "up"])?;
        let addr = format!("{}/24", crate::flood::ATTACKER_IP);
        run(&["ip", "-n", &x, "addr", "add", &addr, "dev", "eth0"])?;
        run(&["ip", "-n", &x, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", &x, "link", "set", "lo", "up"])?;
        Ok(x)
    }
}

/// Remove everything with the bench prefix.
pub fn clean() {
    for ns in sys::netns_list()
        .into_iter()
        .filter(|n| n.starts_with(PREFIX))
    {
        sys::netns_destroy(&ns);
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        clean();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait(what: &str, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out waiting for {what}")
}

fn in_node(ns: &str, wg_dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    sys::run_command(sys::node_command(ns, wg_dir, args))
}

/// Build the topology with `c` as the tunnel; returns when pod A reaches pod B.
pub fn build(c: Contender, bins: &Path) -> anyhow::Result<Topo> {
    clean();
    std::fs::create_dir_all("/run/wireguard")?;
    let dir = std::env::temp_dir().join(format!("{PREFIX}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ul = format!("{PREFIX}-ul");
    netns_add(&ul)?;
    run(&["ip", "-n", &ul, "link", "add", "br0", "type", "bridge"])?;
    run(&["ip", "-n", &ul, "link", "set", "br0", "up"])?;
    let mut t = Topo {
        nodes: [format!("{PREFIX}-a"), format!("{PREFIX}-b")],
        pods: [format!("{PREFIX}-pa"), format!("{PREFIX}-pb")],
        pod_ips: ["10.244.1.2".into(), "10.244.2.2".into()],
        public_keys: Default::default(),
        dir: dir.clone(),
    };
    let mtu = mtu().to_string();
    let ul_mtu = underlay_mtu().to_string();
    for i in 0..2 {
        let (n, p) = (&t.nodes[i], &t.pods[i]);
        let idx = i + 1;
        netns_add(n)?;
        netns_add(p)?;
        let ulif = format!("ul{idx}");
        run(&[
            "ip", "-n", &ul, "link", "add", &ulif, "type", "veth", "peer", "name", "eth0", "netns",
            n,
        ])?;
        run(&["ip", "-n", &ul, "link", "set", &ulif, "master", "br0", "up"])?;
        run(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            &format!("192.0.2.{idx}/24"),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", n, "link", "set", "eth0", "mtu", &ul_mtu, "up"])?;
        run(&["ip", "-n", &ul, "link", "set", &ulif, "mtu", &ul_mtu])?;
        run(&[
            "ip",
            "netns",
            "exec",
            n,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        std::fs::create_dir_all(dir.join(format!("wg{idx}")))?;
        if c != Contender::Podguard {
            run(&[
                "ip", "-n", n, "link", "add", "cbr0", "mtu", &mtu, "type", "bridge",
            ])?;
            run(&[
                "ip",
                "-n",
                n,
                "addr",
                "add",
                &format!("10.244.{idx}.1/24"),
                "dev",
                "cbr0",
            ])?;
            run(&["ip", "-n", n, "link", "set", "cbr0", "up"])?;
        }
    }
    let keys: Vec<(String, String)> = (1..=2)
        .map(|i| {
            let key = dir.join(format!("key{i}"));
            let public = run(&[
                bins.join("podguard-agent").to_str().unwrap_or_default(),
                "--node-name",
                "x",
                "--cluster-cidr",
                "10.244.0.0/16",
                "--key-file",
                key.to_str().unwrap_or_default(),
                "--print-public-key",
            ])?;
            Ok((key.display().to_string(), public.trim().to_string()))
        })
        .collect::<anyhow::Result<_>>()?;
    t.public_keys = [keys[0].1.clone(), keys[1].1.clone()];
    match c {
        Contender::Plain => {
            run(&[
                "ip",
                "-n",
                &t.nodes[0],
                "route",
                "add",
                "10.244.2.0/24",
                "via",
                "192.0.2.2",
            ])?;
            run(&[
                "ip",
                "-n",
                &t.nodes[1],
                "route",
                "add",
                "10.244.1.0/24",
                "via",
                "192.0.2.1",
            ])?;
        }
        Contender::Podguard => {
            let nodes = dir.join("nodes.json");
            let list: Vec<serde_json::Value> = (0..2)
                .map(|i| {
                    serde_json::json!({"name": format!("n{}", i + 1), "podCIDRs": [format!("10.244.{}.0/24", i + 1)],
                        "endpoint": format!("192.0.2.{}:51820", i + 1), "publicKey": keys[i].1})
                })
                .collect();
            std::fs::write(&nodes, serde_json::to_vec(&list)?)?;
            for (i, (key_file, _)) in keys.iter().enumerate() {
                let wg = dir.join(format!("wg{}", i + 1));
                spawn_in(
                    &t.nodes[i],
                    &[
                        bins.join("podguard-agent").to_str().unwrap_or_default(),
                        "--node-name",
                        &format!("n{}", i + 1),
                        "--nodes-file",
                        nodes.to_str().unwrap_or_default(),
                        "--cluster-cidr",
                        "10.244.0.0/16",
                        "--key-file",
                        key_file,
                        "--state-file",
                        dir.join(format!("node{}.json", i + 1))
                            .to_str()
                            .unwrap_or_default(),
                        "--backend",
                        "userspace",
                    ],
                    &dir.join(format!("agent{}.log", i + 1)),
                    Some(&wg),
                    &[],
                )?;
                let n = t.nodes[i].clone();
                wait("podguard's cbr0", || {
                    run(&["ip", "-n", &n, "link", "show", "cbr0"]).is_ok()
                })?;
            }
        }
        Contender::WireguardGo
        | Contender::WireguardGoNew
        | Contender::WireguardGoSid
        | Contender::Boringtun
        | Contender::Boringtun1
        | Contender::Kernel => {
            for i in 0..2 {
                let n = &t.nodes[i];
                let wg = dir.join(format!("wg{}", i + 1));
                let log = dir.join(format!("wg{}.log", i + 1));
                match c {
                    Contender::WireguardGo => {
                        spawn_in(n, &["wireguard-go", "-f", "wg0"], &log, Some(&wg), &[])?;
                    }
                    Contender::WireguardGoNew | Contender::WireguardGoSid => {
                        let suite = c.debian_suite().unwrap_or_default();
                        let bin = std::fs::canonicalize(wireguard_go_from(suite))?;
                        spawn_in(
                            n,
                            &[bin.to_str().unwrap_or_default(), "-f", "wg0"],
                            &log,
                            Some(&wg),
                            &[],
                        )?;
                    }
                    Contender::Boringtun => {
                        spawn_in(
                            n,
                            &[
                                "boringtun-cli",
                                "--foreground",
                                "--disable-drop-privileges",
                                "wg0",
                            ],
                            &log,
                            Some(&wg),
                            &[],
                        )?;
                    }
                    Contender::Boringtun1 => {
                        spawn_in(
                            n,
                            &[
                                "boringtun-cli",
                                "--foreground",
                                "--disable-drop-privileges",
                                "--threads",
                                "1",
                                "wg0",
                            ],
                            &log,
                            Some(&wg),
                            &[],
                        )?;
                    }
                    _ => {
                        run(&["ip", "-n", n, "link", "add", "wg0", "type", "wireguard"])?;
                    }
                }
                let n2 = n.clone();
                wait("wg0", || {
                    run(&["ip", "-n", &n2, "link", "show", "wg0"]).is_ok()
                })?;
                let other = 1 - i;
                in_node(
                    n,
                    &wg,
                    &[
                        "wg",
                        "set",
                        "wg0",
                        "private-key",
                        &keys[i].0,
                        "listen-port",
                        "51820",
                        "peer",
                        &keys[other].1,
                        "allowed-ips",
                        &format!("10.244.{}.0/24", other + 1),
                        "endpoint",
                        &format!("192.0.2.{}:51820", other + 1),
                    ],
                )?;
                run(&["ip", "-n", n, "link", "set", "wg0", "mtu", &mtu, "up"])?;
                run(&[
                    "ip",
                    "-n",
                    n,
                    "route",
                    "add",
                    &format!("10.244.{}.0/24", other + 1),
                    "dev",
                    "wg0",
                ])?;
            }
        }
    }
    for i in 0..2 {
        let (n, p) = (&t.nodes[i], &t.pods[i]);
        run(&[
            "ip", "-n", n, "link", "add", "vpod", "mtu", &mtu, "type", "veth", "peer", "name",
            "eth0", "mtu", &mtu, "netns", p,
        ])?;
        run(&["ip", "-n", n, "link", "set", "vpod", "master", "cbr0", "up"])?;
        run(&[
            "ip",
            "-n",
            p,
            "addr",
            "add",
            &format!("{}/24", t.pod_ips[i]),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", p, "link", "set", "eth0", "up"])?;
        run(&[
            "ip",
            "-n",
            p,
            "route",
            "add",
            "default",
            "via",
            &format!("10.244.{}.1", i + 1),
        ])?;
    }
    let (pa, ipb) = (t.pods[0].clone(), t.pod_ips[1].clone());
    wait("pod A to reach pod B", || {
        sys::output(&[
            "ip", "netns", "exec", &pa, "ping", "-c", "1", "-W", "1", &ipb,
        ])
        .is_ok_and(|o| o.status.success())
    })
    .with_context(|| format!("{} did not come up", c.name()))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_removes_bench_namespaces_and_their_processes() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").is_err(),
                "this test needs root and must run under CI"
            );
            eprintln!("SKIPPED: needs root");
            return;
        }
        let ns = format!("{PREFIX}-cleantest{}", std::process::id());
        netns_add(&ns).unwrap();
        let log = std::env::temp_dir().join(format!("{ns}.log"));
        let pid = spawn_in(&ns, &["sleep", "300"], &log, None, &[]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        clean();
        assert!(!sys::netns_list().contains(&ns), "namespace left behind");
        std::thread::sleep(Duration::from_millis(200));
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(" Z "),
            "process left running: {state}"
        );
        let _ = std::fs::remove_file(log);
    }

    #[test]
    fn contenders_have_unique_ids() {
        let ids: std::collections::BTreeSet<_> = Contender::ALL.iter().map(|c| c.id()).collect();
        assert_eq!(ids.len(), Contender::ALL.len());
    }
}
