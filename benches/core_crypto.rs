//! The WireGuard core's crypto alone, no sockets: sealing and opening
//! GSO-sized batches (45 packets of 1420 bytes, 63,900 bytes) between two
//! cores with a session, on 1 and on 2 of the device's crypto workers
//! (`podguard::wireguard::workers::Pool`, the pool the device uses).
//! Target (issue 17): 2 workers ≥ 1.7× 1 worker on a 2-core machine.
//!
//! Run: `cargo bench --bench core_crypto`. After criterion's groups (1
//! worker, then 2: minutes apart, on a shared machine whose speed drifts
//! within minutes), a paired run alternates 1 and 2 workers every few
//! milliseconds and prints the ratio of their medians: the figure to
//! compare on a noisy machine, for GSO-sized batches and for 256 packets.
//! `cargo bench --bench core_crypto -- paired` skips criterion's groups.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ipnet::IpNet;
use keys::PrivateKey;
use podguard::wireguard::workers::Pool;
use wgcore::gso::Flush;
use wgcore::uapi::{PeerUpdate, SetRequest};
use wgcore::{Core, Inline, Opened, Sealed, SourceCache, Transmit};

const PACKETS: usize = 45;
const PACKET: usize = 1420;
/// The larger batch of the paired run.
const PAIRED_LARGE: usize = 256;

struct Node {
    core: Core,
    addr: SocketAddr,
}

fn node(i: u8, key: &PrivateKey, peer: &PrivateKey, now: Instant) -> Node {
    let core = Core::new(51820, now);
    core.set_keys(key, None, now);
    let other: IpNet = format!("10.{}.0.0/24", 1 - i).parse().unwrap();
    let req = SetRequest {
        peers: vec![PeerUpdate {
            public_key: Some(peer.public_key()),
            endpoint: Some(SocketAddr::from(([192, 0, 2, 11 - i], 51820))),
            allowed_ips: vec![other],
            ..PeerUpdate::default()
        }],
        ..SetRequest::default()
    };
    core.apply(req, now).unwrap();
    Node {
        core,
        addr: SocketAddr::from(([192, 0, 2, 10 + i], 51820)),
    }
}

/// An IPv4 packet of `len` bytes from 10.<from>.0.2 to 10.<to>.0.2.
fn packet(from: u8, to: u8, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, from, 0, 2]);
    p[16..20].copy_from_slice(&[10, to, 0, 2]);
    p
}

/// Two cores with a session (0 initiated).
fn pair() -> (Node, Node) {
    let now = Instant::now();
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let (a, b) = (node(0, &ka, &kb, now), node(1, &kb, &ka, now));
    let first = packet(0, 1, 100);
    let route = a.core.route(wgcore::dst_address(&first).unwrap()).unwrap();
    let mut buf = vec![0u8; 65_536];
    let Sealed::Datagram(n) = a.core.seal(&route, &first, &mut buf, now) else {
        panic!("no initiation");
    };
    let mut wire: Vec<(usize, SocketAddr, Vec<u8>)> = vec![(1, a.addr, buf[..n].to_vec())];
    let mut cache = SourceCache::default();
    while let Some((to, from, bytes)) = wire.pop() {
        let n = [&a, &b][to]
            .core
            .open(&bytes, from, &mut buf, &mut cache, now);
        let _ = n;
        let mut t: Vec<Transmit> = Vec::new();
        [&a, &b][to].core.drain_transmits(&mut t);
        let me = [&a, &b][to].addr;
        wire.extend(t.into_iter().map(|t| (1 - to, me, t.bytes)));
    }
    (a, b)
}

fn seal(a: &Node, pkts: &[&[u8]], out: &mut [u8], runs: &mut Vec<Flush>, pool: &Pool) {
    runs.clear();
    a.core.seal_batch(pkts, out, pool, runs, Instant::now());
}

/// One batch sealed by `a` (on the calling thread), as datagrams.
fn sealed_batch(a: &Node, refs: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut o = vec![0u8; wgcore::batch_buffer_len(refs.iter().map(|p| p.len()))];
    let mut r = Vec::new();
    a.core
        .seal_batch(refs, &mut o, &Inline, &mut r, Instant::now());
    let mut d = Vec::new();
    for f in r {
        d.extend(o[f.range].chunks(f.seg).map(|c| c.to_vec()));
    }
    d
}

fn open(
    b: &Node,
    from: SocketAddr,
    dgrams: &[Vec<u8>],
    bufs: &mut [Vec<u8>],
    pool: &Pool,
    cache: &mut SourceCache,
    opened: &mut Vec<Opened>,
) {
    let input: Vec<(&[u8], SocketAddr)> = dgrams.iter().map(|d| (d.as_slice(), from)).collect();
    let mut outs: Vec<&mut [u8]> = bufs.iter_mut().map(|v| v.as_mut_slice()).collect();
    b.core
        .open_batch(&input, &mut outs, pool, cache, opened, Instant::now());
}

