//! The simple kinds on the lab's API server: Namespaces, Pods,
//! NetworkPolicies and Leases, stored whole (list, get, create, replace,
//! delete; no watch). What `podguard audit` and the agent's Lease use.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{ApiServer, parse_new_object, status};

/// The routes of every simple kind.
pub(super) fn routes() -> Router<ApiServer> {
    Router::new()
        .route(
            "/api/v1/namespaces",
            get(|s, q| list_objects(s, q, Kind::Namespace, None))
                .post(|s: State<ApiServer>, b: Bytes| create_object(s, Kind::Namespace, None, b)),
        )
        .route(
            "/api/v1/namespaces/{ns}",
            get(|s, Path(n): Path<String>| get_object(s, Kind::Namespace, None, n))
                .delete(|s, Path(n): Path<String>| delete_object(s, Kind::Namespace, None, n)),
        )
        .merge(namespaced("/api/v1", "pods", Kind::Pod))
        .merge(namespaced(
            "/apis/networking.k8s.io/v1",
            "networkpolicies",
            Kind::NetworkPolicy,
        ))
        .merge(namespaced(
            "/apis/coordination.k8s.io/v1",
            "leases",
            Kind::Lease,
        ))
}

/// List (all namespaces and one), create, get and delete for a namespaced
/// simple kind under `group/[namespaces/{ns}/]plural`.
fn namespaced(group: &str, plural: &str, kind: Kind) -> Router<ApiServer> {
    Router::new()
        .route(
            &format!("{group}/{plural}"),
            get(move |s, q| list_objects(s, q, kind, None)),
        )
        .route(
            &format!("{group}/namespaces/{{ns}}/{plural}"),
            get(move |s, q, Path(ns): Path<String>| list_objects(s, q, kind, Some(ns))).post(
                move |s: State<ApiServer>, Path(ns): Path<String>, b: Bytes| {
                    create_object(s, kind, Some(ns), b)
                },
            ),
        )
        .route(
            &format!("{group}/namespaces/{{ns}}/{plural}/{{name}}"),
            get(move |s, Path((ns, n)): Path<(String, String)>| get_object(s, kind, Some(ns), n))
                .put(
                    move |s: State<ApiServer>, Path((ns, n)): Path<(String, String)>, b: Bytes| {
                        replace_object(s, kind, ns, n, b)
                    },
                )
                .delete(move |s, Path((ns, n)): Path<(String, String)>| {
                    delete_object(s, kind, Some(ns), n)
                }),
        )
}

/// The simple kinds: stored whole, listed, no watch.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Lease,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::Pod => "Pod",
            Self::NetworkPolicy => "NetworkPolicy",
            Self::Lease => "Lease",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Self::NetworkPolicy => "networking.k8s.io/v1",
            Self::Lease => "coordination.k8s.io/v1",
            _ => "v1",
        }
    }
    fn plural(self) -> &'static str {
        match self {
            Self::Namespace => "namespaces",
            Self::Pod => "pods",
            Self::NetworkPolicy => "networkpolicies",
            Self::Lease => "leases",
        }
    }
    fn key(self, ns: Option<&str>, name: &str) -> String {
        format!("{}/{}/{name}", self.name(), ns.unwrap_or(""))
    }
}

async fn list_objects(
    State(s): State<ApiServer>,
    Query(_q): Query<BTreeMap<String, String>>,
    kind: Kind,
    ns: Option<String>,
) -> Response {
    let g = s.inner.lock().await;
    let prefix = match &ns {
        Some(ns) => format!("{}/{ns}/", kind.name()),
        None => format!("{}/", kind.name()),
    };
    let items: Vec<Value> = g
        .data
        .objects
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v.clone())
        .collect();
    axum::Json(
        json!({"kind": format!("{}List", kind.name()), "apiVersion": kind.api_version(),
        "metadata": {"resourceVersion": g.data.rv.to_string()}, "items": items}),
    )
    .into_response()
}

async fn get_object(
    State(s): State<ApiServer>,
    kind: Kind,
    ns: Option<String>,
    name: String,
) -> Response {
    let g = s.inner.lock().await;
    match g.data.objects.get(&kind.key(ns.as_deref(), &name)) {
        Some(v) => axum::Json(v.clone()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", kind.plural()),
        ),
    }
}

async fn create_object(
    State(s): State<ApiServer>,
    kind: Kind,
    ns: Option<String>,
    body: Bytes,
) -> Response {
    let (mut obj, name) = match parse_new_object(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut g = s.inner.lock().await;
    let key = kind.key(ns.as_deref(), &name);
    if g.data.objects.contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.plural()),
        );
    }
    g.data.rv += 1;
    obj["kind"] = kind.name().into();
    obj["apiVersion"] = kind.api_version().into();
    if let Some(ns) = &ns {
        obj["metadata"]["namespace"] = ns.clone().into();
    }
    obj["metadata"]["resourceVersion"] = g.data.rv.to_string().into();
    obj["metadata"]["uid"] = format!("lab-{key}").into();
    g.data.objects.insert(key, obj.clone());
    s.persist(&g.data);
    (StatusCode::CREATED, axum::Json(obj)).into_response()
}

/// PUT: replace an existing namespaced object (a Lease renewal).
async fn replace_object(
    State(s): State<ApiServer>,
    kind: Kind,
    ns: String,
    name: String,
    body: Bytes,
) -> Response {
    let (mut obj, body_name) = match parse_new_object(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if body_name != name {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("the name in the body ({body_name:?}) does not match the URL ({name:?})"),
        );
    }
    let mut g = s.inner.lock().await;
    let key = kind.key(Some(&ns), &name);
    if !g.data.objects.contains_key(&key) {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", kind.plural()),
        );
    }
    g.data.rv += 1;
    obj["kind"] = kind.name().into();
    obj["apiVersion"] = kind.api_version().into();
    obj["metadata"]["namespace"] = ns.into();
    obj["metadata"]["resourceVersion"] = g.data.rv.to_string().into();
    obj["metadata"]["uid"] = format!("lab-{key}").into();
    g.data.objects.insert(key, obj.clone());
    s.persist(&g.data);
    axum::Json(obj).into_response()
}

async fn delete_object(
    State(s): State<ApiServer>,
    kind: Kind,
    ns: Option<String>,
    name: String,
) -> Response {
    let mut g = s.inner.lock().await;
    match g.data.objects.remove(&kind.key(ns.as_deref(), &name)) {
        Some(v) => {
            s.persist(&g.data);
            axum::Json(v).into_response()
        }
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", kind.plural()),
        ),
    }
}
