//! `--install-cni`: copy the CNI plugin binary and write the conflist, both
//! atomically (temp file + rename), as the DaemonSet's init step does.
//!
//! The conflist says `cniVersion` 1.0.0: the libcni of podman 4.3 and
//! containerd 1.6 (Debian 12, Ubuntu 22.04) refuses 1.1.0 results and drops
//! the pod's network. The plugin still answers 1.1.0 (and GC, STATUS) when
//! a runtime's configuration asks for it. `portmap` (hostPort) is chained
//! after the plugin; a node without the `portmap` binary gets the conflist
//! without it, so pods still get a network (a warning says what is
//! missing).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The conflist podguard installs.
pub const CONFLIST: &str = include_str!("../../deploy/10-podguard.conflist");
/// Its file name.
pub const CONFLIST_NAME: &str = "10-podguard.conflist";

fn write_atomic(path: &Path, body: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
        std::process::id()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// The plugin binary's name (and the conflist's `type`).
pub const PLUGIN_NAME: &str = crate::cni::spec::PLUGIN_TYPE;

/// What [`install`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Whether the conflist chains `portmap` (it does when
    /// `<bin_dir>/portmap` exists).
    pub portmap: bool,
    /// The conflist written.
    pub conflist: String,
}

/// The conflist for a node: the shipped one, without the `portmap` entry
/// when `portmap` is false.
pub fn conflist(portmap: bool) -> String {
    if portmap {
        return CONFLIST.to_string();
    }
    let mut v: serde_json::Value =
        serde_json::from_str(CONFLIST).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(plugins) = v.get_mut("plugins").and_then(|p| p.as_array_mut()) {
        plugins.retain(|p| p.get("type").and_then(|t| t.as_str()) != Some("portmap"));
    }
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

/// Install `plugin` as `<bin_dir>/podguard-cni` and the conflist into
/// `conf_dir`.
pub fn install(plugin: &Path, bin_dir: &Path, conf_dir: &Path) -> std::io::Result<Installed> {
    let body = fs::read(plugin)?;
    write_atomic(&bin_dir.join(PLUGIN_NAME), &body, 0o755)?;
    let portmap = bin_dir.join("portmap").is_file();
    let conflist = conflist(portmap);
    write_atomic(&conf_dir.join(CONFLIST_NAME), conflist.as_bytes(), 0o644)?;
    Ok(Installed { portmap, conflist })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_binary_and_conflist() {
        let d = tempfile::tempdir().unwrap();
        let plugin = d.path().join("src-plugin");
        fs::write(&plugin, b"\x7fELF-ish").unwrap();
        let got = install(&plugin, &d.path().join("bin"), &d.path().join("net.d")).unwrap();
        assert_eq!(
            fs::read(d.path().join("bin/podguard-cni")).unwrap(),
            b"\x7fELF-ish"
        );
        let conf = fs::read_to_string(d.path().join("net.d/10-podguard.conflist")).unwrap();
        // Runtimes run the binary named by `type`: it must be the one we
        // installed.
        let v: serde_json::Value = serde_json::from_str(&conf).unwrap();
        assert_eq!(v["plugins"][0]["type"], PLUGIN_NAME);
        assert!(d.path().join("bin").join(PLUGIN_NAME).is_file());
        assert_eq!(v["cniVersion"], "1.0.0");
        // No portmap binary: no portmap entry (pods still get a network).
        assert!(!got.portmap);
        assert_eq!(v["plugins"].as_array().unwrap().len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(d.path().join("bin/podguard-cni"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn chains_portmap_when_the_node_has_it() {
        let d = tempfile::tempdir().unwrap();
        let plugin = d.path().join("src-plugin");
        fs::write(&plugin, b"x").unwrap();
        fs::create_dir(d.path().join("bin")).unwrap();
        fs::write(d.path().join("bin/portmap"), b"x").unwrap();
        let got = install(&plugin, &d.path().join("bin"), &d.path().join("net.d")).unwrap();
        assert!(got.portmap);
        let conf = fs::read_to_string(d.path().join("net.d/10-podguard.conflist")).unwrap();
        assert_eq!(conf, CONFLIST, "the shipped conflist, byte for byte");
        let v: serde_json::Value = serde_json::from_str(&conf).unwrap();
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
    }
}
