//! deploy/image.sh: the podguard image built without a registry holds
//! the binaries and every tool and library they need. Proven by running
//! them from the image's own filesystem (chroot, in a fresh network
//! namespace), and by reading the OCI layout a runtime would load.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_podguard-agent"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn chroot(root: &Path, argv: &[&str]) -> String {
    let o = Command::new("unshare")
        .arg("--net")
        .arg("chroot")
        .arg(root)
        .args(argv)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{argv:?} in the image: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn the_image_runs_the_agent_and_its_tools_on_its_own_files() {
    if !require_root("the_image_runs_the_agent_and_its_tools_on_its_own_files") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let o = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/image.sh"))
        .arg(out.path())
        .env("BIN_DIR", bin_dir())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let root = out.path().join("rootfs");
    assert!(chroot(&root, &["podguard-agent", "--version"]).contains("podguard-agent"));
    assert!(chroot(&root, &["podguard-cni", "--version"]).contains("podguard"));
    assert!(chroot(&root, &["wg", "--version"]).contains("wireguard-tools"));
    assert!(chroot(&root, &["ip", "-V"]).contains("iproute2"));
    // nft talks netlink from the image's libraries: a table the agent
    // would program, in a namespace of its own.
    let rules = chroot(
        &root,
        &["nft", "-e", "add", "table", "inet", "podguard-image-test"],
    );
    assert!(rules.contains("podguard-image-test"), "{rules}");

    // The OCI layout: one manifest, tagged as the chart deploys it, with
    // podguard-agent as the entrypoint.
    let chart = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/chart/Chart.yaml"
    ))
    .unwrap();
    let version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion: "))
        .unwrap()
        .trim_matches('"');
    let tar = out.path().join(format!("podguard-{version}.oci.tar"));
    let layout = out.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    ok(&[
        "tar",
        "-xf",
        tar.to_str().unwrap(),
        "-C",
        layout.to_str().unwrap(),
    ]);
    let read = |p: &str| -> Value {
        serde_json::from_slice(&std::fs::read(layout.join(p)).unwrap()).unwrap()
    };
    let blob = |d: &Value| {
        read(&format!(
            "blobs/sha256/{}",
            d.as_str().unwrap().trim_start_matches("sha256:")
        ))
    };
    let index = read("index.json");
    let m = &index["manifests"][0];
    assert_eq!(
        m["annotations"]["io.containerd.image.name"],
        format!("ghcr.io/podguard/podguard:{version}")
    );
    let manifest = blob(&m["digest"]);
    let config = blob(&manifest["config"]["digest"]);
    assert_eq!(config["config"]["Entrypoint"][0], "podguard-agent");
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.version"],
        version
    );
}
