//! The kernel feature probes the agent runs before loading anything.

use crate::fixture::probe;

/// Test that the probes find every feature the programs need on this kernel, and that the FIB
/// flag probe tells a flag the kernel does not know (one past every flag it has).
#[test]
fn the_probes_find_every_feature_and_tell_an_unknown_fib_flag() {
    let missing = probe::missing().expect("probing");
    assert!(missing.is_none(), "{missing:?}");
    assert!(probe::has_fib_flag(16).expect("probing BPF_FIB_LOOKUP_SRC"));
    assert!(!probe::has_fib_flag(1 << 30).expect("probing an unknown flag"));
}
