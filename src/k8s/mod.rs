//! The Kubernetes node source: watch Nodes (kube-runtime watcher +
//! reflector), publish this node's annotations, and reconcile the mesh
//! level-triggered over the whole snapshot.

pub mod connect;
pub mod convert;
pub mod lease;
pub mod ops;
pub mod rotate;
pub mod source;
