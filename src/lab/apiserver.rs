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

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::{Mutex, broadcast};

mod events;
mod nodes;
mod objects;

use nodes::WatchEvent;

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
            .merge(nodes::routes())
            .merge(events::routes())
            .merge(objects::routes())
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
