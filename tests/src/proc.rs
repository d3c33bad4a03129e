//! The [`Child`] guard for long-running programs in a namespace (short commands: [`crate::cmd`]).

use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::scratch::TempDir;

/// How long a [`Child`] gets between SIGTERM and SIGKILL unless told otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3);

/// Pids (= process group ids) of processes spawned into one namespace, shared by the namespace and
/// its [`Child`] guards so that dropping the namespace kills what is still running.
pub(crate) type Registry = Arc<Mutex<Vec<i32>>>;

/// A long-running process started inside a network namespace (`ip netns exec NAME program ...`).
///
/// Its stdout and stderr go to files in a scratch directory. On drop it gets SIGTERM (to its whole
/// process group), then SIGKILL after the grace period; if the thread is panicking (a failed test) its
/// logs are printed to stderr, which the test runner shows for failing tests. It also gets SIGKILL
/// from the kernel if the thread that spawned it exits (`PR_SET_PDEATHSIG`), so spawn it from the
/// test's own thread, not from a short-lived helper thread.
#[derive(Debug)]
pub struct Child {
    name: String,
    child: std::process::Child,
    stdout: PathBuf,
    stderr: PathBuf,
    grace: Duration,
    registry: Registry,
    status: Option<ExitStatus>,
    dir: TempDir,
}

impl Child {
    /// Start `cmd` (program, arguments, environment and working directory are taken from it) inside the
    /// namespace named `netns`. `name` labels the logs. Stdin is closed.
    pub(crate) fn spawn(
        netns: &str,
        registry: Registry,
        name: &str,
        cmd: &Command,
    ) -> Result<Child> {
        let dir = TempDir::new(name)?;
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        let mut real = Command::new("ip");
        real.args(["netns", "exec", netns])
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).context("create stdout log")?)
            .stderr(File::create(&stderr).context("create stderr log")?)
            .process_group(0);
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => real.env(k, v),
                None => real.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            real.current_dir(d);
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            real.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = real
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?} in netns {netns}"))?;
        registry.lock().unwrap().push(child.id() as i32);
        Ok(Child {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            grace: DEFAULT_GRACE,
            registry,
            status: None,
            dir,
        })
    }

    /// Change the time between SIGTERM and SIGKILL when stopping.
    pub fn with_grace(mut self, grace: Duration) -> Child {
        self.grace = grace;
        self
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory holding `stdout.log` and `stderr.log`.
    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Both logs with headers, for printing when a test fails.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "----- {} (pid {}) stdout -----", self.name, self.pid());
        s.push_str(&self.stdout());
        let _ = writeln!(s, "----- {} stderr -----", self.name);
        s.push_str(&self.stderr());
        let _ = writeln!(s, "----- end of {} -----", self.name);
        s
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs. When the process
    /// has exited, what is left of its process group is killed before it is reaped.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() && self.exited_unreaped(false) {
            self.reap()?;
        }
        Ok(self.status)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Wait up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until `needle` appears in stdout or stderr. Fails (with the logs) on timeout or if the
    /// process exits first.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return Ok(());
            }
            if let Some(s) = self.try_wait()? {
                bail!(
                    "{} exited ({s}) before printing {needle:?}\n{}",
                    self.name,
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print {needle:?} within {timeout:?}\n{}",
                    self.name,
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send a signal to the process group (fails if the process has exited).
    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        if self.try_wait()?.is_some() {
            bail!("{} has already exited", self.name);
        }
        killpg(self.pgid(), sig).with_context(|| format!("{sig} to {}", self.name))
    }

    /// Stop the process: SIGTERM to its group, then SIGKILL after the grace period. Returns its exit
    /// status (immediately if it had already exited).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        if !self.exited_unreaped(false) {
            let _ = killpg(self.pgid(), Signal::SIGTERM);
            let deadline = Instant::now() + self.grace;
            while !self.exited_unreaped(false) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if !self.exited_unreaped(false) {
                let _ = killpg(self.pgid(), Signal::SIGKILL);
                self.exited_unreaped(true);
            }
        }
        self.reap()
    }

    /// The process has exited and is a zombie (its pid, hence its group id, cannot be reused yet).
    /// With `block`, wait for that.
    fn exited_unreaped(&self, block: bool) -> bool {
        // SAFETY: waitid writes only into `info`, which is a valid siginfo_t.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let mut flags = libc::WEXITED | libc::WNOWAIT;
            if !block {
                flags |= libc::WNOHANG;
            }
            let r = libc::waitid(libc::P_PID, self.pid(), &mut info, flags);
            r == 0 && info.si_pid() != 0
        }
    }

    /// Kill what is left of the group while the leader is still a zombie, then reap the leader.
    fn reap(&mut self) -> Result<ExitStatus> {
        let _ = killpg(self.pgid(), Signal::SIGKILL);
        let s = self
            .child
            .wait()
            .with_context(|| format!("wait for {}", self.name))?;
        self.status = Some(s);
        let pid = self.pid() as i32;
        self.registry.lock().unwrap().retain(|p| *p != pid);
        Ok(s)
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(self.pid() as i32)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("lb-tests: stopping {}: {e:#}", self.name);
        }
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}
