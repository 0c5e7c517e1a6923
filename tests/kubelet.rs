//! The shipped DaemonSet under real kubelets: what `kubectl apply -k
//! deploy/` installs, scheduled by kube-scheduler, started by kubelet
//! through containerd's CRI plugin from the image deploy/image.sh builds,
//! on its projected ServiceAccount token, reaching the API through
//! kube-proxy's `kubernetes` Service. Then ordinary Pods on two nodes get
//! their network from the CNI plugin it installed and talk across nodes,
//! encrypted on the underlay; `kubectl exec` and `kubectl logs` go through
//! the kubelets. And a Helm release of the chart with non-default values
//! (its own namespace, a dual-stack pod network): both families forwarded,
//! pods with an address of each, talking across nodes over IPv4 and IPv6
//! with only WireGuard on the underlay, the agents judged by the Leases in
//! the release's namespace.
//! See tests/common/kubelet.rs for the cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::kubelab::require_real_kube;
use common::kubelet::KubeletCluster;
use common::runtime::require_runtimes;
use common::*;
use serde_json::Value;

const TEST: &str = "the_shipped_daemonset_gives_pods_an_encrypted_network_under_real_kubelets";
const HELM_TEST: &str = "a_dual_stack_helm_release_in_its_own_namespace_runs_under_real_kubelets";

/// One cluster at a time: each is five Kubernetes processes and two
/// containerds on a 2-core machine.
fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn pod_yaml(name: &str, node: &str, cmd: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels:
    app: {name}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: localhost/pgrt-busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "{cmd}"]
"#
    )
}

/// One try of the client pod fetching `url`: the page, or what went wrong.
fn fetch(c: &KubeletCluster, url: &str) -> Result<String, String> {
    // `timeout`: busybox's own `wget -T` crashes (SIGSEGV) here.
    let o = c.kubectl(&[
        "exec", "client", "--", "timeout", "5", "wget", "-q", "-O", "-", url,
    ]);
    let page = String::from_utf8_lossy(&o.stdout).into_owned();
    if o.status.success() {
        Ok(page)
    } else {
        Err(format!("{page}{}", String::from_utf8_lossy(&o.stderr)))
    }
}

/// The client pod fetches `url` and gets `marker` (tries for 30 s).
fn fetch_eventually(c: &KubeletCluster, url: &str, marker: &str) {
    let mut last = String::new();
    let fetched = (0..15).any(|_| match fetch(c, url) {
        Ok(page) if page.contains(marker) => true,
        r => {
            last = format!("{r:?}");
            std::thread::sleep(Duration::from_secs(2));
            false
        }
    });
    assert!(
        fetched,
        "client never fetched the server's page at {url}; last try: {last}"
    );
}

/// A capture on each node's link to the underlay: what either node sends
/// or receives (a node's packets to the underlay host never cross the
/// other node's link).
fn capture_nodes(c: &mut KubeletCluster, name: &str) -> Vec<Capture> {
    let nss: Vec<String> = c.nodes.iter().map(|n| n.rt.ns.clone()).collect();
    nss.iter()
        .enumerate()
        .map(|(i, ns)| start_capture(&mut c.n, ns, "eth0", &format!("{name}-n{}", i + 1)))
        .collect()
}

/// Stop the captures: the page (`marker`) never crossed the underlay in
/// plaintext, nor did any packet of the server's port; WireGuard did.
fn assert_only_wireguard(c: &mut KubeletCluster, caps: &[Capture], marker: &str, during: &str) {
    for (i, cap) in caps.iter().enumerate() {
        let node = format!("n{}", i + 1);
        let pcap = cap.stop(&mut c.n);
        assert!(
            !contains(&pcap, marker.as_bytes()),
            "the page crossed {node}'s underlay link in plaintext during {during}"
        );
        let plain = cap.matching("tcp port 8080");
        assert!(
            plain.is_empty(),
            "plaintext pod traffic on {node}'s underlay link during {during}: {plain:?}"
        );
        assert!(
            !cap.matching("udp port 51820").is_empty(),
            "no WireGuard packets on {node}'s underlay link during {during}"
        );
    }
}

