//! The one launcher of the agent under test: [`AgentRun`] builds `lb-agent run` and starts it in a
//! namespace as a [`Child`]; [`inspect_json`], [`inspect_text`] and [`cleanup`] run its one-shot
//! commands against a bpffs. Every test, the demo and the benchmarks start the agent through here.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use lb_tests::{agent, manifests::ManifestDir, AgentRun, BpffsGuard, Node, PodHook, POD_IFACE_GLOB};
//! let node = Node::new("doc")?;
//! let bpffs = BpffsGuard::new("doc")?;
//! let manifests = ManifestDir::new("doc")?;
//! let mut run = AgentRun::new("node-a", bpffs.path());
//! run.manifests(manifests.path())
//!     .pod_interfaces(POD_IFACE_GLOB)
//!     .pod_hook(PodHook::Xdp)
//!     .flag("--conntrack-size", "65536");
//! let mut child = run.start(node.ns(), Duration::from_secs(10))?;
//! let maps = agent::inspect_json(node.ns(), bpffs.path())?;
//! child.stop()?;
//! agent::cleanup(node.ns(), bpffs.path())?;
//! # Ok(()) }
//! ```

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cmd::CMD_TIMEOUT;
use crate::netns::NetNs;
use crate::paths::find_agent_bin;
use crate::proc::Child;

/// Time an agent gets between SIGTERM and SIGKILL when its [`Child`] is stopped.
pub const AGENT_GRACE: Duration = Duration::from_secs(5);

/// What the agent logs once its programs are loaded and attached ([`AgentRun::start`] waits for it).
pub const RUNNING: &str = "running";

/// The program the agent attaches to pod interfaces (`--pod-hook`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PodHook {
    /// tcx ingress (the agent's default).
    #[default]
    Tc,
    /// Native XDP on the host-side veth.
    Xdp,
}

impl PodHook {
    /// The `--pod-hook` value.
    pub fn arg(self) -> &'static str {
        match self {
            PodHook::Tc => "tc",
            PodHook::Xdp => "xdp",
        }
    }
}

impl FromStr for PodHook {
    type Err = String;

    fn from_str(s: &str) -> Result<PodHook, String> {
        match s {
            "tc" => Ok(PodHook::Tc),
            "xdp" => Ok(PodHook::Xdp),
            _ => Err(format!("unknown pod hook {s:?}: tc or xdp")),
        }
    }
}

impl fmt::Display for PodHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.arg())
    }
}

/// Where the agent reads Services, EndpointSlices and Nodes from.
#[derive(Debug, Clone)]
enum Source {
    /// `--manifests DIR`.
    Manifests(PathBuf),
    /// `--kubeconfig FILE` (e.g. [`crate::fakeapi::FakeApi::write_kubeconfig`]).
    Kubeconfig(PathBuf),
}

/// `lb-agent run` for one node: binary ([`find_agent_bin`]), node name, bpffs, source, devices,
/// pod interfaces and hook, any other flags, environment and the label of its logs. Setters take
/// and return `&mut self`, as [`Command`]'s do; the same `AgentRun` can start several agents.
///
/// The command line is `run [--manifests D | --kubeconfig K] --node N [--devices ..]
/// [--pod-interfaces ..] [--pod-hook ..] --bpffs B [flags...]`; the environment has
/// `RUST_LOG=info` and `NO_COLOR=1` unless changed.
#[derive(Debug, Clone)]
pub struct AgentRun {
    node: String,
    bpffs: PathBuf,
    source: Option<Source>,
    devices: Option<String>,
    pod_interfaces: Option<String>,
    pod_hook: Option<PodHook>,
    /// Other flags in order, each with its value (none for a switch).
    flags: Vec<(String, Option<OsString>)>,
    env: Vec<(String, String)>,
    name: String,
}

impl AgentRun {
    /// The agent of node `node` pinning under `bpffs`; no source yet (the agent would then use
    /// the in-cluster service account, which tests never have).
    pub fn new(node: &str, bpffs: &Path) -> AgentRun {
        AgentRun {
            node: node.to_string(),
            bpffs: bpffs.to_path_buf(),
            source: None,
            devices: None,
            pod_interfaces: None,
            pod_hook: None,
            flags: Vec::new(),
            env: vec![
                ("RUST_LOG".into(), "info".into()),
                ("NO_COLOR".into(), "1".into()),
            ],
            name: "lb-agent".into(),
        }
    }

