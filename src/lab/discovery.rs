//! API discovery for the lab's embedded API server, so that `kubectl`
//! (get, apply, annotate, patch) works against it for the kinds it serves:
//! `/api`, `/apis`, the resource list of each group version (`/version`
//! is the server's own) and a schema-less OpenAPI v3 that tells kubectl the
//! server takes `fieldValidation`. The discovery documents are the legacy (unaggregated) discovery
//! format, which kubectl falls back to when a server offers nothing newer.

use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};

/// One resource the embedded server serves.
struct Resource {
    group_version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    verbs: &'static [&'static str],
    short: &'static [&'static str],
}

const READ_WRITE: &[&str] = &["create", "delete", "get", "list", "update"];

const RESOURCES: &[Resource] = &[
    Resource {
        group_version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        verbs: &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ],
        short: &["no"],
    },
    Resource {
        group_version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        verbs: &["create", "delete", "get", "list"],
        short: &["ns"],
    },
    Resource {
        group_version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        verbs: READ_WRITE,
        short: &["po"],
    },
    Resource {
        group_version: "events.k8s.io/v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        verbs: &["create", "list", "patch"],
        short: &["ev"],
    },
    Resource {
        group_version: "networking.k8s.io/v1",
        plural: "networkpolicies",
        singular: "networkpolicy",
        kind: "NetworkPolicy",
        namespaced: true,
        verbs: READ_WRITE,
        short: &["netpol"],
    },
    Resource {
        group_version: "coordination.k8s.io/v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        verbs: READ_WRITE,
        short: &[],
    },
];

/// The groups (other than core), in the order `/apis` lists them.
const GROUPS: &[&str] = &["events.k8s.io", "networking.k8s.io", "coordination.k8s.io"];

/// `/api`: the core group's versions.
pub fn core_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

/// `/apis`: every other group, each at v1.
pub fn groups() -> Value {
    let groups: Vec<Value> = GROUPS
        .iter()
        .map(|g| {
            let v = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [v.clone()], "preferredVersion": v})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// The resource list of `group_version` ("v1" for core), if served.
pub fn resources(group_version: &str) -> Option<Value> {
    let list: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group_version == group_version)
        .map(|r| {
            json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                "kind": r.kind, "verbs": r.verbs, "shortNames": r.short})
        })
        .collect();
    (!list.is_empty()).then(|| {
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": list})
    })
}

/// The API path of `group_version` ("api/v1", "apis/g/v1").
fn api_path(group_version: &str) -> String {
    if group_version == "v1" {
        "api/v1".into()
    } else {
        format!("apis/{group_version}")
    }
}

/// `/openapi/v3`: one document per group version.
pub fn openapi_root() -> Value {
    let mut paths = serde_json::Map::new();
    for gv in std::iter::once("v1".to_string()).chain(GROUPS.iter().map(|g| format!("{g}/v1"))) {
        let p = api_path(&gv);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}")}),
        );
    }
    json!({"paths": paths})
}

/// The OpenAPI v3 document of `group_version`: no schemas, only each
/// kind's PATCH operation with the `fieldValidation` parameter, which is
/// what kubectl looks for before it sends its objects for the server to
/// check (instead of validating them against schemas itself).
pub fn openapi_group_version(group_version: &str) -> Option<Value> {
    let (group, version) = group_version
        .rsplit_once('/')
        .unwrap_or(("", group_version));
    let mut paths = serde_json::Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group_version == group_version)
    {
        let base = format!("/{}", api_path(group_version));
        let path = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        paths.insert(
            path,
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": r.kind},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {}}}),
        );
    }
    (!paths.is_empty()).then(|| {
        json!({"openapi": "3.0.0", "info": {"title": "podguard lab API server", "version": version},
            "paths": paths})
    })
}

/// The discovery routes.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut r = Router::new()
        .route("/api", get(|| async { axum::Json(core_versions()) }))
        .route("/apis", get(|| async { axum::Json(groups()) }))
        .route(
            "/api/v1",
            get(|| async { axum::Json(resources("v1").unwrap_or_default()) }),
        );
    for gv in std::iter::once("v1".to_string()).chain(GROUPS.iter().map(|g| format!("{g}/v1"))) {
        let doc = openapi_group_version(&gv).unwrap_or_default();
        r = r.route(
            &format!("/openapi/v3/{}", api_path(&gv)),
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc) }
            }),
        );
    }
    r = r.route("/openapi/v3", get(|| async { axum::Json(openapi_root()) }));
    for g in GROUPS {
        let gv = format!("{g}/v1");
        let doc = resources(&gv).unwrap_or_default();
        r = r.route(
            &format!("/apis/{gv}"),
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc) }
            }),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_has_its_resources_and_core_has_nodes() {
        for g in GROUPS {
            let doc = resources(&format!("{g}/v1")).unwrap();
            assert!(!doc["resources"].as_array().unwrap().is_empty(), "{g}");
        }
        let core = resources("v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["nodes", "namespaces", "pods"]);
        assert!(resources("apps/v1").is_none());
        assert_eq!(groups()["groups"].as_array().unwrap().len(), GROUPS.len());
        let root = openapi_root();
        assert_eq!(root["paths"].as_object().unwrap().len(), GROUPS.len() + 1);
        let pods = openapi_group_version("v1").unwrap();
        let op = &pods["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert_eq!(op["parameters"][0]["name"], "fieldValidation");
        assert!(pods["paths"]["/api/v1/nodes/{name}"].is_object());
    }
}
