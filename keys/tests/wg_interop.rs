//! Interop: our public-key derivation equals `wg pubkey` from wireguard-tools.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

use keys::PrivateKey;

fn wg_available() -> bool {
    Command::new("wg")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn public_key_matches_wg_pubkey() {
    if !wg_available() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "`wg` (wireguard-tools) is required under CI; install it with apt-get install wireguard-tools"
            );
        }
        eprintln!("SKIPPED: `wg` not installed (apt-get install wireguard-tools)");
        return;
    }
    for _ in 0..25 {
        let k = PrivateKey::generate();
        let mut child = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn wg pubkey");
        {
            let stdin = child.stdin.as_mut().expect("stdin");
            stdin.write_all(k.to_base64().as_bytes()).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let theirs = String::from_utf8(out.stdout).unwrap();
        assert_eq!(theirs.trim_end(), k.public_key().to_base64());
    }
}

#[test]
fn we_load_what_wg_genkey_writes() {
    if !wg_available() {
        if std::env::var_os("CI").is_some() {
            panic!("`wg` (wireguard-tools) is required under CI");
        }
        return;
    }
    let out = Command::new("wg").arg("genkey").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("private.key");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
    let ours = keys::store::load(&path).unwrap();
    assert_eq!(ours.to_base64().as_str(), text.trim_end());
}
