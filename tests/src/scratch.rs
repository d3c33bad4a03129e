//! Unique names, scratch directories and the sweeper for leftovers of killed test processes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::proc::run_cmd;

/// Prefix of every network namespace the harness creates: `lbt-<pid>-<n>-<tag>`.
pub const NETNS_PREFIX: &str = "lbt-";

/// Prefix of every scratch directory the harness creates: `/tmp/lb-test-<pid>-<n>-<tag>`.
pub const DIR_PREFIX: &str = "lb-test-";

/// Set this environment variable (to anything) to keep scratch directories (logs) after a test.
pub const KEEP_ENV: &str = "LB_TEST_KEEP";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Reduce a caller's tag to `[a-z0-9-]`, at most 12 characters, so it fits in names and paths.
pub fn sanitize_tag(tag: &str) -> String {
    let s: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(12)
        .collect();
    if s.is_empty() {
        "x".to_string()
    } else {
        s
    }
}

/// A name unique in this machine for as long as this process lives: `<prefix><pid>-<n>-<tag>`.
pub fn unique_name(prefix: &str, tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{n}-{}", std::process::id(), sanitize_tag(tag))
}

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

/// Whether a process with this pid exists.
pub(crate) fn pid_alive(pid: i32) -> bool {
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// The pid embedded in a harness name (`<prefix><pid>-...`), if it has that shape.
fn owner_pid(name: &str, prefix: &str) -> Option<i32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

/// Run [`cleanup_stale`] once per process, before the first namespace or directory is created.
pub(crate) fn sweep_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = cleanup_stale() {
            eprintln!("lb-tests: sweeping leftovers failed: {e:#}");
        }
    });
}

/// Remove namespaces (`/run/netns/lbt-<pid>-*`), bpffs mounts and directories (`/tmp/lb-test-<pid>-*`)
/// left behind by harness processes that no longer exist (killed before their guards ran).
/// Things owned by live processes are never touched. Returns how many items were removed.
pub fn cleanup_stale() -> Result<usize> {
    let mut removed = 0;
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = owner_pid(&name, NETNS_PREFIX) else {
                continue;
            };
            if pid_alive(pid) {
                continue;
            }
            crate::netns::kill_all_in(&name);
            let mut cmd = std::process::Command::new("ip");
            cmd.args(["netns", "del", &name]);
            match run_cmd(cmd, Duration::from_secs(10)) {
                Ok(out) if out.status.success() => removed += 1,
                Ok(out) => eprintln!(
                    "lb-tests: ip netns del {name}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("lb-tests: ip netns del {name}: {e:#}"),
            }
        }
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for entry in fs::read_dir("/tmp").context("read /tmp")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name, DIR_PREFIX) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        let dir = entry.path();
        // Unmount whatever is mounted below the directory, deepest first.
        let mut mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            if let Err(e) = umount2(m, MntFlags::MNT_DETACH) {
                eprintln!("lb-tests: umount {m}: {e}");
            }
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => removed += 1,
            Err(e) => eprintln!("lb-tests: remove {}: {e}", dir.display()),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that tags are reduced to short, safe names.
    #[test]
    fn tags_are_sanitized_and_short() {
        assert_eq!(sanitize_tag("Hello World/x"), "hello-world-");
        assert_eq!(sanitize_tag(""), "x");
    }

    /// Test that two names with the same tag differ and carry the pid.
    #[test]
    fn unique_names_differ_and_carry_the_pid() {
        let a = unique_name(NETNS_PREFIX, "t");
        let b = unique_name(NETNS_PREFIX, "t");
        assert_ne!(a, b);
        assert_eq!(owner_pid(&a, NETNS_PREFIX), Some(std::process::id() as i32));
    }
}
