//! `podguard lab check`: all-pairs pod reachability (ping and TCP), no-NAT,
//! an underlay capture proving cross-node pod traffic is only WireGuard,
//! and handshake ages.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::Serialize;

use super::cluster::{self, LabState, Pod};
use super::plan;
use crate::sys::{self, in_netns};

/// Port of the lab pods' echo servers (also their named container port `echo`).
pub const ECHO_PORT: u16 = 7777;

/// IP packets on the underlay that could carry pod data in the clear:
/// everything except WireGuard (UDP 51820), the lab API server's TCP,
/// IGMP, IPv6 multicast control, and ICMP errors about WireGuard datagrams
/// (e.g. "port unreachable" from a node whose device is down, which quote
/// only WireGuard ciphertext).
pub const PLAINTEXT_FILTER: &str = "(ip and not udp port 51820 and not igmp and not tcp port 6443 \
     and not (icmp and icmp[0] == 3 and (icmp[28:2] == 51820 or icmp[30:2] == 51820))) \
     or (ip6 and not icmp6 and not ip6 multicast)";

/// One directed pod pair in one address family.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PairResult {
    /// Source pod.
    pub from: String,
    /// Destination pod.
    pub to: String,
    /// Destination address.
    pub to_ip: String,
    /// Whether the pods are on different nodes (traffic crosses the underlay).
    pub cross_node: bool,
    /// ICMP echo answered.
    pub ping: bool,
    /// TCP exchange completed.
    pub tcp: bool,
    /// The source address the destination saw.
    pub seen_source: Option<String>,
    /// The seen source is the sender's pod IP.
    pub no_nat: bool,
}

/// What the underlay capture saw.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureResult {
    /// WireGuard packets (UDP 51820).
    pub encrypted_packets: usize,
    /// Other IP packets carrying data (excludes the API server's TCP, IGMP
    /// and IPv6 multicast control traffic).
    pub plaintext_packets: usize,
    /// Packets containing the check's plaintext marker.
    pub marker_hits: usize,
}

/// Handshake age of one peer, seen from one node.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake {
    /// The node reporting.
    pub node: String,
    /// The peer's public key.
    pub peer: String,
    /// Seconds since the last handshake (None: never).
    pub age_seconds: Option<u64>,
}

/// The whole check.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Pods checked.
    pub pods: Vec<Pod>,
    /// Every pair and family.
    pub pairs: Vec<PairResult>,
    /// The capture.
    pub capture: CaptureResult,
    /// Handshake ages.
    pub handshakes: Vec<Handshake>,
    /// Everything passed.
    pub ok: bool,
}

fn marker() -> String {
    let mut b = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    format!(
        "PODGUARD-LAB-MARKER-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// Echo servers: answer each connection with the peer address it saw.
fn start_echo(pod: &Pod) -> anyhow::Result<()> {
    let ips: Vec<IpAddr> = pod.ips.iter().filter_map(|i| i.parse().ok()).collect();
    let listeners = in_netns(&pod.netns, || {
        ips.iter()
            .map(|ip| TcpListener::bind(SocketAddr::new(*ip, ECHO_PORT)))
            .collect::<Result<Vec<_>, _>>()
    })??;
    for l in listeners {
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let mut c = c;
                let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
                let mut buf = [0u8; 256];
                // A read with a timeout is not restarted after a stop or
                // a freeze: answered early, the unread marker would reset
                // the connection under the client.
                let _ = loop {
                    match c.read(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        r => break r,
                    }
                };
                if let Ok(peer) = c.peer_addr() {
                    let _ = c.write_all(peer.ip().to_string().as_bytes());
                }
            }
        });
    }
    Ok(())
}

fn tcp_exchange(from: &Pod, to: IpAddr, marker: &str) -> Option<String> {
    in_netns(&from.netns, || -> Option<String> {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::new(to, ECHO_PORT), Duration::from_secs(3))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.write_all(marker.as_bytes()).ok()?;
        let mut seen = String::new();
        s.read_to_string(&mut seen).ok()?;
        Some(seen)
    })
    .ok()
    .flatten()
}

