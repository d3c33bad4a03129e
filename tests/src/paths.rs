//! Where the tests find what `cargo xtask build` made.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

/// The eBPF object `cargo xtask build-ebpf` writes.
pub fn ebpf_object() -> PathBuf {
    workspace_root().join("target/bpf/lb-ebpf.o")
}

/// The agent binary: `$LB_AGENT_BIN` (set by `cargo xtask test`), else
/// `<workspace>/target/release/lb-agent`; an error saying what to run when it is missing.
pub fn find_agent_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LB_AGENT_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "LB_AGENT_BIN={} is not a file; build it with `cargo build --release -p lb-agent`",
                p.display()
            );
        }
        return Ok(p);
    }
    let p = workspace_root().join("target/release/lb-agent");
    if !p.is_file() {
        bail!(
            "no agent binary at {}: run `cargo xtask build-ebpf && cargo build --release -p lb-agent`, \
             or set LB_AGENT_BIN",
            p.display()
        );
    }
    Ok(p)
}
