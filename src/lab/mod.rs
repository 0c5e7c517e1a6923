//! The local lab: a multi-node cluster in network namespaces with an
//! embedded API server.

pub mod apiserver;
