//! Floods from an attacker namespace on the underlay while a pod-to-pod
//! TCP stream runs across two nodes with the real agents: first a genuine
//! initiation replayed as fast as the attacker can (valid mac1, so each one
//! would cost a DH on the data path), then random type-1 datagrams of the
//! right size. Handshakes are opened on their own thread from a bounded
//! queue, so the stream must never stall (longest gap under a second), the
//! endpoint must never move to the attacker, and nothing may cross the
//! underlay in plaintext.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::pcap::capture_initiation;
use common::twonode::TwoNode;
use common::*;

/// Datagrams per second the attacker aims for.
const RATE: u64 = 100_000;
/// How long each flood lasts.
const FLOOD: Duration = Duration::from_secs(10);

/// Send `make(i)` to node B at RATE for FLOOD from `ns`; returns how many
/// went out.
fn flood(ns: &str, port: u16, make: impl Fn(u64) -> Vec<u8> + Send + Sync) -> u64 {
    in_netns(ns, || {
        let s = UdpSocket::bind(("192.0.2.66", port)).unwrap();
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < FLOOD {
            let due = start.elapsed().as_micros() as u64 * RATE / 1_000_000;
            while sent < due {
                let _ = s.send_to(&make(sent), "192.0.2.2:51820");
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        sent
    })
}

/// xorshift: random-looking bytes without a dependency.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn floods_never_stall_a_stream_nor_move_the_endpoint() {
    if !require_root("floods_never_stall_a_stream_nor_move_the_endpoint") {
        return;
    }
    let mut c = TwoNode::up("fld");
    let ul = c.ul.clone();
    let (key_a, key_b) = (c.nodes[0].public_key.clone(), c.nodes[1].public_key.clone());
    let (pa, pb, b4) = (
        c.nodes[0].pod_ns.clone(),
        c.nodes[1].pod_ns.clone(),
        c.nodes[1].pod_ip4(),
    );
    let init = capture_initiation(&mut c);
    let evil = c.n.underlay_node(&ul, "evil", 66);
    // Everything on the underlay but WireGuard's port: pod traffic in the
    // clear would show up here.
    let cap = start_capture_with(
        &mut c.n,
        &ul,
        "br0",
        "clear",
        &["ip", "and", "not", "udp", "port", "51820"],
    );

    // The stream: pod B reads and notes when bytes arrive; pod A writes.
    let listener = in_netns(&pb, || TcpListener::bind("0.0.0.0:5201").unwrap());
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut arrivals: Vec<(Instant, usize)> = Vec::new();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => arrivals.push((Instant::now(), n)),
            }
        }
        arrivals
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, pa, b4) = (stop.clone(), pa.clone(), b4.clone());
        std::thread::spawn(move || {
            enter_netns(&pa);
            let mut s = TcpStream::connect((b4.as_str(), 5201)).unwrap();
            let chunk = vec![0x42u8; 1 << 16];
            while !stop.load(Ordering::Relaxed) {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
        })
    };

    // Initiations node B read (past mac1 and, under load, mac2: each
    // costs the handshake's X25519 work): what the floods cost it. Read
    // once B has worked through what it queued (its handshake queue holds
    // thousands): when neither the count nor the cookie replies moved for
    // 300 ms. Returns the count and when it settled.
    let nb = c.nodes[1].ns.clone();
    let settled = || {
        let counts = || {
            let m = scrape(&nb);
            let read = sample(&m, "podguard_device_handshake_initiations_read_total{")
                .expect("node B's initiations read (a userspace device metric)");
            let cookies: Option<f64> = m
                .lines()
                .find(|l| {
                    l.starts_with("podguard_device_dropped_packets_total{")
                        && l.contains("reason=\"under_load\"")
                })
                .and_then(|l| l.rsplit(' ').next()?.parse().ok());
            (read, cookies.expect("node B's under_load drops"))
        };
        let mut last = counts();
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(300));
            let now = counts();
            if now == last {
                return (now.0, Instant::now());
            }
            last = now;
        }
        panic!("node B's handshake counts never settled: {last:?}");
    };
    std::thread::sleep(Duration::from_secs(2));
    let (read1, t1) = settled();
    let replays = flood(&evil, 40000, |_| init.clone());
    let t2 = Instant::now();
    let (read2, t2_settled) = settled();
    assert_eq!(
        c.endpoint(1, &key_a),
        "192.0.2.1:51820",
        "replays moved B's endpoint"
    );
    let garbage = flood(&evil, 40001, |i| {
        let mut d = noise(i, 148);
        d[0] = 1;
        d[1..4].fill(0);
        d
    });
    let t3 = Instant::now();
    let (read3, _) = settled();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let arrivals = reader.join().unwrap();

    assert_eq!(
        c.endpoint(1, &key_a),
        "192.0.2.1:51820",
        "the flood moved B's endpoint"
    );
    assert_eq!(
        c.endpoint(0, &key_b),
        "192.0.2.2:51820",
        "the flood moved A's endpoint"
    );
    let plain = cap.stop(&mut c.n);
    assert!(
        !contains(&plain, &[0x42; 64]),
        "stream bytes in the clear on the underlay"
    );
    assert!(
        cap.matching("net 10.244.0.0/16").is_empty(),
        "pod addresses in the clear on the underlay"
    );

    let gap = arrivals
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or_default();
    let mbit = |from: Instant, to: Instant| {
        let bytes: usize = arrivals
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, n)| n)
            .sum();
        bytes as f64 * 8.0 / (to - from).as_secs_f64() / 1e6
    };
    eprintln!(
        "flood: {replays} replays ({:.0}/s), {garbage} garbage ({:.0}/s); stream {:.0} Mbit/s before, {:.0} during replays, {:.0} during garbage; longest gap {gap:?}; initiations read {} during replays, {} during garbage",
        replays as f64 / (t2 - t1).as_secs_f64(),
        garbage as f64 / (t3 - t2).as_secs_f64(),
        mbit(t1 - Duration::from_secs(2), t1),
        mbit(t1, t2),
        mbit(t2, t3),
        read2 - read1,
        read3 - read2,
    );
    // 15k initiations per second already cut a stream by 86% when they
    // were opened on the data path; this machine's attacker manages
    // 60-75k per second (it shares the two cores with both nodes).
    assert!(
        replays >= 150_000 && garbage >= 150_000,
        "the attacker sent too little to prove anything"
    );
    assert!(mbit(t1, t2) > 0.0 && mbit(t2, t3) > 0.0);
    assert!(
        gap < Duration::from_secs(1),
        "the stream stalled for {gap:?}"
    );
    // Replayed initiations pass mac1: up to the load limit (100 per local
    // key; B has one) a second are read before cookie replies take over,
    // none once it is reached; the load resets once a second, so a span
    // of D seconds meets at most ceil(D) + 1 of them. Random ones fail
    // mac1 and are never read: mac1 comes before the DH.
    let span = t2_settled - t1;
    let limit = 100.0 * (span.as_secs_f64().ceil() + 1.0);
    assert!(
        read2 - read1 <= limit,
        "{} replayed initiations read in {span:?} (at most {limit})",
        read2 - read1,
    );
    assert_eq!(read3, read2, "random initiations were read");
    // And pods still talk when it is over.
    assert!(pings(&pa, &b4));
}
