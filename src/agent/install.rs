//! `--install-cni`: copy the CNI plugin binary and write the conflist, both
//! atomically (temp file + rename), as the DaemonSet's init step does.

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

/// Install `plugin` as `<bin_dir>/podguard-cni` and the conflist into
/// `conf_dir`.
pub fn install(plugin: &Path, bin_dir: &Path, conf_dir: &Path) -> std::io::Result<()> {
    let body = fs::read(plugin)?;
    write_atomic(&bin_dir.join("podguard-cni"), &body, 0o755)?;
    write_atomic(&conf_dir.join(CONFLIST_NAME), CONFLIST.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_binary_and_conflist() {
        let d = tempfile::tempdir().unwrap();
        let plugin = d.path().join("src-plugin");
        fs::write(&plugin, b"\x7fELF-ish").unwrap();
        install(&plugin, &d.path().join("bin"), &d.path().join("net.d")).unwrap();
        assert_eq!(
            fs::read(d.path().join("bin/podguard-cni")).unwrap(),
            b"\x7fELF-ish"
        );
        let conf = fs::read_to_string(d.path().join("net.d/10-podguard.conflist")).unwrap();
        assert!(conf.contains("\"type\": \"podguard\""));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(d.path().join("bin/podguard-cni"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
