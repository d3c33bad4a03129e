//! The sweeper of leftovers: namespaces, bpffs mounts and scratch directories whose owning
//! harness process was killed before its guards ran ([`cleanup_stale`], run once per process
//! before the first namespace or directory is created), and [`kill_all_in`], which it and
//! [`crate::NetNs`]'s drop use to empty a namespace.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Once;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd::{run_cmd, run_ok, CMD_TIMEOUT};
use crate::names::{owner_pid, DIR_PREFIX, NETNS_PREFIX};

/// Whether a process with this pid exists.
fn pid_alive(pid: i32) -> bool {
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
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
            kill_all_in(&name);
            let mut cmd = Command::new("ip");
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

/// SIGKILL every process (other than this one) whose main thread is in namespace `name`, and wait
/// briefly for them to go.
pub(crate) fn kill_all_in(name: &str) {
    let me = std::process::id() as i32;
    for _ in 0..50 {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "pids", name]);
        let Ok(out) = run_ok(cmd, CMD_TIMEOUT) else {
            return;
        };
        let pids: Vec<i32> = out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| *p != me)
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!("lb-tests: processes survive in netns {name}");
}
