//! The agent's client for the Kubernetes API, from its environment, with
//! an error that says which source was used and how to fix it. kube's own
//! inference tries the kubeconfig, falls back to the in-cluster config,
//! and reports both failures in one line of nested quotes, whichever the
//! operator meant.

use anyhow::Context as _;
use kube::{Client, Config};

/// `$KUBECONFIG` when set, else the in-cluster config inside a Pod
/// (`KUBERNETES_SERVICE_HOST` set, as kubelet does), else
/// `~/.kube/config`. Unlike kube's inference, a `$KUBECONFIG` that cannot
/// be read stops the agent instead of falling back to the in-cluster
/// config unseen. Nothing is sent to the API server here.
pub async fn agent_client() -> anyhow::Result<Client> {
    let kubeconfig = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty());
    let cfg = if let Some(path) = kubeconfig {
        Config::from_kubeconfig(&Default::default())
            .await
            .with_context(|| format!("reading $KUBECONFIG {}", path.to_string_lossy()))?
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        Config::incluster()
            .context("reading the in-cluster config (the Pod's ServiceAccount token and CA)")?
    } else {
        Config::from_kubeconfig(&Default::default()).await.context(
            "no Kubernetes API configured: not in a Pod (KUBERNETES_SERVICE_HOST unset), \
             $KUBECONFIG unset, and no usable ~/.kube/config; set KUBECONFIG, or give \
             --nodes-file to run without Kubernetes",
        )?
    };
    let mut cfg = cfg;
    cfg.apply_debug_overrides();
    Client::try_from(cfg).context("building the Kubernetes client")
}
