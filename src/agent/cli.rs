//! The agent's command line (in the library so tests can check the
//! DaemonSet's arguments and environment against the real parser).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;

use crate::agent::node_state;
use crate::wireguard::BackendChoice;

/// How the agent writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The levels a bare word may be.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A log level or filter, checked when the flag is parsed. A bare word
/// must be a level: RUST_LOG syntax reads any other word (`warning`, a
/// typo) as a target to log, which turns every other log off, errors
/// included.
pub fn parse_log_filter(s: &str) -> Result<String, String> {
    let hint = "give a level (error, warn, info, debug, trace, off) or a RUST_LOG-style filter such as info,podguard::agent=debug";
    if s.trim().is_empty() {
        return Err(format!("no log level given; {hint}"));
    }
    // Empty pieces (`info,`) are allowed, as are numeric levels (0-5).
    for d in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let numeric = d.len() == 1 && (b'0'..=b'5').contains(&d.as_bytes()[0]);
        if !d.contains(['=', '[', ':'])
            && !numeric
            && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d))
        {
            return Err(format!("{d:?} is not a log level; {hint}"));
        }
    }
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{e}; {hint}"))
}

/// A Node's name, as Kubernetes allows it (a DNS-1123 subdomain): an
/// empty `NODE_NAME` (a DaemonSet without the downward API's
/// spec.nodeName) is refused before the agent touches the host.
pub fn check_node_name(name: &str) -> Result<(), String> {
    let fix = "set --node-name or NODE_NAME (in a DaemonSet: fieldRef spec.nodeName)";
    if name.is_empty() {
        return Err(format!("no node name given: {fix}"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "node name {name:?} is not a Kubernetes Node name (lowercase letters, digits, '-' and '.'): {fix}"
        ));
    }
    Ok(())
}

/// A CIDR flag, parsed as the planner parses podCIDRs
/// (`mesh::node::parse_cidr`), the value and its mistake named.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    mesh::node::parse_cidr(s).map_err(|e| format!("{:?}: {e}", mesh::node::cut_value(s)))
}

/// Like [`parse_duration`], at least a second: shorter periods would only
/// spin (a resync, a Lease renewed every quarter of its duration) or judge
/// on noise.
pub fn parse_period(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?} is too short: give at least 1s"));
    }
    Ok(d)
}

/// The keepalive: seconds as WireGuard counts them (`25`), or with a unit
/// as the other durations (`25s`, `1m`); 0 = off.
pub fn parse_keepalive(s: &str) -> Result<u16, String> {
    let secs = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"))?
    } else {
        let d = parse_duration(s)?;
        if d.subsec_nanos() != 0 {
            return Err(format!("{s:?} is not a whole number of seconds"));
        }
        d.as_secs()
    };
    u16::try_from(secs).map_err(|_| format!("{s:?} is more than 65535 seconds"))
}

