//! The kernel side through aya: load the programs, reuse or create the pinned maps, attach to
//! interfaces with pinned links, and apply map writes. The only module that touches BPF.
//!
//! Layout under the bpffs directory given with `--bpffs`:
//! - `maps/LB_*`: every map, pinned by name; reused as they are when the agent restarts.
//! - `links/<hook>-<ifname>@<ifindex>`: one pinned link per attachment; it keeps the program
//!   attached after the agent exits, and a restarted agent swaps its new program in atomically.

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        tc::TcAttachOptions,
        xdp::XdpLink,
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use lb_common::maps::{
    Backend, CtEntry, CtKey, Frontend, FrontendKey, FrontendStats, Slot, SlotKey, SrcRange,
    ALL_MAPS, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_CT, DEFAULT_MAX_FRONTENDS, DEFAULT_MAX_SLOTS,
    MAP_BACKENDS, MAP_CT, MAP_FE_STATS, MAP_FRONTENDS, MAP_SLOTS, MAP_SRC_RANGES,
};
use tracing::{debug, info, warn};

use crate::entries::{Entries, MapOp, SrcRangeEntry};

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at build time.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_OBJECT"));

/// `statfs` magic of a bpffs.
const BPF_FS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0xcafe_4a11);

/// Errors of the dataplane, with the names a user needs to act on them.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("preparing the bpffs directory {path}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting a bpffs at {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("loading the eBPF object (pinned maps under {pin_dir})")]
    Load {
        pin_dir: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("attaching {hook} to {ifname}")]
    Attach {
        hook: &'static str,
        ifname: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("removing {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |e| DataplaneError::Map {
        name,
        source: Box::new(e),
    }
}

/// Map sizes, fixed when the maps are created (resizing later would flush them).
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub frontends: u32,
    pub slots: u32,
    pub backends: u32,
    pub conntrack: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            frontends: DEFAULT_MAX_FRONTENDS,
            slots: DEFAULT_MAX_SLOTS,
            backends: DEFAULT_MAX_BACKENDS,
            conntrack: DEFAULT_MAX_CT,
        }
    }
}

/// Which program an interface gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum HookKind {
    /// XDP for node devices (packets from the wire).
    Xdp,
    /// XDP for node devices that are veths (nodes in containers): recognises
    /// CHECKSUM_PARTIAL seeds and hands such packets to the stack after the rewrite.
    XdpVeth,
    /// XDP for pod interfaces (recognises CHECKSUM_PARTIAL seeds).
    XdpPod,
    /// tcx ingress.
    Tc,
}

impl HookKind {
    /// Name used in pin paths and logs.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Xdp => "xdp",
            HookKind::XdpVeth => "xdpveth",
            HookKind::XdpPod => "xdppod",
            HookKind::Tc => "tc",
        }
    }

    fn program(self) -> &'static str {
        match self {
            HookKind::Xdp => "lb_xdp",
            HookKind::XdpVeth => "lb_xdp_veth",
            HookKind::XdpPod => "lb_xdp_pod",
            HookKind::Tc => "lb_tc",
        }
    }
}

/// An eBPF loader that pins every map under `maps_dir` (reusing a map already pinned there)
/// and sizes the maps from `sizes`: how the agent, and the benchmarks beside it, load the object.
pub fn loader(maps_dir: &Path, sizes: MapSizes) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    for name in ALL_MAPS {
        loader.map_pin_path(name, maps_dir.join(name));
    }
    loader
        .map_max_entries(MAP_FRONTENDS, sizes.frontends)
        .map_max_entries(MAP_FE_STATS, sizes.frontends + 1)
        .map_max_entries(MAP_SLOTS, sizes.slots)
        .map_max_entries(MAP_BACKENDS, sizes.backends)
        .map_max_entries(MAP_CT, sizes.conntrack);
    loader
}

/// Returns whether `path` is the root of a mounted bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Creates `path` and mounts a bpffs there unless one is mounted already.
pub fn ensure_bpffs(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| DataplaneError::Bpffs {
        path: path.into(),
        source,
    })?;
    if is_bpffs(path) {
        return Ok(());
    }
    info!(path = %path.display(), "mounting a bpffs");
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| DataplaneError::Mount {
        path: path.into(),
        source,
    })
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

