//! [`BpffsGuard`]: a private bpffs instance for one test's pins.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::scratch::TempDir;

/// A bpffs mounted at `/tmp/lb-test-<pid>-<n>-<tag>/bpffs`, in the mount namespace of the test
/// process (the root one), so it is also visible to processes started with `ip netns exec` (which
/// remounts `/sys`, hiding `/sys/fs/bpf`) and pins outlive the programs that made them.
///
/// Every mount is a separate bpffs instance: tests never see each other's pins. Drop removes every
/// pin and directory below the mount, unmounts it (lazily if busy) and removes the directory.
#[derive(Debug)]
pub struct BpffsGuard {
    path: PathBuf,
    // Declared last: removed after the unmount in `drop`.
    _dir: TempDir,
}

impl BpffsGuard {
    /// Create the directory and mount a fresh bpffs on it.
    pub fn new(tag: &str) -> Result<BpffsGuard> {
        let dir = TempDir::new(tag)?;
        let path = dir.path().join("bpffs");
        fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        mount(
            Some("bpf"),
            &path,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mount bpffs on {}", path.display()))?;
        Ok(BpffsGuard { path, _dir: dir })
    }

    /// The mount point; give it to the agent as its bpffs root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every pinned object below the mount point (files, not directories), sorted.
    pub fn pins(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        walk(&self.path, &mut |p, is_dir| {
            if !is_dir {
                out.push(p.to_path_buf());
            }
        })?;
        out.sort();
        Ok(out)
    }
}

/// Files the kernel's bpf_preload puts in the root of every bpffs instance; they cannot be removed
/// and go away with the mount.
const PRELOADED: [&str; 2] = ["maps.debug", "progs.debug"];

/// Visit everything below the mount point `root` except [`PRELOADED`], children before their directory.
fn walk(root: &Path, f: &mut dyn FnMut(&Path, bool)) -> Result<()> {
    walk_below(root, true, f)
}

fn walk_below(dir: &Path, is_root: bool, f: &mut dyn FnMut(&Path, bool)) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        if is_root && PRELOADED.iter().any(|p| entry.file_name() == *p) {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type()?.is_dir();
        if is_dir {
            walk_below(&path, false, f)?;
        }
        f(&path, is_dir);
    }
    Ok(())
}

impl Drop for BpffsGuard {
    fn drop(&mut self) {
        let mut failed = Vec::new();
        if let Err(e) = walk(&self.path, &mut |p, is_dir| {
            let r = if is_dir {
                fs::remove_dir(p)
            } else {
                fs::remove_file(p)
            };
            if let Err(e) = r {
                if e.kind() != ErrorKind::NotFound {
                    failed.push(format!("{}: {e}", p.display()));
                }
            }
        }) {
            failed.push(format!("{e:#}"));
        }
        for f in failed {
            eprintln!("lb-tests: removing pin {f}");
        }
        match umount2(&self.path, MntFlags::empty()) {
            Ok(()) => {}
            Err(Errno::EBUSY) => {
                if let Err(e) = umount2(&self.path, MntFlags::MNT_DETACH) {
                    eprintln!("lb-tests: lazy umount {}: {e}", self.path.display());
                }
            }
            Err(e) => eprintln!("lb-tests: umount {}: {e}", self.path.display()),
        }
        // `_dir` (a TempDir) removes the directory when dropped after this.
    }
}
