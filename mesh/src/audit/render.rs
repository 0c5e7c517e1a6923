//! `podguard audit`'s text: the namespace matrix, the pod pairs with the
//! ports policy opens, the findings and the verdict.

use super::{Report, Severity};
use crate::table::plain;

/// How a cell or pair names its ports: nothing when every port of every
/// protocol is open (the common case), else ` on 80/TCP,53/UDP`.
fn on_ports(ports: &[String]) -> String {
    if ports.len() == 1 && ports[0] == "all" {
        String::new()
    } else {
        format!(" on {}", ports.join(","))
    }
}

/// The audit as text: the namespace matrix (rows are sources, columns
/// destinations), with `with_pods` every pod pair, then the findings.
pub fn render(r: &Report, with_pods: bool) -> String {
    let mut names: Vec<&str> = r
        .namespaces
        .iter()
        .flat_map(|c| [c.from.as_str(), c.to.as_str()])
        .collect();
    names.sort();
    names.dedup();
    let mut out = String::from(
        "traffic allowed by NetworkPolicy, and how it travels (rows: from, columns: to)\n\n",
    );
    let mut header = vec!["FROM \\ TO"];
    header.extend(names.iter().copied());
    let rows = names
        .iter()
        .map(|from| {
            let mut row = vec![from.to_string()];
            for to in &names {
                let cell = r.namespaces.iter().find(|c| c.from == *from && c.to == *to);
                row.push(match cell {
                    None => "-".to_string(),
                    Some(c) if c.allowed == 0 => "denied".to_string(),
                    Some(c) => format!(
                        "{} {}/{}{}",
                        c.worst.map(|t| t.label()).unwrap_or("?"),
                        c.allowed,
                        c.pairs,
                        on_ports(&c.ports)
                    ),
                });
            }
            row
        })
        .collect();
    out.push_str(&plain(&header, rows));
    out.push_str("\nlocal = same node, never on the wire; encrypted = WireGuard between nodes; stale = a node has not converged; PLAINTEXT = host network, not covered; BROKEN = dropped (fail closed); \"on 80/TCP\" = only those ports are allowed\n");
    if with_pods {
        out.push('\n');
        let rows = r
            .pods
            .iter()
            .map(|v| {
                vec![
                    v.from.clone(),
                    v.to.clone(),
                    if v.ports.is_empty() {
                        "-".to_string()
                    } else {
                        v.ports.join(",")
                    },
                    v.transport
                        .map(|t| t.label())
                        .unwrap_or("denied")
                        .to_string(),
                ]
            })
            .collect();
        out.push_str(&plain(&["FROM", "TO", "PORTS", "TRANSPORT"], rows));
    }
    out.push('\n');
    if r.findings.is_empty() {
        out.push_str("no findings\n");
    }
    for f in &r.findings {
        out.push_str(&format!(
            "{:<8} {}: {}\n",
            f.severity.to_string(),
            f.subject,
            f.message
        ));
    }
    let plaintext = r
        .findings
        .iter()
        .any(|f| f.severity == Severity::Warning && f.subject.ends_with("(host network)"));
    out.push_str(match (r.ok, plaintext) {
        (true, false) => "\nOK: every policy-allowed cross-node pod flow is encrypted\n",
        (true, true) => "\nOK: every policy-allowed flow between pods on the pod network is encrypted (host-network pods are not: see the warnings)\n",
        (false, _) => "\nFAIL: some policy-allowed traffic is dropped or unmaintained\n",
    });
    out
}
