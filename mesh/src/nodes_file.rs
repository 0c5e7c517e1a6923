//! The `--nodes-file` format: the node list as JSON or YAML, for running
//! the data plane without Kubernetes. Parsing only: the agent reads the
//! file (`podguard::agent::nodes_file`) and hands the text here.
//!
//! Accepted shapes: a list of nodes, or `{ nodes: [...] }`. Each node is a
//! [`NodeInfo`] (`name`, `podCIDRs`, `endpoint`, `publicKey`,
//! `internalIPs`). Unknown fields are errors, so a typo is not ignored.

use serde::Deserialize;

use crate::NodeInfo;

/// Why a nodes file's content is not a node list.
#[derive(Debug, thiserror::Error)]
#[error("parsing nodes file {path}: {message}")]
pub struct ParseError {
    /// The file.
    pub path: String,
    /// The parser's message (line and column).
    pub message: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Shape {
    List(Vec<NodeInfo>),
    Wrapped { nodes: Vec<NodeInfo> },
}

/// Parse file content (YAML, which includes JSON).
pub fn parse(path: &str, text: &str) -> Result<Vec<NodeInfo>, ParseError> {
    // Try the strict shapes one by one for a precise error message.
    match yaml_serde::from_str::<Shape>(text) {
        Ok(Shape::List(n)) | Ok(Shape::Wrapped { nodes: n }) => Ok(n),
        Err(_) => {
            let message = match yaml_serde::from_str::<Vec<NodeInfo>>(text) {
                Err(e) => e.to_string(),
                Ok(_) => "unrecognized shape".into(),
            };
            Err(ParseError {
                path: path.into(),
                message,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_yaml_and_wrapped() {
        let json = r#"[{"name":"a","podCIDRs":["10.244.1.0/24"],"endpoint":"192.0.2.1:51820"}]"#;
        assert_eq!(parse("f", json).unwrap()[0].name, "a");
        let yaml = "nodes:\n  - name: b\n    podCIDRs: [10.244.2.0/24]\n    publicKey: null\n";
        let n = parse("f", yaml).unwrap();
        assert_eq!(n[0].pod_cidrs, vec!["10.244.2.0/24"]);
    }

    #[test]
    fn underlay_mtu_as_a_number_or_a_string_in_either_casing() {
        let yaml =
            "- name: a\n  underlayMTU: 1460\n- name: b\n  underlayMtu: \"9001\"\n- name: c\n";
        let n = parse("nodes.yaml", yaml).unwrap();
        assert_eq!(n[0].underlay_mtu.as_deref(), Some("1460"));
        assert_eq!(n[1].underlay_mtu.as_deref(), Some("9001"));
        assert_eq!(n[2].underlay_mtu, None);
        let json = r#"[{"name":"a","underlayMTU":1460.5}]"#;
        // Kept as text; the planner refuses it (counts as 1500).
        assert_eq!(
            parse("f", json).unwrap()[0].underlay_mtu.as_deref(),
            Some("1460.5")
        );
    }

    #[test]
    fn typo_is_an_error_naming_the_file_and_field() {
        let e = parse("nodes.yaml", "- name: a\n  podCIDR: [10.0.0.0/24]\n").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("nodes.yaml") && s.contains("podCIDR"), "{s}");
    }
}
