//! `podguard lab up` / `down`: build and remove a cluster in network
//! namespaces. Every resource is named with the `pglab` prefix and found by
//! it, so `down` also cleans up after a crash or kill -9 of the lab.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::plan::{self, KubeMode, LabSpec, NodePlan};
use super::sys::{self, in_netns, netns_add, run};

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

fn progress(msg: &str) {
    eprintln!("  · {msg}");
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

/// Run `ip -n ns -batch` on `lines`.
fn ip_batch(ns: &str, lines: &str) -> anyhow::Result<()> {
    let file = dir().join(format!("batch-{ns}"));
    std::fs::write(&file, lines)?;
    run(&["ip", "-n", ns, "-batch", file.to_str().unwrap_or_default()])?;
    let _ = std::fs::remove_file(&file);
    Ok(())
}

/// A label `lab up` records in the lab's state directory (file `owner`)
/// when this variable is set: test harnesses name their process in it, so
/// that a later run can tell a lab a killed test left from someone's own.
/// Removed with the lab.
pub const OWNER_ENV: &str = "PODGUARD_LAB_OWNER";

fn build(spec: &LabSpec, bins: &Binaries) -> anyhow::Result<LabState> {
    std::fs::create_dir_all(dir())?;
    if let Some(owner) = std::env::var_os(OWNER_ENV) {
        std::fs::write(dir().join("owner"), owner.as_encoded_bytes())?;
    }
    std::fs::write(dir().join("underlay"), &spec.underlay)?;
    let api_addr = plan::api_addr(&spec.underlay);
    std::fs::create_dir_all("/run/wireguard")?;
    let ul = plan::underlay_netns();
    progress(&format!(
        "underlay network {ul} ({}) and the API server on {api_addr}",
        plan::underlay_net(&spec.underlay)
    ));
    netns_add(&ul)?;
    let api_mac = plan::underlay_mac(plan::API_HOST);
    run(&[
        "ip", "-n", &ul, "link", "add", "br0", "address", &api_mac, "type", "bridge",
    ])?;
    run(&[
        "ip",
        "-n",
        &ul,
        "addr",
        "add",
        &format!("{}.254/24", spec.underlay),
        "dev",
        "br0",
    ])?;
    run(&["ip", "-n", &ul, "link", "set", "br0", "up"])?;
    let server = match spec.kube {
        KubeMode::Embedded => start_embedded(bins, &ul, &api_addr)?,
        KubeMode::Real => start_real(spec, &ul)?,
    };
    let kubeconfig = dir().join("kubeconfig").to_string_lossy().into_owned();

    let nodes = spec.all_nodes();
    progress(&format!(
        "{} nodes, each running podguard-agent",
        nodes.len()
    ));
    for n in &nodes {
        netns_add(&n.netns)?;
        let ulif = format!("ul-{}", n.name);
        let mac = plan::underlay_mac(n.index);
        run(&[
            "ip", "-n", &ul, "link", "add", &ulif, "type", "veth", "peer", "name", "eth0",
            "address", &mac, "netns", &n.netns,
        ])?;
        // No ARP on the underlay (see plan::underlay_neighbours).
        let count = nodes.len() as u8;
        ip_batch(
            &n.netns,
            &plan::underlay_neighbours(&spec.underlay, count, n.index, "eth0"),
        )?;
        ip_batch(
            &ul,
            &format!(
                "neigh replace {} lladdr {mac} dev br0 nud permanent\n",
                n.underlay_ip
            ),
        )?;
        run(&["ip", "-n", &ul, "link", "set", &ulif, "master", "br0", "up"])?;
        run(&[
            "ip",
            "-n",
            &n.netns,
            "addr",
            "add",
            &format!("{}/24", n.underlay_ip),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", &n.netns, "link", "set", "eth0", "up"])?;
        let mut agent_env = vec![("KUBECONFIG", kubeconfig.clone())];
        match &server {
            Server::Embedded => {
                let body = json!({
                    "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name}},
                    "spec": {"podCIDRs": n.pod_cidrs},
                    "status": {"addresses": [{"type": "InternalIP", "address": n.underlay_ip}, {"type": "Hostname", "address": n.name}]},
                });
                api(&ul, "POST", "/api/v1/nodes", Some(&body))?;
            }
            Server::Real(cp) => {
                // As a kubelet registers; node IPAM gives the podCIDRs, and
                // the agent runs on its own bound ServiceAccount token.
                cp.register_node(&n.name, &n.underlay_ip, &json!({}))?;
                let kc = cp.agent_kubeconfig(&n.name)?;
                agent_env = vec![
                    ("KUBECONFIG", kc.to_string_lossy().into_owned()),
                    ("POD_NAMESPACE", super::kube::AGENT_NAMESPACE.into()),
                ];
            }
        }
        let nd = node_dir(n);
        std::fs::create_dir_all(nd.join("wg"))?;
        let key = nd.join("private.key");
        let state = nd.join("node.json");
        sys::spawn_in(
            &n.netns,
            &[
                bins.agent.to_str().unwrap_or("podguard-agent"),
                "--node-name",
                &n.name,
                "--cluster-cidr",
                &spec.cluster_cidrs(),
                "--key-file",
                key.to_str().unwrap_or_default(),
                "--state-file",
                state.to_str().unwrap_or_default(),
                "--backend",
                spec.backend.arg(),
            ],
            &nd.join("agent.log"),
            Some(&nd.join("wg")),
            &agent_env
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        )?;
    }
    progress("waiting for every agent to publish its key and configure its peers");
    let want_peers = nodes.len() - 1;
    wait("the mesh to converge", Duration::from_secs(60), || {
        nodes.iter().all(|n| {
            node_dir(n).join("node.json").exists()
                && metric(&n.netns, "podguard_peers").is_some_and(|v| v as usize == want_peers)
        })
    })?;

    progress(&format!(
        "{} pods, attached by podguard-cni",
        nodes.len() * spec.pods_per_node as usize
    ));
    let mut pods = Vec::new();
    for ns in plan::NAMESPACES {
        api(
            &ul,
            "POST",
            "/api/v1/namespaces",
            Some(&json!({"metadata": {"name": ns, "labels": {"team": ns}}})),
        )?;
    }
    if let Server::Real(cp) = &server {
        wait(
            "the namespaces' default ServiceAccounts",
            Duration::from_secs(30),
            || {
                plan::NAMESPACES.iter().all(|ns| {
                    cp.call(
                        "GET",
                        &format!("/api/v1/namespaces/{ns}/serviceaccounts/default"),
                        None,
                    )
                    .is_ok()
                })
            },
        )?;
    }
    for n in &nodes {
        for p in &n.pods {
            netns_add(&p.netns)?;
            let ips = cni_add(bins, n, &p.name, &p.netns)?;
            // The Pod object a kubelet would have: what `podguard audit` reads.
            let ns = plan::pod_namespace(n);
            let status = json!({"phase": "Running", "podIP": ips.first(),
                "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>()});
            api(
                &ul,
                "POST",
                &format!("/api/v1/namespaces/{ns}/pods"),
                Some(&json!({
                    "metadata": {"name": p.name, "labels": {"app": p.name, "team": ns}},
                    "spec": {"nodeName": n.name, "containers": [{"name": "echo", "image": "lab",
                        "ports": [{"name": "echo", "containerPort": super::check::ECHO_PORT, "protocol": "TCP"}]}]},
                    "status": status,
                })),
            )?;
            if matches!(server, Server::Real(_)) {
                // A real API server drops the status of a create.
                api(
                    &ul,
                    "PATCH",
                    &format!("/api/v1/namespaces/{ns}/pods/{}/status", p.name),
                    Some(&json!({"status": status})),
                )?;
            }
            pods.push(Pod {
                name: p.name.clone(),
                node: n.name.clone(),
                netns: p.netns.clone(),
                ips,
            });
        }
    }
    let state = LabState {
        spec: spec.clone(),
        pods,
    };
    std::fs::write(dir().join("state.json"), serde_json::to_vec_pretty(&state)?)?;
    Ok(state)
}

/// The lab's API server, as `build` sets it up (requests go through
/// [`api`], which finds a real control plane by its files).
enum Server {
    /// `podguard lab api-server` in the underlay namespace.
    Embedded,
    /// The real control plane.
    Real(Box<super::kube::ControlPlane>),
}

fn start_embedded(bins: &Binaries, ul: &str, api_addr: &str) -> anyhow::Result<Server> {
    let api_state = dir().join("api.json");
    sys::spawn_in(
        ul,
        &[
            bins.podguard.to_str().unwrap_or("podguard"),
            "lab",
            "api-server",
            "--listen",
            api_addr,
            "--state",
            api_state.to_str().unwrap_or_default(),
        ],
        &dir().join("api.log"),
        None,
        &[],
    )?;
    std::fs::write(
        dir().join("kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: podguard-lab\n  cluster: {{server: \"http://{api_addr}\"}}\ncontexts:\n- name: podguard-lab\n  context: {{cluster: podguard-lab, user: lab}}\ncurrent-context: podguard-lab\nusers:\n- name: lab\n  user: {{}}\n"
        ),
    )?;
    wait("the API server", Duration::from_secs(10), || {
        api(ul, "GET", "/healthz", None).is_ok()
    })?;
    Ok(Server::Embedded)
}

/// etcd, kube-apiserver and kube-controller-manager in the underlay, the
/// shipped manifests applied with kubectl; the lab's kubeconfig is the
/// cluster admin's.
fn start_real(spec: &LabSpec, ul: &str) -> anyhow::Result<Server> {
    let ip = plan::api_addr(&spec.underlay);
    let ip = ip.split(':').next().unwrap_or_default();
    progress("the real control plane: etcd, kube-apiserver, kube-controller-manager");
    let cp = super::kube::ControlPlane::start(ul, &dir().join("kube"), ip, &spec.cluster_cidrs())?;
    let manifests = dir().join("deploy");
    super::kube::write_manifests(&manifests)?;
    progress("kubectl apply -k deploy/ (the shipped manifests)");
    cp.apply_kustomization(&manifests)?;
    std::fs::copy(cp.admin_kubeconfig(), dir().join("kubeconfig"))?;
    Ok(Server::Real(Box::new(cp)))
}

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

fn cni_add(bins: &Binaries, n: &NodePlan, pod: &str, pod_ns: &str) -> anyhow::Result<Vec<String>> {
    let nd = node_dir(n);
    let conf = json!({"cniVersion": "1.1.0", "name": "podguard", "type": "podguard-cni",
        "nodeStateFile": nd.join("node.json"), "dataDir": nd.join("ipam")});
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &n.netns])
        .arg(&bins.cni)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", pod)
        .env("CNI_NETNS", format!("/run/netns/{pod_ns}"))
        .env("CNI_IFNAME", "eth0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running podguard-cni")?;
    child
        .stdin
        .take()
        .context("podguard-cni stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let res: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if !out.status.success() {
        bail!("podguard-cni ADD for {pod} failed: {res}");
    }
    Ok(res["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|ip| ip["address"].as_str())
                .map(|s| s.split('/').next().unwrap_or(s).to_string())
                .collect()
        })
        .unwrap_or_default())
}

fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out after {timeout:?} waiting for {what} (logs under {STATE_DIR})")
}

/// The real control plane of the running lab, if it runs one.
pub fn real_control_plane() -> Option<super::kube::ControlPlane> {
    let d = dir().join("kube");
    let addr = plan::api_addr(&underlay());
    let ip = addr.split(':').next().unwrap_or_default();
    d.join("admin.token")
        .exists()
        .then(|| super::kube::ControlPlane::attach(&plan::underlay_netns(), &d, ip))
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