/// The loaded programs and pinned maps.
pub struct Dataplane {
    ebpf: Ebpf,
    root: PathBuf,
    xdp_mode: XdpMode,
    /// Attachments this agent made or adopted: (hook, ifname) -> ifindex.
    attached: BTreeMap<(HookKind, String), u32>,
}

impl Dataplane {
    /// Loads the programs; maps are reused from `<root>/maps` where pinned, created otherwise.
    pub fn load(root: &Path, sizes: MapSizes, xdp_mode: XdpMode) -> Result<Self> {
        ensure_bpffs(root)?;
        let maps_dir = root.join("maps");
        for dir in [&maps_dir, &root.join("links")] {
            std::fs::create_dir_all(dir).map_err(|source| DataplaneError::Bpffs {
                path: dir.clone(),
                source,
            })?;
        }
        let mut loader = loader(&maps_dir, sizes);
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|source| DataplaneError::Load {
                pin_dir: maps_dir.clone(),
                source: Box::new(source),
            })?;
        for kind in [HookKind::Xdp, HookKind::XdpVeth, HookKind::XdpPod] {
            let name = kind.program();
            let prog: &mut Xdp = program(&mut ebpf, name)?;
            prog.load().map_err(prog_err(name))?;
        }
        let prog: &mut SchedClassifier = program(&mut ebpf, "lb_tc")?;
        prog.load().map_err(prog_err("lb_tc"))?;
        info!(bpffs = %root.display(), "programs loaded, maps pinned");
        Ok(Self {
            ebpf,
            root: root.into(),
            xdp_mode,
            attached: BTreeMap::new(),
        })
    }

    /// The service map entries as the kernel holds them now.
    pub fn read_entries(&self) -> Result<Entries> {
        read_entries(|name| self.ebpf.map(name))
    }

    /// Applies `ops` in order; stops at the first failure. Runs of puts into one hash map go to
    /// the kernel in batches (BPF_MAP_UPDATE_BATCH), element by element in order, as the single
    /// writes would: a full sync of 10,000 Services is 220,000 writes.
    pub fn apply(&mut self, ops: &[MapOp]) -> Result<()> {
        let mut i = 0;
        while i < ops.len() {
            let run = ops[i..]
                .iter()
                .take_while(|o| std::mem::discriminant(*o) == std::mem::discriminant(&ops[i]))
                .count();
            let done = match &ops[i] {
                MapOp::PutBackend(..) => {
                    self.put_batch(MAP_BACKENDS, &ops[i..i + run], |o| match o {
                        MapOp::PutBackend(id, b) => Some((*id, *b)),
                        _ => None,
                    })?
                }
                MapOp::PutSlot(..) => self.put_batch(MAP_SLOTS, &ops[i..i + run], |o| match o {
                    MapOp::PutSlot(k, s) => Some((*k, *s)),
                    _ => None,
                })?,
                MapOp::PutFrontend(..) => {
                    self.put_batch(MAP_FRONTENDS, &ops[i..i + run], |o| match o {
                        MapOp::PutFrontend(k, f) => Some((*k, *f)),
                        _ => None,
                    })?
                }
                _ => false,
            };
            if done {
                i += run;
                continue;
            }
            self.apply_one(&ops[i])?;
            i += 1;
        }
        Ok(())
    }

    /// Writes the puts `ops` into hash map `name` in batches; false if this kernel has no batch
    /// updates for the map (nothing written: the caller writes them one by one).
    fn put_batch<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        ops: &[MapOp],
        entry: impl Fn(&MapOp) -> Option<(K, V)>,
    ) -> Result<bool> {
        if ops.len() < 2 {
            return Ok(false);
        }
        let (keys, values): (Vec<K>, Vec<V>) = ops.iter().filter_map(entry).unzip();
        let map = self.ebpf.map(name).ok_or_else(|| missing(name))?;
        let Map::HashMap(data) = map else {
            return Ok(false);
        };
        let fd = data.fd().as_fd().as_raw_fd();
        for (k, v) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
            debug!(map = name, count = k.len(), "map batch write");
            match update_batch(fd, k, v) {
                Ok(()) => {}
                // Only the first batch can find batches unsupported; nothing is written then.
                Err(e)
                    if k.as_ptr() == keys.as_ptr()
                        && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP | 524)) =>
                {
                    return Ok(false);
                }
                Err(e) => {
                    return Err(DataplaneError::Map {
                        name,
                        source: Box::new(aya::maps::MapError::IoError(e)),
                    })
                }
            }
        }
        Ok(true)
    }

    /// Applies one op.
    fn apply_one(&mut self, op: &MapOp) -> Result<()> {
        debug!(?op, "map write");
        match op {
            MapOp::PutBackend(id, b) => {
                typed_hash::<u32, Backend>(&mut self.ebpf, MAP_BACKENDS)?
                    .insert(id, b, 0)
                    .map_err(map_err(MAP_BACKENDS))?;
            }
            MapOp::PutSlot(k, s) => {
                typed_hash::<SlotKey, Slot>(&mut self.ebpf, MAP_SLOTS)?
                    .insert(k, s, 0)
                    .map_err(map_err(MAP_SLOTS))?;
            }
            MapOp::ResetStats(id) => {
                let map = self
                    .ebpf
                    .map_mut(MAP_FE_STATS)
                    .ok_or_else(|| missing(MAP_FE_STATS))?;
                let mut stats: PerCpuArray<_, FrontendStats> =
                    PerCpuArray::try_from(map).map_err(map_err(MAP_FE_STATS))?;
                let n = aya::util::nr_cpus().map_or(1, |n| n);
                let zero =
                    PerCpuValues::try_from(vec![FrontendStats::default(); n]).map_err(|e| {
                        DataplaneError::Map {
                            name: MAP_FE_STATS,
                            source: Box::new(aya::maps::MapError::IoError(e)),
                        }
                    })?;
                stats.set(*id, zero, 0).map_err(map_err(MAP_FE_STATS))?;
            }
            MapOp::PutFrontend(k, f) => {
                typed_hash::<FrontendKey, Frontend>(&mut self.ebpf, MAP_FRONTENDS)?
                    .insert(k, f, 0)
                    .map_err(map_err(MAP_FRONTENDS))?;
            }
            MapOp::DelFrontend(k) => remove_ok_if_absent(
                typed_hash::<FrontendKey, Frontend>(&mut self.ebpf, MAP_FRONTENDS)?.remove(k),
                MAP_FRONTENDS,
            )?,
            MapOp::DelSlot(k) => remove_ok_if_absent(
                typed_hash::<SlotKey, Slot>(&mut self.ebpf, MAP_SLOTS)?.remove(k),
                MAP_SLOTS,
            )?,
            MapOp::PutSrcRange(r) => {
                let map = self
                    .ebpf
                    .map_mut(MAP_SRC_RANGES)
                    .ok_or_else(|| missing(MAP_SRC_RANGES))?;
                let mut trie: LpmTrie<_, SrcRange, u32> =
                    LpmTrie::try_from(map).map_err(map_err(MAP_SRC_RANGES))?;
                trie.insert(&src_range_key(r), 1, 0)
                    .map_err(map_err(MAP_SRC_RANGES))?;
            }
            MapOp::DelSrcRange(r) => {
                let map = self
                    .ebpf
                    .map_mut(MAP_SRC_RANGES)
                    .ok_or_else(|| missing(MAP_SRC_RANGES))?;
                let mut trie: LpmTrie<_, SrcRange, u32> =
                    LpmTrie::try_from(map).map_err(map_err(MAP_SRC_RANGES))?;
                remove_ok_if_absent(trie.remove(&src_range_key(r)), MAP_SRC_RANGES)?;
            }
            MapOp::DelBackend(id) => remove_ok_if_absent(
                typed_hash::<u32, Backend>(&mut self.ebpf, MAP_BACKENDS)?.remove(id),
                MAP_BACKENDS,
            )?,
        }
        Ok(())
    }

    fn link_pin(&self, hook: HookKind, ifname: &str, ifindex: u32) -> PathBuf {
        self.root
            .join("links")
            .join(format!("{}-{ifname}@{ifindex}", hook.name()))
    }

    /// Whether this agent has attached `hook` to `ifname`.
    pub fn is_attached(&self, hook: HookKind, ifname: &str) -> bool {
        self.attached.contains_key(&(hook, ifname.to_owned()))
    }

    /// Attaches `hook` to `ifname` with a pinned link. A link pinned by an earlier agent for the
    /// same interface gets the new program atomically (no packet sees no program).
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
            HookKind::Xdp | HookKind::XdpVeth | HookKind::XdpPod => {
                let mode = self.xdp_mode;
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
            HookKind::Tc => {
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
        if matches!(hook, HookKind::Xdp | HookKind::XdpVeth | HookKind::XdpPod) {
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
    /// hook is not the one `wanted` names for the interface any more, and forgets them.
    /// Returns (hook, ifname) of what was removed.
    pub fn prune_links(&mut self, wanted: &BTreeMap<String, HookKind>) -> Vec<(String, String)> {
        let mut removed = Vec::new();
        for (hook, ifname, idx, path) in pinned_links(&self.root) {
            let gone = ifindex(&ifname) != Some(idx);
            let unwanted = wanted.get(&ifname).map(|h| h.name()) != Some(hook.as_str());
            if !(gone || unwanted) {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => info!(hook, ifname, ifindex = idx, gone, "link unpinned"),
                Err(e) => warn!(path = %path.display(), error = %e, "could not unpin link"),
            }
            self.attached
                .retain(|(h, n), i| !(h.name() == hook && *n == ifname && *i == idx));
            removed.push((hook, ifname));
        }
        removed
    }

    /// Runs `hook`'s program once per `repeat` on `packet` through BPF_PROG_TEST_RUN; the
    /// rewritten packet lands in `out`.
    pub fn test_run(
        &mut self,
        hook: HookKind,
        packet: &[u8],
        out: &mut [u8],
        repeat: u32,
    ) -> Result<aya::programs::TestRunResult> {
        self.test_run_ctx(hook, packet, out, repeat, None)
    }

    /// [`Dataplane::test_run`] with a context: for XDP a `struct xdp_md`, whose
    /// `ingress_ifindex` names an interface of the calling thread's network namespace.
    pub fn test_run_ctx(
        &mut self,
        hook: HookKind,
        packet: &[u8],
        out: &mut [u8],
        repeat: u32,
        ctx: Option<&[u8]>,
    ) -> Result<aya::programs::TestRunResult> {
        use aya::programs::{TestRun, TestRunOptions};
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(out),
            ctx_in: ctx,
            repeat,
            ..TestRunOptions::new()
        };
        let name = hook.program();
        match hook {
            HookKind::Xdp | HookKind::XdpVeth | HookKind::XdpPod => {
                let prog: &mut Xdp = program(&mut self.ebpf, name)?;
                prog.test_run(opts).map_err(prog_err(name))
            }
            HookKind::Tc => {
                let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
                prog.test_run(opts).map_err(prog_err(name))
            }
        }
    }
}

/// Lets `ifname` accept packets whose source is one of this node's addresses.
///
/// Flows to backends behind other nodes are SNATed to this node's address in XDP, and replies
/// to NodePorts come from it. When XDP cannot send such a packet itself (no neighbour entry
/// yet; on pod interfaces, always) it hands it to the stack, which would drop a packet from its
/// own address as a martian without `accept_local`. (tc sends such replies itself.)
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

/// Detaches the bpf_link pinned at `path` from its hook, synchronously (BPF_LINK_DETACH).
fn detach_pinned_link(path: &Path) -> std::io::Result<()> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // obj_get.pathname: the kernel reads the NUL-terminated path, alive across the call.
    let fd = bpf(BPF_OBJ_GET, cpath.as_ptr() as u64)?;
    // SAFETY: the kernel just returned this descriptor to us; the OwnedFd closes it.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // link_detach.link_fd
    bpf(BPF_LINK_DETACH, std::os::fd::AsRawFd::as_raw_fd(&fd) as u64)?;
    Ok(())
}

