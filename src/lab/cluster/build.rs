//! `podguard lab up`'s construction: the underlay bridge and the API
//! server, one namespace per node with its agent, then the pods attached
//! through `podguard-cni` as a runtime would. Everything it creates is
//! named so that [`super::down`] finds and removes it.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use super::super::plan::{self, KubeMode, LabSpec, NodePlan};
use super::{Binaries, LabState, OWNER_ENV, Pod, STATE_DIR, api, dir, metric, node_dir};
use crate::sys::{self, netns_add, run};

fn progress(msg: &str) {
    eprintln!("  · {msg}");
}

/// Run `ip -n ns -batch` on `lines`.
fn ip_batch(ns: &str, lines: &str) -> anyhow::Result<()> {
    let file = dir().join(format!("batch-{ns}"));
    std::fs::write(&file, lines)?;
    run(&["ip", "-n", ns, "-batch", file.to_str().unwrap_or_default()])?;
    let _ = std::fs::remove_file(&file);
    Ok(())
}

pub(super) fn build(spec: &LabSpec, bins: &Binaries) -> anyhow::Result<LabState> {
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
                    ("POD_NAMESPACE", crate::lab::kube::AGENT_NAMESPACE.into()),
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
                        "ports": [{"name": "echo", "containerPort": crate::lab::check::ECHO_PORT, "protocol": "TCP"}]}]},
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
    Real(Box<crate::lab::kube::ControlPlane>),
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
    let cp =
        crate::lab::kube::ControlPlane::start(ul, &dir().join("kube"), ip, &spec.cluster_cidrs())?;
    let manifests = dir().join("deploy");
    crate::lab::kube::write_manifests(&manifests)?;
    progress("kubectl apply -k deploy/ (the shipped manifests)");
    cp.apply_kustomization(&manifests)?;
    std::fs::copy(cp.admin_kubeconfig(), dir().join("kubeconfig"))?;
    Ok(Server::Real(Box::new(cp)))
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
