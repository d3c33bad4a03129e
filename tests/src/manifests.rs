//! A [`ManifestDir`] the agent watches (`lb-agent run --manifests`), changed the ways a real
//! writer changes files: in place, by an atomic rename, or by removal. The objects come from
//! [`crate::objects`].
//!
//! ```no_run
//! use lb_tests::manifests::ManifestDir;
//! use lb_tests::objects::{Protocol, Service};
//! let svc = Service::new("echo", [10, 96, 0, 10]).port("http", Protocol::Tcp, 80, 8080);
//! let dir = ManifestDir::new("doc").unwrap();
//! dir.replace("echo.yaml", &svc.with_endpoints("node-a", &[[10, 244, 0, 11].into()])).unwrap();
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::scratch::TempDir;

/// A scratch directory of manifests for `lb-agent run --manifests`, with a sibling staging
/// directory on the same filesystem for atomic replacement. Both are removed on drop.
#[derive(Debug)]
pub struct ManifestDir {
    dir: TempDir,
    staging: TempDir,
}

impl ManifestDir {
    /// Create an empty manifests directory (and its staging directory) under /tmp.
    pub fn new(tag: &str) -> Result<ManifestDir> {
        Ok(ManifestDir {
            dir: TempDir::new(&format!("m-{tag}"))?,
            staging: TempDir::new(&format!("s-{tag}"))?,
        })
    }

    /// The directory to give the agent.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Path of file `name` in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write file `name` in place (create or truncate, then write), as an editor without
    /// atomic saves does.
    pub fn write(&self, name: &str, text: &str) -> Result<()> {
        let path = self.file(name);
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    }

    /// Replace file `name` atomically: write it in the staging directory, then rename it into
    /// the directory (as `kubectl`-driven tools and ConfigMap volume updates do).
    pub fn replace(&self, name: &str, text: &str) -> Result<()> {
        let tmp = self.staging.path().join(name);
        fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        let path = self.file(name);
        fs::rename(&tmp, &path)
            .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
    }

    /// Remove file `name`.
    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.file(name);
        fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that an atomic replacement leaves exactly the new content and nothing in staging.
    #[test]
    fn replace_renames_into_the_directory() {
        let dir = ManifestDir::new("unit").unwrap();
        dir.write("a.yaml", "old").unwrap();
        dir.replace("a.yaml", "new").unwrap();
        assert_eq!(fs::read_to_string(dir.file("a.yaml")).unwrap(), "new");
        assert_eq!(fs::read_dir(dir.staging.path()).unwrap().count(), 0);
        dir.remove("a.yaml").unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