/// Pod pairs checked at once.
const PARALLEL_PAIRS: usize = 32;

/// One echo, retried once: the first packet to a fresh pod may wait for
/// neighbour discovery (IPv6) longer than the timeout.
fn ping(ns: &str, ip: &str) -> bool {
    (0..2).any(|_| {
        sys::output(&["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", ip])
            .is_ok_and(|o| o.status.success())
    })
}

fn count(file: &std::path::Path, filter: &str) -> usize {
    sys::output(&[
        "tcpdump",
        "-r",
        file.to_str().unwrap_or_default(),
        "-n",
        filter,
    ])
    .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
    .unwrap_or(0)
}

/// Run every check against the running lab.
pub fn check(progress: bool) -> anyhow::Result<Report> {
    cluster::preflight()?;
    if !sys::have("tcpdump") {
        bail!("`tcpdump` is missing (the check captures the underlay): apt-get install -y tcpdump");
    }
    if !sys::have("ping") {
        bail!("`ping` is missing: apt-get install -y iputils-ping");
    }
    let state: LabState = cluster::load()?;
    let ul = plan::underlay_netns();
    let pcap = PathBuf::from(cluster::STATE_DIR).join("check.pcap");
    let err = PathBuf::from(cluster::STATE_DIR).join("check.tcpdump");
    let _ = std::fs::remove_file(&pcap);
    let mut tcpdump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ul,
            "tcpdump",
            "--immediate-mode",
            "-B",
            "16384",
            "-s",
            "400",
            "-U",
            "-n",
            "-i",
            "br0",
            "-w",
        ])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err)?)
        .spawn()
        .context("starting tcpdump")?;
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&err)
        .unwrap_or_default()
        .contains("listening on")
    {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = tcpdump.kill();
            bail!(
                "tcpdump did not start: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    for p in &state.pods {
        start_echo(p)?;
    }
    let mark = marker();
    // Every (from, to, family) is one job; jobs run on a bounded pool, so a
    // dead node costs one per-pair timeout, not one per pair in sequence.
    let mut jobs = Vec::new();
    for from in &state.pods {
        for to in &state.pods {
            if from.name == to.name {
                continue;
            }
            for (fam, to_ip) in to.ips.iter().enumerate() {
                if let (Some(from_ip), Ok(addr)) = (from.ips.get(fam), to_ip.parse::<IpAddr>()) {
                    jobs.push((from, to, from_ip.clone(), to_ip.clone(), addr));
                }
            }
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<PairResult>>> =
        jobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let workers = jobs.len().clamp(1, PARALLEL_PAIRS);
    std::thread::scope(|sc| {
        for _ in 0..workers {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((from, to, from_ip, to_ip, addr)) = jobs.get(i) else {
                        break;
                    };
                    let ping_ok = ping(&from.netns, to_ip);
                    let seen =
                        tcp_exchange(from, *addr, &format!("{mark} {} -> {}", from.name, to.name));
                    let r = PairResult {
                        from: from.name.clone(),
                        to: to.name.clone(),
                        to_ip: to_ip.clone(),
                        cross_node: from.node != to.node,
                        ping: ping_ok,
                        tcp: seen.is_some(),
                        no_nat: seen.as_deref() == Some(from_ip.as_str()),
                        seen_source: seen,
                    };
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(r);
                    }
                    let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if progress && n.is_multiple_of(20) {
                        eprintln!("  · checked {n} of {} pod pairs and families", jobs.len());
                    }
                }
            });
        }
    });
    let pairs: Vec<PairResult> = results
        .into_iter()
        .filter_map(|m| m.into_inner().ok().flatten())
        .collect();

    std::thread::sleep(Duration::from_millis(300));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tcpdump.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = tcpdump.wait();
    let raw = std::fs::read(&pcap).unwrap_or_default();
    let marker_hits = raw
        .windows(mark.len())
        .filter(|w| *w == mark.as_bytes())
        .count();
    let capture = CaptureResult {
        encrypted_packets: count(&pcap, "udp port 51820"),
        plaintext_packets: count(&pcap, PLAINTEXT_FILTER),
        marker_hits,
    };

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut handshakes = Vec::new();
    for n in state.spec.all_nodes() {
        let m = cluster::metrics(&n.netns).unwrap_or_default();
        for l in m
            .lines()
            .filter(|l| l.starts_with("podguard_peer_last_handshake_seconds{"))
        {
            let peer = l
                .split("peer=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_string();
            let ts: u64 = l
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            handshakes.push(Handshake {
                node: n.name.clone(),
                peer,
                age_seconds: (ts > 0).then(|| now.saturating_sub(ts)),
            });
        }
    }

    let cross = pairs.iter().any(|p| p.cross_node);
    let ok = pairs.iter().all(|p| p.ping && p.tcp && p.no_nat)
        && capture.plaintext_packets == 0
        && capture.marker_hits == 0
        && (!cross || capture.encrypted_packets > 0)
        && handshakes
            .iter()
            .all(|h| h.age_seconds.is_some_and(|a| a < 180));
    Ok(Report {
        pods: state.pods,
        pairs,
        capture,
        handshakes,
        ok,
    })
}

