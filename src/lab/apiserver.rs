//! The lab's embedded Kubernetes API server: the subset podguard uses.
//!
//! Nodes: list, get, watch (with resourceVersion, 410 Gone for a version
//! it no longer has), create, update, merge patch, delete. Events
//! (events.k8s.io/v1 and core/v1): create, merge patch, list. Namespaces,
//! Pods and NetworkPolicies: create, get, list, delete. Plain HTTP,
//! no authentication: it listens only inside a lab network namespace.
//! State is kept in a JSON file so a restarted server continues where it
//! stopped (watches from before the restart get 410 and re-list, as
//! against a real API server after etcd compaction).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Mutex, broadcast};

/// One change to a Node, as a watch reports it.
#[derive(Debug, Clone)]
struct WatchEvent {
    rv: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Persisted {
    rv: u64,
    nodes: BTreeMap<String, Value>,
    events: BTreeMap<String, Value>,
    /// Namespaces, Pods and NetworkPolicies (list, create, delete; no
    /// watch): what `podguard audit` reads. Key: `kind/namespace/name`.
    #[serde(default)]
    objects: BTreeMap<String, Value>,
}

#[derive(Debug)]
struct Inner {
    data: Persisted,
    /// Watch history since this process started.
    history: Vec<WatchEvent>,
    /// Oldest resourceVersion a watch may resume from.
    oldest: u64,
}

/// Shared server state.
#[derive(Debug, Clone)]
pub struct ApiServer {
    inner: Arc<Mutex<Inner>>,
    tx: broadcast::Sender<WatchEvent>,
    state_file: Option<PathBuf>,
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        })),
    )
        .into_response()
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl ApiServer {
    /// A server, loading `state_file` if it exists.
    pub fn new(state_file: Option<PathBuf>) -> Self {
        let data: Persisted = state_file
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let oldest = data.rv;
        let (tx, _) = broadcast::channel(4096);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                data,
                history: Vec::new(),
                oldest,
            })),
            tx,
            state_file,
        }
    }

    /// The router.
    pub fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/version",
                get(|| async {
                    axum::Json(
                        json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-podguard-lab"}),
                    )
                }),
            )
            .route("/api/v1/nodes", get(list_or_watch).post(create_node))
            .route(
                "/api/v1/nodes/{name}",
                get(get_node)
                    .put(replace_node)
                    .patch(patch_node)
                    .delete(delete_node),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{ns}/events",
                get(list_events).post(create_event),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}",
                axum::routing::patch(patch_event),
            )
            .route("/apis/events.k8s.io/v1/events", get(list_events_all))
            .route(
                "/api/v1/namespaces",
                get(|s, q| list_objects(s, q, Kind::Namespace, None)).post(
                    |s: State<ApiServer>, b: Bytes| create_object(s, Kind::Namespace, None, b),
                ),
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
            .merge(super::discovery::router())
            .with_state(self)
    }

    /// Serve on `addr` until the process ends.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(%addr, "lab API server listening");
        axum::serve(listener, self.router()).await
    }

    fn persist(&self, data: &Persisted) {
        if let Some(p) = &self.state_file {
            let tmp = p.with_extension("tmp");
            if let Ok(b) = serde_json::to_vec(data)
                && std::fs::write(&tmp, b).is_ok()
            {
                let _ = std::fs::rename(&tmp, p);
            }
        }
    }

    async fn change(&self, kind: &'static str, name: &str, mut obj: Value) -> Value {
        let mut g = self.inner.lock().await;
        g.data.rv += 1;
        let rv = g.data.rv;
        obj["metadata"]["resourceVersion"] = rv.to_string().into();
        if kind == "DELETED" {
            g.data.nodes.remove(name);
        } else {
            g.data.nodes.insert(name.to_string(), obj.clone());
        }
        let ev = WatchEvent {
            rv,
            kind,
            object: obj.clone(),
        };
        g.history.push(ev.clone());
        self.persist(&g.data);
        let _ = self.tx.send(ev);
        obj
    }
}

fn node_list(items: Vec<Value>, rv: u64) -> Value {
    json!({"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}

fn flag(q: &BTreeMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

async fn list_or_watch(
    State(s): State<ApiServer>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if !flag(&q, "watch") {
        let g = s.inner.lock().await;
        return axum::Json(node_list(
            g.data.nodes.values().cloned().collect(),
            g.data.rv,
        ))
        .into_response();
    }
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(300u64);
    let since: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = flag(&q, "allowWatchBookmarks");
    let rx = s.tx.subscribe();
    let (backlog, current) = {
        let g = s.inner.lock().await;
        if since != 0 && since < g.oldest {
            let gone = json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410,
                "message": format!("too old resource version: {since} ({})", g.oldest)}});
            let body = format!("{gone}\n");
            return Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap_or_default();
        }
        let backlog: Vec<WatchEvent> = if since == 0 {
            g.data
                .nodes
                .values()
                .map(|o| WatchEvent {
                    rv: g.data.rv,
                    kind: "ADDED",
                    object: o.clone(),
                })
                .collect()
        } else {
            g.history.iter().filter(|e| e.rv > since).cloned().collect()
        };
        (backlog, g.data.rv)
    };
    let line =
        |e: &WatchEvent| Bytes::from(format!("{}\n", json!({"type": e.kind, "object": e.object})));
    let first: Vec<Result<Bytes, std::io::Error>> = backlog.iter().map(|e| Ok(line(e))).collect();
    let live = tokio_stream_from(rx, current).map(move |e| Ok::<_, std::io::Error>(line(&e)));
    let mut stream = futures::stream::iter(first).chain(live).boxed();
    if bookmarks {
        let bm = Bytes::from(format!(
            "{}\n",
            json!({"type": "BOOKMARK", "object": {"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": current.to_string()}}})
        ));
        stream = futures::stream::iter([Ok(bm)]).chain(stream).boxed();
    }
    let deadline = tokio::time::sleep(Duration::from_secs(timeout));
    let stream = stream.take_until(deadline);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

fn tokio_stream_from(
    rx: broadcast::Receiver<WatchEvent>,
    after: u64,
) -> impl futures::Stream<Item = WatchEvent> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((e, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .filter(move |e| futures::future::ready(e.rv > after))
}

async fn get_node(State(s): State<ApiServer>, Path(name): Path<String>) -> Response {
    let g = s.inner.lock().await;
    match g.data.nodes.get(&name) {
        Some(n) => axum::Json(n.clone()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("nodes \"{name}\" not found"),
        ),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("request body is not JSON: {e}"),
        ))
    })
}

