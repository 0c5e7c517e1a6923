//! The audit's verdicts, findings and text, on hand-built clusters.
use super::*;
use crate::NodeInfo;
use keys::PrivateKey;

fn node(name: &str, i: u8, key: Option<PublicKey>) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        pod_cidrs: vec![format!("10.244.{i}.0/24")],
        public_key: key.map(|k| k.to_base64()),
        ..Default::default()
    }
}

fn views(infos: Vec<NodeInfo>) -> Vec<NodeView> {
    let d = crate::digest::expected(&infos);
    infos
        .into_iter()
        .map(|info| {
            let mut annotations = BTreeMap::new();
            if let Some(k) = &info.public_key {
                annotations.insert(ANN_PUBLIC_KEY.to_string(), k.clone());
                annotations.insert(crate::publish::ANN_MESH_DIGEST.to_string(), d.clone());
            }
            NodeView {
                info,
                annotations,
                heartbeat: crate::status::Heartbeat::Unknown,
            }
        })
        .collect()
}

fn pod(ns: &str, name: &str, node: &str, host: bool) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: BTreeMap::new(),
        ips: vec!["10.244.1.5".parse().unwrap()],
        node: Some(node.into()),
        host_network: host,
        ports: vec![],
    }
}

#[test]
fn classifies_every_kind_of_flow() {
    let k = || Some(PrivateKey::generate().public_key());
    let nodes = views(vec![
        node("n1", 1, k()),
        node("n2", 2, k()),
        node("n3", 3, None),
    ]);
    let pods = vec![
        pod("a", "p1", "n1", false),
        pod("a", "p1b", "n1", false),
        pod("b", "p2", "n2", false),
        pod("b", "p3", "n3", false),
        pod("kube-system", "exporter", "n2", true),
    ];
    let r = audit(&nodes, &pods, &Cluster::default(), 0);
    let t = |from: &str, to: &str| {
        r.pods
            .iter()
            .find(|v| v.from == from && v.to == to)
            .unwrap()
            .transport
    };
    assert_eq!(t("a/p1", "a/p1b"), Some(Transport::Local));
    assert_eq!(t("a/p1", "b/p2"), Some(Transport::Encrypted));
    assert_eq!(t("a/p1", "b/p3"), Some(Transport::Broken));
    assert_eq!(
        t("a/p1", "kube-system/exporter"),
        Some(Transport::NotCovered)
    );
    // A host-network pod and a pod of the same node: never on the wire.
    assert_eq!(t("b/p2", "kube-system/exporter"), Some(Transport::Local));
    assert_eq!(t("kube-system/exporter", "b/p2"), Some(Transport::Local));
    assert!(!r.ok);
    assert_eq!(r.findings[0].severity, Severity::High);
    assert!(r.findings.iter().any(|f| f.subject == "node n3"));
    // The host-network pod: one warning for its node, not one per pair.
    let hn: Vec<&Finding> = r
        .findings
        .iter()
        .filter(|f| f.subject.contains("host network"))
        .collect();
    assert_eq!(hn.len(), 1, "{:#?}", r.findings);
    assert_eq!(hn[0].subject, "node n2 (host network)");
    assert_eq!(hn[0].severity, Severity::Warning);
    assert!(
        hn[0].message.contains("kube-system/exporter"),
        "{}",
        hn[0].message
    );
    assert!(r.fails(Some(Severity::High)) && r.fails(Some(Severity::Warning)));
    assert!(!r.fails(None));
    let text = render(&r, true, Some(Severity::High), None);
    assert!(text.contains("FAIL") && text.contains("BROKEN") && text.contains("PLAINTEXT"));
}

