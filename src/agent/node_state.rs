//! Writing the node state file the agent keeps for the CNI plugin
//! (`/run/podguard/node.json`). Its content and parser are
//! `cnispec::node_state`, which the plugin reads it with.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub use cnispec::node_state::{DEFAULT_PATH, NodeState};

/// Write `state` to `path` atomically (temp file, fsync, rename), unless
/// the file already holds exactly this state. Returns whether it wrote.
pub fn write(path: &Path, state: &NodeState) -> std::io::Result<bool> {
    let mut json = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    json.push(b'\n');
    if fs::read(path).ok().as_deref() == Some(json.as_slice()) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("node.json"),
        std::process::id()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_once_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/node.json");
        let s = NodeState {
            node_name: "a".into(),
            bridge: "cbr0".into(),
            mtu: 1440,
            underlay_mtu: 1500,
            pod_cidrs: ["10.244.1.0/24".parse().unwrap()].into(),
            gateways: ["10.244.1.1".parse().unwrap()].into(),
        };
        assert!(write(&path, &s).unwrap());
        assert!(!write(&path, &s).unwrap());
        let back: NodeState = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(fs::read_to_string(&path).unwrap().contains("\"podCIDRs\""));
    }
}
