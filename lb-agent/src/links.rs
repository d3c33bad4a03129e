//! Which interfaces get which program, and a watch for interfaces that come and go.

use std::collections::BTreeMap;

use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};
use tokio::sync::mpsc;
use tracing::warn;

use crate::dataplane::HookKind;

/// `RTMGRP_LINK`: the rtnetlink multicast group of link changes.
const RTMGRP_LINK: u32 = 1;

/// Interface selection: node devices by name, pod interfaces by glob.
#[derive(Clone, Debug)]
pub struct Selector {
    pub devices: Vec<String>,
    pub device_hook: HookKind,
    pub pod_patterns: Vec<glob::Pattern>,
    pub pod_hook: HookKind,
}

impl Selector {
    /// The hook `ifname` gets, if any. A named device wins over a pod pattern. A device that
    /// is a veth gets the XDP variant for veths.
    pub fn hook_for(&self, ifname: &str) -> Option<HookKind> {
        if self.devices.iter().any(|d| d == ifname) {
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

/// Sends a message on `tx` whenever a link is added, removed or changed in this network
/// namespace (and once when the socket overflowed, so nothing is missed).
pub fn watch_links(tx: mpsc::Sender<()>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut sock = TokioSocket::new(NETLINK_ROUTE)?;
    sock.socket_mut().bind(&SocketAddr::new(0, RTMGRP_LINK))?;
    Ok(tokio::spawn(async move {
        loop {
            match sock.recv_from_full().await {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    warn!("link watch overflowed; rescanning interfaces");
                }
                Err(e) => {
                    warn!(error = %e, "link watch failed; interfaces are no longer followed");
                    return;
                }
            }
            // A full channel already holds a pending rescan.
            let _ = tx.try_send(());
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that named devices win over pod globs and that globs match as shell globs.
    #[test]
    fn devices_win_over_pod_patterns_and_globs_match() {
        let s = Selector {
            devices: vec!["eth0".into()],
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
