//! The eBPF object embedded at build time.

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at build time.
pub(super) static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_OBJECT"));