/// Entries per BPF_MAP_UPDATE_BATCH call.
const BATCH: usize = 8192;

/// BPF_MAP_UPDATE_BATCH: `keys[i] -> values[i]` into the map `fd`, in order, in one call (the
/// kernel reports how many it wrote; a partial write is an error here).
fn update_batch<K: aya::Pod, V: aya::Pod>(
    fd: std::os::fd::RawFd,
    keys: &[K],
    values: &[V],
) -> std::io::Result<()> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    // union bpf_attr's batch member: in_batch, out_batch, keys, values, count (u32) and map_fd
    // (u32), elem_flags, flags; zeroed past it.
    let mut attr = [0u64; 16];
    attr[2] = keys.as_ptr() as u64;
    attr[3] = values.as_ptr() as u64;
    attr[4] = keys.len() as u64 | (fd as u32 as u64) << 32;
    // `keys` and `values` hold `count` elements of the map's key and value sizes and outlive
    // the call.
    sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    let written = attr[4] as u32 as usize;
    if written != keys.len() {
        return Err(std::io::Error::other(format!(
            "batch update wrote {written} of {} entries",
            keys.len()
        )));
    }
    Ok(())
}

/// The bpf(2) syscall for a command whose attribute union needs only its first 8 bytes.
fn bpf(cmd: libc::c_long, first: u64) -> std::io::Result<libc::c_long> {
    // union bpf_attr, zeroed past the first field (the kernel checks unused bytes are 0).
    let mut attr = [0u64; 16];
    attr[0] = first;
    sys_bpf(cmd, &mut attr)
}

