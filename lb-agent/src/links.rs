//! Which interfaces get which program, and attaching them: node devices (the set `host` chose)
//! get the node-device tc program and, as `--lb-acceleration` says, XDP in front of it; pod
//! interfaces (by glob) the pod hook.

use std::collections::BTreeSet;

use tracing::{error, warn};

use crate::dataplane::{ifindex, Dataplane, HookKind};

/// Node devices (name, ifindex) that refused native XDP under best-effort acceleration: not
/// tried again while the interface lives.
pub type XdpDeclined = BTreeSet<(String, u32)>;

/// XDP on node devices (`--lb-acceleration`, Cilium's spelling): the accelerator in front of
/// the tc program every node device gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Acceleration {
    /// No XDP: tc alone.
    Disabled,
    /// Native XDP on node devices that are not veths and whose driver accepts it; others are
    /// skipped, and the log says so. A veth never gets it: XDP_TX into a veth is lost unless
    /// the veth's peer runs XDP or GRO, which nothing here controls.
    #[default]
    BestEffort,
    /// Native XDP on every node device, veths included (their peers must run XDP or GRO); a
    /// device that refuses it is an error.
    Native,
}

/// Interface selection: node devices by name (the set `host::Tracker` chose, from `--devices`
/// or detected), pod interfaces by glob.
#[derive(Clone, Debug)]
pub struct Selector {
    /// The node devices now.
    pub devices: BTreeSet<String>,
    pub acceleration: Acceleration,
    pub pod_patterns: Vec<glob::Pattern>,
    pub pod_hook: HookKind,
}

impl Selector {
    /// Whether `ifname` is a node device.
    pub fn is_device(&self, ifname: &str) -> bool {
        self.devices.contains(ifname)
    }

    /// The hooks `ifname` gets, tc before XDP (the accelerator leaves packets to tc, which
    /// must be there first). A node device gets the node-device tc program, and XDP as the
    /// acceleration says; it wins over a pod pattern.
    pub fn hooks_for(&self, ifname: &str) -> Vec<HookKind> {
        if self.is_device(ifname) {
            let xdp = match self.acceleration {
                Acceleration::Disabled => false,
                Acceleration::BestEffort => !crate::dataplane::is_veth(ifname),
                Acceleration::Native => true,
            };
            let mut hooks = vec![HookKind::TcNic];
            if xdp {
                hooks.push(HookKind::Xdp);
            }
            hooks
        } else if self.pod_patterns.iter().any(|p| p.matches(ifname)) {
            vec![self.pod_hook]
        } else {
            Vec::new()
        }
    }

    /// Every (interface, hook) of this network namespace that should be attached, each
    /// interface's hooks in attach order.
    pub fn wanted(&self) -> Vec<(String, HookKind)> {
        let mut out = Vec::new();
        match nix::net::if_::if_nameindex() {
            Ok(list) => {
                for i in list.iter() {
                    let name = i.name().to_string_lossy().into_owned();
                    for hook in self.hooks_for(&name) {
                        out.push((name.clone(), hook));
                    }
                }
            }
            Err(e) => warn!(error = %e, "listing interfaces failed"),
        }
        out
    }

    /// Attaches every wanted (interface, hook) not attached yet, then, when `prune`, unpins
    /// links of vanished interfaces and of hooks no longer wanted (in that order: no gap
    /// without a program). XDP that a device refuses under best-effort acceleration is
    /// skipped and remembered in `declined` (logged once per interface); under native
    /// acceleration such devices are returned (each logged as an error).
    pub fn reconcile(
        &self,
        dp: &mut Dataplane,
        declined: &mut XdpDeclined,
        prune: bool,
    ) -> Vec<String> {
        let mut wanted = self.wanted();
        let mut refused = Vec::new();
        for (ifname, hook) in &wanted {
            let idx = ifindex(ifname).unwrap_or(0);
            if dp.is_attached(*hook, ifname) || declined.contains(&(ifname.clone(), idx)) {
                continue;
            }
            let Err(e) = dp.attach(*hook, ifname) else {
                continue;
            };
            let error = format!("{:#}", anyhow::Error::from(e));
            if *hook != HookKind::Xdp {
                error!(ifname, hook = hook.name(), error, "attach failed");
            } else if self.acceleration == Acceleration::BestEffort {
                warn!(
                    ifname,
                    error, "no native XDP on this device: tc alone serves it"
                );
                declined.insert((ifname.clone(), idx));
            } else {
                error!(
                    ifname,
                    error, "native XDP refused (--lb-acceleration native)"
                );
                refused.push(ifname.clone());
            }
        }
        wanted.retain(|(n, h)| {
            *h != HookKind::Xdp || !declined.contains(&(n.clone(), ifindex(n).unwrap_or(0)))
        });
        if prune {
            dp.prune_links(&wanted.into_iter().collect());
        }
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(acceleration: Acceleration) -> Selector {
        Selector {
            devices: BTreeSet::from(["eth0".into()]),
            acceleration,
            pod_patterns: vec![
                glob::Pattern::new("lxc*").unwrap(),
                glob::Pattern::new("eth*").unwrap(),
            ],
            pod_hook: HookKind::Tc,
        }
    }

    /// Test that named devices win over pod globs and that globs match as shell globs.
    #[test]
    fn devices_win_over_pod_patterns_and_globs_match() {
        let s = selector(Acceleration::Disabled);
        assert_eq!(s.hooks_for("eth0"), [HookKind::TcNic]);
        assert_eq!(s.hooks_for("eth1"), [HookKind::Tc]);
        assert_eq!(s.hooks_for("lxc12ab"), [HookKind::Tc]);
        assert_eq!(s.hooks_for("lo"), []);
        assert_eq!(s.hooks_for("vxlxc"), []);
    }

    /// Test that a node device always gets tc, and XDP in front of it (after it, in attach
    /// order) where the acceleration asks for it: always when native, never when disabled.
    #[test]
    fn node_devices_get_tc_and_xdp_as_the_acceleration_says() {
        assert_eq!(
            selector(Acceleration::Native).hooks_for("eth0"),
            [HookKind::TcNic, HookKind::Xdp]
        );
        assert_eq!(
            selector(Acceleration::Disabled).hooks_for("eth0"),
            [HookKind::TcNic]
        );
    }
}
