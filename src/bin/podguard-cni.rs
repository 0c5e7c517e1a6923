//! `podguard-cni`: the CNI plugin (CNI spec 1.1.0; also 0.3.0–1.0.0; the
//! shipped conflist says 1.0.0, which today's runtimes accept).
//!
//! Called by the container runtime with `CNI_COMMAND` and friends in the
//! environment and the network configuration on stdin. Prints a result or
//! an error JSON on stdout; exits non-zero on error.

use std::collections::BTreeMap;
use std::io::{Read, Write};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() > 1 && (args[1] == "--help" || args[1] == "-h") {
        println!(
            "podguard-cni: the podguard CNI plugin.\n\n\
             Called by the container runtime, not by hand: CNI_COMMAND (ADD, DEL, CHECK,\n\
             VERSION, STATUS, GC), CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME in the\n\
             environment, the network configuration (type \"podguard-cni\", a valid\n\
             network name) on stdin. podguard-agent --install-cni writes the conflist\n\
             (cniVersion 1.0.0, then portmap for hostPort).\n\
             Optional configuration keys: bridge, mtu, nodeStateFile, dataDir.\n\
             Reads the node state podguard-agent writes to /run/podguard/node.json and\n\
             keeps its address allocations under /var/lib/podguard/ipam/.\n\n\
             Try: echo '{{\"cniVersion\":\"1.1.0\"}}' | CNI_COMMAND=VERSION podguard-cni"
        );
        return;
    }
    if args.len() > 1 && args[1] == "--version" {
        println!("podguard-cni {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let envs: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("CNI_"))
        .collect();
    let mut stdin = Vec::new();
    let _ = std::io::stdin().take(4 << 20).read_to_end(&mut stdin);
    let mut out = std::io::stdout();
    match podguard::cni::run(&envs, &stdin) {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
        }
        Ok(None) => {}
        Err((e, version)) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            let _ = out.flush();
            std::process::exit(1);
        }
    }
}
