//! The kernel side through aya: load the programs, reuse or create the pinned maps, attach to
//! interfaces with pinned links, and apply map writes. The only module that touches BPF.
//!
//! Layout under the bpffs directory given with `--bpffs`:
//! - `maps/LB_*`: every map, pinned by name; reused as they are when the agent restarts.
//! - `links/<hook>-<ifname>@<ifindex>`: one pinned link per attachment (a dot in the interface
//!   name written `%2e`, bpffs refusing dots); it keeps the program attached after the agent
//!   exits, and a restarted agent swaps its new program in atomically.
//!
//! Files: this one loads the programs and maps and runs programs on test packets; `probe` checks
//! the kernel has the features the programs need, before anything is loaded; `object` holds
//! the embedded eBPF object and checks maps pinned by an earlier build against it; `writer`
//! applies map writes; `reader` reads the maps back (the agent's and, for `inspect`, pinned ones);
//! `attach` attaches programs through pinned links and removes pins (`cleanup`); `host` writes and
//! reads the maps about the node (NodePort addresses, devices); `sys` wraps the bpf(2) commands
//! aya does not offer; `error` holds [`DataplaneError`].

mod attach;
mod error;
mod host;
mod object;
pub mod probe;
mod reader;
mod sys;
mod writer;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::maps::{
    ALL_MAPS, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_CT, DEFAULT_MAX_FRONTENDS, DEFAULT_MAX_SLOTS,
    MAP_BACKENDS, MAP_CT, MAP_FE_STATS, MAP_FRONTENDS, MAP_SLOTS,
};
use tracing::info;

pub use attach::{cleanup, ifindex, is_veth, pinned_links, LinkPin};
use error::{prog_err, Result};
pub use error::{DataplaneError, MapLayout};
pub use host::unpadded;
pub use reader::{read_entries, Pinned};

/// `statfs` magic of a bpffs.
const BPF_FS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0xcafe_4a11);

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

/// Which program an interface gets. A node device gets [`HookKind::TcNic`], and in front of it
/// [`HookKind::Xdp`] where the acceleration asks for it; a pod interface gets the pod hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookKind {
    /// tcx ingress on node devices: the complete path for traffic from outside and from other
    /// nodes (`lb_tc_nic`).
    TcNic,
    /// Native XDP on node devices: the accelerator in front of [`HookKind::TcNic`] (`lb_xdp`).
    Xdp,
    /// tcx ingress on pod interfaces (`lb_tc`).
    Tc,
    /// XDP on pod interfaces (recognises CHECKSUM_PARTIAL seeds; `lb_xdp_pod`).
    XdpPod,
}

impl HookKind {
    /// Every hook, in load order.
    pub const ALL: [HookKind; 4] = [
        HookKind::TcNic,
        HookKind::Xdp,
        HookKind::Tc,
        HookKind::XdpPod,
    ];

    /// Name used in pin paths and logs.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::TcNic => "tcnic",
            HookKind::Xdp => "xdp",
            HookKind::Tc => "tc",
            HookKind::XdpPod => "xdppod",
        }
    }

    /// The program's name in the object.
    pub fn program(self) -> &'static str {
        match self {
            HookKind::TcNic => "lb_tc_nic",
            HookKind::Xdp => "lb_xdp",
            HookKind::Tc => "lb_tc",
            HookKind::XdpPod => "lb_xdp_pod",
        }
    }

    /// An XDP program (else tc).
    pub fn is_xdp(self) -> bool {
        matches!(self, HookKind::Xdp | HookKind::XdpPod)
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

/// The loaded programs and pinned maps.
pub struct Dataplane {
    ebpf: Ebpf,
    root: PathBuf,
    /// Attachments this agent made or adopted: (hook, ifname) -> ifindex.
    attached: BTreeMap<(HookKind, String), u32>,
}

impl Dataplane {
    /// Checks the kernel has what the programs need, then loads the programs; maps are reused
    /// from `<root>/maps` where pinned, created otherwise.
    pub fn load(root: &Path, sizes: MapSizes) -> Result<Self> {
        object::check_object(object::EBPF_OBJECT)?;
        require_kernel_features()?;
        ensure_bpffs(root)?;
        let maps_dir = root.join("maps");
        for dir in [&maps_dir, &root.join("links")] {
            std::fs::create_dir_all(dir).map_err(|source| DataplaneError::Bpffs {
                path: dir.clone(),
                source,
            })?;
        }
        object::check_pinned_layouts(object::EBPF_OBJECT, root, &maps_dir)?;
        let mut loader = loader(&maps_dir, sizes);
        let mut ebpf = loader
            .load(object::EBPF_OBJECT)
            .map_err(|source| DataplaneError::Load {
                pin_dir: maps_dir.clone(),
                source: Box::new(source),
            })?;
        for kind in HookKind::ALL {
            let name = kind.program();
            if kind.is_xdp() {
                let prog: &mut Xdp = program(&mut ebpf, name)?;
                prog.load().map_err(prog_err(name))?;
            } else {
                let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
                prog.load().map_err(prog_err(name))?;
            }
        }
        info!(bpffs = %root.display(), "programs loaded, maps pinned");
        Ok(Self {
            ebpf,
            root: root.into(),
            attached: BTreeMap::new(),
        })
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
    /// `ingress_ifindex` names an interface of the calling thread's network namespace; for tc
    /// a `struct __sk_buff`, whose `ifindex` does.
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
        if hook.is_xdp() {
            let prog: &mut Xdp = program(&mut self.ebpf, name)?;
            prog.test_run(opts).map_err(prog_err(name))
        } else {
            let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
            prog.test_run(opts).map_err(prog_err(name))
        }
    }
}

/// Refuses a kernel that lacks a feature the programs need, naming it and the release that
/// has it; logs what is used.
fn require_kernel_features() -> Result<()> {
    let missing = probe::missing().map_err(DataplaneError::Probe)?;
    if let Some(f) = missing {
        return Err(DataplaneError::KernelFeature {
            feature: f.name,
            used_for: f.used_for,
            since: f.since,
        });
    }
    let used: Vec<String> = probe::ALL
        .iter()
        .map(|f| format!("{} ({})", f.name, f.since))
        .collect();
    info!(features = used.join(", "), "kernel features in use");
    Ok(())
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
