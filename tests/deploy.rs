//! deploy/: the kustomization renders, every object validates against the
//! Kubernetes 1.30 schemas, and the DaemonSet's arguments and environment
//! are accepted by the agent's real argument parser.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use clap::CommandFactory;
use clap::Parser;
use podguard::agent::cli::Args;
use serde::Deserialize;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{name} is required under CI (scripts/test installs it)");
        }
        eprintln!("SKIPPED: {name} not installed");
    }
    found
}

fn render() -> Option<String> {
    if !tool("kubectl") {
        return None;
    }
    let o = Command::new("kubectl")
        .args(["kustomize", DEPLOY])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Some(String::from_utf8(o.stdout).unwrap())
}

#[test]
fn kustomization_renders_and_validates_against_1_30() {
    let Some(yaml) = render() else { return };
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "DaemonSet",
    ] {
        assert!(
            yaml.contains(&format!("kind: {kind}")),
            "{kind} missing from the rendered install"
        );
    }
    validates_against_1_30(&yaml);
}

/// `yaml` passes kubernetes-validate against the 1.30 schemas, strict,
/// with all 15 objects of the install checked (skipped outside CI when
/// the tool is absent).
fn validates_against_1_30(yaml: &str) {
    if !tool("kubernetes-validate") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("rendered.yaml");
    std::fs::write(&f, yaml).unwrap();
    let o = Command::new("kubernetes-validate")
        .args(["-k", "1.30.0", "--strict"])
        .arg(&f)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "schema validation failed:\n{out}");
    assert_eq!(out.matches(" passed for resource ").count(), 15, "{out}");
}

#[derive(Deserialize)]
struct Obj {
    kind: String,
    #[serde(default)]
    spec: yaml_serde::Value,
}

/// argv for a container: command + args + env turned into their flags.
fn argv(container: &yaml_serde::Value) -> Vec<String> {
    let flags: Vec<(String, String)> = Args::command()
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?.to_string();
            Some((env, a.get_long()?.to_string()))
        })
        .collect();
    let mut argv: Vec<String> = container["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    argv.extend(
        container["args"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap().to_string()),
    );
    for e in container["env"].as_sequence().into_iter().flatten() {
        let name = e["name"].as_str().unwrap();
        if name == "RUST_LOG" {
            continue;
        }
        let (_, long) = flags
            .iter()
            .find(|(env, _)| env == name)
            .unwrap_or_else(|| panic!("env {name} is not read by podguard-agent (typo?)"));
        let value = match e["value"].as_str() {
            Some(v) => v.to_string(),
            None => "node-from-downward-api".to_string(),
        };
        argv.push(format!("--{long}={value}"));
    }
    argv
}