#[test]
fn host_network_alone_warns_once_per_node_and_passes_the_default_gate() {
    let nodes = views(vec![
        node("n1", 1, Some(PrivateKey::generate().public_key())),
        node("n2", 2, Some(PrivateKey::generate().public_key())),
    ]);
    let pods = vec![
        pod("a", "p1", "n1", false),
        pod("a", "p2", "n2", false),
        pod("podguard", "agent-1", "n1", true),
        pod("podguard", "agent-2", "n2", true),
        pod("monitoring", "exporter-2", "n2", true),
    ];
    let r = audit(&nodes, &pods, &Cluster::default(), 0);
    assert!(r.ok, "{r:#?}");
    let subjects: Vec<&str> = r.findings.iter().map(|f| f.subject.as_str()).collect();
    assert_eq!(
        subjects,
        ["node n1 (host network)", "node n2 (host network)"]
    );
    assert!(
        r.findings[1]
            .message
            .starts_with("2 host-network pod(s) (monitoring/exporter-2, podguard/agent-2)")
    );
    assert!(!r.fails(Some(Severity::High)));
    assert!(r.fails(Some(Severity::Warning)) && r.fails(Some(Severity::Info)));
    assert!(
        render(&r, false, Some(Severity::High), None)
            .contains("OK: every policy-allowed flow between pods on the pod network")
    );
}

#[test]
fn a_node_whose_agent_is_down_is_reported_and_fails_the_audit() {
    let k = || Some(PrivateKey::generate().public_key());
    let mut nodes = views(vec![node("n1", 1, k()), node("n2", 2, k())]);
    let pods = vec![pod("a", "p1", "n1", false), pod("a", "p2", "n2", false)];
    let alive = crate::status::Heartbeat::Renewed {
        age_secs: 3,
        duration_secs: 40,
    };
    nodes[0].heartbeat = alive;
    nodes[1].heartbeat = alive;
    let r = audit(&nodes, &pods, &Cluster::default(), 0);
    assert!(r.ok, "{r:#?}");
    nodes[1].heartbeat = crate::status::Heartbeat::Renewed {
        age_secs: 41,
        duration_secs: 40,
    };
    let r = audit(&nodes, &pods, &Cluster::default(), 0);
    assert!(!r.ok);
    assert!(
        r.pods
            .iter()
            .all(|v| v.transport == Some(Transport::AgentDown))
    );
    assert!(
        r.findings
            .iter()
            .any(|f| f.subject == "node n2" && f.message.contains("agent is not alive")),
        "{:?}",
        r.findings
    );
    let rows = crate::status::rows(&nodes, 0);
    assert_eq!(rows[1].digest, Agreement::AgentDown);
    assert_eq!(rows[1].heartbeat_age_secs, Some(41));
    assert_eq!(rows[0].digest, Agreement::Agrees);
    nodes[1].heartbeat = crate::status::Heartbeat::Missing;
    assert_eq!(
        crate::status::rows(&nodes, 0)[1].digest,
        Agreement::AgentDown
    );
}

#[test]
fn denied_flows_are_not_findings_and_a_clean_mesh_is_ok() {
    let k = || Some(PrivateKey::generate().public_key());
    let nodes = views(vec![
        node("n1", 1, k()),
        node("n2", 2, k()),
        node("n3", 3, None),
    ]);
    let pods = vec![pod("a", "p1", "n1", false), pod("b", "p3", "n3", false)];
    // Deny everything in both namespaces: the broken node carries no
    // allowed flow, so the audit passes (with the node finding).
    let deny = |ns: &str| crate::policy::Policy {
        namespace: ns.into(),
        name: "deny".into(),
        spec: serde_json::from_value(
            serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        )
        .unwrap(),
    };
    let c = Cluster {
        namespaces: BTreeMap::new(),
        policies: vec![deny("a"), deny("b")],
    };
    let r = audit(&nodes, &pods, &c, 0);
    assert!(r.ok, "{r:#?}");
    assert!(r.pods.iter().all(|v| !v.allowed));
    assert!(render(&r, false, Some(Severity::High), None).contains("denied"));
    // Duplicate keys are a node problem on both.
    let key = PrivateKey::generate().public_key();
    let dup = views(vec![node("n1", 1, Some(key)), node("n2", 2, Some(key))]);
    let r = audit(
        &dup,
        &[pod("a", "x", "n1", false), pod("a", "y", "n2", false)],
        &Cluster::default(),
        0,
    );
    assert!(!r.ok);
    assert!(
        r.findings
            .iter()
            .filter(|f| f.message.contains("shares its public key"))
            .count()
            == 2
    );
}

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> crate::policy::Policy {
    crate::policy::Policy {
        namespace: ns.into(),
        name: name.into(),
        spec: serde_json::from_value(spec).unwrap(),
    }
}