/// The bpf(2) syscall with the attribute union `attr` (the kernel writes some commands'
/// results back into it). Any pointer in `attr` is the caller's to keep valid.
fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a bpf_attr of the size passed, zeroed where `cmd` reads nothing.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// Every pinned link under `root`: (hook name, ifname, ifindex, path).
pub fn pinned_links(root: &Path) -> Vec<(String, String, u32, PathBuf)> {
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
            out.push((hook.to_owned(), ifname.to_owned(), idx, entry.path()));
        }
    }
    out.sort();
    out
}

fn prog_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> DataplaneError {
    move |e| DataplaneError::Program {
        name,
        source: Box::new(e),
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| DataplaneError::Program {
            name,
            source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
        })?;
    prog.try_into().map_err(prog_err(name))
}

fn missing(name: &'static str) -> DataplaneError {
    DataplaneError::Map {
        name,
        source: Box::new(aya::maps::MapError::InvalidName { name: name.into() }),
    }
}

fn typed_hash<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, K, V>> {
    let map = ebpf.map_mut(name).ok_or_else(|| missing(name))?;
    HashMap::try_from(map).map_err(map_err(name))
}

fn remove_ok_if_absent(r: Result<(), aya::maps::MapError>, name: &'static str) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// The LPM key of a source range: the frontend id (32 bits) and the prefix.
fn src_range_key(r: &SrcRangeEntry) -> lpm_trie::Key<SrcRange> {
    lpm_trie::Key::new(
        32 + u32::from(r.prefix_len),
        SrcRange {
            frontend_id_be: r.frontend_id.to_be(),
            addr_be: r.addr_be,
        },
    )
}

/// Every entry of a hash map, sorted.
fn read_hash<K: aya::Pod + Ord, V: aya::Pod>(
    map: Option<&Map>,
    name: &'static str,
) -> Result<BTreeMap<K, V>> {
    let h: HashMap<_, K, V> =
        HashMap::try_from(map.ok_or_else(|| missing(name))?).map_err(map_err(name))?;
    h.iter().map(|kv| kv.map_err(map_err(name))).collect()
}

/// Reads the service maps through `get` (loaded maps or pinned ones).
pub fn read_entries<'a>(get: impl Fn(&'static str) -> Option<&'a Map>) -> Result<Entries> {
    let mut out = Entries {
        frontends: read_hash(get(MAP_FRONTENDS), MAP_FRONTENDS)?,
        slots: read_hash(get(MAP_SLOTS), MAP_SLOTS)?,
        backends: read_hash(get(MAP_BACKENDS), MAP_BACKENDS)?,
        ..Entries::default()
    };
    let ranges: LpmTrie<_, SrcRange, u32> =
        LpmTrie::try_from(get(MAP_SRC_RANGES).ok_or_else(|| missing(MAP_SRC_RANGES))?)
            .map_err(map_err(MAP_SRC_RANGES))?;
    for k in ranges.keys() {
        let k = k.map_err(map_err(MAP_SRC_RANGES))?;
        let len = k.prefix_len().saturating_sub(32) as u8;
        let d = k.data();
        out.src_ranges.insert(SrcRangeEntry {
            frontend_id: u32::from_be(d.frontend_id_be),
            addr_be: d.addr_be,
            prefix_len: len,
        });
    }
    Ok(out)
}

