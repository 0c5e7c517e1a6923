//! The node state file the CNI plugin reads: never panics; accepted state
//! has podCIDRs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = cnispec::node_state::parse("fuzz", data, 11) {
        assert!(!s.pod_cidrs.is_empty());
    }
});
