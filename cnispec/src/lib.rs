//! What the `podguard-cni` plugin reads and writes, as values: the CNI
//! protocol ([`spec`]: environment and stdin in, a result or an error JSON
//! out) and the node state file the agent writes for it ([`node_state`]).
//!
//! **This crate does no IO and reads no clock.** Every byte from outside (a container
//! runtime's request, a file on disk) is parsed and validated here, where
//! it is unit-tested and fuzzed without the plugin's IO stack (netlink,
//! namespaces, the IPAM store); the plugin in the `podguard` crate reads
//! the input, calls into here and acts on the result.

pub mod node_state;
pub mod spec;
