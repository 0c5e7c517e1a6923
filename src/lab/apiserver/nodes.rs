//! Nodes on the lab's API server: list, get, watch (resourceVersion,
//! bookmarks, 410 Gone for a version older than this process), create,
//! replace, merge patch, delete. Every change is one watch event.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::{ApiServer, merge_patch, parse_body, parse_new_object, status};

/// The Node routes.
pub(super) fn routes() -> Router<ApiServer> {
    Router::new()
        .route("/api/v1/nodes", get(list_or_watch).post(create_node))
        .route(
            "/api/v1/nodes/{name}",
            get(get_node)
                .put(replace_node)
                .patch(patch_node)
                .delete(delete_node),
        )
}

/// One change to a Node, as a watch reports it.
#[derive(Debug, Clone)]
pub(super) struct WatchEvent {
    rv: u64,
    kind: &'static str,
    object: Value,
}

impl ApiServer {
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