/// The report as a table a person reads at a glance.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let w = r
        .pods
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let fams = r.pods.first().map(|p| p.ips.len()).unwrap_or(1);
    let _ = writeln!(
        out,
        "Reachability (ping + TCP, no NAT){}:",
        if fams > 1 { ", IPv4/IPv6" } else { "" }
    );
    let _ = write!(out, "  {:w$}", "from \\ to");
    for p in &r.pods {
        let _ = write!(out, "  {:>w$}", p.name);
    }
    out.push('\n');
    for a in &r.pods {
        let _ = write!(out, "  {:w$}", a.name);
        for b in &r.pods {
            let cell = if a.name == b.name {
                "-".to_string()
            } else {
                r.pairs
                    .iter()
                    .filter(|p| p.from == a.name && p.to == b.name)
                    .map(|p| {
                        if p.ping && p.tcp && p.no_nat {
                            "ok"
                        } else {
                            "FAIL"
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("/")
            };
            let _ = write!(out, "  {cell:>w$}");
        }
        out.push('\n');
    }
    let failed: Vec<&PairResult> = r
        .pairs
        .iter()
        .filter(|p| !(p.ping && p.tcp && p.no_nat))
        .collect();
    for f in &failed {
        let _ = writeln!(
            out,
            "  FAIL {} -> {} ({}): ping={} tcp={} source seen={}",
            f.from,
            f.to,
            f.to_ip,
            f.ping,
            f.tcp,
            f.seen_source.as_deref().unwrap_or("-")
        );
    }
    let c = &r.capture;
    let _ = writeln!(
        out,
        "\nUnderlay capture: {} WireGuard packets, {} plaintext packets, {} plaintext marker hits  {}",
        c.encrypted_packets,
        c.plaintext_packets,
        c.marker_hits,
        if c.plaintext_packets == 0 && c.marker_hits == 0 {
            "ok"
        } else {
            "FAIL"
        }
    );
    let ages: Vec<u64> = r.handshakes.iter().filter_map(|h| h.age_seconds).collect();
    let never = r
        .handshakes
        .iter()
        .filter(|h| h.age_seconds.is_none())
        .count();
    let _ = writeln!(
        out,
        "Handshakes: {} peer links, newest {}s, oldest {}s ago{}",
        r.handshakes.len(),
        ages.iter().min().copied().unwrap_or(0),
        ages.iter().max().copied().unwrap_or(0),
        if never > 0 {
            format!(", {never} never")
        } else {
            String::new()
        }
    );
    let passed = r.pairs.len() - failed.len();
    let _ = writeln!(
        out,
        "\n{}: {passed}/{} pod pairs reachable without NAT; cross-node traffic {}",
        if r.ok { "PASS" } else { "FAIL" },
        r.pairs.len(),
        if c.plaintext_packets == 0 && c.marker_hits == 0 {
            "encrypted only"
        } else {
            "NOT only encrypted"
        }
    );
    out
}
