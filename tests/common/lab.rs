//! Helpers for tests of `podguard lab` (fixed pglab names: one lab at a
//! time, removed on drop of the guard, also on panic).

use std::process::{Command, Output};

use serde_json::Value;

/// Run the `podguard` CLI.
pub fn podguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podguard"))
        .args(args)
        .output()
        .unwrap()
}

/// Removes the lab when dropped.
pub struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let _ = podguard(&["lab", "down"]);
    }
}

/// A fresh lab of 3 nodes with 1 pod each, IPv4 only; gone when the guard drops.
pub fn up_small() -> Down {
    let guard = Down;
    let _ = podguard(&["lab", "down"]);
    let up = podguard(&[
        "lab",
        "up",
        "--nodes",
        "3",
        "--pods-per-node",
        "1",
        "--ipv4-only",
    ]);
    assert!(
        up.status.success(),
        "lab up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    guard
}

/// One request to the lab's API server; panics on a non-2xx answer.
pub fn api(method: &str, path: &str, body: Option<Value>) -> Value {
    podguard::lab::cluster::api(
        &podguard::lab::plan::underlay_netns(),
        method,
        path,
        body.as_ref(),
    )
    .unwrap()
}
