//! Key rotation in the lab: three nodes, a 1000 packets/s UDP stream and a
//! TCP stream between pods on different nodes, every node rotated in turn
//! with `podguard rotate --all --wait`: no UDP packet lost, the TCP
//! connection never breaks, nothing in plaintext on the underlay, and the
//! old keys are gone everywhere afterwards. Also the refusals.
//!
//! The lab uses fixed names (prefix pglab): one test, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::lab::{api, podguard};
use common::*;

use common::stream::MARKER;

struct Pod {
    node: String,
    netns: String,
    ip: String,
}

fn pods() -> Vec<Pod> {
    podguard::lab::cluster::load()
        .unwrap()
        .pods
        .into_iter()
        .map(|p| Pod {
            ip: p.ips[0].clone(),
            node: p.node,
            netns: p.netns,
        })
        .collect()
}

/// A TCP stream (about 1 MB/s) from `from` to `to` until `stop`; returns
/// (bytes written, bytes read) or the first error.
fn tcp_stream(
    from: &Pod,
    to: &Pod,
    port: u16,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<(u64, u64), String>> {
    let (from_ns, to_ns) = (from.netns.clone(), to.netns.clone());
    let dst: SocketAddr = format!("{}:{port}", to.ip).parse().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || -> Result<u64, String> {
        enter_netns(&to_ns);
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut c, _) = l.accept().map_err(|e| e.to_string())?;
        let mut n = 0u64;
        let mut buf = [0u8; 65536];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return Ok(n),
                Ok(k) => n += k as u64,
                Err(e) => return Err(format!("server read: {e}")),
            }
        }
    });
    ready_rx.recv().unwrap();
    std::thread::spawn(move || {
        enter_netns(&from_ns);
        let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        let mut chunk = vec![0u8; 1000];
        chunk[..MARKER.len()].copy_from_slice(MARKER);
        let mut written = 0u64;
        while !stop.load(Ordering::Relaxed) {
            c.write_all(&chunk)
                .map_err(|e| format!("client write after {written} bytes: {e}"))?;
            written += chunk.len() as u64;
            std::thread::sleep(Duration::from_millis(1));
        }
        c.shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        let read = server.join().unwrap()?;
        Ok((written, read))
    })
}

fn annotations() -> serde_json::Value {
    let o = podguard(&["status", "--lab", "--output", "json"]);
    serde_json::from_slice(&o.stdout).unwrap_or_default()
}

fn node_key(name: &str) -> String {
    api("GET", &format!("/api/v1/nodes/{name}"), None)["metadata"]["annotations"]
        ["podguard.dev/public-key"]
        .as_str()
        .unwrap()
        .to_string()
}

