//! Attaching programs to interfaces through pinned links, finding those links again, and
//! removing everything an agent pinned (`lb-agent cleanup`).

use std::{
    collections::BTreeSet,
    ffi::CString,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    xdp::XdpLink,
    LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
};
use lb_common::maps::ALL_MAPS;
use tracing::{info, warn};

use super::{
    error::{DataplaneError, Result},
    program,
    sys::detach_pinned_link,
    Dataplane, HookKind,
};

/// A link pinned under `<bpffs>/links`, as its file name `<hook>-<ifname>@<ifindex>` says (the
/// interface name escaped by [`pin_ifname`]). Ordered by hook, then interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkPin {
    /// [`HookKind::name`] of the program attached.
    pub hook: String,
    pub ifname: String,
    pub ifindex: u32,
    pub path: PathBuf,
}

impl Dataplane {
    fn link_pin(&self, hook: HookKind, ifname: &str, ifindex: u32) -> PathBuf {
        self.root
            .join("links")
            .join(format!("{}-{}@{ifindex}", hook.name(), pin_ifname(ifname)))
    }

    /// Whether this agent has attached `hook` to `ifname`.
    pub fn is_attached(&self, hook: HookKind, ifname: &str) -> bool {
        self.attached.contains_key(&(hook, ifname.to_owned()))
    }

    /// Attaches `hook` to `ifname` with a pinned link. A link pinned by an earlier agent for the
    /// same interface gets the new program atomically (no packet sees no program). XDP on node
    /// devices is attached in native (driver) mode only: generic XDP would not accelerate
    /// anything; XDP on pod interfaces in whatever mode the driver offers.
    pub fn attach(&mut self, hook: HookKind, ifname: &str) -> Result<()> {
        let idx = ifindex(ifname).ok_or_else(|| DataplaneError::NoInterface(ifname.into()))?;
        let pin = self.link_pin(hook, ifname, idx);
        let attach_err =
            |source: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Attach {
                hook: hook.name(),
                ifname: ifname.into(),
                source,
            };
        let old = match PinnedLink::from_pin(&pin) {
            Ok(p) => Some(FdLink::from(p)),
            Err(_) => None,
        };
        let replaced = old.is_some();
        let new_link: FdLink = match hook {
            HookKind::Xdp | HookKind::XdpPod => {
                let mode = if hook == HookKind::Xdp {
                    XdpMode::Driver
                } else {
                    XdpMode::Default
                };
                let prog: &mut Xdp = program(&mut self.ebpf, hook.program())?;
                let id = match old {
                    Some(fd) => {
                        let link = XdpLink::try_from(fd).map_err(|e| attach_err(e.into()))?;
                        prog.attach_to_link(link)
                            .map_err(|e| attach_err(e.into()))?
                    }
                    None => prog
                        .attach(ifname, mode)
                        .map_err(|e| attach_err(e.into()))?,
                };
                let link = prog.take_link(id).map_err(|e| attach_err(e.into()))?;
                FdLink::try_from(link).map_err(|e| attach_err(e.into()))?
            }
            HookKind::Tc | HookKind::TcNic => {
                let prog: &mut SchedClassifier = program(&mut self.ebpf, hook.program())?;
                let id = match old {
                    Some(fd) => {
                        let link =
                            SchedClassifierLink::try_from(fd).map_err(|e| attach_err(e.into()))?;
                        prog.attach_to_link(link)
                            .map_err(|e| attach_err(e.into()))?
                    }
                    None => prog
                        .attach_with_options(
                            ifname,
                            TcAttachType::Ingress,
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                        .map_err(|e| attach_err(e.into()))?,
                };
                let link = prog.take_link(id).map_err(|e| attach_err(e.into()))?;
                FdLink::try_from(link).map_err(|e| attach_err(e.into()))?
            }
        };
        if replaced {
            // The pin already names this link; dropping our fd leaves it attached.
            drop(new_link);
        } else {
            new_link.pin(&pin).map_err(|e| attach_err(Box::new(e)))?;
        }
        if hook == HookKind::XdpPod {
            accept_local(ifname);
        }
        info!(
            hook = hook.name(),
            ifname,
            ifindex = idx,
            replaced,
            "attached"
        );
        self.attached.insert((hook, ifname.to_owned()), idx);
        Ok(())
    }

    /// Removes link pins whose interface is gone or was recreated (another ifindex), or whose
    /// hook is not one `wanted` names for the interface any more, and forgets them.
    /// Returns the pins removed.
    pub fn prune_links(&mut self, wanted: &BTreeSet<(String, HookKind)>) -> Vec<LinkPin> {
        let mut removed = Vec::new();
        for link in pinned_links(&self.root) {
            let LinkPin {
                hook,
                ifname,
                ifindex: idx,
                path,
            } = &link;
            let gone = ifindex(ifname) != Some(*idx);
            let unwanted = !wanted
                .iter()
                .any(|(n, h)| n == ifname && h.name() == hook.as_str());
            if !(gone || unwanted) {
                continue;
            }
            match std::fs::remove_file(path) {
                Ok(()) => info!(hook, ifname, ifindex = idx, gone, "link unpinned"),
                Err(e) => warn!(path = %path.display(), error = %e, "could not unpin link"),
            }
            self.attached
                .retain(|(h, n), i| !(h.name() == hook && n == ifname && i == idx));
            removed.push(link);
        }
        removed
    }
}

/// Interface index of `ifname`, or None if it does not exist.
pub fn ifindex(ifname: &str) -> Option<u32> {
    let c = CString::new(ifname).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => None,
        i => Some(i),
    }
}

