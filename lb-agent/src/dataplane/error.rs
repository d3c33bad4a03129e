//! [`DataplaneError`], and the small helpers that build it.

use std::path::PathBuf;

use aya::maps::MapType;

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
    #[error(
        "this lb-agent was built without its eBPF object (target/bpf/lb-ebpf.o, or the file \
         LB_EBPF_OBJECT named, was missing at build time): run `cargo xtask build-ebpf`, then \
         build lb-agent again (`cargo xtask build` does both)"
    )]
    NoObject,
    #[error(
        "map {name} pinned at {path} is {found}, but this build of lb-agent expects {expected}: \
         it was pinned by another build; remove the old pins with \
         `lb-agent cleanup --bpffs {bpffs}` (this also detaches the old programs), then start \
         the agent again"
    )]
    PinnedLayout {
        name: &'static str,
        path: PathBuf,
        /// The bpffs directory the agent was given (`--bpffs`).
        bpffs: PathBuf,
        found: MapLayout,
        expected: MapLayout,
    },
    #[error(
        "this kernel lacks {feature}, which the programs need for {used_for}: it is in Linux \
         {since} and later (see README, Requirements)"
    )]
    KernelFeature {
        feature: &'static str,
        used_for: &'static str,
        since: &'static str,
    },
    #[error("probing the kernel's BPF features")]
    Probe(#[source] std::io::Error),
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

pub(super) type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// What a map's entries look like to the programs: its type and key and value sizes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapLayout {
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
}

impl std::fmt::Display for MapLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a {:?} map with {}-byte keys and {}-byte values",
            self.map_type, self.key_size, self.value_size
        )
    }
}

pub(super) fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |e| DataplaneError::Map {
        name,
        source: Box::new(e),
    }
}

pub(super) fn prog_err(
    name: &'static str,
) -> impl FnOnce(aya::programs::ProgramError) -> DataplaneError {
    move |e| DataplaneError::Program {
        name,
        source: Box::new(e),
    }
}

pub(super) fn missing(name: &'static str) -> DataplaneError {
    DataplaneError::Map {
        name,
        source: Box::new(aya::maps::MapError::InvalidName { name: name.into() }),
    }
}
