//! [`NetNs`]: a named network namespace that exists exactly as long as its guard.

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd::{run_cmd, run_ok, CMD_TIMEOUT};
use crate::names::{unique_name, NETNS_PREFIX};
use crate::proc::{Child, Registry};
use crate::stale::{kill_all_in, sweep_stale_once};

/// A named network namespace (`ip netns add lbt-<pid>-<n>-<tag>`) with `lo` up.
///
/// Drop kills every process still inside it (those spawned through [`NetNs::spawn`] and any other
/// `ip netns pids` reports), then deletes it. Sockets created in it by threads of the test process
/// (see [`NetNs::enter`]) keep the kernel object alive until they are closed, but not the name.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    registry: Registry,
    // Declared last: closed after the name is deleted in `drop`.
    fd: File,
}

/// Counters of one interface, from `/proc/net/dev` of the namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets dropped on send.
    pub tx_dropped: u64,
}

impl NetNs {
    /// Create a namespace with a unique name derived from `tag`, and bring `lo` up.
    pub fn new(tag: &str) -> Result<NetNs> {
        sweep_stale_once();
        let name = unique_name(NETNS_PREFIX, tag);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "add", &name]);
        run_ok(cmd, CMD_TIMEOUT)?;
        let fd = match File::open(format!("/run/netns/{name}")) {
            Ok(fd) => fd,
            Err(e) => {
                delete_netns(&name);
                return Err(e).context(format!("open /run/netns/{name}"));
            }
        };
        let ns = NetNs {
            name,
            registry: Registry::default(),
            fd,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Run `ip -n <name> <args...>`; returns stdout, fails with stderr on a non-zero exit.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        run_ok(cmd, CMD_TIMEOUT)
    }

    /// Run `program args...` inside the namespace (`ip netns exec`), bounded by [`CMD_TIMEOUT`];
    /// returns stdout, fails with stderr on a non-zero exit.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        let out = self.output(&cmd, CMD_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} in {} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Run `cmd` (program, arguments, environment, directory) inside the namespace to completion with
    /// output captured, killing it after `timeout`. The exit status is left to the caller.
    pub fn output(&self, cmd: &Command, timeout: Duration) -> Result<Output> {
        let mut real = Command::new("ip");
        real.args(["netns", "exec", &self.name])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => real.env(k, v),
                None => real.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            real.current_dir(d);
        }
        run_cmd(real, timeout)
    }

    /// Start a long-running process inside the namespace; see [`Child`]. `name` labels its logs.
    pub fn spawn(&self, name: &str, cmd: &Command) -> Result<Child> {
        Child::spawn(&self.name, self.registry.clone(), name, cmd)
    }

    /// Run `f` on a fresh thread that has joined this namespace (setns(2)) and return its result.
    /// Sockets created by `f` belong to the namespace for their whole life, whichever thread uses
    /// them later. A panic in `f` is resumed in the caller. `f` may borrow from the caller.
    pub fn enter<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let fd = self.fd.as_fd();
        let name = &self.name;
        thread::scope(|s| {
            let handle = thread::Builder::new()
                .name(format!("in-{name}"))
                .spawn_scoped(s, move || {
                    if let Err(e) = setns(fd, CloneFlags::CLONE_NEWNET) {
                        panic!("setns into {name}: {e}");
                    }
                    f()
                })
                .expect("spawn a thread");
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Start a detached thread that runs `f` inside this namespace (for servers that need more than
    /// their socket to live there). The thread keeps the kernel namespace alive until it ends.
    pub fn spawn_thread<F, R>(&self, f: F) -> Result<thread::JoinHandle<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let fd = self.fd.try_clone().context("dup netns fd")?;
        let name = self.name.clone();
        thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn(move || {
                if let Err(e) = setns(&fd, CloneFlags::CLONE_NEWNET) {
                    panic!("setns into {name}: {e}");
                }
                drop(fd);
                f()
            })
            .context("spawn a thread")
    }

    /// Set a sysctl below `/proc/sys/net/` for this namespace, e.g. `("ipv4/ip_forward", "1")`.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/net/{key}");
        self.enter(|| fs::write(&path, value))
            .with_context(|| format!("write {value} to {path} in {}", self.name))
    }

    /// Read a sysctl below `/proc/sys/net/` for this namespace, trimmed.
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let path = format!("/proc/sys/net/{key}");
        let v = self
            .enter(|| fs::read_to_string(&path))
            .with_context(|| format!("read {path} in {}", self.name))?;
        Ok(v.trim().to_string())
    }

    /// The index of interface `ifname` in this namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        self.enter(|| nix::net::if_::if_nametoindex(ifname))
            .with_context(|| format!("no interface {ifname} in {}", self.name))
    }

    /// Packet and byte counters of interface `ifname` in this namespace.
    pub fn link_stats(&self, ifname: &str) -> Result<LinkStats> {
        // /proc/thread-self/net is the namespace of the reading thread (/proc/self/net is the leader's).
        let text = self
            .enter(|| fs::read_to_string("/proc/thread-self/net/dev"))
            .context("read /proc/thread-self/net/dev")?;
        parse_net_dev(&text, ifname)
            .with_context(|| format!("no interface {ifname} in {}", self.name))
    }

    /// Pids of the processes whose main thread is in this namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<i32>> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "pids", &self.name]);
        let out = run_ok(cmd, CMD_TIMEOUT)?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let spawned: Vec<i32> = self.registry.lock().unwrap().clone();
        for pid in spawned {
            // Process group of a Child that is still running (its guard outlived the namespace).
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        }
        kill_all_in(&self.name);
        delete_netns(&self.name);
    }
}

fn delete_netns(name: &str) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "del", name]);
    if let Err(e) = run_ok(cmd, CMD_TIMEOUT) {
        eprintln!("lb-tests: {e:#}");
    }
}

fn parse_net_dev(text: &str, ifname: &str) -> Option<LinkStats> {
    text.lines().skip(2).find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        if name.trim() != ifname {
            return None;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() < 16 {
            return None;
        }
        Some(LinkStats {
            rx_bytes: f[0],
            rx_packets: f[1],
            rx_dropped: f[3],
            tx_bytes: f[8],
            tx_packets: f[9],
            tx_dropped: f[11],
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that /proc/net/dev lines are parsed into the right counters.
    #[test]
    fn net_dev_lines_are_parsed() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets ...\n    lo: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n";
        let s = parse_net_dev(text, "lo").unwrap();
        assert_eq!((s.rx_bytes, s.rx_packets, s.rx_dropped), (1, 2, 4));
        assert_eq!((s.tx_bytes, s.tx_packets, s.tx_dropped), (9, 10, 12));
        assert!(parse_net_dev(text, "eth0").is_none());
    }
}
