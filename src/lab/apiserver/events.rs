//! Events on the lab's API server (events.k8s.io/v1): create, merge
//! patch, list in a namespace and in all. What the agent records for an
//! operator to see with `kubectl get events`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{ApiServer, merge_patch, parse_body, status};

/// The Event routes.
pub(super) fn routes() -> Router<ApiServer> {
    Router::new()
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events",
            get(list_events).post(create_event),
        )
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}",
            axum::routing::patch(patch_event),
        )
        .route("/apis/events.k8s.io/v1/events", get(list_events_all))
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
