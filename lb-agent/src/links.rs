//! Which interfaces get which program: node devices (the set `host` chose) and pod interfaces
//! (by glob).

use std::collections::{BTreeMap, BTreeSet};

use tracing::warn;

use crate::dataplane::HookKind;

/// Interface selection: node devices by name (the set `host::Tracker` chose, from `--devices`
/// or detected), pod interfaces by glob.
#[derive(Clone, Debug)]
pub struct Selector {
    /// The node devices now.
    pub devices: BTreeSet<String>,
    pub device_hook: HookKind,
    pub pod_patterns: Vec<glob::Pattern>,
    pub pod_hook: HookKind,
}

impl Selector {
    /// The hook `ifname` gets, if any. A named device wins over a pod pattern. A device that
    /// is a veth gets the XDP variant for veths.
    pub fn hook_for(&self, ifname: &str) -> Option<HookKind> {
        if self.devices.contains(ifname) {
            if self.device_hook == HookKind::Xdp && crate::dataplane::is_veth(ifname) {
                return Some(HookKind::XdpVeth);
            }
            Some(self.device_hook)
        } else if self.pod_patterns.iter().any(|p| p.matches(ifname)) {
            Some(self.pod_hook)
        } else {
            None
        }
    }

    /// Every interface of this network namespace that should have a program: ifname -> hook.
    pub fn wanted(&self) -> BTreeMap<String, HookKind> {
        let mut out = BTreeMap::new();
        match nix::net::if_::if_nameindex() {
            Ok(list) => {
                for i in list.iter() {
                    let name = i.name().to_string_lossy().into_owned();
                    if let Some(hook) = self.hook_for(&name) {
                        out.insert(name, hook);
                    }
                }
            }
            Err(e) => warn!(error = %e, "listing interfaces failed"),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that named devices win over pod globs and that globs match as shell globs.
    #[test]
    fn devices_win_over_pod_patterns_and_globs_match() {
        let s = Selector {
            devices: BTreeSet::from(["eth0".into()]),
            device_hook: HookKind::Xdp,
            pod_patterns: vec![
                glob::Pattern::new("lxc*").unwrap(),
                glob::Pattern::new("eth*").unwrap(),
            ],
            pod_hook: HookKind::Tc,
        };
        assert_eq!(s.hook_for("eth0"), Some(HookKind::Xdp));
        assert_eq!(s.hook_for("eth1"), Some(HookKind::Tc));
        assert_eq!(s.hook_for("lxc12ab"), Some(HookKind::Tc));
        assert_eq!(s.hook_for("lo"), None);
        assert_eq!(s.hook_for("vxlxc"), None);
    }
}