#[test]
fn each_allowed_pair_names_its_ports_and_protocols() {
    let k = || Some(PrivateKey::generate().public_key());
    let nodes = views(vec![node("n1", 1, k()), node("n2", 2, k())]);
    let mut dns = pod("b", "dns", "n2", false);
    dns.labels.insert("app".into(), "dns".into());
    let mut web = pod("b", "web", "n2", false);
    web.labels.insert("app".into(), "web".into());
    let pods = vec![pod("a", "client", "n1", false), dns, web];
    // Upstream's cases: only UDP 53 to dns (so TCP 53 is not allowed),
    // SCTP 5000 and a TCP range to web (SCTP is not TCP).
    let c = Cluster {
        namespaces: BTreeMap::new(),
        policies: vec![
            policy(
                "b",
                "dns-udp",
                serde_json::json!({"podSelector": {"matchLabels": {"app": "dns"}},
                    "ingress": [{"ports": [{"protocol": "UDP", "port": 53}]}]}),
            ),
            policy(
                "b",
                "web",
                serde_json::json!({"podSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"ports": [
                        {"protocol": "SCTP", "port": 5000},
                        {"port": 8000, "endPort": 8080},
                        {"port": 8081},
                        {"protocol": "UDP"}]}]}),
            ),
        ],
    };
    let r = audit(&nodes, &pods, &c, 0);
    let pair = |from: &str, to: &str| {
        r.pods
            .iter()
            .find(|v| v.from == from && v.to == to)
            .unwrap()
            .clone()
    };
    let dns = pair("a/client", "b/dns");
    assert_eq!(dns.ports, ["53/UDP"]);
    assert_eq!(dns.transport, Some(Transport::Encrypted));
    assert!(!c.allowed(&pods[0], &pods[1], crate::policy::Protocol::Tcp, 53));
    // Ranges merge (8000-8080 and 8081), a protocol without a port is
    // every port of it, SCTP stays apart from TCP.
    assert_eq!(
        pair("a/client", "b/web").ports,
        ["8000-8081/TCP", "all/UDP", "5000/SCTP"]
    );
    // Egress is not restricted: every port.
    assert_eq!(pair("b/dns", "a/client").ports, ["all"]);
    // The namespace cell: the union of its pairs (UDP 53 is within all
    // of UDP).
    let cell = r
        .namespaces
        .iter()
        .find(|c| c.from == "a" && c.to == "b")
        .unwrap();
    assert_eq!(cell.ports, ["8000-8081/TCP", "all/UDP", "5000/SCTP"]);
    let text = render(&r, true, Some(Severity::High), None);
    assert!(
        text.contains("encrypted 2/2 on 8000-8081/TCP,all/UDP,5000/SCTP"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("a/client") && l.contains("b/dns"))
        .unwrap();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["a/client", "b/dns", "53/UDP", "encrypted"]
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(
        json["pods"][1]["ports"],
        serde_json::json!(["8000-8081/TCP", "all/UDP", "5000/SCTP"])
    );
}

#[test]
fn denied_pairs_have_no_ports_and_findings_print_their_severity() {
    let nodes = views(vec![node("n1", 1, None), node("n2", 2, None)]);
    let pods = vec![pod("a", "x", "n1", false), pod("a", "y", "n2", false)];
    let r = audit(&nodes, &pods, &Cluster::default(), 0);
    let text = render(&r, false, Some(Severity::High), None);
    assert!(text.contains("\nHIGH     node n1: "), "{text}");
    let c = Cluster {
        namespaces: BTreeMap::new(),
        policies: vec![policy(
            "a",
            "deny",
            serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        )],
    };
    let r = audit(&nodes, &pods, &c, 0);
    assert!(r.pods.iter().all(|v| v.ports.is_empty() && !v.allowed));
    assert!(r.namespaces[0].ports.is_empty());
    let text = render(&r, true, Some(Severity::High), None);
    let row = text.lines().find(|l| l.starts_with("a/x")).unwrap();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["a/x", "a/y", "-", "denied"],
        "{text}"
    );
}

