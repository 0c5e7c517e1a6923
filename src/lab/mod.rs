//! The local lab: a multi-node cluster in network namespaces, running the
//! real `podguard-agent` against an embedded API server, with pods attached
//! by the real `podguard-cni`. Touches nothing in the root network
//! namespace; sends traffic only to addresses inside its own namespaces.

pub mod apiserver;
pub mod check;
pub mod cluster;
pub mod discovery;
pub mod kube;
pub mod plan;
