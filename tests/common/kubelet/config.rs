//! The configuration files of a node's kubelet and kube-proxy (see
//! tests/common/kubelet.rs for what differs from a production node).

use std::path::Path;

/// kubelet's configuration on node `id` (see the module doc for what
/// differs from production).
pub(super) fn kubelet_config(id: &str, ip: &str, ca: &Path) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
cgroupDriver: cgroupfs
cgroupsPerQOS: false
cgroupRoot: /pgrt-{id}
enforceNodeAllocatable: []
failCgroupV1: false
failSwapOn: false
address: {ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
# A shared test machine's disk: never evict or collect the imported images.
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
registerNode: true
"#,
        ca = ca.display()
    )
}

/// kube-proxy's configuration on node `name`: iptables mode in the node's
/// namespace; conntrack limits left as they are (they are host-wide).
pub(super) fn proxy_config_text(name: &str, kubeconfig: &Path, cluster_cidrs: &str) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kc}
hostnameOverride: {name}
mode: iptables
clusterCIDR: {cluster_cidrs}
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
        kc = kubeconfig.display()
    )
}
