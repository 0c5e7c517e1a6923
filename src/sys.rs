//! Small process and network namespace helpers (iproute2 and setns): the
//! one toolkit the lab, the operator CLI's `--lab` target, the benches
//! and the tests share (CONVENTIONS 19: none of them reaches into the
//! lab for it). The agent and the CNI plugin do not use it.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, bail};

/// Run a command; fail with its stderr if it fails.
pub fn run(args: &[&str]) -> anyhow::Result<String> {
    let o = output(args)?;
    checked(&args.join(" "), o)
}

/// Run `cmd`; fail with its stderr if it fails.
pub fn run_command(mut cmd: Command) -> anyhow::Result<String> {
    let what = format!("{cmd:?}");
    let o = cmd.output().with_context(|| format!("running {what}"))?;
    checked(&what, o)
}

fn checked(what: &str, o: Output) -> anyhow::Result<String> {
    if !o.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Run a command and return its output whatever the exit code.
pub fn output(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args[0]))
}

/// Network namespaces that exist.
pub fn netns_list() -> Vec<String> {
    output(&["ip", "netns", "list"])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Create a namespace with `lo` up.
pub fn netns_add(name: &str) -> anyhow::Result<()> {
    run(&["ip", "netns", "add", name])?;
    run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// SIGKILL every process in `ns`, then delete it.
pub fn netns_destroy(name: &str) {
    if let Ok(o) = output(&["ip", "netns", "pids", name]) {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    // Give the kernel a moment to reap, then delete (retry once).
    for _ in 0..20 {
        if output(&["ip", "netns", "del", name]).is_ok_and(|o| o.status.success()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Run `f` on a thread inside namespace `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let file = File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening namespace {ns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering namespace {ns}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("worker in {ns} panicked"))?
    })
}

/// Start a long-running process inside `ns`, detached from this process
/// (own process group, output to `log`), optionally with its own
/// `/run/wireguard` bind-mounted from `wg_dir`. Returns its pid.
pub fn spawn_in(
    ns: &str,
    args: &[&str],
    log: &Path,
    wg_dir: Option<&Path>,
    env: &[(&str, &str)],
) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let log_file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut c = match wg_dir {
        Some(dir) => node_command(ns, dir, args),
        None => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).args(args);
            c
        }
    };
    c.envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0);
    let child = c
        .spawn()
        .with_context(|| format!("starting {} in {ns}", args[0]))?;
    Ok(child.id())
}

/// `args` run inside node namespace `ns` with that node's own
/// `/run/wireguard` (bind-mounted from `wg_dir`), so `wg` and the node's
/// UAPI socket match. `ip netns exec` gives each call a private mount
/// namespace, so the bind never leaks.
pub fn node_command(ns: &str, wg_dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        ns,
        "sh",
        "-c",
        "mount --bind \"$0\" /run/wireguard && exec \"$@\"",
    ])
    .arg(wg_dir)
    .args(args);
    c
}

/// Whether a tool is on PATH.
pub fn have(tool: &str) -> bool {
    output(&["sh", "-c", &format!("command -v {tool}")]).is_ok_and(|o| o.status.success())
}