/// Lets `ifname` accept packets whose source is one of this node's addresses.
///
/// Replies to NodePorts from a backend on this node come from this node's address. XDP on a
/// pod interface cannot send them into the pod and hands them to the stack, which would drop a
/// packet from its own address as a martian without `accept_local`. (tc sends every packet it
/// rewrites itself.)
fn accept_local(ifname: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/accept_local");
    if let Err(e) = std::fs::write(&path, "1") {
        warn!(path, error = %e, "could not set accept_local; SNATed packets may be dropped until the next hop is resolved");
    }
}

/// Whether `ifname` is a veth (its ethtool driver name), as node devices are when the node is
/// a container or a network namespace.
pub fn is_veth(ifname: &str) -> bool {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    const ETHTOOL_GDRVINFO: u32 = 3;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    // SAFETY: ifreq is plain data; all zeroes is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= ifr.ifr_name.len() {
        return false;
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: a datagram socket for the ioctl, closed below; `ifr` points at `info`, which
    // outlives the call and is as large as the kernel's struct ethtool_drvinfo.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return false;
        }
        let r = libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr);
        libc::close(fd);
        if r != 0 {
            return false;
        }
    }
    info.driver.starts_with(b"veth\0")
}

/// An interface name as a pin's file name holds it: bpffs refuses names with a dot (EPERM: dots
/// are the kernel's own), which interface names may have (`flannel.1`, VLANs as `eth0.10`), so
/// `.` is written `%2e` and `%` itself `%25`.
fn pin_ifname(ifname: &str) -> String {
    ifname.replace('%', "%25").replace('.', "%2e")
}

/// The interface name a pin's file name holds (the inverse of [`pin_ifname`]).
fn unpin_ifname(pinned: &str) -> String {
    pinned.replace("%2e", ".").replace("%25", "%")
}

/// Every pinned link under `root`, sorted.
pub fn pinned_links(root: &Path) -> Vec<LinkPin> {
    let Ok(dir) = std::fs::read_dir(root.join("links")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((hook, rest)) = name.split_once('-') else {
            continue;
        };
        let Some((ifname, idx)) = rest.rsplit_once('@') else {
            continue;
        };
        if let Ok(idx) = idx.parse() {
            out.push(LinkPin {
                hook: hook.to_owned(),
                ifname: unpin_ifname(ifname),
                ifindex: idx,
                path: entry.path(),
            });
        }
    }
    out.sort();
    out
}

/// Removes everything an agent pinned under `root`: links first (which detaches the programs),
/// then maps, then the directories. Returns what it removed.
pub fn cleanup(root: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for LinkPin { path, .. } in pinned_links(root) {
        // Unpinning alone detaches only when the kernel frees the link, a moment later;
        // BPF_LINK_DETACH detaches now, so no packet is translated once cleanup returns.
        if let Err(source) = detach_pinned_link(&path) {
            warn!(path = %path.display(), error = %source, "detaching the link failed; unpinning it");
        }
        std::fs::remove_file(&path).map_err(|source| DataplaneError::Remove {
            path: path.clone(),
            source,
        })?;
        removed.push(path);
    }
    for name in ALL_MAPS {
        let path = root.join("maps").join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DataplaneError::Remove { path, source }),
        }
    }
    for dir in [root.join("links"), root.join("maps")] {
        match std::fs::remove_dir(&dir) {
            Ok(()) => removed.push(dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DataplaneError::Remove { path: dir, source }),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that interface names with dots (a VXLAN device as flannel names it, a VLAN) get pin
    /// names without dots, which bpffs accepts, and come back unchanged, percent signs included.
    #[test]
    fn interface_names_with_dots_are_escaped_in_pins_and_read_back() {
        for (name, pinned) in [
            ("eth0", "eth0"),
            ("flannel.1", "flannel%2e1"),
            ("eth0.10", "eth0%2e10"),
            ("a%2e.b", "a%252e%2eb"),
        ] {
            assert_eq!(pin_ifname(name), pinned);
            assert!(!pin_ifname(name).contains('.'));
            assert_eq!(unpin_ifname(pinned), name);
        }
    }
}