/// A node that has not converged makes its flows stale: the verdict says
/// so instead of "every flow is encrypted", names a missing digest as
/// missing, and follows --fail-on (a warning fails `--fail-on medium`).
#[test]
fn stale_flows_are_not_called_encrypted_and_the_verdict_follows_fail_on() {
    let k = || Some(PrivateKey::generate().public_key());
    let mut nodes = views(vec![node("n1", 1, k()), node("n2", 2, k())]);
    let pods = vec![pod("a", "p1", "n1", false), pod("b", "p2", "n2", false)];
    let clean = audit(&nodes, &pods, &Cluster::default(), 0);
    assert!(
        render(&clean, false, Some(Severity::Warning), None)
            .contains("OK: every policy-allowed cross-node pod flow is encrypted")
    );
    nodes[1].annotations.remove(crate::publish::ANN_MESH_DIGEST);
    let r = audit(&nodes, &pods, &Cluster::default(), 0);
    assert!(r.ok, "no high finding: {r:#?}");
    let f = r
        .findings
        .iter()
        .find(|f| f.subject == "node n2")
        .expect("a finding for n2");
    assert!(
        f.message.contains("publishes no applied mesh") && !f.message.contains("differs"),
        "{f:?}"
    );
    let text = render(&r, false, Some(Severity::High), None);
    assert!(
        text.contains("OK (no high finding)") && text.contains("stale"),
        "{text}"
    );
    assert!(!text.contains("every policy-allowed cross-node pod flow is encrypted"));
    assert!(r.fails(Some(Severity::Warning)));
    let text = render(&r, false, Some(Severity::Warning), None);
    assert!(
        text.contains("FAIL: a finding at or above WARNING (--fail-on)") && !text.contains("\nOK"),
        "{text}"
    );
    // A digest that differs is named so.
    nodes[1]
        .annotations
        .insert(crate::publish::ANN_MESH_DIGEST.to_string(), "other".into());
    let r = audit(&nodes, &pods, &Cluster::default(), 0);
    assert!(r.findings.iter().any(|f| f.message.contains("differs")));
}

/// With --fail-on never the verdict does not say FAIL for what does not
/// fail the audit; a probe that saw plaintext fails it whatever the
/// findings.
#[test]
fn the_verdict_follows_fail_on_never_and_the_probe() {
    let k = || Some(PrivateKey::generate().public_key());
    let nodes = views(vec![node("n1", 1, k()), node("n2", 2, None)]);
    let pods = vec![pod("a", "p1", "n1", false), pod("b", "p2", "n2", false)];
    let r = audit(&nodes, &pods, &Cluster::default(), 0);
    assert!(!r.ok);
    let text = render(&r, false, None, None);
    assert!(
        text.contains("NOT OK (report only, --fail-on never)") && !text.contains("\nFAIL"),
        "{text}"
    );
    let nodes = views(vec![node("n1", 1, k()), node("n2", 2, k())]);
    let clean = audit(&nodes, &pods, &Cluster::default(), 0);
    let dirty = Probe {
        encrypted: 9,
        plaintext: 1,
        marker_hits: 0,
    };
    let text = render(&clean, false, Some(Severity::High), Some(dirty));
    assert!(
        text.contains("probe: 9 encrypted packets, 1 plaintext packets")
            && text.contains("FAIL: the probe saw plaintext")
            && !text.contains("\nOK"),
        "{text}"
    );
    let fine = Probe {
        plaintext: 0,
        ..dirty
    };
    assert!(render(&clean, false, Some(Severity::High), Some(fine)).contains("\nOK: every"));
}
