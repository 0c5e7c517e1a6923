//! The agent on the Kubernetes API, with real agents in network namespaces
//! and pods attached by the real CNI plugin. Every scenario runs twice:
//! against the embedded API server (`::embedded`) and against the real
//! control plane with the shipped manifests applied and each agent on its
//! own bound ServiceAccount token (`::real`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::kubelab::{Kube, KubeLab, require_real_kube};
use common::*;
use serde_json::json;

/// `name::embedded` and `name::real` for scenario `fn name(Kube)`.
macro_rules! on_both_api_servers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[test]
            fn embedded() {
                if require_root(concat!(stringify!($name), "::embedded")) {
                    super::$name(Kube::Embedded);
                }
            }
            #[test]
            fn real() {
                let name = concat!(stringify!($name), "::real");
                if require_root(name) && require_real_kube(name) {
                    super::$name(Kube::Real);
                }
            }
        }
    )*};
}

on_both_api_servers!(
    keys_published_mesh_converges_and_follows_nodes,
    api_outage_keeps_traffic_and_agents_catch_up,
    agent_restart_keeps_key_and_tcp_stream,
    rotation_resumes_after_kill_9_and_waits_for_an_absent_peer,
    scheduled_rotation_rotates_by_itself,
);

fn keys_published_mesh_converges_and_follows_nodes(kube: Kube) {
    let mut lab = KubeLab::with("km", kube);
    let a = lab.add_node("a", 1);
    // b starts before the controller manager gave it a podCIDR: it waits.
    // (The real controller manager allocates at once: there the agent
    // takes what node IPAM gave the Node.)
    let b = lab.add_node_with("b", 2, false);
    if !lab.is_real() {
        wait_for(
            "b to say it waits for podCIDRs",
            Duration::from_secs(15),
            || {
                lab.log(b)
                    .contains("waiting for this Node to exist and have spec.podCIDRs")
            },
        );
        assert!(
            !lab.nodes[b].state_file.exists(),
            "no node state before podCIDRs"
        );
        lab.api(
            "PATCH",
            "/api/v1/nodes/b",
            Some(&json!({"spec": {"podCIDRs": KubeLab::pod_cidrs(2)}})),
        );
    }
    // Each agent publishes its own key and endpoint.
    for i in [a, b] {
        let name = lab.nodes[i].name.clone();
        let key = lab.public_key(i);
        wait_for(
            &format!("{name} to publish its key"),
            Duration::from_secs(20),
            || lab.annotations(&name).get("podguard.dev/public-key") == Some(&key),
        );
        assert_eq!(
            lab.annotations(&name)["podguard.dev/endpoint"],
            format!("192.0.2.{}:51820", lab.nodes[i].idx)
        );
        // And the MTU it found on its underlay link (eth0, 1500 here),
        // which every peer's plan takes into account.
        wait_for(
            &format!("{name} to publish its underlay MTU"),
            Duration::from_secs(20),
            || lab.annotations(&name).get("podguard.dev/underlay-mtu") == Some(&"1500".to_string()),
        );
    }
    lab.attach_pod(a);
    lab.attach_pod(b);
    let (pa, _) = lab.pod(a);
    let (_, ipb) = lab.pod(b);
    wait_for("pod a -> pod b", Duration::from_secs(20), || {
        pings(&pa, &ipb)
    });
    let ipb6 = lab.nodes[b].pod_ips[1].clone();
    wait_for("pod a -> pod b over IPv6", Duration::from_secs(10), || {
        pings(&pa, &ipb6)
    });

    // Someone tampers with b's key annotation: b's agent restores it.
    let kb = lab.public_key(b);
    lab.api(
        "PATCH",
        "/api/v1/nodes/b",
        Some(&json!({"metadata": {"annotations": {"podguard.dev/public-key": null}}})),
    );
    wait_for("b to re-publish its key", Duration::from_secs(15), || {
        lab.annotations("b").get("podguard.dev/public-key") == Some(&kb)
    });
    // Overwritten with another key (what a node's credentials could do
    // without the admission policy): restored too.
    lab.api(
        "PATCH",
        "/api/v1/nodes/b",
        Some(&json!({"metadata": {"annotations": {
            "podguard.dev/public-key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}})),
    );
    wait_for("b to restore its key", Duration::from_secs(15), || {
        lab.annotations("b").get("podguard.dev/public-key") == Some(&kb)
    });

    // A node joins: converges.
    let c = lab.add_node("c", 3);
    lab.attach_pod(c);
    let (_, ipc) = lab.pod(c);
    wait_for("pod a -> pod c", Duration::from_secs(20), || {
        pings(&pa, &ipc)
    });

    // A node (without an agent) publishes b's key: both rejected, Event, no peer for either.
    lab.create_node(
        "d",
        4,
        json!({"podguard.dev/public-key": kb, "podguard.dev/endpoint": "192.0.2.4:51820"}),
    );
    wait_for("a to drop b's peer", Duration::from_secs(15), || {
        !lab.wg_peers(a).contains(&kb)
    });
    assert!(
        !pings(&pa, &ipb),
        "b must be unreachable while its key is duplicated"
    );
    assert!(pings(&pa, &ipc), "c is unaffected");
    wait_for(
        "a PeerRejected event for b and d",
        Duration::from_secs(15),
        || {
            let evs = lab.events();
            ["b", "d"].iter().all(|n| {
                evs.iter().any(|e| {
                    e["reason"] == "PeerRejected"
                        && e["regarding"]["name"] == *n
                        && e["type"] == "Warning"
                })
            })
        },
    );
    assert!(
        lab.log(a).contains("is also published by node(s)"),
        "rejection reason not logged"
    );
    let metrics = run(&[
        "ip",
        "netns",
        "exec",
        &lab.nodes[a].ns,
        "bash",
        "-c",
        "exec 3<>/dev/tcp/127.0.0.1/9721; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
    ]);
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("podguard_rejected_nodes{node=") && l.ends_with(" 2")),
        "{metrics}"
    );

    // The duplicate goes away: b comes back.
    lab.api("DELETE", "/api/v1/nodes/d", None);
    wait_for("pod a -> pod b again", Duration::from_secs(20), || {
        pings(&pa, &ipb)
    });
    // It returns: the same Event about b again, recorded as a series (a
    // patch of the first), then it goes for good.
    lab.create_node(
        "d",
        4,
        json!({"podguard.dev/public-key": kb, "podguard.dev/endpoint": "192.0.2.4:51820"}),
    );
    wait_for(
        "the PeerRejected event for b to become a series",
        Duration::from_secs(20),
        || {
            lab.events().iter().any(|e| {
                e["reason"] == "PeerRejected"
                    && e["regarding"]["name"] == "b"
                    && e["series"]["count"].as_u64() >= Some(2)
            })
        },
    );
    lab.api("DELETE", "/api/v1/nodes/d", None);
    wait_for("pod a -> pod b once more", Duration::from_secs(20), || {
        pings(&pa, &ipb)
    });

    // A node is deleted: its peer disappears.
    let kc = lab.public_key(c);
    assert!(lab.wg_peers(a).contains(&kc));
    lab.kill_agent(c);
    lab.api("DELETE", "/api/v1/nodes/c", None);
    wait_for("a to remove c's peer", Duration::from_secs(15), || {
        !lab.wg_peers(a).contains(&kc)
    });
    assert!(!pings(&pa, &ipc));

    // Private keys stay on their nodes: no Node object and no agent's log
    // holds one, in base64 or in the hex the UAPI speaks (the checks find
    // the public key where it belongs: they read what they should).
    let (_, nodes) = lab.api("GET", "/api/v1/nodes", None);
    let nodes = nodes.to_string();
    assert!(nodes.contains(&lab.public_key(a)));
    let logs: Vec<String> = [a, b, c].map(|i| lab.log(i)).into();
    assert!(
        logs[0].contains(&lab.public_key(a)),
        "the agent logs its public key"
    );
    for i in [a, b, c] {
        let text = std::fs::read_to_string(&lab.nodes[i].key_file).unwrap();
        let key = keys::PrivateKey::from_base64(text.trim()).unwrap();
        let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        for secret in [text.trim(), &hex] {
            assert!(!nodes.contains(secret), "a private key in the Node objects");
            for log in &logs {
                assert!(!log.contains(secret), "a private key in an agent's log");
            }
        }
    }

    if lab.is_real() {
        // The pods got their addresses from the podCIDRs node IPAM gave.
        let cidrs = lab.node_pod_cidrs("a");
        let net: ipnet::IpNet = cidrs[0].parse().unwrap();
        assert!(
            net.contains(&lab.nodes[a].pod_ips[0].parse::<std::net::IpAddr>().unwrap()),
            "pod a's address is not from a's podCIDR {cidrs:?}"
        );
        // Every grant has its moment: the heartbeat is renewed (an update
        // of the Lease) within a quarter of --lease-duration.
        wait_for("a heartbeat renewal", Duration::from_secs(30), || {
            common::rbac::used(&lab).0.contains(&(
                "coordination.k8s.io".into(),
                "leases".into(),
                "update".into(),
            ))
        });
        common::rbac::assert_least_privilege(&lab);
    }
}

fn api_outage_keeps_traffic_and_agents_catch_up(kube: Kube) {
    let (mut lab, a, b) = KubeLab::connected_pair("ko", kube);
    let (pa, _) = lab.pod(a);
    let (_, ipb) = lab.pod(b);
    let kb = lab.public_key(b);

    lab.stop_api();
    let start = Instant::now();
    let mut ok_pings = 0;
    while start.elapsed() < Duration::from_secs(30) {
        assert!(
            pings(&pa, &ipb),
            "traffic stopped {:?} into the API outage",
            start.elapsed()
        );
        assert!(
            lab.wg_peers(a).contains(&kb),
            "peer removed because of an API error"
        );
        ok_pings += 1;
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(ok_pings >= 10);

    lab.start_api();
    // Catch up: a node added after the outage becomes a peer.
    lab.create_node(
        "z",
        9,
        json!({"podguard.dev/public-key": "cTR6NR0olRDrhpeMmo7YolLmzeQ8yl8yX1NCiXH5Vic=", "podguard.dev/endpoint": "192.0.2.9:51820"}),
    );
    wait_for(
        "agents to catch up with the API",
        Duration::from_secs(60),
        || {
            lab.wg_peers(a)
                .contains("cTR6NR0olRDrhpeMmo7YolLmzeQ8yl8yX1NCiXH5Vic=")
                && lab
                    .wg_peers(b)
                    .contains("cTR6NR0olRDrhpeMmo7YolLmzeQ8yl8yX1NCiXH5Vic=")
        },
    );
    assert!(pings(&pa, &ipb));
}

fn agent_restart_keeps_key_and_tcp_stream(kube: Kube) {
    let (mut lab, a, b) = KubeLab::connected_pair("kr", kube);
    let (pa, _) = lab.pod(a);
    let (pb, ipb) = lab.pod(b);
    let key_before = lab.public_key(a);

    let listener = in_netns(&pb, || {
        TcpListener::bind(SocketAddr::new(ipb.parse().unwrap(), 0)).unwrap()
    });
    let port = listener.local_addr().unwrap().port();
    let to: SocketAddr = SocketAddr::new(ipb.parse().unwrap(), port);
    let outcome = std::thread::scope(|s| {
        let server = s.spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            // io::copy reads on after EINTR, which a read with a timeout
            // returns when this process is stopped and continued (a
            // frozen and thawed CI sandbox): a bare read loop ended the
            // stream there, and the client saw its reset.
            std::io::copy(&mut c, &mut std::io::sink()).map_err(|e| format!("server: {e}"))
        });
        let client = s.spawn(|| {
            enter_netns(&pa);
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
            let chunk = [7u8; 4096];
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed() < Duration::from_secs(12) {
                c.write_all(&chunk)
                    .map_err(|e| format!("stream reset after {sent} bytes: {e}"))?;
                sent += chunk.len() as u64;
                std::thread::sleep(Duration::from_millis(5));
            }
            c.shutdown(std::net::Shutdown::Write).unwrap();
            Ok::<u64, String>(sent)
        });
        std::thread::sleep(Duration::from_secs(3));
        lab.kill_agent(a);
        // This process stopped and continued while the server waits in
        // read, as a CI sandbox that freezes and thaws it does. It stops
        // every test running in this binary: their blocking calls must
        // retry EINTR (std's read_to_string, read_exact, io::copy, sleep
        // and wait do; a bare read on a socket with a timeout does not).
        let me = std::process::id().to_string();
        let freeze = r#"trap 'kill -CONT "$0"' EXIT; kill -STOP "$0"; sleep 0.3"#;
        ok(&["sh", "-c", freeze, &me]);
        std::thread::sleep(Duration::from_secs(2));
        lab.start_agent(a);
        (client.join().unwrap(), server.join().unwrap())
    });
    let (Ok(sent), Ok(received)) = &outcome else {
        panic!("the stream broke: {outcome:?}");
    };
    assert_eq!(sent, received, "the stream lost data");
    assert_eq!(lab.public_key(a), key_before);
    assert_eq!(lab.annotations("a")["podguard.dev/public-key"], key_before);
    let restarts = lab.log(a).matches("podguard-agent starting").count();
    assert_eq!(restarts, 2);
}

/// A rotation interrupted by kill -9 resumes with the key it had staged
/// (it is not regenerated), waits for an absent peer, and finishes once
/// the peer is back; traffic flows afterwards.
fn rotation_resumes_after_kill_9_and_waits_for_an_absent_peer(kube: Kube) {
    let (mut lab, a, b) = KubeLab::connected_pair("kx", kube);
    let (pa, _) = lab.pod(a);
    let (_, ipb) = lab.pod(b);
    let old = lab.public_key(a);

    // b is absent: a's rotation cannot finish its stage.
    lab.kill_agent(b);
    lab.api(
        "PATCH",
        "/api/v1/nodes/a",
        Some(&json!({"metadata": {"annotations": {"podguard.dev/rotate-requested": "crash-1"}}})),
    );
    let mut next = String::new();
    wait_for("a to stage a next key", Duration::from_secs(20), || {
        next = lab
            .annotations("a")
            .get("podguard.dev/next-public-key")
            .cloned()
            .unwrap_or_default();
        !next.is_empty()
    });
    let key_file = lab.nodes[a].key_file.clone();
    let next_file = std::path::PathBuf::from(format!("{}.next", key_file.display()));
    assert!(
        next_file.exists(),
        "the next key is persisted before it is published"
    );
    assert_eq!(
        lab.annotations("a")["podguard.dev/rotation-state"],
        "staged"
    );

    // kill -9 mid-rotation, restart: same staged key, still staged.
    lab.kill_agent(a);
    lab.start_agent(a);
    wait_for("a to come back", Duration::from_secs(20), || {
        lab.log(a).matches("resuming a key rotation").count() == 1
    });
    std::thread::sleep(Duration::from_secs(3));
    let ann = lab.annotations("a");
    assert_eq!(
        ann["podguard.dev/next-public-key"], next,
        "the staged key was regenerated"
    );
    assert_eq!(
        ann["podguard.dev/public-key"], old,
        "switched without its peer"
    );
    assert_eq!(ann["podguard.dev/rotate-done"], "crash-1");

    // b returns, takes the next key; a switches and retires the old one.
    lab.start_agent(b);
    wait_for("a to finish the rotation", Duration::from_secs(30), || {
        let ann = lab.annotations("a");
        ann.get("podguard.dev/public-key") == Some(&next)
            && ann.get("podguard.dev/rotation-state").map(String::as_str) == Some("idle")
            && !ann.contains_key("podguard.dev/next-public-key")
    });
    assert!(!next_file.exists());
    assert!(!std::path::Path::new(&format!("{}.old", key_file.display())).exists());
    assert_eq!(lab.public_key(a), next);
    wait_for("b to use a's new key", Duration::from_secs(20), || {
        let peers = lab.wg_peers(b);
        peers.contains(&next) && !peers.contains(&old)
    });
    wait_for(
        "pod a -> pod b after the rotation",
        Duration::from_secs(20),
        || pings(&pa, &ipb),
    );
}

/// `--rotate-every`: an agent rotates its key on schedule, by itself,
/// again and again, and traffic keeps flowing.
fn scheduled_rotation_rotates_by_itself(kube: Kube) {
    let mut lab = KubeLab::with("ks", kube);
    let b = lab.add_node("b", 2);
    lab.agent_args = vec!["--rotate-every".into(), "3s".into()];
    let a = lab.add_node("a", 1);
    lab.attach_pod(a);
    lab.attach_pod(b);
    let (pa, _) = lab.pod(a);
    let (_, ipb) = lab.pod(b);
    let first = lab.public_key(a);
    let mut seen = std::collections::BTreeSet::new();
    seen.insert(first.clone());
    wait_for(
        "two scheduled rotations of a",
        Duration::from_secs(60),
        || {
            if let Some(k) = lab.annotations("a").get("podguard.dev/public-key") {
                seen.insert(k.clone());
            }
            seen.len() >= 3
        },
    );
    // b's key never rotated (no --rotate-every there).
    assert_eq!(
        lab.annotations("b")["podguard.dev/public-key"],
        lab.public_key(b)
    );
    wait_for(
        "pod a -> pod b after scheduled rotations",
        Duration::from_secs(20),
        || pings(&pa, &ipb),
    );
    assert!(lab.log(a).contains("scheduled rotation"));
}
