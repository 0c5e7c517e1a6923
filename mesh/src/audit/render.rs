//! `podguard audit`'s text: the namespace matrix, the pod pairs with the
//! ports policy opens, the findings and the verdict.

use super::{NOT_CONVERGED, Report, Severity};
use crate::table::plain;

/// What `--probe`'s capture on the underlay saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// WireGuard packets.
    pub encrypted: usize,
    /// Packets that were not WireGuard.
    pub plaintext: usize,
    /// Plaintext hits of the probe's marker.
    pub marker_hits: usize,
}

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
/// destinations), with `with_pods` every pod pair, then the findings and
/// the verdict against `fail_on` (the least severe finding that fails the
/// audit; `None`: report only) and, with `--probe`, what the capture saw.
pub fn render(
    r: &Report,
    with_pods: bool,
    fail_on: Option<Severity>,
    probe: Option<Probe>,
) -> String {
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
    let warned = |what: &str| {
        r.findings
            .iter()
            .any(|f| f.severity == Severity::Warning && f.subject.ends_with(what))
    };
    let (plaintext, stale) = (
        warned("(host network)"),
        r.findings
            .iter()
            .any(|f| f.severity == Severity::Warning && f.message.ends_with(NOT_CONVERGED)),
    );
    out.push('\n');
    if let Some(p) = probe {
        out.push_str(&format!(
            "probe: {} encrypted packets, {} plaintext packets, {} plaintext marker hits on the underlay\n",
            p.encrypted, p.plaintext, p.marker_hits
        ));
        if p.plaintext > 0 || p.marker_hits > 0 {
            out.push_str("FAIL: the probe saw plaintext on the underlay\n");
            return out;
        }
    }
    if !r.ok {
        out.push_str(if fail_on.is_some() {
            "FAIL: some policy-allowed traffic is dropped or unmaintained\n"
        } else {
            "NOT OK (report only, --fail-on never): some policy-allowed traffic is dropped or unmaintained\n"
        });
        return out;
    }
    if r.fails(fail_on) {
        let t = fail_on.map(|t| t.to_string()).unwrap_or_default();
        out.push_str(&format!(
            "FAIL: a finding at or above {t} (--fail-on); no allowed traffic is dropped or unmaintained\n"
        ));
        return out;
    }
    out.push_str(match (stale, plaintext) {
        (true, _) => "OK (no high finding): allowed flows to or from a node that has not converged are stale, and may be dropped until it does: see the warnings\n",
        (false, false) => "OK: every policy-allowed cross-node pod flow is encrypted\n",
        (false, true) => "OK: every policy-allowed flow between pods on the pod network is encrypted (host-network pods are not: see the warnings)\n",
    });
    out
}