fn bench(c: &mut Criterion) {
    let (a, b) = pair();
    let pkts: Vec<Vec<u8>> = (0..PACKETS).map(|_| packet(0, 1, PACKET)).collect();
    let refs: Vec<&[u8]> = pkts.iter().map(|p| p.as_slice()).collect();
    let mut out = vec![0u8; wgcore::batch_buffer_len(refs.iter().map(|p| p.len()))];
    let mut runs = Vec::new();
    // The session works both ways before anything is timed.
    seal(
        &a,
        &refs,
        &mut out,
        &mut runs,
        &Pool::on_this_thread(1).unwrap(),
    );
    assert!(!runs.is_empty(), "no session: nothing sealed");
    assert!(runs.iter().all(|f| out[f.range.start] == 4));

    let mut g = c.benchmark_group("core_crypto");
    g.throughput(Throughput::Bytes((PACKETS * PACKET) as u64));
    for workers in [1, 2] {
        let pool = Pool::on_this_thread(workers).unwrap();
        g.bench_with_input(
            BenchmarkId::new("seal_batch", workers),
            &workers,
            |bn, _| {
                bn.iter(|| seal(&a, &refs, &mut out, &mut runs, &pool));
            },
        );
        let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; 2048]; PACKETS];
        let mut opened: Vec<Opened> = Vec::new();
        let mut cache = SourceCache::default();
        g.bench_with_input(
            BenchmarkId::new("open_batch", workers),
            &workers,
            |bn, _| {
                // Fresh batches each time (a replay is refused before any
                // decryption), sealed untimed, then opened back to back as
                // they arrive under load.
                bn.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let k = left.min(16);
                        left -= k;
                        let batches: Vec<Vec<Vec<u8>>> =
                            (0..k).map(|_| sealed_batch(&a, &refs)).collect();
                        let start = Instant::now();
                        for dgrams in &batches {
                            open(
                                &b,
                                a.addr,
                                dgrams,
                                &mut bufs,
                                &pool,
                                &mut cache,
                                &mut opened,
                            );
                        }
                        total += start.elapsed();
                    }
                    total
                });
                assert!(opened.iter().all(|o| matches!(o, Opened::Packet(_))));
            },
        );
    }
    g.finish();
    // A thread belongs to one pool at most: a fresh one for each pair.
    // The GSO-sized batch is issue 17's figure; the larger one is what
    // the device's TUN side takes when more super-packets are waiting
    // (its receive side takes up to 1,024 datagrams).
    for n in [PACKETS, PAIRED_LARGE] {
        let pkts: Vec<Vec<u8>> = (0..n).map(|_| packet(0, 1, PACKET)).collect();
        let refs: Vec<&[u8]> = pkts.iter().map(|p| p.as_slice()).collect();
        std::thread::scope(|s| s.spawn(|| paired(&a, &b, &refs)).join().unwrap());
    }
}

/// The median of `v`.
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// 1 and 2 workers alternating, `ROUNDS` rounds of `PER` batches of
/// `refs` each: seal, then open; prints median µs per batch and the ratio.
fn paired(a: &Node, b: &Node, refs: &[&[u8]]) {
    const ROUNDS: usize = 60;
    const PER: usize = 50;
    let pools = [
        Pool::on_this_thread(1).unwrap(),
        Pool::on_this_thread(2).unwrap(),
    ];
    let mut out = vec![0u8; wgcore::batch_buffer_len(refs.iter().map(|p| p.len()))];
    let mut runs = Vec::new();
    let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; 2048]; refs.len()];
    let mut opened: Vec<Opened> = Vec::new();
    let mut cache = SourceCache::default();
    let mut seal_t = [Vec::new(), Vec::new()];
    let mut open_t = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (w, pool) in pools.iter().enumerate() {
            let start = Instant::now();
            for _ in 0..PER {
                seal(a, refs, &mut out, &mut runs, pool);
            }
            seal_t[w].push(start.elapsed() / PER as u32);
            let batches: Vec<Vec<Vec<u8>>> = (0..PER).map(|_| sealed_batch(a, refs)).collect();
            let start = Instant::now();
            for dgrams in &batches {
                open(b, a.addr, dgrams, &mut bufs, pool, &mut cache, &mut opened);
            }
            open_t[w].push(start.elapsed() / PER as u32);
        }
    }
    assert!(opened.iter().all(|o| matches!(o, Opened::Packet(_))));
    for (name, t) in [("seal_batch", seal_t), ("open_batch", open_t)] {
        let [one, two] = t.map(median);
        println!(
            "paired {name}, {} packets: 1 worker {:.1} µs, 2 workers {:.1} µs per batch: {:.2}x",
            refs.len(),
            one.as_secs_f64() * 1e6,
            two.as_secs_f64() * 1e6,
            one.as_secs_f64() / two.as_secs_f64()
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
