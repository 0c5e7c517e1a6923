//! The client for the Kubernetes API from the environment, shared by the
//! agent and the `podguard` CLI so that both pick the same source, with
//! an error that says which source was used and how to fix it. kube's own
//! inference tries the kubeconfig, falls back to the in-cluster config,
//! and reports both failures in one line of nested quotes, whichever the
//! operator meant.

use anyhow::Context as _;
use kube::{Client, Config};

/// What the agent's operator can do when no source exists.
pub const AGENT_FIX: &str = "set KUBECONFIG, or give --nodes-file to run without Kubernetes";

/// What the CLI's user can do when no source exists.
pub const CLI_FIX: &str = "set KUBECONFIG or give --kubeconfig; for the local lab use --lab";

/// The agent's client: [`client`] with [`AGENT_FIX`].
pub async fn agent_client() -> anyhow::Result<Client> {
    client(AGENT_FIX).await
}

/// `$KUBECONFIG` when set, else the in-cluster config inside a Pod
/// (`KUBERNETES_SERVICE_HOST` set, as kubelet does), else
/// `~/.kube/config`; `fix` ends the error when none of them exists. Unlike
/// kube's inference, a `$KUBECONFIG` that cannot be read is an error
/// instead of a silent fall-back to the in-cluster config. Nothing is
/// sent to the API server here.
pub async fn client(fix: &str) -> anyhow::Result<Client> {
    let kubeconfig = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty());
    let cfg = if let Some(path) = kubeconfig {
        Config::from_kubeconfig(&Default::default())
            .await
            .map_err(|e| named_once(e, &path.to_string_lossy()))?
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        Config::incluster()
            .context("reading the in-cluster config (the Pod's ServiceAccount token and CA)")?
    } else {
        Config::from_kubeconfig(&Default::default())
            .await
            .with_context(|| {
                format!(
                    "no Kubernetes API configured: not in a Pod (KUBERNETES_SERVICE_HOST unset), \
                     $KUBECONFIG unset, and no usable ~/.kube/config; {fix}"
                )
            })?
    };
    let mut cfg = cfg;
    cfg.apply_debug_overrides();
    Client::try_from(cfg).context("building the Kubernetes client")
}

/// kube names the file it could not read but not the one it could not
/// parse: the path is added only where kube's text lacks it.
fn named_once(e: kube::config::KubeconfigError, path: &str) -> anyhow::Error {
    let what = if e.to_string().contains(path) {
        "reading $KUBECONFIG".to_string()
    } else {
        format!("reading $KUBECONFIG {path}")
    };
    anyhow::Error::new(e).context(what)
}