fn wg_show(node: &str) -> String {
    let dir = format!("/run/podguard-lab/{node}/wg");
    let ns = format!("pglab-n{}", node.trim_start_matches("node-"));
    let o = node_command(
        &ns,
        std::path::Path::new(&dir),
        &["wg", "show", "podguard0", "dump"],
    )
    .output()
    .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn rotation_is_hitless_in_the_lab() {
    if require_root("rotation_is_hitless_in_the_lab") {
        rotation_is_hitless(&[]);
    }
}

/// The same on the real control plane (`lab up --kube real`): the agents
/// on their bound tokens, `podguard rotate` as the cluster admin.
#[test]
fn rotation_is_hitless_in_the_lab_on_the_real_api_server() {
    let name = "rotation_is_hitless_in_the_lab_on_the_real_api_server";
    if require_root(name) && common::kubelab::require_real_kube(name) {
        rotation_is_hitless(&["--kube", "real"]);
    }
}

fn rotation_is_hitless(lab_args: &[&str]) {
    let _guard = common::lab::up_with(3, lab_args);
    let pods = pods();
    let on = |n: &str| pods.iter().find(|p| p.node == n).unwrap();
    let names: Vec<String> = {
        let mut v: Vec<String> = pods.iter().map(|p| p.node.clone()).collect();
        v.sort();
        v
    };
    let (n1, n2, n3) = (on(&names[0]), on(&names[1]), on(&names[2]));

    // Converged before we start.
    wait_for("status to agree", Duration::from_secs(30), || {
        podguard(&["status", "--lab"]).status.success()
    });

    // Bad input first: refused with a reason, nothing changes.
    let bad = podguard(&["rotate", "--lab", "--node", "no-such-node"]);
    assert_eq!(bad.status.code(), Some(2), "refused input: exit 2");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("\"no-such-node\" not found"), "{err}");

    // Garbage, foreign and duplicate next keys on a node are ignored (the
    // node's own agent removes them) and the mesh keeps working.
    let before: Vec<String> = names.iter().map(|n| node_key(n)).collect();
    for bogus in [
        "garbage".to_string(),
        keys::PrivateKey::generate().public_key().to_base64(),
        before[2].clone(),
    ] {
        api(
            "PATCH",
            &format!("/api/v1/nodes/{}", names[1]),
            Some(
                serde_json::json!({"metadata": {"annotations": {"podguard.dev/next-public-key": bogus}}}),
            ),
        );
        wait_for(
            "the agent to remove a next key it did not stage",
            Duration::from_secs(20),
            || {
                api("GET", &format!("/api/v1/nodes/{}", names[1]), None)["metadata"]["annotations"]
                    ["podguard.dev/next-public-key"]
                    .is_null()
            },
        );
    }
    let check = podguard(&["lab", "check"]);
    assert!(
        check.status.success(),
        "mesh broken by a bogus next key: {}",
        String::from_utf8_lossy(&check.stdout)
    );

    // Traffic, and a capture of the underlay, for the whole rotation.
    let mut owner = Netns::new("rot");
    let cap = start_capture(
        &mut owner,
        &podguard::lab::plan::underlay_netns(),
        "br0",
        "rot",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let udp1 = common::stream::udp(&n1.netns, &n2.netns, &n2.ip, 7000, stop.clone());
    let udp2 = common::stream::udp(&n3.netns, &n1.netns, &n1.ip, 7002, stop.clone());
    let tcp = tcp_stream(n2, n3, 7001, stop.clone());
    std::thread::sleep(Duration::from_secs(2));

    // A second request while the first runs is refused.
    let first = Command::new(env!("CARGO_BIN_EXE_podguard"))
        .args([
            "rotate",
            "--lab",
            "--all",
            "--wait",
            "--timeout",
            "120s",
            "--output",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        "the first rotation to start",
        Duration::from_secs(20),
        || {
            let a = annotations();
            a.as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r["rotation"] != "idle" || r["rotationRequested"] == true)
            })
        },
    );
    let busy = podguard(&["rotate", "--lab", "--node", &names[0]]);
    assert_eq!(busy.status.code(), Some(2), "refused input: exit 2");
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(err.contains("already rotating"), "{err}");

    let out = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rotate --all: {stderr}");
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.as_array().unwrap().len(), 3, "{results:#}");
    assert!(
        results
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["result"] == "done"),
        "{results:#}"
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let u1 = udp1.join().unwrap();
    let u2 = udp2.join().unwrap();
    let t = tcp.join().unwrap();
    let pcap = cap.stop(&mut owner);

    // Zero loss, no reset.
    for (name, u) in [("n1->n2", &u1), ("n3->n1", &u2)] {
        let lost: Vec<u64> = (0..u.sent).filter(|s| !u.received.contains(s)).collect();
        eprintln!(
            "ROTATION-RESULT udp {name}: sent {} received {} lost {} longest gap {:.1} ms",
            u.sent,
            u.received.len(),
            lost.len(),
            u.longest_gap.as_secs_f64() * 1000.0
        );
        assert!(u.sent > 3000, "the stream ran for the whole rotation");
        assert!(
            lost.is_empty(),
            "{name}: lost {} packets: {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
    }
    let (written, read) = t.unwrap_or_else(|e| panic!("TCP stream broke during rotation: {e}"));
    eprintln!("ROTATION-RESULT tcp n2->n3: {written} bytes written, {read} read, no reset");
    assert_eq!(written, read);
    assert!(written > 1_000_000);

    // Encrypted on the wire, never in plaintext.
    assert!(!cap.matching("udp port 51820").is_empty());
    assert!(
        cap.matching("udp port 7000 or udp port 7002 or tcp port 7001")
            .is_empty(),
        "inner flows visible on the underlay"
    );
    assert!(!contains(&pcap, MARKER), "plaintext marker on the underlay");

    // The old keys appear nowhere; the new key files are 0600 and alone.
    let after: Vec<String> = names.iter().map(|n| node_key(n)).collect();
    for (i, n) in names.iter().enumerate() {
        assert_ne!(before[i], after[i], "{n} was not rotated");
        let ann =
            api("GET", &format!("/api/v1/nodes/{n}"), None)["metadata"]["annotations"].to_string();
        for old in &before {
            assert!(
                !ann.contains(old.as_str()),
                "an old key is still published on {n}"
            );
        }
        let dump = wg_show(n);
        assert!(!dump.is_empty(), "wg show on {n} printed nothing");
        for old in &before {
            assert!(
                !dump.contains(old.as_str()),
                "old key still a peer on {n}: {dump}"
            );
        }
        let key = format!("/run/podguard-lab/{n}/private.key");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key).unwrap().permissions(),
        ) & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!std::path::Path::new(&format!("{key}.next")).exists());
        assert!(!std::path::Path::new(&format!("{key}.old")).exists());
    }
    let status = podguard(&["status", "--lab"]);
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{table}");
    assert_eq!(table.matches("agrees").count(), 3, "{table}");
    let check = podguard(&["lab", "check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}
