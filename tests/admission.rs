//! deploy/admission-policy.yaml: the ValidatingAdmissionPolicy's CEL,
//! evaluated (with the cel-interpreter crate) on sample admission requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cel_interpreter::{Context, Program, Value};
use serde_json::json;

const POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/admission-policy.yaml");
const AGENT: &str = "system:serviceaccount:podguard:podguard";

struct Policy {
    variables: Vec<(String, String)>,
    validations: Vec<String>,
    message: String,
}

fn load() -> Policy {
    let text = std::fs::read_to_string(POLICY).unwrap();
    let docs: Vec<yaml_serde::Value> = yaml_serde::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let vap = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicy")
        .unwrap();
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicyBinding")
        .unwrap();
    assert_eq!(binding["spec"]["policyName"], vap["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"][0], "Deny");
    assert_eq!(vap["spec"]["failurePolicy"], "Fail");
    let spec = &vap["spec"];
    Policy {
        variables: spec["variables"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap().to_string(),
                    v["expression"].as_str().unwrap().to_string(),
                )
            })
            .collect(),
        validations: spec["validations"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v["expression"].as_str().unwrap().to_string())
            .collect(),
        message: spec["validations"][0]["messageExpression"]
            .as_str()
            .unwrap()
            .to_string(),
    }
}

/// Admit or deny, as the API server would: variables in order, then every
/// validation must be true. Returns the message on denial.
fn admit(
    p: &Policy,
    object: serde_json::Value,
    old: serde_json::Value,
    user: serde_json::Value,
) -> Result<(), String> {
    let mut ctx = Context::default();
    ctx.add_variable("object", cel_interpreter::to_value(&object).unwrap())
        .unwrap();
    ctx.add_variable("oldObject", cel_interpreter::to_value(&old).unwrap())
        .unwrap();
    ctx.add_variable(
        "request",
        cel_interpreter::to_value(json!({"userInfo": user})).unwrap(),
    )
    .unwrap();
    let mut vars = std::collections::HashMap::<String, Value>::new();
    for (name, expr) in &p.variables {
        let v = Program::compile(expr)
            .unwrap_or_else(|e| panic!("variable {name}: {e}"))
            .execute(&ctx)
            .unwrap_or_else(|e| panic!("variable {name}: {e}"));
        vars.insert(name.clone(), v);
        ctx.add_variable_from_value("variables", vars.clone());
    }
    for expr in &p.validations {
        let v = Program::compile(expr).unwrap().execute(&ctx).unwrap();
        if v != Value::Bool(true) {
            let msg = Program::compile(&p.message).unwrap().execute(&ctx).unwrap();
            return Err(format!("{msg:?}"));
        }
    }
    Ok(())
}

fn node(name: &str, ann: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"name": name, "annotations": ann}})
}

fn agent_of(node: &str) -> serde_json::Value {
    json!({"username": AGENT, "groups": ["system:serviceaccounts", "system:authenticated"],
           "extra": {"authentication.kubernetes.io/node-name": [node]}})
}

#[test]
fn only_the_nodes_own_agent_or_an_admin_may_touch_podguard_annotations() {
    let p = load();
    let before = node(
        "n1",
        json!({"podguard.dev/public-key": "OLD", "other": "x"}),
    );
    let new_key = node(
        "n1",
        json!({"podguard.dev/public-key": "NEW", "other": "x"}),
    );
    let removed = node("n1", json!({"other": "x"}));

    // Allowed: the agent on n1 publishes n1's key.
    assert_eq!(
        admit(&p, new_key.clone(), before.clone(), agent_of("n1")),
        Ok(())
    );
    // Allowed: first publication, and removal, by the own agent.
    assert_eq!(
        admit(&p, new_key.clone(), node("n1", json!({})), agent_of("n1")),
        Ok(())
    );
    assert_eq!(
        admit(&p, removed.clone(), before.clone(), agent_of("n1")),
        Ok(())
    );
    // Denied: the agent of another node.
    let e = admit(&p, new_key.clone(), before.clone(), agent_of("n2")).unwrap_err();
    assert!(
        e.contains("Node n1") && e.contains("only by the podguard agent"),
        "{e}"
    );
    // Denied: removal by another node's agent.
    assert!(admit(&p, removed.clone(), before.clone(), agent_of("n2")).is_err());
    // Denied: another account, even with a node-name claim.
    let other = json!({"username": "system:serviceaccount:default:app", "groups": ["system:serviceaccounts"],
                       "extra": {"authentication.kubernetes.io/node-name": ["n1"]}});
    assert!(admit(&p, new_key.clone(), before.clone(), other).is_err());
    // Denied: the agent's account without the node-name claim (old token).
    let no_claim = json!({"username": AGENT, "groups": ["system:serviceaccounts"]});
    assert!(admit(&p, new_key.clone(), before.clone(), no_claim).is_err());
    // Denied: an ordinary user asking for a rotation.
    let user = json!({"username": "alice", "groups": ["system:authenticated"]});
    let rotate = node(
        "n1",
        json!({"podguard.dev/public-key": "OLD", "other": "x", "podguard.dev/rotate-requested": "abc"}),
    );
    assert!(admit(&p, rotate.clone(), before.clone(), user.clone()).is_err());
    // Allowed: an admin (podguard rotate, force-endpoint).
    let admin = json!({"username": "bob", "groups": ["podguard:admins", "system:authenticated"]});
    assert_eq!(admit(&p, rotate, before.clone(), admin), Ok(()));
    // Allowed: anyone changing other annotations; the kubelet creating a Node.
    let other_change = node(
        "n1",
        json!({"podguard.dev/public-key": "OLD", "other": "y"}),
    );
    assert_eq!(
        admit(&p, other_change, before.clone(), user.clone()),
        Ok(())
    );
    let kubelet = json!({"username": "system:node:n1", "groups": ["system:nodes"]});
    assert_eq!(
        admit(
            &p,
            json!({"metadata": {"name": "n1"}}),
            serde_json::Value::Null,
            kubelet.clone()
        ),
        Ok(())
    );
    // Denied: a Node created with a podguard key by someone else.
    assert!(admit(&p, new_key, serde_json::Value::Null, kubelet).is_err());
}

#[test]
fn the_policy_names_the_service_account_the_daemonset_runs_as() {
    let rbac =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml")).unwrap();
    let sa = yaml_serde::Deserializer::from_str(&rbac)
        .map(|d| <yaml_serde::Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d["kind"] == "ServiceAccount")
        .unwrap();
    let user = format!(
        "system:serviceaccount:{}:{}",
        sa["metadata"]["namespace"].as_str().unwrap(),
        sa["metadata"]["name"].as_str().unwrap()
    );
    assert_eq!(user, AGENT);
    let policy = std::fs::read_to_string(POLICY).unwrap();
    assert!(policy.contains(&format!("'{AGENT}'")));
    let ds = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/daemonset.yaml"
    ))
    .unwrap();
    assert!(ds.contains(&format!(
        "serviceAccountName: {}",
        sa["metadata"]["name"].as_str().unwrap()
    )));
}
