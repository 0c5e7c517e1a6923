//! The nodes file (JSON or YAML): never panics; what it accepts plans.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(nodes) = mesh::nodes_file::parse("fuzz.yaml", text) {
        let local = mesh::Local {
            name: nodes.first().map(|n| n.name.clone()).unwrap_or_default(),
            public_key: keys::PrivateKey::from_bytes([9; 32]).public_key(),
        };
        let cfg = mesh::MeshConfig {
            cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            ..Default::default()
        };
        let _ = mesh::plan(&local, &nodes, &cfg);
    }
});
