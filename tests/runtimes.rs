//! Real container runtimes (podman 4.3 with its CNI backend, containerd 1.6
//! `ctr run --cni`) drive podguard-cni exactly as `podguard-agent
//! --install-cni` installs it, in node namespaces (tests/common/runtime.rs,
//! tests/runtime/rt.sh). Nothing runs in the root network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::runtime::{INTERNET, RtCluster, require_runtimes};
use common::*;

/// `GET /` from namespace `ns` to `to`; the body, if any answer came.
fn http_get(ns: &str, to: SocketAddr, path: &str) -> Option<String> {
    in_netns(ns, || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
}

/// A one-shot HTTP server in `ns` on `ip:port`; the thread returns the peer
/// address it saw.
fn serve_once(ns: &str, addr: SocketAddr) -> std::thread::JoinHandle<SocketAddr> {
    let l = in_netns(ns, || TcpListener::bind(addr).unwrap());
    std::thread::spawn(move || {
        let (mut c, peer) = l.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = c.read(&mut buf);
        let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\noutside");
        peer
    })
}

#[test]
fn podman_pods_get_addresses_talk_publish_ports_reach_outside_and_leak_nothing() {
    if !require_runtimes(
        "podman_pods_get_addresses_talk_publish_ports_reach_outside_and_leak_nothing",
    ) {
        return;
    }
    let c = RtCluster::up("rtp", 1);
    let node = &c.nodes[0];
    let ip1 = node.podman_run("c1", &[], &["sleep", "1000"]);
    let ip2 = node.podman_run("c2", &[], &["sleep", "1000"]);
    assert!(
        ip1.starts_with("10.244.1.") && ip2.starts_with("10.244.1."),
        "{ip1} {ip2}"
    );
    assert_ne!(ip1, ip2, "two containers, one address");
    // Dual-stack: each container holds one v4 and one v6 address.
    let v4: Vec<String> = node
        .allocations()
        .into_iter()
        .filter(|a| !a.contains(':'))
        .collect();
    assert_eq!(v4, {
        let mut v = vec![ip1.clone(), ip2.clone()];
        v.sort();
        v
    });
    assert_eq!(node.allocations().len(), 4, "{:?}", node.allocations());
    for (from, to) in [
        ("c1", "10.244.1.1"),
        ("c1", ip2.as_str()),
        ("c2", ip1.as_str()),
    ] {
        let o = node.exec(from, &["ping", "-c", "1", "-W", "2", to]);
        assert!(
            o.status.success(),
            "{from} -> {to}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }

    // Outside the cluster CIDR: the outside host sees the node's address
    // (masquerade) and its answer comes back.
    let server = serve_once(&c.inet, format!("{INTERNET}:8000").parse().unwrap());
    let o = node.exec(
        "c1",
        &["wget", "-q", "-O", "-", &format!("http://{INTERNET}:8000/")],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("outside"),
        "container to the outside: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(server.join().unwrap().ip().to_string(), c.node_ip(0));

    // hostPort through the chained portmap: from the node itself and from
    // another host on the underlay.
    node.podman_run(
        "web",
        &["-p", "8080:80"],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );
    let target: SocketAddr = format!("{}:8080", c.node_ip(0)).parse().unwrap();
    let mut body = None;
    wait_for("the published port", Duration::from_secs(10), || {
        body = http_get(&node.ns, target, "/index.html");
        body.as_deref().is_some_and(|b| b.contains("pgrt-ok"))
    });
    let from_outside = http_get(&c.inet, target, "/index.html").unwrap_or_default();
    assert!(from_outside.contains("pgrt-ok"), "{from_outside}");

    // rm -f releases the address and removes the veth.
    node.podman(&["rm", "-f", "c2"]);
    assert_eq!(node.allocations().len(), 4, "{:?}", node.allocations());
    assert_eq!(node.host_veths().len(), 2);
    // conmon and the container process killed first: rm -f still cleans up.
    let pids = node.podman(&["inspect", "-f", "{{.State.ConmonPid}} {{.State.Pid}}", "c1"]);
    for pid in pids.split_whitespace() {
        ok(&["kill", "-9", pid]);
    }
    // podman cannot stop a container whose conmon is gone ("timed out
    // waiting for file /run/libpod/exits/...", after ~20 s): the first rm -f
    // fails and changes nothing; the second removes it, and its network.
    let first = node.run(&["podman", "rm", "-f", "c1"]);
    if !first.status.success() {
        node.podman(&["rm", "-f", "c1"]);
    }
    node.podman(&["rm", "-f", "web"]);
    node.assert_nothing_leaked();
}

#[test]
fn containerd_pod_gets_an_address_and_its_del_without_netns_releases_it() {
    if !require_runtimes("containerd_pod_gets_an_address_and_its_del_without_netns_releases_it") {
        return;
    }
    let c = RtCluster::up("rtc", 1);
    let node = &c.nodes[0];
    let image = node.image();
    node.rt(&["ctr-run-bg", &node.id, "c1", &image, "c1", "sleep", "1000"]);
    let held = node.allocations();
    assert_eq!(held.len(), 2, "one v4 and one v6 address: {held:?}");
    assert!(held[0].starts_with("10.244.1."), "{held:?}");
    let addr = node.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "a",
        "c1",
        "ip",
        "-4",
        "-o",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(addr.contains(&held[0]), "{addr}");
    node.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "p",
        "c1",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "10.244.1.1",
    ]);
    // The task exits; ctr calls DEL with an empty CNI_NETNS (the namespace
    // is gone): the address is released and the veth is gone.
    node.rt(&["ctr-stop", &node.id, "c1"]);
    node.assert_nothing_leaked();
}

#[test]
fn containers_on_two_nodes_talk_tcp_through_wireguard_only() {
    if !require_runtimes("containers_on_two_nodes_talk_tcp_through_wireguard_only") {
        return;
    }
    let mut c = RtCluster::up("rt2", 2);
    let ipa = c.nodes[0].podman_run("a", &[], &["sleep", "1000"]);
    let ipb = c.nodes[1].podman_run("b", &[], &["httpd", "-f", "-p", "80", "-h", "/www"]);
    assert!(
        ipa.starts_with("10.244.1.") && ipb.starts_with("10.244.2."),
        "{ipa} {ipb}"
    );
    let enc = String::from_utf8(marker("RUNTIME")).unwrap();
    let o = c.nodes[1].exec("b", &["sh", "-c", &format!("echo {enc} > /www/m.txt")]);
    assert!(o.status.success());
    let ul = c.ul.clone();
    let cap = start_capture(&mut c.n, &ul, "br0", "rt-ul");
    let nb = c.nodes[1].ns.clone();
    let cap_b = start_capture(&mut c.n, &nb, "cbr0", "rt-cbr0");
    // A's container fetches B's file: the marker crosses the underlay in
    // both directions (in the URL, and in the answer).
    let url = format!("http://{ipb}/m.txt?{enc}");
    let mut got = String::new();
    wait_for(
        "container a to fetch from container b",
        Duration::from_secs(10),
        || {
            let o = c.nodes[0].exec("a", &["wget", "-q", "-O", "-", &url]);
            got = String::from_utf8_lossy(&o.stdout).to_string();
            got.contains(&enc)
        },
    );
    // Negative control: the same kind of marker sent in plaintext across
    // the underlay is seen by the capture.
    let plain = marker("PLAIN");
    udp_spray(
        &c.nodes[0].ns,
        format!("{}:9", c.node_ip(1)).parse().unwrap(),
        &plain,
    );
    let pcap = cap.stop(&mut c.n);
    cap_b.stop(&mut c.n);
    assert!(
        contains(&pcap, &plain),
        "negative control: the capture must see plaintext"
    );
    assert!(
        !contains(&pcap, enc.as_bytes()),
        "container data seen in plaintext on the underlay"
    );
    assert!(
        !cap.matching("udp port 51820").is_empty(),
        "no WireGuard packets seen"
    );
    let other = cap.matching("ip and not udp port 51820 and not igmp and not (udp and dst port 9) and not icmp[icmptype] == icmp-unreach");
    assert!(
        other.is_empty(),
        "non-WireGuard IPv4 on the underlay: {other:?}"
    );
    // B saw A's real pod IP: no NAT across nodes.
    let from_a = cap_b.matching(&format!("tcp and src host {ipa} and dst host {ipb}"));
    assert!(
        !from_a.is_empty(),
        "node B's cbr0 never saw {ipa} as the source"
    );
}
