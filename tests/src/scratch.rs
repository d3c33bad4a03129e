//! [`TempDir`]: a scratch directory `/tmp/lb-test-<pid>-<n>-<tag>` that exists as long as its guard.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::names::{unique_name, DIR_PREFIX};
use crate::stale::sweep_stale_once;

/// Set this environment variable (to anything) to keep scratch directories (logs) after a test.
pub const KEEP_ENV: &str = "LB_TEST_KEEP";

/// A scratch directory `/tmp/lb-test-<pid>-<n>-<tag>`, removed recursively on drop
/// (kept when `LB_TEST_KEEP` is set).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Create a fresh, unique scratch directory.
    pub fn new(tag: &str) -> Result<TempDir> {
        sweep_stale_once();
        let path = Path::new("/tmp").join(unique_name(DIR_PREFIX, tag));
        fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("lb-tests: keeping {}", self.path.display());
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("lb-tests: cannot remove {}: {e}", self.path.display());
        }
    }
}
