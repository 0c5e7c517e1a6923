//! The `podguard` CLI's own rules (usage, exit codes, completions, man
//! page), and its views of the mesh (`showconf`, `graph`) against a lab.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::kubelab::{Kube, KubeLab};

fn podguard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_podguard"))
        .args(args)
        .env("KUBECONFIG", "/nonexistent")
        .env_remove("PODGUARD_NAMESPACE")
        .output()
        .unwrap()
}

#[test]
fn a_timeout_without_wait_is_a_usage_error() {
    // A bare number is not taken as seconds: the unit is asked for.
    let o = podguard(&["rotate", "--node", "node-1", "--wait", "--timeout", "5"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no unit: write 5s"));
    let o = podguard(&["rotate", "--node", "node-1", "--timeout", "5s"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--timeout needs --wait"), "{err}");
    // With --wait it is accepted (and then fails for the missing cluster,
    // not for the flags).
    let o = podguard(&["rotate", "--node", "node-1", "--wait", "--timeout", "5s"]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("--timeout needs"));
}

/// `-o json` as kubectl takes it, on every command with an output format.
#[test]
fn output_has_kubectls_short_flag() {
    for cmd in [
        &["status"][..],
        &["audit"],
        &["rotate", "--all"],
        &["lab", "check"],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["-o", "json", "--help"]);
        let o = podguard(&args);
        assert!(o.status.success(), "{args:?}: {o:?}");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("-o, --output <OUTPUT>"),
            "{args:?}"
        );
    }
}

/// Bad values are refused at the flag, the mistake named, before anything
/// on the host changes.
#[test]
fn bad_flag_values_name_the_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("private.key");
    let key = key.to_str().unwrap();
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    // CIDRs, on both binaries.
    let o = agent(&[
        "--node-name",
        "n1",
        "--cluster-cidr",
        "10.244.0.0/33",
        "--key-file",
        key,
    ]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        err(&o).contains("\"10.244.0.0/33\": prefix length \"33\" is not 0 to 32"),
        "{o:?}"
    );
    let o = podguard(&["showconf", "a", "--cluster-cidr", "10.42.9.9/16"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        err(&o).contains("\"10.42.9.9/16\": host bits are set: write 10.42.0.0/16"),
        "{o:?}"
    );
    // An empty NODE_NAME (a DaemonSet without the downward API) stops the
    // agent before its key or the host is touched.
    let o = Command::new(env!("CARGO_BIN_EXE_podguard-agent"))
        .args(["--cluster-cidr", "10.244.0.0/16", "--key-file", key])
        .env("NODE_NAME", "")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        err(&o).contains("no node name given: set --node-name or NODE_NAME"),
        "{o:?}"
    );
    assert!(
        !dir.path().join("private.key").exists(),
        "a key was made before the check"
    );
    // --print-public-key says when it made the key, and only then.
    let o = agent(&["--key-file", key, "--print-public-key"]);
    assert!(
        o.status.success() && err(&o).contains("created one (0600)"),
        "{o:?}"
    );
    let o = agent(&["--key-file", key, "--print-public-key"]);
    assert!(o.status.success() && !err(&o).contains("created"), "{o:?}");
    // The lab's real range; rotate names both ways to pick nodes.
    let o = podguard(&["lab", "up", "--nodes", "300"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(err(&o).contains("1..=200"), "{o:?}");
    let o = podguard(&["rotate"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(err(&o).contains("--node <NODE>|--all"), "{o:?}");
}

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_podguard-agent"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

#[test]
fn agent_logs_as_json_and_checks_its_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("private.key");
    // Starts (logs), then fails at once installing into a missing dir.
    let o = agent(&[
        "--node-name",
        "n1",
        "--nodes-file",
        "/nonexistent",
        "--cluster-cidr",
        "10.244.0.0/16",
        "--key-file",
        key.to_str().unwrap(),
        "--install-cni",
        "--cni-bin-dir",
        "/proc/version/bin",
        "--cni-conf-dir",
        "/proc/version/conf",
        "--log-format",
        "json",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let start = lines
        .iter()
        .find(|v| v["fields"]["message"] == "podguard-agent starting")
        .unwrap_or_else(|| panic!("no start line: {err}"));
    assert_eq!(start["level"], "INFO");
    assert_eq!(start["fields"]["node"], "n1");
    // The fatal error is a log line too, in one line: every line on
    // stderr is JSON, with no cause chain or backtrace around it
    // (RUST_BACKTRACE is set in `agent`).
    assert_eq!(lines.len(), err.lines().count(), "{err}");
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR", "{err}");
    assert!(
        last["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("installing") && e.contains("/proc/version/bin")),
        "{err}"
    );
    assert_eq!(o.status.code(), Some(1));

    let o = agent(&[
        "--node-name",
        "n1",
        "--log-level",
        "loud[",
        "--print-public-key",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--log-level") && err.contains("give a level"),
        "{err}"
    );
}

/// `--help` says what the agent does, and `--print-public-key` needs only
/// the key file (README shows it so; it once demanded --node-name and
/// --cluster-cidr, which a query does not use).
#[test]
fn agent_help_describes_it_and_print_public_key_needs_only_the_key() {
    let o = agent(&["--help"]);
    assert!(o.status.success(), "{o:?}");
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("Keeps this node's WireGuard mesh")
            && help.contains("never sent in plaintext"),
        "{help}"
    );
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("private.key");
    let print = || agent(&["--key-file", key.to_str().unwrap(), "--print-public-key"]);
    let o = print();
    assert!(o.status.success(), "{o:?}");
    let public = String::from_utf8_lossy(&o.stdout).trim().to_string();
    keys::PublicKey::from_base64(&public).unwrap_or_else(|e| panic!("{public}: {e}"));
    assert_eq!(String::from_utf8_lossy(&print().stdout).trim(), public);
    // The running agent still needs both.
    let o = agent(&["--key-file", key.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--node-name") && err.contains("--cluster-cidr"),
        "{err}"
    );
}

/// Agents started at once on a node without a key (a DaemonSet Pod and its
/// replacement, say) agree on one key: 8 processes, released together from
/// a FIFO, each create-or-load the same fresh key file, in 10 rounds.
/// Every process prints the same public key and the file holds it.
#[test]
fn agents_started_at_once_agree_on_one_key() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let o = Command::new("mkfifo").arg(&gate).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    // Held open for reading and writing, so no open blocks and no reader
    // sees end of file before its line arrives.
    let mut release = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&gate)
        .unwrap();
    for round in 0..10 {
        let key = dir.path().join(format!("k{round}/private.key"));
        let script = r#"read _ < "$1"; exec "$2" --key-file "$3" --print-public-key"#;
        let children: Vec<_> = (0..8)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", script, "sh"])
                    .arg(&gate)
                    .arg(env!("CARGO_BIN_EXE_podguard-agent"))
                    .arg(&key)
                    .env_remove("RUST_LOG")
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Each reader takes one line: all go at once.
        std::thread::sleep(std::time::Duration::from_millis(200));
        release.write_all(&[b'\n'; 8]).unwrap();
        let printed: Vec<String> = children
            .into_iter()
            .map(|c| {
                let o = c.wait_with_output().unwrap();
                assert!(o.status.success(), "{o:?}");
                String::from_utf8_lossy(&o.stdout).trim().to_string()
            })
            .collect();
        assert!(
            printed.iter().all(|p| *p == printed[0]),
            "round {round}: processes printed different keys: {printed:?}"
        );
        let on_disk = keys::store::load(&key).unwrap().public_key().to_base64();
        assert_eq!(on_disk.as_str(), printed[0], "round {round}");
    }
}

/// A log level with a typo is refused before the agent starts, from the
/// flag, the chart's environment variable, or RUST_LOG. Read as a filter it
/// was a target name, which turned every log off, errors included.
/// The agent's flags for a key query (`--print-public-key`, which reads
/// or makes `key` and touches nothing else).
fn key_query(key: &std::path::Path) -> [&str; 7] {
    [
        "--node-name",
        "n1",
        "--cluster-cidr",
        "10.244.0.0/16",
        "--key-file",
        key.to_str().unwrap(),
        "--print-public-key",
    ]
}

#[test]
fn a_mistyped_log_level_is_refused_not_a_silent_agent() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("private.key");
    let base = key_query(&key);
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_podguard-agent"));
        c.args(base).args(extra).env_remove("RUST_LOG");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    for (extra, env) in [
        (&["--log-level", "warning"][..], &[][..]),
        (&[][..], &[("PODGUARD_LOG_LEVEL", "warning")][..]),
        (&[][..], &[("RUST_LOG", "warning")][..]),
    ] {
        let o = run(extra, env);
        assert_eq!(o.status.code(), Some(2), "{extra:?} {env:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("\"warning\" is not a log level") && err.contains("warn, info"),
            "{err}"
        );
    }
    // Levels and filters still go; an empty RUST_LOG counts as unset.
    for (extra, env) in [
        (&["--log-level", "warn"][..], &[][..]),
        (&["--log-level", "info,podguard::agent=debug"][..], &[][..]),
        (&[][..], &[("RUST_LOG", "")][..]),
    ] {
        let o = run(extra, env);
        assert!(o.status.success(), "{extra:?} {env:?}: {o:?}");
    }
}

/// `--install-only` reads PODGUARD_INSTALL_ONLY like every flag the
/// DaemonSet sets; set to false it must not demand `--install-cni` (a
/// plain `requires` did).
#[test]
fn install_only_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("private.key");
    let args = key_query(&key);
    let run = |value: &str| {
        Command::new(env!("CARGO_BIN_EXE_podguard-agent"))
            .args(args)
            .env_remove("RUST_LOG")
            .env("PODGUARD_INSTALL_ONLY", value)
            .output()
            .unwrap()
    };
    let o = run("false");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim().len(), 44, "{o:?}");
    let o = run("true");
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--install-cni"),
        "{o:?}"
    );
}

#[test]
fn could_not_run_is_exit_2_and_names_the_cause_once() {
    let o = podguard(&["status", "--kubeconfig", "/nonexistent/podguard-kc"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: reading --kubeconfig /nonexistent/podguard-kc"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // The same through $KUBECONFIG, where kube's own error repeats its
    // causes inside its message: each is printed once.
    let o = Command::new(env!("CARGO_BIN_EXE_podguard"))
        .arg("status")
        .env("KUBECONFIG", "/nonexistent/podguard-kc")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("/nonexistent/podguard-kc").count(), 1, "{err}");
    // The CLI picks its API source as the agent does: inside a Pod a
    // $KUBECONFIG that cannot be read is named, not passed over for the
    // in-cluster config; a kubeconfig that does not parse is named once,
    // on one line; with no source at all the fix is given.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken-kc");
    std::fs::write(&broken, "clusters: [\n").unwrap();
    let status_with = |kubeconfig: Option<&std::path::Path>, in_pod: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_podguard"));
        cmd.arg("status").env("HOME", dir.path());
        match kubeconfig {
            Some(kc) => cmd.env("KUBECONFIG", kc),
            None => cmd.env_remove("KUBECONFIG"),
        };
        match in_pod {
            true => cmd.env("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            false => cmd.env_remove("KUBERNETES_SERVICE_HOST"),
        };
        let o = cmd.output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let missing = std::path::Path::new("/nonexistent/podguard-kc");
    let err = status_with(Some(missing), true);
    assert!(err.starts_with("error: reading $KUBECONFIG"), "{err}");
    assert!(!err.contains("in-cluster"), "{err}");
    let err = status_with(Some(&broken), false);
    assert!(
        err.contains(&format!("reading $KUBECONFIG {}", broken.display())),
        "{err}"
    );
    assert_eq!(err.matches("broken-kc").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let err = status_with(None, false);
    assert!(err.contains("no Kubernetes API configured"), "{err}");
    assert!(err.contains("give --kubeconfig"), "{err}");
    assert!(err.contains("--lab"), "{err}");
    // --lab has its own kubeconfig: combining them is a usage error.
    let o = podguard(&["status", "--lab", "--context", "prod"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--lab uses the lab's own kubeconfig"));
    // An empty agents' namespace is refused before any API call, whether
    // given as the flag or in the environment.
    for o in [
        podguard(&["status", "--agent-namespace", ""]),
        Command::new(env!("CARGO_BIN_EXE_podguard"))
            .args(["audit"])
            .env("KUBECONFIG", "/nonexistent")
            .env("PODGUARD_NAMESPACE", "")
            .output()
            .unwrap(),
    ] {
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("--agent-namespace"),
            "{o:?}"
        );
    }
    // A context the kubeconfig does not have.
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kc");
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"http://127.0.0.1:1\"}\ncontexts:\n- name: dev\n  context: {cluster: c, user: u}\ncurrent-context: dev\nusers:\n- name: u\n  user: {}\n",
    )
    .unwrap();
    let o = podguard(&[
        "status",
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--context",
        "prod",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("context \"prod\""),
        "{o:?}"
    );
}

#[test]
fn completions_and_man_page() {
    for (shell, marker) in [
        ("bash", "_podguard()"),
        ("zsh", "#compdef podguard"),
        ("fish", "complete -c podguard"),
    ] {
        let o = podguard(&["completions", shell]);
        assert!(o.status.success());
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(marker), "{shell}: {out}");
        assert!(out.contains("showconf"), "{shell} completes subcommands");
    }
    let o = podguard(&["man"]);
    assert!(o.status.success());
    let man = String::from_utf8_lossy(&o.stdout);
    assert!(
        man.starts_with(".ie") || man.contains(".TH podguard"),
        "{man}"
    );
    assert!(
        man.contains("Exit codes"),
        "the man page says what the exit codes mean"
    );
    // Each command's flags are on its own page (the overview lists only
    // the commands), and the daemon has a page too.
    let page = |name: &str| {
        let o = podguard(&["man", name]);
        assert!(o.status.success(), "{name}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let rotate = page("rotate");
    assert!(rotate.contains(".TH podguard-rotate 1"), "{rotate}");
    assert!(rotate.contains(r"\-\-cancel"), "{rotate}");
    assert!(
        !man.contains(r"\-\-cancel"),
        "the overview has no command flags"
    );
    let agent = page("podguard-agent");
    assert!(agent.contains(".TH podguard-agent 8"), "{agent}");
    assert!(agent.contains(r"\-\-nodes\-file"), "{agent}");
    assert!(page("lab-up").contains(".TH podguard-lab-up 1"));
    let o = podguard(&["man", "rotat"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no page \"rotat\": one of podguard,"));
    // --dir writes a manual tree that man(1) reads.
    let dir = tempfile::tempdir().unwrap();
    let o = podguard(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let written = String::from_utf8_lossy(&o.stdout);
    for file in [
        "man1/podguard.1",
        "man1/podguard-status.1",
        "man8/podguard-agent.8",
    ] {
        let path = dir.path().join(file);
        assert!(written.contains(path.to_str().unwrap()), "{written}");
        assert!(
            std::fs::read_to_string(&path).unwrap().contains(".TH"),
            "{file}"
        );
    }
    assert_eq!(
        written.lines().count(),
        std::fs::read_dir(dir.path().join("man1")).unwrap().count() + 1
    );
}

/// `showconf` plans from the API exactly what the node's device has;
/// `graph` draws the pair as peers (and `dot` accepts it when installed).
#[test]
fn showconf_matches_the_device_and_graph_draws_the_mesh() {
    if !common::require_root("showconf_matches_the_device_and_graph_draws_the_mesh") {
        return;
    }
    let (lab, a, b) = KubeLab::connected_pair("cs", Kube::Embedded);
    let cli = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &lab.ul, env!("CARGO_BIN_EXE_podguard")])
            .args(args)
            .args(["--kubeconfig", lab.kubeconfig.to_str().unwrap()])
            .args(["--cluster-cidr", common::kubelab::CLUSTER])
            .output()
            .unwrap()
    };
    let o = cli(&["showconf", "a"]);
    assert!(o.status.success(), "{o:?}");
    let planned = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(!planned.contains("PrivateKey ="), "{planned}");
    let o = lab
        .node_cmd(a, &["wg", "showconf", "podguard0"])
        .output()
        .unwrap();
    let actual = String::from_utf8_lossy(&o.stdout).into_owned();
    let settings = |text: &str| -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| {
                ["PublicKey =", "AllowedIPs =", "Endpoint =", "ListenPort ="]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .map(|l| l.replace(", ", ","))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        settings(&planned),
        settings(&actual),
        "planned:\n{planned}\nactual:\n{actual}"
    );
    assert!(planned.contains(&lab.public_key(b)));

    let o = cli(&["graph"]);
    assert!(o.status.success(), "{o:?}");
    let dot = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(dot.contains("\"a\" -- \"b\" [color=darkgreen]"), "{dot}");
    if common::tool("dot") {
        let mut c = Command::new("dot")
            .arg("-Tsvg")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(dot.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("<svg"));
    }
    // Another cluster CIDR than the agents': the error says which CIDRs
    // were used and how to give the agents'; graph warns on stderr.
    let wrong = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &lab.ul, env!("CARGO_BIN_EXE_podguard")])
            .args(args)
            .args(["--kubeconfig", lab.kubeconfig.to_str().unwrap()])
            .args(["--cluster-cidr", "10.99.0.0/16"])
            .output()
            .unwrap()
    };
    let o = wrong(&["showconf", "a"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("outside every cluster CIDR")
            && err.contains("cluster CIDRs used here: 10.99.0.0/16")
            && err.contains("--cluster-cidr or PODGUARD_CLUSTER_CIDRS"),
        "{err}"
    );
    let o = wrong(&["graph"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: node a has no plan") && err.contains("PODGUARD_CLUSTER_CIDRS"),
        "{err}"
    );
    let o = cli(&["showconf", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no Node \"nope\" (the cluster has: a, b)"),
        "{o:?}"
    );
}

/// A typo in the node list's source or the metrics address stops the
/// agent with the input named, before the node's network changes: no
/// forwarding, no `podguard0`, no UAPI socket. A missing --nodes-file used
/// to leave the agent running silently with no mesh, after it had changed
/// the host.
#[test]
fn a_typo_stops_the_agent_before_the_host_changes() {
    if !common::require_root("a_typo_stops_the_agent_before_the_host_changes") {
        return;
    }
    let mut n = common::Netns::new("ct");
    let ns = n.add("node");
    common::forwarding_off(&ns);
    let dir = n.path("node");
    let wg_dir = dir.join("wg");
    std::fs::create_dir_all(&wg_dir).unwrap();
    let (bad, good) = (dir.join("bad.yaml"), dir.join("good.yaml"));
    std::fs::write(&bad, "nodes: [ {name: b, podCIDRs: ").unwrap();
    std::fs::write(&good, "[]").unwrap();
    let busy_listener =
        common::in_netns(&ns, || std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let busy = busy_listener.local_addr().unwrap().to_string();
    let (key, state) = (dir.join("key"), dir.join("state"));
    let (bad, good) = (bad.to_str().unwrap(), good.to_str().unwrap());
    let cases: [(Vec<&str>, Option<&str>, Vec<&str>); 5] = [
        (
            vec!["--nodes-file", "/nonexistent/nodes.yaml"],
            None,
            vec!["--nodes-file /nonexistent/nodes.yaml", "No such file"],
        ),
        (
            vec!["--nodes-file", bad],
            None,
            vec!["--nodes-file", "bad.yaml"],
        ),
        (
            vec![],
            Some("/nonexistent/kc"),
            vec!["reading $KUBECONFIG", "/nonexistent/kc"],
        ),
        (
            vec![],
            None,
            vec!["no Kubernetes API configured", "--nodes-file"],
        ),
        (
            vec!["--nodes-file", good, "--metrics-addr", &busy],
            None,
            vec!["serving metrics on", &busy],
        ),
    ];
    for (i, (extra, kubeconfig, says)) in cases.into_iter().enumerate() {
        // Bounded: the missing file used to leave the agent running.
        let mut args = vec!["timeout", "20", env!("CARGO_BIN_EXE_podguard-agent")];
        args.extend(["--node-name", "a"]);
        args.extend(["--cluster-cidr", "10.244.0.0/16"]);
        args.extend(["--key-file", key.to_str().unwrap()]);
        args.extend(["--state-file", state.to_str().unwrap()]);
        args.extend(extra);
        let mut cmd = common::node_command(&ns, &wg_dir, &args);
        cmd.env_remove("RUST_LOG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", &dir);
        match kubeconfig {
            Some(kc) => cmd.env("KUBECONFIG", kc),
            None => cmd.env_remove("KUBECONFIG"),
        };
        let o = cmd.output().unwrap();
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.status.code(), Some(1), "case {i}: {out}");
        for s in says {
            assert!(out.contains(s), "case {i}: {s:?} not in {out}");
        }
        let fwd = common::ok(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "cat",
            "/proc/sys/net/ipv4/ip_forward",
        ]);
        assert_eq!(fwd.trim(), "0", "case {i}: forwarding turned on: {out}");
        let links = common::ok(&["ip", "-n", &ns, "link", "show"]);
        assert!(!links.contains("podguard0"), "case {i}: {links}");
        let sockets = std::fs::read_dir(&wg_dir).unwrap().count();
        assert_eq!(sockets, 0, "case {i}: a UAPI socket was made");
    }
}
