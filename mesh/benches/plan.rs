//! plan + diff scaling at 100, 1000 and 5000 nodes.
//! Targets (ARCHITECTURE / issue 3): 5000-node plan < 20 ms; diff for one
//! changed node < 1 ms.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use keys::PrivateKey;
use mesh::{Local, MeshConfig, NodeInfo, Observed, diff, plan};

fn cluster(n: usize) -> (Local, Vec<NodeInfo>, MeshConfig) {
    let local_key = PrivateKey::generate().public_key();
    let nodes: Vec<NodeInfo> = (0..n)
        .map(|i| {
            let (hi, lo) = (i / 256, i % 256);
            NodeInfo {
                name: format!("node-{i:05}"),
                pod_cidrs: vec![
                    format!("10.{}.{lo}.0/24", 64 + hi),
                    format!("fd00:10:{hi:x}:{lo:x}::/64"),
                ],
                endpoint: Some(format!("172.16.{hi}.{lo}:51820")),
                public_key: Some(if i == 0 {
                    local_key.to_base64()
                } else {
                    PrivateKey::generate().public_key().to_base64()
                }),
                next_public_key: None,
                internal_ips: vec![],
                underlay_mtu: Some("1500".into()),
            }
        })
        .collect();
    let cfg = MeshConfig {
        cluster_cidrs: vec![
            "10.64.0.0/10".parse().unwrap(),
            "fd00:10::/32".parse().unwrap(),
        ],
        ..Default::default()
    };
    (
        Local {
            name: "node-00000".into(),
            public_key: local_key,
        },
        nodes,
        cfg,
    )
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("mesh");
    g.sample_size(20);
    for n in [100usize, 1000, 5000] {
        let (local, nodes, cfg) = cluster(n);
        g.bench_with_input(BenchmarkId::new("plan", n), &n, |b, _| {
            b.iter(|| plan(&local, &nodes, &cfg).expect("plan"))
        });
        let p = plan(&local, &nodes, &cfg).expect("plan");
        let mut observed = Observed::default();
        observed.apply(&diff(&p, &observed));
        // One node changed its endpoint.
        let mut nodes2 = nodes.clone();
        nodes2[n / 2].endpoint = Some("172.31.255.254:51820".into());
        let p2 = plan(&local, &nodes2, &cfg).expect("plan");
        g.bench_with_input(BenchmarkId::new("diff_one_changed", n), &n, |b, _| {
            b.iter(|| {
                let a = diff(&p2, &observed);
                assert_eq!(a.len(), 1);
                a
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