/// A create request's body and its `metadata.name`.
fn parse_new_object(body: &Bytes) -> Result<(Value, String), Box<Response>> {
    let obj = parse_body(body)?;
    let Some(name) = obj["metadata"]["name"].as_str().map(String::from) else {
        return Err(Box::new(status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name is required".into(),
        )));
    };
    Ok((obj, name))
}

async fn create_node(State(s): State<ApiServer>, body: Bytes) -> Response {
    let (mut obj, name) = match parse_new_object(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if s.inner.lock().await.data.nodes.contains_key(&name) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("nodes \"{name}\" already exists"),
        );
    }
    obj["kind"] = "Node".into();
    obj["apiVersion"] = "v1".into();
    obj["metadata"]["uid"] = format!("lab-{name}-{}", std::process::id()).into();
    obj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z".into();
    let out = s.change("ADDED", &name, obj).await;
    (StatusCode::CREATED, axum::Json(out)).into_response()
}

async fn replace_node(
    State(s): State<ApiServer>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let obj = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if !s.inner.lock().await.data.nodes.contains_key(&name) {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("nodes \"{name}\" not found"),
        );
    }
    axum::Json(s.change("MODIFIED", &name, obj).await).into_response()
}

async fn patch_node(
    State(s): State<ApiServer>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !(ct.starts_with("application/merge-patch+json")
        || ct.starts_with("application/strategic-merge-patch+json"))
    {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the lab API server takes merge patches only, not {ct:?}"),
        );
    }
    let patch = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(mut obj) = s.inner.lock().await.data.nodes.get(&name).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("nodes \"{name}\" not found"),
        );
    };
    merge_patch(&mut obj, &patch);
    obj["metadata"]["name"] = name.clone().into();
    axum::Json(s.change("MODIFIED", &name, obj).await).into_response()
}

async fn delete_node(State(s): State<ApiServer>, Path(name): Path<String>) -> Response {
    let Some(obj) = s.inner.lock().await.data.nodes.get(&name).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("nodes \"{name}\" not found"),
        );
    };
    axum::Json(s.change("DELETED", &name, obj).await).into_response()
}

async fn create_event(State(s): State<ApiServer>, Path(ns): Path<String>, body: Bytes) -> Response {
    let mut ev = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut g = s.inner.lock().await;
    g.data.rv += 1;
    let name = ev["metadata"]["name"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| format!("event-{}", g.data.rv));
    ev["metadata"]["name"] = name.clone().into();
    ev["metadata"]["namespace"] = ns.clone().into();
    ev["metadata"]["resourceVersion"] = g.data.rv.to_string().into();
    g.data.events.insert(format!("{ns}/{name}"), ev.clone());
    s.persist(&g.data);
    (StatusCode::CREATED, axum::Json(ev)).into_response()
}

async fn patch_event(
    State(s): State<ApiServer>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let patch = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut g = s.inner.lock().await;
    let key = format!("{ns}/{name}");
    let Some(ev) = g.data.events.get_mut(&key) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("events \"{name}\" not found"),
        );
    };
    merge_patch(ev, &patch);
    let out = ev.clone();
    s.persist(&g.data);
    axum::Json(out).into_response()
}

async fn list_events(State(s): State<ApiServer>, Path(ns): Path<String>) -> Response {
    let g = s.inner.lock().await;
    let items: Vec<Value> = g
        .data
        .events
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ns}/")))
        .map(|(_, v)| v.clone())
        .collect();
    axum::Json(json!({"kind": "EventList", "apiVersion": "events.k8s.io/v1", "metadata": {"resourceVersion": g.data.rv.to_string()}, "items": items})).into_response()
}

async fn list_events_all(State(s): State<ApiServer>) -> Response {
    let g = s.inner.lock().await;
    let items: Vec<Value> = g.data.events.values().cloned().collect();
    axum::Json(json!({"kind": "EventList", "apiVersion": "events.k8s.io/v1", "metadata": {"resourceVersion": g.data.rv.to_string()}, "items": items})).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"metadata": {"name": "n"}});
        merge_patch(
            &mut t,
            &json!({"metadata": {"annotations": {"podguard.dev/public-key": "k"}}}),
        );
        assert_eq!(t["metadata"]["annotations"]["podguard.dev/public-key"], "k");
    }

    #[test]
    fn create_requests_need_json_and_a_name() {
        let (obj, name) =
            parse_new_object(&Bytes::from_static(br#"{"metadata":{"name":"n1"}}"#)).unwrap();
        assert_eq!(
            (name.as_str(), &obj["metadata"]["name"]),
            ("n1", &json!("n1"))
        );
        let r = parse_new_object(&Bytes::from_static(b"{not json")).unwrap_err();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = parse_new_object(&Bytes::from_static(br#"{"metadata":{}}"#)).unwrap_err();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