#[test]
fn daemonset_args_and_env_are_accepted_by_the_agent_parser() {
    let text = std::fs::read_to_string(format!("{DEPLOY}/daemonset.yaml")).unwrap();
    let ds: Obj = yaml_serde::from_str(&text).unwrap();
    assert_eq!(ds.kind, "DaemonSet");
    let pod = &ds.spec["template"]["spec"];
    let mut seen = 0;
    for list in ["initContainers", "containers"] {
        for c in pod[list].as_sequence().unwrap() {
            assert_eq!(c["command"][0].as_str(), Some("podguard-agent"));
            let argv = argv(c);
            let parsed = Args::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert_eq!(parsed.node_name, "node-from-downward-api");
            if list == "initContainers" {
                assert!(parsed.install_cni && parsed.install_only);
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 2);
    // Probes point at the agent's metrics port.
    let main = &pod["containers"][0];
    assert_eq!(
        main["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    let port = main["livenessProbe"]["httpGet"]["port"].as_u64().unwrap();
    let defaults = Args::try_parse_from([
        "podguard-agent",
        "--node-name",
        "x",
        "--cluster-cidr",
        "10.0.0.0/8",
    ])
    .unwrap();
    assert_eq!(defaults.metrics_addr.port() as u64, port);
}

/// What the runtime will accept and what the agent writes through: runc
/// refuses any mount inside the container's `/proc` (the shipped DaemonSet
/// once mounted the host's `/proc/sys/net` there and never started; found
/// by tests/kubelet.rs), and the agent's `--proc-sys-net` must be where the
/// host's `/proc/sys/net` is mounted.
#[test]
fn daemonset_mounts_nothing_inside_proc_and_forwarding_goes_to_the_hosts_proc_sys_net() {
    let text = std::fs::read_to_string(format!("{DEPLOY}/daemonset.yaml")).unwrap();
    let ds: Obj = yaml_serde::from_str(&text).unwrap();
    let pod = &ds.spec["template"]["spec"];
    let host_path = |volume: &str| {
        pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some(volume))
            .and_then(|v| v["hostPath"]["path"].as_str())
            .map(String::from)
    };
    for list in ["initContainers", "containers"] {
        for c in pod[list].as_sequence().unwrap() {
            for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
                let path = m["mountPath"].as_str().unwrap();
                assert!(
                    path != "/proc" && !path.starts_with("/proc/"),
                    "{}: volume {} is mounted inside /proc at {path}: runc refuses that",
                    c["name"].as_str().unwrap(),
                    m["name"].as_str().unwrap()
                );
            }
        }
    }
    let main = &pod["containers"][0];
    let parsed = Args::try_parse_from(argv(main)).unwrap();
    let mount = main["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == parsed.proc_sys_net.to_str())
        .unwrap_or_else(|| {
            panic!(
                "--proc-sys-net is {} but nothing is mounted there",
                parsed.proc_sys_net.display()
            )
        });
    assert_eq!(
        host_path(mount["name"].as_str().unwrap()).as_deref(),
        Some("/proc/sys/net"),
        "--proc-sys-net must be the host's /proc/sys/net"
    );
    assert_ne!(mount["readOnly"].as_bool(), Some(true), "{mount:?}");
}

#[test]
fn bad_agent_arguments_are_refused_with_the_bad_input_named() {
    let e = Args::try_parse_from([
        "podguard-agent",
        "--node-name",
        "x",
        "--cluster-cidr",
        "10.0.0.1/33",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("10.0.0.1/33"), "{e}");
    let e = Args::try_parse_from([
        "podguard-agent",
        "--node-name",
        "x",
        "--cluster-cidr",
        "10.0.0.0/8",
        "--resync",
        "5 fortnights",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("5 fortnights"), "{e}");
    let e = Args::try_parse_from([
        "podguard-agent",
        "--node-name",
        "x",
        "--cluster-cidr",
        "10.0.0.0/8",
        "--install-only",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("--install-cni"), "{e}");
}

/// helm: `PODGUARD_HELM`, PATH, or the tool cache `tests/kube/kube.sh
/// setup` builds it into. `None` (skipped) outside CI when absent.
fn helm() -> Option<String> {
    let cached = "/var/cache/podguard-kube/bin/helm";
    let found = std::env::var("PODGUARD_HELM").ok().or_else(|| {
        let o = Command::new("sh")
            .args(["-c", "command -v helm"])
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    });
    let found = found.or_else(|| std::path::Path::new(cached).exists().then(|| cached.into()));
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("helm is required under CI (bash tests/kube/kube.sh setup builds it)");
        }
        eprintln!("SKIPPED: helm not installed (bash tests/kube/kube.sh setup)");
    }
    found
}

fn helm_template(helm: &str, args: &[&str]) -> std::process::Output {
    Command::new(helm)
        .args(["template", "podguard", &format!("{DEPLOY}/chart")])
        .args(args)
        .output()
        .unwrap()
}

/// The objects of a multi-document YAML stream, keyed by kind and name.
fn objects(yaml: &str) -> std::collections::BTreeMap<String, yaml_serde::Value> {
    let mut out = std::collections::BTreeMap::new();
    for doc in yaml_serde::Deserializer::from_str(yaml) {
        let v = yaml_serde::Value::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        let key = format!(
            "{}/{}",
            v["kind"].as_str().unwrap(),
            v["metadata"]["name"].as_str().unwrap()
        );
        assert!(out.insert(key.clone(), v).is_none(), "{key} twice");
    }
    out
}

#[test]
fn the_kustomize_base_is_the_helm_chart_rendered_with_its_defaults() {
    let Some(helm) = helm() else { return };
    let o = Command::new(&helm)
        .args(["lint", "--strict", &format!("{DEPLOY}/chart")])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let o = helm_template(&helm, &["--namespace", "podguard"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let chart = objects(&String::from_utf8(o.stdout).unwrap());
    let Some(kustomize) = render() else { return };
    let base = objects(&kustomize);
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        base.keys().collect::<Vec<_>>()
    );
    for (k, v) in &chart {
        assert_eq!(
            v, &base[k],
            "{k}: deploy/*.yaml differs from the chart; edit deploy/chart and run deploy/render"
        );
    }
    // Versioned: the image is the chart's appVersion, never :latest.
    let ds = &chart["DaemonSet/podguard-agent"]["spec"]["template"]["spec"];
    assert_eq!(
        ds["containers"][0]["image"].as_str(),
        Some("ghcr.io/podguard/podguard:0.1.0")
    );
}

#[test]
fn chart_values_reach_the_agent_and_render_valid_objects() {
    let Some(helm) = helm() else { return };
    let o = helm_template(
        &helm,
        &[
            "--namespace",
            "kube-net",
            "--set",
            "clusterCIDRs={10.244.0.0/16,fd00:10:244::/56}",
            "--set",
            "backend=userspace,listenPort=51999,masquerade=false,image.tag=1.2.3",
            "--set",
            "metrics.host=0.0.0.0,metrics.port=9800,log.format=json,log.level=debug",
            "--set",
            "adminGroup=net-admins,resources.limits.memory=1Gi",
            "--set-json",
            r#"tolerations=[{"key":"dedicated","operator":"Equal","value":"net","effect":"NoSchedule"}]"#,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let yaml = String::from_utf8(o.stdout).unwrap();
    let objs = objects(&yaml);
    let pod = &objs["DaemonSet/podguard-agent"]["spec"]["template"]["spec"];
    for list in ["initContainers", "containers"] {
        let c = &pod[list][0];
        assert_eq!(c["image"].as_str(), Some("ghcr.io/podguard/podguard:1.2.3"));
        let parsed = Args::try_parse_from(argv(c)).unwrap();
        assert_eq!(
            parsed
                .cluster_cidrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.244.0.0/16", "fd00:10:244::/56"]
        );
        if list == "containers" {
            assert_eq!(parsed.listen_port, 51999);
            assert!(!parsed.masquerade);
            assert_eq!(parsed.metrics_addr.to_string(), "0.0.0.0:9800");
            assert_eq!(format!("{:?}", parsed.backend), "Userspace");
            assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(51999));
            assert_eq!(c["livenessProbe"]["httpGet"]["port"].as_u64(), Some(9800));
            assert_eq!(c["resources"]["limits"]["memory"].as_str(), Some("1Gi"));
        }
    }
    assert_eq!(pod["tolerations"][0]["key"].as_str(), Some("dedicated"));
    // The release namespace reaches the RBAC subjects and the admission
    // policy's idea of who the agent is.
    assert_eq!(
        objs["ClusterRoleBinding/podguard"]["subjects"][0]["namespace"].as_str(),
        Some("kube-net")
    );
    assert!(yaml.contains("'system:serviceaccount:kube-net:podguard'"));
    assert!(yaml.contains("g in ['system:masters', 'net-admins']"));
    assert_eq!(
        objs["ClusterRoleBinding/podguard-audit"]["subjects"][0]["name"].as_str(),
        Some("net-admins")
    );
    validates_against_1_30(&yaml);

    // Optional parts go away; a missing cluster CIDR is refused by name.
    let o = helm_template(
        &helm,
        &[
            "--namespace",
            "podguard",
            "--set",
            "admissionPolicy.enabled=false,createNamespace=false",
        ],
    );
    assert!(o.status.success());
    let objs = objects(&String::from_utf8(o.stdout).unwrap());
    assert!(
        objs.keys()
            .all(|k| !k.starts_with("ValidatingAdmissionPolicy") && !k.starts_with("Namespace/")),
        "{:?}",
        objs.keys()
    );
    let o = helm_template(&helm, &["--set", "clusterCIDRs=null"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("clusterCIDRs: set the cluster's pod network"),
        "{err}"
    );
}