/// Keeps this node's WireGuard mesh in line with the cluster's nodes.
///
/// The agent loads (or creates) this node's private key, brings up
/// `podguard0` (kernel WireGuard when available, otherwise podguard's
/// userspace device), the pod bridge `cbr0`, and the routes: every cluster
/// CIDR into `podguard0` with an `unreachable` backstop, so pod traffic is
/// encrypted or dropped, never sent in plaintext. It then reconciles peers
/// and routes with the node list.
#[derive(Debug, Parser)]
#[command(name = "podguard-agent", version, about, long_about)]
pub struct Args {
    /// This node's name (in a DaemonSet: the downward API's spec.nodeName).
    #[arg(
        long,
        env = "NODE_NAME",
        required_unless_present_any = ["uninstall", "print_public_key"],
        default_value = ""
    )]
    pub node_name: String,

    /// Log format: `text` for people, `json` (one object per line) for log
    /// pipelines.
    #[arg(long, env = "PODGUARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log level (`error`, `warn`, `info`, `debug`, `trace`) or a filter
    /// in RUST_LOG syntax (e.g. `info,podguard::agent=debug`). RUST_LOG,
    /// when set, wins.
    #[arg(long, env = "PODGUARD_LOG_LEVEL", default_value = "info", value_parser = parse_log_filter)]
    pub log_level: String,

    /// Read the node list from this JSON or YAML file instead of the
    /// Kubernetes API (a list of {name, podCIDRs, endpoint, publicKey,
    /// internalIPs}); it is re-read when it changes, and must be readable at
    /// start. Without it the agent uses the Kubernetes API: $KUBECONFIG
    /// when set, else the in-cluster config inside a Pod, else
    /// ~/.kube/config.
    #[arg(long, env = "PODGUARD_NODES_FILE")]
    pub nodes_file: Option<PathBuf>,

    /// Address of the metrics and health endpoints (/metrics, /healthz,
    /// /readyz). Loopback by default: the page lists peers' keys and
    /// counters, and the agent is on the host network of an untrusted
    /// underlay. Set a node address (or 0.0.0.0) only where the port is
    /// firewalled or Prometheus needs it.
    #[arg(long, env = "PODGUARD_METRICS_ADDR", default_value = "127.0.0.1:9721")]
    pub metrics_addr: std::net::SocketAddr,

    /// Namespace of this node's heartbeat Lease (the DaemonSet passes its
    /// own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = crate::k8s::lease::DEFAULT_NAMESPACE)]
    pub namespace: String,

    /// Duration of this node's heartbeat Lease (`podguard-<node>` in the
    /// agent's namespace, POD_NAMESPACE), renewed every quarter of it while
    /// the data plane reconciles; `podguard status` reports the agent down
    /// once it expires.
    #[arg(long, env = "PODGUARD_LEASE_DURATION", default_value = "40s", value_parser = parse_period)]
    pub lease_duration: Duration,

    /// /healthz fails (so the liveness probe restarts the agent) once the
    /// data plane has failed to reconcile for this long.
    #[arg(long, env = "PODGUARD_HEALTH_GRACE", default_value = "60s", value_parser = parse_period)]
    pub health_grace: Duration,

    /// A peer whose handshake initiations have gone unanswered this long
    /// (kernel backend: whose last handshake is older than this plus
    /// REKEY_AFTER_TIME, 120 s) is reported: `podguard status` (PEERS) and
    /// /metrics (`podguard_peer_problem`). WireGuard gives up after 90 s.
    #[arg(long, env = "PODGUARD_PEER_STALE_AFTER", default_value = "90s", value_parser = parse_period)]
    pub peer_stale_after: Duration,

    /// Install the CNI plugin binary and conflist before starting.
    #[arg(long, env = "PODGUARD_INSTALL_CNI")]
    pub install_cni: bool,

    /// Where --install-cni puts the plugin binary.
    #[arg(long, env = "PODGUARD_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,

    /// Where --install-cni puts the conflist.
    #[arg(long, env = "PODGUARD_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,

    /// Cluster CIDR(s) (pod network), v4 and/or v6; repeat or comma-separate.
    #[arg(
        long = "cluster-cidr",
        env = "PODGUARD_CLUSTER_CIDRS",
        value_delimiter = ',',
        value_parser = parse_cidr,
        required_unless_present_any = ["uninstall", "print_public_key"]
    )]
    pub cluster_cidrs: Vec<IpNet>,

    /// WireGuard UDP port.
    #[arg(long, env = "PODGUARD_LISTEN_PORT", default_value_t = mesh::DEFAULT_LISTEN_PORT)]
    pub listen_port: u16,

    /// Threads that encrypt (and, as many again, decrypt) on the userspace
    /// datapath, each direction's datapath thread being one of them (one
    /// peer's packets stay in order); 0 = half the CPUs the agent may use,
    /// so both directions together have one per CPU (1 on a 2-core node,
    /// where more only took time from the other direction).
    #[arg(
        long,
        env = "PODGUARD_CRYPTO_WORKERS",
        default_value_t = 0,
        value_name = "N"
    )]
    pub crypto_workers: usize,

    /// MTU of the underlay network; the tunnel MTU is this minus 60 (IPv4
    /// underlay) or 80 (IPv6), never below 1280. Default: found on the
    /// interface that holds this node's endpoint address (else the default
    /// route's), 1500 when none is found; at most 9216. Each node publishes
    /// its value (`podguard.dev/underlay-mtu`) and the mesh uses the
    /// smallest, so peers on different underlays still fit.
    #[arg(long, env = "PODGUARD_UNDERLAY_MTU", value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(576..=i64::from(crate::agent::underlay::MAX_UNDERLAY_MTU)))]
    pub underlay_mtu: Option<u32>,

    /// Masquerade pod traffic to addresses outside the cluster CIDR(s) to
    /// the node's address (nftables table `inet podguard`), so pods reach
    /// the world. Pod-to-pod and node-to-pod traffic is never NATed.
    /// `--masquerade=false` turns it off (removes the nat chain; the
    /// fail-closed barrier in the same table stays).
    #[arg(long, env = "PODGUARD_MASQUERADE", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub masquerade: bool,

    /// Where this node's `/proc/sys/net` is writable: the agent turns on
    /// forwarding there (`ipv4/ip_forward`, `ipv6/conf/all/forwarding`),
    /// for the families of --cluster-cidr only. The values are those of the
    /// agent's own network namespace (the host's, with hostNetwork). A
    /// container's `/proc/sys` is read-only, and runc refuses any mount
    /// inside `/proc`: the DaemonSet mounts the host's `/proc/sys/net` at
    /// `/host/proc/sys/net` and points this there.
    #[arg(
        long,
        env = "PODGUARD_PROC_SYS_NET",
        value_name = "DIR",
        default_value = "/proc/sys/net"
    )]
    pub proc_sys_net: std::path::PathBuf,

    /// Persistent keepalive towards each peer, in seconds (`25`, or with
    /// a unit: `25s`, `1m`; 0 = off). With it, a restarted agent
    /// handshakes with every peer at once.
    #[arg(long, env = "PODGUARD_KEEPALIVE", default_value_t = 25, value_parser = parse_keepalive)]
    pub keepalive: u16,

    /// This node's private key (created with mode 0600 if missing).
    #[arg(long, env = "PODGUARD_KEY_FILE", default_value = keys::store::DEFAULT_PATH)]
    pub key_file: PathBuf,

    /// Where to write the node state the CNI plugin reads.
    #[arg(long, env = "PODGUARD_STATE_FILE", default_value = node_state::DEFAULT_PATH)]
    pub state_file: PathBuf,

    /// WireGuard implementation.
    #[arg(long, env = "PODGUARD_BACKEND", value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    /// Full resync period: drift (a peer or route changed by hand) is
    /// repaired within this time.
    #[arg(long, env = "PODGUARD_RESYNC", default_value = "10s", value_parser = parse_period)]
    pub resync: Duration,

    /// Rotate this node's key when it is this old (e.g. `30d`, `12h`); off
    /// unless set. Each node adds its own delay of up to a fifth of the
    /// period, so nodes do not rotate together. Needs the Kubernetes API.
    #[arg(long, env = "PODGUARD_ROTATE_EVERY", value_parser = parse_period)]
    pub rotate_every: Option<Duration>,

    /// During a rotation, how long to wait for every peer to take the next
    /// key before switching anyway (an absent peer must not block it).
    /// It switches as soon as every peer has a session on the next key (on
    /// kernel WireGuard: had one for 5 s). Default 60s on the userspace
    /// device; 30s on kernel WireGuard, where the next key's sessions live
    /// on the companion interface `podguard0n` (port + 1), which peers on a
    /// userspace device never reach (they then see a short gap at the
    /// switch).
    #[arg(long, env = "PODGUARD_ROTATION_STAGE_TIMEOUT", value_parser = parse_duration)]
    pub rotation_stage_timeout: Option<Duration>,

    /// After the switch, how long the old key stays accepted at most
    /// (it is dropped earlier once every peer uses the new one).
    #[arg(long, env = "PODGUARD_ROTATION_RETIRE_TIMEOUT", default_value = "3m", value_parser = parse_duration)]
    pub rotation_retire_timeout: Duration,

    /// Print this node's public key (creating the key if needed) and exit.
    #[arg(long)]
    pub print_public_key: bool,

    /// With --install-cni: install, then exit (the DaemonSet's init step).
    // `requires_if`, not `requires`: PODGUARD_INSTALL_ONLY=false in the
    // environment must not demand --install-cni.
    #[arg(
        long,
        env = "PODGUARD_INSTALL_ONLY",
        requires_if("true", "install_cni")
    )]
    pub install_only: bool,

    /// Remove everything podguard created on this node, then exit: the
    /// podguard0 and cbr0 links, podguard's routes, the nftables table
    /// inet podguard, the CNI plugin and conflist (from --cni-bin-dir and
    /// --cni-conf-dir), the address leases (--ipam-dir), the node state
    /// file, the UAPI socket and the keys (--key-file). Drain the node first.
    #[arg(long, conflicts_with_all = ["install_cni", "print_public_key"])]
    pub uninstall: bool,

    /// The CNI plugin's address leases (its dataDir), for --uninstall.
    #[arg(long, env = "PODGUARD_IPAM_DIR", default_value = crate::cni::store::DEFAULT_DIR)]
    pub ipam_dir: PathBuf,
}