/// The pinned maps of an agent, opened read-only for `inspect`.
pub struct Pinned {
    maps: BTreeMap<&'static str, Map>,
}

impl Pinned {
    /// Opens every map pinned under `<root>/maps`.
    pub fn open(root: &Path) -> Result<Self> {
        let mut maps = BTreeMap::new();
        for name in ALL_MAPS {
            let path = root.join("maps").join(name);
            let data = MapData::from_pin(&path).map_err(map_err(name))?;
            maps.insert(name, Map::from_map_data(data).map_err(map_err(name))?);
        }
        Ok(Self { maps })
    }

    /// A map by name.
    pub fn map(&self, name: &'static str) -> Option<&Map> {
        self.maps.get(name)
    }

    /// The service map entries.
    pub fn entries(&self) -> Result<Entries> {
        read_entries(|n| self.maps.get(n))
    }

    /// Per-frontend counters summed over CPUs.
    pub fn frontend_stats(&self, id: u32) -> Result<FrontendStats> {
        let m = self
            .map(MAP_FE_STATS)
            .ok_or_else(|| missing(MAP_FE_STATS))?;
        let a: PerCpuArray<_, FrontendStats> =
            PerCpuArray::try_from(m).map_err(map_err(MAP_FE_STATS))?;
        let v = a.get(&id, 0).map_err(map_err(MAP_FE_STATS))?;
        Ok(v.iter()
            .fold(FrontendStats::default(), |acc, s| FrontendStats {
                packets: acc.packets + s.packets,
                bytes: acc.bytes + s.bytes,
                new_flows: acc.new_flows + s.new_flows,
            }))
    }