    /// Read manifests from `dir` (`--manifests`).
    pub fn manifests(&mut self, dir: &Path) -> &mut AgentRun {
        self.source = Some(Source::Manifests(dir.to_path_buf()));
        self
    }

    /// Watch the API server of `kubeconfig` (`--kubeconfig`).
    pub fn kubeconfig(&mut self, kubeconfig: &Path) -> &mut AgentRun {
        self.source = Some(Source::Kubeconfig(kubeconfig.to_path_buf()));
        self
    }

    /// Node devices (NICs) for the XDP program, comma-separated (`--devices`).
    pub fn devices(&mut self, devices: &str) -> &mut AgentRun {
        self.devices = Some(devices.to_string());
        self
    }

    /// Globs of pod interfaces, comma-separated (`--pod-interfaces`), e.g. [`crate::POD_IFACE_GLOB`].
    pub fn pod_interfaces(&mut self, globs: &str) -> &mut AgentRun {
        self.pod_interfaces = Some(globs.to_string());
        self
    }

    /// The program for pod interfaces (`--pod-hook`; without it, the agent's default).
    pub fn pod_hook(&mut self, hook: PodHook) -> &mut AgentRun {
        self.pod_hook = Some(hook);
        self
    }

    /// Flag `name` with `value`, e.g. `("--min-sync-period", "10ms")`, replacing an earlier value
    /// of the same flag (the agent refuses a flag given twice).
    pub fn flag(&mut self, name: &str, value: impl AsRef<OsStr>) -> &mut AgentRun {
        self.set(name, Some(value.as_ref().to_os_string()))
    }

    /// A flag without a value, e.g. `--nodeport-source-ranges`.
    pub fn switch(&mut self, name: &str) -> &mut AgentRun {
        self.set(name, None)
    }

