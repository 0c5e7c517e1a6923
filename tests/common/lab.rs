//! Helpers for tests of `podguard lab` (fixed pglab names: one lab at a
//! time). A test takes the lab lock (so two test runs on one machine never
//! tear down each other's lab), refuses to start when a lab it did not make
//! is up (someone's own lab is never destroyed), and removes its lab on
//! drop of the guard, also on panic. A test run that was killed (CI
//! stopped, a session ended) cannot remove its lab; its lab records the
//! test's process (`lab up` writes [`owner_file`] from
//! `PODGUARD_LAB_OWNER`), so the next test run recognises that lab as a
//! dead test's and removes it instead of failing on it. The record lives
//! and dies with the lab: a lab someone makes later has none, and is
//! refused.

use std::process::{Command, Output};

use serde_json::Value;

/// Run the `podguard` CLI.
pub fn podguard(args: &[&str]) -> Output {
    podguard_command().args(args).output().unwrap()
}

/// The `podguard` CLI, telling a `lab up` that this test process owns the
/// lab.
pub fn podguard_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_podguard"));
    c.env(
        podguard::lab::cluster::OWNER_ENV,
        process_id(std::process::id()).expect("this test's own /proc entry"),
    );
    // The lab's agents run in namespace podguard, whatever the caller's
    // shell exports.
    c.env_remove("PODGUARD_NAMESPACE");
    c
}

/// Holds the lab lock; removes the lab it made when dropped.
pub struct Down {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Drop for Down {
    fn drop(&mut self) {
        let _ = podguard(&["lab", "down"]);
    }
}

/// The lock every lab test holds while its lab exists.
pub const TEST_LOCK: &str = "/run/podguard-lab.tests.lock";

/// Where a lab records the test process that made it.
pub fn owner_file() -> std::path::PathBuf {
    std::path::Path::new(podguard::lab::cluster::STATE_DIR).join("owner")
}

/// "PID STARTTIME" of process `pid`, None when it does not exist.
pub fn process_id(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime); fields after the ")" that ends the command name.
    let after = &stat[stat.rfind(')')? + 2..];
    let start = after.split_whitespace().nth(19)?;
    Some(format!("{pid} {start}"))
}

/// The process named in the lab's [`owner_file`] when it is gone: the lab
/// that is up was made by a test run that was killed before it could
/// remove it.
fn dead_test_owner() -> Option<String> {
    let owner = std::fs::read_to_string(owner_file()).ok()?;
    let owner = owner.trim();
    let pid: u32 = owner.split_whitespace().next()?.parse().ok()?;
    (process_id(pid).as_deref() != Some(owner)).then(|| owner.to_string())
}

/// Take the lab lock (waiting for another test run's lab to go), then
/// make sure no lab is up: one that exists now is someone else's, and is
/// left alone.
pub fn exclusive() -> Down {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(TEST_LOCK)
        .unwrap();
    let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    if let Err(e) = reclaim_or_refuse() {
        // Not a lab of a test (those hold the lock): leave it alone.
        drop(lock);
        panic!("{e}");
    }
    Down { _lock: lock }
}

/// Under the lock: remove a lab that a killed test run left (its
/// [`owner_file`] names a process that is gone), refuse any other lab
/// that is up.
pub fn reclaim_or_refuse() -> Result<(), String> {
    if podguard::lab::cluster::exists()
        && let Some(owner) = dead_test_owner()
    {
        eprintln!("removing a lab left by a killed test run (process {owner})");
        let down = podguard(&["lab", "down"]);
        if !down.status.success() {
            return Err(format!(
                "lab down: {}",
                String::from_utf8_lossy(&down.stderr)
            ));
        }
    }
    refuse_foreign()
}

/// Err when a lab is up: under the lock, and its test owner (if any)
/// alive, it is not a dead test's, so it is someone's own and must be
/// left alone.
pub fn refuse_foreign() -> Result<(), String> {
    if podguard::lab::cluster::exists() {
        return Err("a lab is up that this test did not make (namespaces pglab-*, /run/podguard-lab): it is left alone; run `podguard lab down` if it is yours".into());
    }
    Ok(())
}

/// A fresh lab of 3 nodes with 1 pod each, IPv4 only; gone when the guard drops.
pub fn up_small() -> Down {
    up_nodes(3)
}

/// A fresh lab of `nodes` nodes with 1 pod each, IPv4 only; gone when the
/// guard drops.
pub fn up_nodes(nodes: usize) -> Down {
    up_with(nodes, &[])
}

/// Like [`up_nodes`], with more `podguard lab up` arguments.
pub fn up_with(nodes: usize, extra: &[&str]) -> Down {
    let guard = exclusive();
    let n = nodes.to_string();
    let mut args = vec![
        "lab",
        "up",
        "--nodes",
        &n,
        "--pods-per-node",
        "1",
        "--ipv4-only",
    ];
    args.extend_from_slice(extra);
    let up = podguard(&args);
    if !up.status.success() {
        let mut logs = String::new();
        for e in std::fs::read_dir(podguard::lab::cluster::FAILED_LOGS)
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            logs.push_str(&format!(
                "---- {} ----\n{}\n",
                e.path().display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            ));
        }
        panic!("lab up: {}\n{logs}", String::from_utf8_lossy(&up.stderr));
    }
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

/// A lab node's agent as it was started: to kill it and start it again
/// the way the DaemonSet would.
pub struct LabAgent {
    /// Its lab node number (`pglab-n<i>`, `/run/podguard-lab/node-<i>`).
    pub node: usize,
    cmdline: Vec<String>,
    environ: String,
}

/// The pid of the agent in lab node namespace `ns`.
pub fn agent_pid(ns: &str) -> String {
    super::ok(&["ip", "netns", "pids", ns])
        .split_whitespace()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "podguard-agent")
        })
        .expect("an agent in the node namespace")
        .to_string()
}

impl LabAgent {
    /// `kill -9` lab node `node`'s agent, remembering how it ran.
    pub fn kill9(node: usize) -> Self {
        let pid = agent_pid(&format!("pglab-n{node}"));
        let cmdline: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .expect("the agent's command line")
            .split('\0')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let environ = std::fs::read_to_string(format!("/proc/{pid}/environ"))
            .expect("the agent's environment");
        super::ok(&["kill", "-9", &pid]);
        Self {
            node,
            cmdline,
            environ,
        }
    }

    /// Start it again with the same arguments and environment (its log
    /// appended to); the child is killed when the returned guard drops.
    pub fn restart(&self) -> super::KillOnDrop {
        let dir = format!("/run/podguard-lab/node-{}", self.node);
        let wg_dir = std::path::PathBuf::from(format!("{dir}/wg"));
        let args: Vec<&str> = self.cmdline.iter().map(String::as_str).collect();
        let mut cmd = podguard::sys::node_command(&format!("pglab-n{}", self.node), &wg_dir, &args);
        for kv in self.environ.split('\0').filter_map(|e| e.split_once('=')) {
            cmd.env(kv.0, kv.1);
        }
        let log = std::fs::File::options()
            .append(true)
            .create(true)
            .open(format!("{dir}/agent.log"))
            .expect("the agent's log");
        super::KillOnDrop(
            cmd.stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .expect("restarting the agent"),
        )
    }
}