    /// Verdict counters summed over CPUs, by reason index.
    pub fn verdicts(&self) -> Result<Vec<lb_common::maps::Counter>> {
        self.counters(lb_common::maps::MAP_VERDICTS)
    }

    /// Path counters (how node-device packets left XDP) summed over CPUs, by path index.
    pub fn paths(&self) -> Result<Vec<lb_common::maps::Counter>> {
        self.counters(lb_common::maps::MAP_PATHS)
    }

    /// A per-CPU array of counters, summed over CPUs.
    fn counters(&self, name: &'static str) -> Result<Vec<lb_common::maps::Counter>> {
        let m = self.map(name).ok_or_else(|| missing(name))?;
        let a: PerCpuArray<_, lb_common::maps::Counter> =
            PerCpuArray::try_from(m).map_err(map_err(name))?;
        let mut out = Vec::new();
        for v in a.iter() {
            let v = v.map_err(map_err(name))?;
            out.push(
                v.iter()
                    .fold(lb_common::maps::Counter::default(), |acc, c| {
                        lb_common::maps::Counter {
                            packets: acc.packets + c.packets,
                            bytes: acc.bytes + c.bytes,
                        }
                    }),
            );
        }
        Ok(out)
    }

    /// The conntrack table.
    pub fn conntrack(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        let m = self.map(MAP_CT).ok_or_else(|| missing(MAP_CT))?;
        let h: HashMap<_, CtKey, CtEntry> = HashMap::try_from(m).map_err(map_err(MAP_CT))?;
        let mut out = Vec::new();
        for kv in h.iter() {
            out.push(kv.map_err(map_err(MAP_CT))?);
        }
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }
}

/// Removes everything an agent pinned under `root`: links first (which detaches the programs),
/// then maps, then the directories. Returns what it removed.
pub fn cleanup(root: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for (_, _, _, path) in pinned_links(root) {
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