/// `podguard status` (with `args`) until it exits 0, then: every node's
/// applied mesh agrees and its agent was judged alive by a heartbeat Lease
/// (a status that found no Leases judges nobody and still exits 0).
fn assert_alive_and_converged(c: &KubeletCluster, args: &[&str]) {
    let mut status = (0, Value::Null, String::new());
    let mut argv = vec!["status"];
    argv.extend_from_slice(args);
    wait_for(
        &format!("podguard {argv:?}: converged and alive"),
        Duration::from_secs(60),
        || {
            status = c.podguard(&argv);
            status.0 == 0
        },
    );
    let (_, rows, stderr) = &status;
    assert!(
        !stderr.contains("no heartbeat Leases"),
        "podguard {argv:?}: {stderr}"
    );
    for node in ["n1", "n2"] {
        let row = rows
            .as_array()
            .and_then(|r| r.iter().find(|r| r["node"] == node))
            .unwrap_or_else(|| panic!("no {node} in podguard {argv:?}: {rows:#}"));
        assert_eq!(row["digest"], "agrees", "{node}: {rows:#}");
        assert!(
            row["heartbeatAgeSecs"].is_u64(),
            "{node}'s agent not judged by a Lease: {rows:#}"
        );
    }
}

/// Each node's public key as its Node annotation says.
fn public_keys(c: &KubeletCluster) -> Vec<String> {
    ["n1", "n2"]
        .iter()
        .map(|node| {
            let n = c.get(&["node", node]);
            n["metadata"]["annotations"]["podguard.dev/public-key"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Each node's forwarding sysctls: (IPv4, IPv6).
fn forwarding(c: &KubeletCluster) -> Vec<(String, String)> {
    c.nodes
        .iter()
        .map(|node| {
            let sysctl = |rel: &str| {
                ok(&[
                    "ip",
                    "netns",
                    "exec",
                    &node.rt.ns,
                    "cat",
                    &format!("/proc/sys/net/{rel}"),
                ])
                .trim()
                .to_string()
            };
            (
                sysctl("ipv4/ip_forward"),
                sysctl("ipv6/conf/all/forwarding"),
            )
        })
        .collect()
}

/// Pod `server` on n2 serving a page holding `marker` on port 8080, pod
/// `client` on n1; returns the server's addresses, each checked to be in
/// its Node's podCIDR of that family (the agent's node state, read by the
/// CNI plugin containerd ran), as are the client's.
fn start_pods(c: &KubeletCluster, marker: &str) -> Vec<std::net::IpAddr> {
    c.apply(&pod_yaml(
        "server",
        "n2",
        &format!(
            "mkdir -p /srv && echo {marker} > /srv/index.html && exec httpd -f -p 8080 -h /srv"
        ),
    ));
    c.apply(&pod_yaml("client", "n1", "exec sleep 3600"));
    for pod in ["server", "client"] {
        wait_for(
            &format!("Pod {pod} running"),
            Duration::from_secs(90),
            || c.get(&["pod", pod])["status"]["phase"] == "Running",
        );
    }
    let mut server = Vec::new();
    for (pod, node) in [("server", "n2"), ("client", "n1")] {
        let p = c.get(&["pod", pod]);
        let cidrs: Vec<ipnet::IpNet> = c.get(&["node", node])["spec"]["podCIDRs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().parse().unwrap())
            .collect();
        let ips: Vec<std::net::IpAddr> = p["status"]["podIPs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["ip"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            ips.len(),
            cidrs.len(),
            "{pod}: one address per podCIDR: {p}"
        );
        for ip in &ips {
            assert!(
                cidrs.iter().any(|c| c.contains(ip)),
                "{pod}'s address {ip} is not in {node}'s podCIDRs {cidrs:?}"
            );
        }
        if pod == "server" {
            server = ips;
        }
    }
    server
}

/// `http://ADDR:PORT/` (brackets for IPv6).
fn url(ip: std::net::IpAddr, port: u16) -> String {
    format!("http://{}/", std::net::SocketAddr::new(ip, port))
}

#[test]
fn the_shipped_daemonset_gives_pods_an_encrypted_network_under_real_kubelets() {
    if !require_runtimes(TEST) || !require_real_kube(TEST) {
        return;
    }
    let _one = one_cluster_at_a_time();
    let mut c = KubeletCluster::up("kl", 2);

    // The agents published their keys.
    let keys = public_keys(&c);
    for key in &keys {
        assert_eq!(key.len(), 44, "a node's public key annotation: {keys:?}");
    }

    // Forwarding is on for the cluster's family only (the shipped
    // cluster CIDR is IPv4): IPv6 forwarding would cost hosts their
    // Router Advertisements.
    for (i, f) in forwarding(&c).iter().enumerate() {
        assert_eq!(f, &("1".into(), "0".into()), "node {i}: (ipv4, ipv6)");
    }

    let marker = String::from_utf8(marker("kubelet")).unwrap();
    let server_ip = start_pods(&c, &marker)[0];

    // Pod to pod across nodes through `kubectl exec`, encrypted on the
    // underlay: n1's link to the underlay carries WireGuard, never the
    // page.
    let caps = capture_nodes(&mut c, "kubelet-underlay");
    fetch_eventually(&c, &url(server_ip, 8080), &marker);
    // And through a Service: kube-proxy's DNAT on n1, then the tunnel.
    c.apply(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: server\n  namespace: default\n\
         spec:\n  selector:\n    app: server\n  ports:\n  - port: 80\n    targetPort: 8080\n",
    );
    let cluster_ip = c.get(&["service", "server"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    fetch_eventually(&c, &format!("http://{cluster_ip}/"), &marker);
    assert_only_wireguard(&mut c, &caps, &marker, "pod to pod and through a Service");

    // Outside the cluster: the underlay host answers the client pod (the
    // agent masquerades pod traffic leaving the cluster CIDR).
    let o = c.kubectl(&[
        "exec",
        "client",
        "--",
        "ping",
        "-c",
        "2",
        "-W",
        "3",
        common::kubelet::API_IP,
    ]);
    assert!(
        o.status.success(),
        "client pod -> {} (outside the cluster): {}{}",
        common::kubelet::API_IP,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // The agent's log through kubelet: it runs the shipped configuration.
    let agents = c.get(&[
        "-n",
        "podguard",
        "pods",
        "-l",
        "app.kubernetes.io/component=agent",
    ]);
    let items = agents["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "one agent per node: {agents}");
    for item in items {
        let agent = item["metadata"]["name"].as_str().unwrap();
        let log = c.kubectl_ok(&["-n", "podguard", "logs", agent, "-c", "agent"]);
        assert!(
            log.contains("podguard-agent starting"),
            "{agent}'s log: {log}"
        );
        assert!(log.contains("peer set"), "{agent}'s log: {log}");
        // Nothing the operator would have to explain away: netlink-proto
        // warned here for every message of a dump read only in part
        // (tests/netlink.rs::finding_the_underlay_mtu_reads_whole_dumps).
        assert!(
            !log.contains("failed to forward response"),
            "netlink warnings in {agent}'s log: {log}"
        );
    }

    // The operator's view of the real DaemonSet: `podguard status` judges
    // each agent by the heartbeat Lease its Pod keeps, and finds the mesh
    // converged; `podguard audit` has the client -> server flow encrypted.
    assert_alive_and_converged(&c, &[]);
    let (_, audit, _) = c.podguard(&["audit", "--pods"]);
    let flow = audit["pods"].as_array().and_then(|p| {
        p.iter()
            .find(|f| f["from"] == "default/client" && f["to"] == "default/server")
    });
    assert_eq!(
        flow.map(|f| f["transport"].clone()),
        Some(Value::from("encrypted")),
        "client -> server in podguard audit: {audit:#}"
    );

    // An upgrade as operators run it: a rolling restart of the DaemonSet,
    // one node at a time, while the client keeps fetching. Each node's
    // tunnel is down while its agent restarts (the device lives in the
    // agent): traffic then waits or fails, and never leaves in plaintext.
    // The keys stay (the key directory is on the host), and the pods'
    // network is back when the rollout is done.
    let caps = capture_nodes(&mut c, "kubelet-rollout");
    let url = url(server_ip, 8080);
    let (mut ok, mut failed) = (0, 0);
    // The longest time between two successful fetches: what a pod on
    // either node waits while its agent restarts.
    let (mut last_ok, mut longest) = (Instant::now(), Duration::ZERO);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let rollout = s.spawn(|| {
            c.kubectl_ok(&["-n", "podguard", "rollout", "restart", "ds/podguard-agent"]);
            c.kubectl_ok(&[
                "-n",
                "podguard",
                "rollout",
                "status",
                "ds/podguard-agent",
                "--timeout=180s",
            ]);
        });
        while !rollout.is_finished() {
            match fetch(&c, &url) {
                Ok(page) if page.contains(&marker) => {
                    ok += 1;
                    longest = longest.max(last_ok.elapsed());
                    last_ok = Instant::now();
                }
                r => {
                    failed += 1;
                    eprintln!("a fetch {:.1?} into the rollout: {r:?}", t0.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        rollout.join().unwrap();
    });
    // The last restart's gap may end after the rollout does. (Before the
    // restarted device handshook at once, the server's node restarting
    // cost ~15 s here: the client's node sealed for the lost session until
    // its no-reply timer fired. `tests/datapath.rs` checks the handshake.)
    fetch_eventually(&c, &url, &marker);
    let longest = longest.max(last_ok.elapsed());
    eprintln!(
        "during the rolling restart: {ok} fetches succeeded, {failed} failed; longest time between two successes {longest:.1?}"
    );
    assert_only_wireguard(&mut c, &caps, &marker, "the rolling restart");
    assert_eq!(public_keys(&c), keys, "a restart changed a node's key");
}

#[test]
fn a_dual_stack_helm_release_in_its_own_namespace_runs_under_real_kubelets() {
    if !require_runtimes(HELM_TEST) || !require_real_kube(HELM_TEST) {
        return;
    }
    let _one = one_cluster_at_a_time();
    const NS: &str = "pg-system";
    let mut c = KubeletCluster::start("kh", 2, "10.244.0.0/16,fd00:10:244::/56");
    c.helm_install(NS, &["clusterCIDRs={10.244.0.0/16,fd00:10:244::/56}"]);
    c.wait_ready(NS);
    for (i, f) in forwarding(&c).iter().enumerate() {
        assert_eq!(f, &("1".into(), "1".into()), "node {i}: (ipv4, ipv6)");
    }

    let marker = String::from_utf8(marker("helm")).unwrap();
    let server = start_pods(&c, &marker);
    assert!(
        server.iter().any(|ip| ip.is_ipv4()) && server.iter().any(|ip| ip.is_ipv6()),
        "the server has an address of each family: {server:?}"
    );
    let caps = capture_nodes(&mut c, "helm-underlay");
    for ip in &server {
        fetch_eventually(&c, &url(*ip, 8080), &marker);
    }
    assert_only_wireguard(&mut c, &caps, &marker, "pod to pod over IPv4 and IPv6");

    // The release's namespace is where the agents keep their Leases:
    // `podguard status` asked there judges both alive and converged; asked
    // about the default namespace, it finds no Lease and judges nobody.
    assert_alive_and_converged(&c, &["--agent-namespace", NS]);
    let (_, rows, stderr) = c.podguard(&["status"]);
    assert!(stderr.contains("no heartbeat Leases"), "{stderr}");
    assert!(
        rows.as_array()
            .is_some_and(|r| r.iter().all(|r| r["heartbeatAgeSecs"].is_null())),
        "{rows:#}"
    );
}
