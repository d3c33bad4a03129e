//! Where the benchmarks keep their results: target/bench/<benchmark>.json in the workspace.

use std::path::PathBuf;

use anyhow::{Context, Result};
use lb_tests::workspace_root;

/// target/bench: every benchmark's JSON, which `report` gathers.
pub fn results_dir() -> PathBuf {
    workspace_root().join("target/bench")
}

/// Writes `json` to target/bench/`file` and says where.
pub fn write_results(file: &str, json: &str) -> Result<()> {
    let dir = results_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(file);
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    println!("results in {}", path.display());
    Ok(())
}