    fn set(&mut self, name: &str, value: Option<OsString>) -> &mut AgentRun {
        match self.flags.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.flags.push((name.to_string(), value)),
        }
        self
    }

    /// No /healthz, /livez or /metrics listener (both bind addresses empty).
    pub fn without_http(&mut self) -> &mut AgentRun {
        self.flag("--healthz-bind-address", "")
            .flag("--metrics-bind-address", "")
    }

    /// Set environment variable `key` (replacing the default or an earlier value).
    pub fn env(&mut self, key: &str, value: &str) -> &mut AgentRun {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.env.push((key.to_string(), value.to_string())),
        }
        self
    }

    /// The tracing filter (`RUST_LOG`), `info` unless set.
    pub fn log_filter(&mut self, filter: &str) -> &mut AgentRun {
        self.env("RUST_LOG", filter)
    }

    /// The label of the [`Child`] and its logs (`lb-agent` unless set).
    pub fn name(&mut self, name: &str) -> &mut AgentRun {
        self.name = name.to_string();
        self
    }

    /// The bpffs the agent pins under.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// The arguments after the binary, starting with `run`.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["run".into()];
        match &self.source {
            Some(Source::Manifests(d)) => a.extend(["--manifests".into(), d.into()]),
            Some(Source::Kubeconfig(k)) => a.extend(["--kubeconfig".into(), k.into()]),
            None => {}
        }
        a.extend(["--node".into(), self.node.clone().into()]);
        for (flag, value) in [
            ("--devices", &self.devices),
            ("--pod-interfaces", &self.pod_interfaces),
        ] {
            if let Some(v) = value {
                a.extend([flag.into(), v.into()]);
            }
        }
        if let Some(h) = self.pod_hook {
            a.extend(["--pod-hook".into(), h.arg().into()]);
        }
        a.extend(["--bpffs".into(), self.bpffs.clone().into()]);
        for (flag, value) in &self.flags {
            a.push(flag.into());
            a.extend(value.clone());
        }
        a
    }

    /// The command: the agent binary, [`AgentRun::args`] and the environment.
    pub fn command(&self) -> Result<Command> {
        let mut cmd = Command::new(find_agent_bin()?);
        cmd.args(self.args());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        Ok(cmd)
    }

    /// The command line as a shell would show it (without the environment), to print.
    pub fn command_line(&self) -> String {
        let bin = find_agent_bin().unwrap_or_else(|_| "lb-agent".into());
        let mut s = bin.display().to_string();
        for a in self.args() {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// Start the agent in `ns` (see [`NetNs::spawn`]) without waiting for anything; it gets
    /// [`AGENT_GRACE`] between SIGTERM and SIGKILL when stopped.
    pub fn spawn(&self, ns: &NetNs) -> Result<Child> {
        Ok(ns
            .spawn(&self.name, &self.command()?)?
            .with_grace(AGENT_GRACE))
    }

    /// [`AgentRun::spawn`], then wait up to `timeout` until the agent logs [`RUNNING`]; the
    /// error carries its logs.
    pub fn start(&self, ns: &NetNs, timeout: Duration) -> Result<Child> {
        let mut child = self.spawn(ns)?;
        child.wait_for_output(RUNNING, timeout)?;
        Ok(child)
    }
}

/// `lb-agent inspect --json --bpffs <bpffs>` in `ns`, parsed.
pub fn inspect_json(ns: &NetNs, bpffs: &Path) -> Result<Value> {
    let out = one_shot(ns, &["inspect", "--json"], bpffs)?;
    serde_json::from_str(&out).with_context(|| format!("inspect --json printed {out:?}"))
}

/// `lb-agent inspect` (text) in `ns`, with at most `conntrack_limit` conntrack entries if given.
pub fn inspect_text(ns: &NetNs, bpffs: &Path, conntrack_limit: Option<usize>) -> Result<String> {
    let limit = conntrack_limit.map(|l| l.to_string());
    let mut args = vec!["inspect"];
    if let Some(l) = &limit {
        args.extend(["--conntrack-limit", l]);
    }
    one_shot(ns, &args, bpffs)
}

/// `lb-agent cleanup --bpffs <bpffs>` in `ns`: every program, link, pin and map gone. Its output.
pub fn cleanup(ns: &NetNs, bpffs: &Path) -> Result<String> {
    one_shot(ns, &["cleanup"], bpffs)
}

/// `lb-agent <args> --bpffs <bpffs>` in `ns` to completion (within [`CMD_TIMEOUT`]); its stdout,
/// or an error with its stderr.
fn one_shot(ns: &NetNs, args: &[&str], bpffs: &Path) -> Result<String> {
    let mut cmd = Command::new(find_agent_bin()?);
    cmd.args(args)
        .arg("--bpffs")
        .arg(bpffs)
        .env("NO_COLOR", "1");
    let out = ns.output(&cmd, CMD_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "lb-agent {args:?} in {} failed ({}): {}",
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that the command line has the source, node, interfaces, hook and bpffs in order, and
    /// that a flag given twice keeps its last value.
    #[test]
    fn the_command_line_is_complete_and_flags_are_not_repeated() {
        let mut run = AgentRun::new("node-a", Path::new("/b"));
        run.manifests(Path::new("/m"))
            .devices("eth0")
            .pod_interfaces("lxc*")
            .pod_hook(PodHook::Xdp)
            .flag("--min-sync-period", "10ms")
            .switch("--nodeport-source-ranges")
            .flag("--min-sync-period", "1s");
        let args: Vec<String> = run
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "run --manifests /m --node node-a --devices eth0 --pod-interfaces lxc* --pod-hook xdp \
             --bpffs /b --min-sync-period 1s --nodeport-source-ranges"
        );
        run.kubeconfig(Path::new("/k")).without_http();
        let args = run.args();
        assert_eq!(&args[1..3], &["--kubeconfig", "/k"]);
        assert!(args.ends_with(&[
            "--healthz-bind-address".into(),
            "".into(),
            "--metrics-bind-address".into(),
            "".into()
        ]));
        assert_eq!("xdp".parse(), Ok(PodHook::Xdp));
        assert!("bpf".parse::<PodHook>().is_err());
    }
}