/// Parse a duration with its unit (humantime): `500ms`, `10s`, `2m`,
/// `12h`, `30d`, `1h30m`. A bare number is refused rather than guessed.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{s:?} has no unit: write {s}s (or {s}ms, {s}m, {s}h, {s}d)"
        ));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 10s, 500ms, 2m, 12h or 30d: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_and_filters() {
        for ok in [
            "info",
            "WARN",
            "off",
            "info,podguard::agent=debug",
            "podguard=trace",
            "warn,kube[list]=debug",
            "info,",
            "3",
        ] {
            assert_eq!(parse_log_filter(ok), Ok(ok.to_string()), "{ok}");
        }
        // A typo is a target in RUST_LOG syntax, which would silence
        // everything else.
        for bad in ["warning", "dbug", "", " ", "info,verbose"] {
            let e = parse_log_filter(bad).unwrap_err();
            assert!(e.contains("give a level (error, warn"), "{bad}: {e}");
        }
        assert!(
            parse_log_filter("warning")
                .unwrap_err()
                .contains("\"warning\" is not a log level")
        );
    }

    #[test]
    fn node_names() {
        for ok in ["node-1", "ip-10-0-0-1.ec2.internal", "a"] {
            assert_eq!(check_node_name(ok), Ok(()), "{ok}");
        }
        assert!(check_node_name("").unwrap_err().contains("NODE_NAME"));
        for bad in ["Node1", "-a", "a..b", "a b", &"x".repeat(254)] {
            assert!(
                check_node_name(bad)
                    .unwrap_err()
                    .contains("not a Kubernetes Node name"),
                "{bad}"
            );
        }
    }

    #[test]
    fn cidrs_name_the_value_and_the_mistake() {
        // The parsing itself: mesh::node's tests.
        for (bad, says) in [
            (
                "10.244.0.0/33",
                "\"10.244.0.0/33\": prefix length \"33\" is not 0 to 32",
            ),
            (
                "10.42.9.9/16",
                "\"10.42.9.9/16\": host bits are set: write 10.42.0.0/16",
            ),
        ] {
            let e = parse_cidr(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn periods_and_keepalives() {
        assert_eq!(parse_period("1s"), Ok(Duration::from_secs(1)));
        for short in ["0s", "1ms", "999ms"] {
            assert!(
                parse_period(short).unwrap_err().contains("at least 1s"),
                "{short}"
            );
        }
        assert!(parse_period("10").unwrap_err().contains("has no unit"));
        assert_eq!(parse_keepalive("25"), Ok(25));
        assert_eq!(parse_keepalive("25s"), Ok(25));
        assert_eq!(parse_keepalive("1m"), Ok(60));
        assert_eq!(parse_keepalive("0"), Ok(0));
        assert!(
            parse_keepalive("1500ms")
                .unwrap_err()
                .contains("whole number")
        );
        assert!(parse_keepalive("70000").unwrap_err().contains("65535"));
        assert!(parse_keepalive("x").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(
            parse_duration("10")
                .unwrap_err()
                .contains("has no unit: write 10s")
        );
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(2_592_000)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("5x").unwrap_err().contains("\"5x\""));
        assert!(parse_duration("x").unwrap_err().contains("\"x\""));
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn rotate_every_is_off_unless_set() {
        let a = Args::try_parse_from([
            "podguard-agent",
            "--node-name",
            "n",
            "--cluster-cidr",
            "10.0.0.0/8",
        ])
        .unwrap();
        assert_eq!(a.rotate_every, None);
        let a = Args::try_parse_from([
            "podguard-agent",
            "--node-name",
            "n",
            "--cluster-cidr",
            "10.0.0.0/8",
            "--rotate-every",
            "30d",
        ])
        .unwrap();
        assert_eq!(a.rotate_every, Some(Duration::from_secs(30 * 86_400)));
        assert!(
            Args::try_parse_from([
                "podguard-agent",
                "--node-name",
                "n",
                "--cluster-cidr",
                "10.0.0.0/8",
                "--rotate-every",
                "soon",
            ])
            .is_err()
        );
    }
}
