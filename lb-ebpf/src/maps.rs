//! Every map the programs use, BTF-typed; keys and values are defined in lb_common::maps.
//!
//! Capacities here are defaults: the agent sets the real ones at load time.

use aya_ebpf::{
    btf_maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{
    maps::{
        Affinity, AffinityKey, Backend, Counter, CtEntry, CtKey, Device, Frontend, FrontendKey,
        FrontendStats, NodeAddr, NodeAddrKey, Slot, SlotKey, SrcRange, DEFAULT_MAX_AFFINITY,
        DEFAULT_MAX_BACKENDS, DEFAULT_MAX_CT, DEFAULT_MAX_DEVICES, DEFAULT_MAX_FRONTENDS,
        DEFAULT_MAX_NODE_ADDRS, DEFAULT_MAX_SLOTS, DEFAULT_MAX_SRC_RANGES,
    },
    verdict::{PATH_COUNT, REASON_COUNT},
};

/// Frontends: (address, port, protocol) of a service -> its id, table size and policy.
#[btf_map]
pub static LB_FRONTENDS: HashMap<FrontendKey, Frontend, { DEFAULT_MAX_FRONTENDS as usize }> =
    HashMap::new();

/// Backend tables: (frontend id, slot) -> backend id. A new flow takes slot hash % slot_count.
#[btf_map]
pub static LB_SLOTS: HashMap<SlotKey, Slot, { DEFAULT_MAX_SLOTS as usize }> = HashMap::new();

/// Backends: backend id -> (frontend, address, port, protocol); ids are per frontend.
#[btf_map]
pub static LB_BACKENDS: HashMap<u32, Backend, { DEFAULT_MAX_BACKENDS as usize }> = HashMap::new();

/// Connection tracking: a packet's 5-tuple and direction -> NAT target and timestamps.
#[btf_map]
pub static LB_CT: LruHashMap<CtKey, CtEntry, { DEFAULT_MAX_CT as usize }> = LruHashMap::new();

/// Packets and bytes per verdict reason (lb_common::verdict::Reason), per CPU.
#[btf_map]
pub static LB_VERDICTS: PerCpuArray<Counter, { REASON_COUNT as usize }> = PerCpuArray::new();

/// Packets, bytes and new flows per frontend id, per CPU.
#[btf_map]
pub static LB_FE_STATS: PerCpuArray<FrontendStats, { DEFAULT_MAX_FRONTENDS as usize + 1 }> =
    PerCpuArray::new();

/// sessionAffinity ClientIP: (frontend id, client address) -> backend and last new connection.
#[btf_map]
pub static LB_AFFINITY: LruHashMap<AffinityKey, Affinity, { DEFAULT_MAX_AFFINITY as usize }> =
    LruHashMap::new();

/// Packets and bytes per path rewritten packets took (lb_common::verdict::Path), per CPU.
#[btf_map]
pub static LB_PATHS: PerCpuArray<Counter, { PATH_COUNT as usize }> = PerCpuArray::new();

/// loadBalancerSourceRanges: (frontend id, source prefix) -> 1, longest-prefix matched.
#[btf_map]
pub static LB_SRC_RANGES: LpmTrie<SrcRange, u32, { DEFAULT_MAX_SRC_RANGES as usize }> =
    LpmTrie::new();

/// This node's NodePort addresses: address -> the interface holding it. A packet to one of them
/// that no frontend has by its own address looks up the wildcard NodePort frontends.
#[btf_map]
pub static LB_NODE_ADDRS: HashMap<NodeAddrKey, NodeAddr, { DEFAULT_MAX_NODE_ADDRS as usize }> =
    HashMap::new();

/// The node devices the agent chose and why: ifindex -> name, kind, reasons. Read by
/// `lb-agent inspect` only; no program looks at it.
#[btf_map]
pub static LB_DEVICES: HashMap<u32, Device, { DEFAULT_MAX_DEVICES as usize }> = HashMap::new();
