//! Map keys and values shared with the kernel, and the maps' names and default capacities.
//!
//! Conventions: `#[repr(C)]`, fixed-width integers, explicit `_pad` fields, no bool/Option/enum.
//! Fields named `*_be` hold network byte order exactly as they appear in the packet (loaded as a
//! native integer from the packet bytes); everything else is host order.

/// `LB_FRONTENDS`: hash, [`FrontendKey`] -> [`Frontend`]. One entry per service frontend.
pub const MAP_FRONTENDS: &str = "LB_FRONTENDS";
/// `LB_SLOTS`: hash, [`SlotKey`] -> [`Slot`]. The backend table of each frontend.
pub const MAP_SLOTS: &str = "LB_SLOTS";
/// `LB_BACKENDS`: hash, backend id (u32) -> [`Backend`].
pub const MAP_BACKENDS: &str = "LB_BACKENDS";
/// `LB_CT`: LRU hash, [`CtKey`] -> [`CtEntry`]. Connection tracking, both directions.
pub const MAP_CT: &str = "LB_CT";
/// `LB_VERDICTS`: per-CPU array, reason index -> [`Counter`].
pub const MAP_VERDICTS: &str = "LB_VERDICTS";
/// `LB_FE_STATS`: per-CPU array, frontend id -> [`FrontendStats`].
pub const MAP_FE_STATS: &str = "LB_FE_STATS";
/// `LB_AFFINITY`: LRU hash, [`AffinityKey`] -> [`Affinity`]. sessionAffinity ClientIP.
pub const MAP_AFFINITY: &str = "LB_AFFINITY";
/// `LB_SRC_RANGES`: LPM trie, [`SrcRange`] (with a prefix length) -> u32 (1). Sources
/// allowed to reach frontends with [`FE_F_SOURCE_RANGES`] (loadBalancerSourceRanges).
pub const MAP_SRC_RANGES: &str = "LB_SRC_RANGES";
/// `LB_PATHS`: per-CPU array, [`crate::verdict::Path`] index -> [`Counter`]. How rewritten
/// packets left the program that rewrote them (XDP_TX, left to tc, redirected, to the stack).
pub const MAP_PATHS: &str = "LB_PATHS";
/// `LB_NODE_ADDRS`: hash, [`NodeAddrKey`] -> [`NodeAddr`]. This node's NodePort addresses:
/// where the wildcard NodePort frontends ([`NODEPORT_ANY_ADDR`]) answer.
pub const MAP_NODE_ADDRS: &str = "LB_NODE_ADDRS";
/// `LB_DEVICES`: hash, ifindex (u32) -> [`Device`]. The node devices the agent chose, and why.
/// No program reads it: it is there for `lb-agent inspect`, which reads the pins alone.
pub const MAP_DEVICES: &str = "LB_DEVICES";

/// Every map, in the order the agent pins and removes them.
pub const ALL_MAPS: [&str; 11] = [
    MAP_FRONTENDS,
    MAP_SLOTS,
    MAP_BACKENDS,
    MAP_CT,
    MAP_VERDICTS,
    MAP_FE_STATS,
    MAP_AFFINITY,
    MAP_PATHS,
    MAP_SRC_RANGES,
    MAP_NODE_ADDRS,
    MAP_DEVICES,
];

/// Default capacity of `LB_FRONTENDS`; also bounds frontend ids (`LB_FE_STATS` has one more entry).
pub const DEFAULT_MAX_FRONTENDS: u32 = 65_536;
/// Default capacity of `LB_SLOTS`.
pub const DEFAULT_MAX_SLOTS: u32 = 1 << 20;
/// Default capacity of `LB_BACKENDS` (backends of all frontends together).
pub const DEFAULT_MAX_BACKENDS: u32 = 1 << 20;
/// Default capacity of `LB_CT` (two entries per flow).
pub const DEFAULT_MAX_CT: u32 = 1 << 20;
/// Default capacity of `LB_SRC_RANGES`.
pub const DEFAULT_MAX_SRC_RANGES: u32 = 16_384;
/// Default capacity of `LB_AFFINITY`.
pub const DEFAULT_MAX_AFFINITY: u32 = 1 << 18;
/// Capacity of `LB_NODE_ADDRS` (IPv4 NodePort addresses of this node).
pub const DEFAULT_MAX_NODE_ADDRS: u32 = 4_096;
/// Capacity of `LB_DEVICES`.
pub const DEFAULT_MAX_DEVICES: u32 = 1_024;

/// IP protocol numbers as they appear in [`FrontendKey::proto`] and [`CtKey::proto`].
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;
/// SCTP (planned, never matched by the programs yet).
pub const PROTO_SCTP: u8 = 132;

/// A frontend: where a service listens.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FrontendKey {
    /// Frontend IPv4 address, network order.
    pub addr_be: u32,
    /// Frontend port, network order.
    pub port_be: u16,
    /// IP protocol ([`PROTO_TCP`], [`PROTO_UDP`]).
    pub proto: u8,
    /// Which traffic the entry serves: [`SCOPE_ANY`] or [`SCOPE_PODS`].
    pub scope: u8,
}

/// [`FrontendKey::addr_be`] of a NodePort frontend: it answers on every address in
/// `LB_NODE_ADDRS` (this node's NodePort addresses), looked up when no frontend has the
/// packet's own destination address. (A packet addressed to 0.0.0.0 matches no frontend.)
pub const NODEPORT_ANY_ADDR: u32 = 0;

/// [`FrontendKey::scope`]: the frontend serves any traffic.
pub const SCOPE_ANY: u8 = 0;
/// [`FrontendKey::scope`]: the frontend serves traffic from this node's pods (seen by the pod
/// interfaces' programs) in place of the [`SCOPE_ANY`] entry with the same address, port and
/// protocol, which then carries [`FE_F_POD_SCOPE`]. kube-proxy's short-circuit: traffic from
/// pods to an external address of an `externalTrafficPolicy: Local` Service goes to every
/// endpoint in the cluster, not only this node's.
pub const SCOPE_PODS: u8 = 1;

/// [`Frontend::flags`]: when the frontend has no backends, reject (an ICMP port unreachable back
/// to the client, for TCP and UDP alike) rather than drop. Where the hook cannot send it (XDP on
/// pod interfaces) the packet is dropped all the same.
pub const FE_F_REJECT_EMPTY: u32 = 1;

/// [`Frontend::flags`]: only sources in the frontend's `LB_SRC_RANGES` entries may reach it
/// (loadBalancerSourceRanges); others are dropped.
pub const FE_F_SOURCE_RANGES: u32 = 2;

/// [`Frontend::flags`] of a [`SCOPE_ANY`] entry: an entry with the same address, port and
/// protocol and scope [`SCOPE_PODS`] exists, and the pod interfaces' programs use that one. (A
/// flag, so that the pods' packets to other destinations cost no second lookup.)
pub const FE_F_POD_SCOPE: u32 = 4;

/// An `LB_NODE_ADDRS` key: one of this node's NodePort addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NodeAddrKey {
    /// IPv4 address, network order.
    pub addr_be: u32,
}

/// What the agent knows of a NodePort address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NodeAddr {
    /// The interface holding the address (for people: the programs do not read it).
    pub ifindex: u32,
}

/// [`Device::reasons`]: named by `--devices`.
pub const DEV_R_FLAG: u32 = 1;
/// [`Device::reasons`]: a default route leaves through it.
pub const DEV_R_DEFAULT_ROUTE: u32 = 2;
/// [`Device::reasons`]: it holds one of the Node object's addresses.
pub const DEV_R_NODE_ADDR: u32 = 4;
/// [`Device::reasons`]: an overlay device (vxlan, geneve, wireguard, ipip ...).
pub const DEV_R_OVERLAY: u32 = 8;
/// [`Device::reasons`]: not a veth, with a global unicast address and a unicast route of its
/// own (a second NIC, a VLAN, a bond).
pub const DEV_R_GLOBAL_ROUTE: u32 = 16;

/// A node device the agent chose, as `lb-agent inspect` shows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Device {
    /// Interface name, NUL-padded.
    pub name: [u8; 16],
    /// rtnetlink link kind (`veth`, `vxlan` ...), NUL-padded; empty for a physical NIC.
    pub kind: [u8; 16],
    /// `DEV_R_*` bits: why it was chosen.
    pub reasons: u32,
    /// Zero.
    pub _pad: u32,
}

/// The data of an `LB_SRC_RANGES` key: a frontend and a source prefix. The LPM prefix length
/// is 32 (the whole frontend id) plus the source prefix's length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SrcRange {
    /// [`Frontend::id`], big-endian so the trie matches it first, byte by byte.
    pub frontend_id_be: u32,
    /// Source address prefix, network order.
    pub addr_be: u32,
}

/// What a frontend does with a packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Frontend {
    /// Frontend id: key prefix in `LB_SLOTS`, index into `LB_FE_STATS`. Never 0.
    pub id: u32,
    /// Number of slots in this frontend's table in `LB_SLOTS` (0: no backends). A new flow takes
    /// slot `flow_hash % slot_count`. A plain list of backends or a Maglev table: the kernel does
    /// not care which.
    pub slot_count: u32,
    /// `FE_F_*` bits.
    pub flags: u32,
    /// sessionAffinity ClientIP timeout in seconds; 0 = no affinity.
    pub affinity_timeout_s: u32,
}

/// A slot of a frontend's backend table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SlotKey {
    /// [`Frontend::id`].
    pub frontend_id: u32,
    /// Slot index, `0..slot_count`.
    pub slot: u32,
}

/// The backend in a slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Slot {
    /// Key into `LB_BACKENDS`.
    pub backend_id: u32,
}

/// A backend of one frontend: where new connections are sent. Ids are per frontend, so a
/// backend id exists exactly as long as the backend belongs to its frontend: a conntrack or
/// affinity entry whose backend id is gone (or now names another address) is stale.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Backend {
    /// The frontend this backend serves.
    pub frontend_id: u32,
    /// Backend IPv4 address, network order.
    pub addr_be: u32,
    /// Backend port, network order.
    pub port_be: u16,
    /// IP protocol.
    pub proto: u8,
    /// `BE_F_*` bits.
    pub flags: u8,
}

/// [`Backend::flags`]: the backend is on this node (its EndpointSlice endpoint's `nodeName` is
/// this node, kube-proxy's `IsLocal`). From node devices a new flow to a backend without it is
/// SNATed to this node's address on the route to the backend, so its replies come back here;
/// to a backend with it only the destination changes and the backend sees the client.
pub const BE_F_LOCAL: u8 = 1;

/// [`CtKey::dir`]: a packet from the client towards the frontend.
pub const CT_DIR_ORIGINAL: u8 = 0;
/// [`CtKey::dir`]: a packet from the backend back to the client.
pub const CT_DIR_REPLY: u8 = 1;

/// Conntrack key: a packet's 5-tuple as it arrives, plus the direction it is looked up in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtKey {
    /// Source address, network order.
    pub saddr_be: u32,
    /// Destination address, network order.
    pub daddr_be: u32,
    /// Source port, network order.
    pub sport_be: u16,
    /// Destination port, network order.
    pub dport_be: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`CT_DIR_ORIGINAL`] or [`CT_DIR_REPLY`].
    pub dir: u8,
    /// Zero.
    pub _pad: [u8; 2],
}

/// [`CtEntry::flags`]: a FIN or RST was seen; the entry expires after [`CT_LIFETIME_CLOSING_NS`].
pub const CT_F_CLOSING: u16 = 1;

/// Lifetime of an idle TCP flow (as Cilium's default: 6 hours).
pub const CT_LIFETIME_TCP_NS: u64 = 21_600 * 1_000_000_000;
/// Lifetime of an idle UDP flow.
pub const CT_LIFETIME_UDP_NS: u64 = 60 * 1_000_000_000;
/// Lifetime of a TCP flow after FIN or RST.
pub const CT_LIFETIME_CLOSING_NS: u64 = 10 * 1_000_000_000;
/// `last_seen_ns` is refreshed only when older than this, to keep the hot path free of writes.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// Conntrack value.
///
/// Original direction (client -> frontend): `nat_*` is the backend the destination becomes;
/// `rev_*` is the address and port the flow's source takes: with [`CT_F_SNAT`] a new one (this
/// node's address when the backend is behind another node, the hairpin address when the client
/// is the backend, the client's own address with a remapped port when the backend already
/// talks to that client address and port for another flow), else the client's own.
/// Reply direction (keyed by the reply as it arrives): `nat_*` is the frontend the source
/// becomes; `rev_*` is the client, which the destination becomes with [`CT_F_SNAT`] (without,
/// it is the reply's destination already; the kernel uses it to find the original entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtEntry {
    /// When the flow was created: CLOCK_MONOTONIC_COARSE (`bpf_ktime_get_coarse_ns()`), ns.
    pub created_ns: u64,
    /// When the flow was last seen, on the same clock (refreshed every [`CT_REFRESH_NS`]).
    pub last_seen_ns: u64,
    /// Original: backend address; reply: frontend address. Network order.
    pub nat_addr_be: u32,
    /// Original: backend port; reply: frontend port. Network order.
    pub nat_port_be: u16,
    /// `CT_F_*` bits.
    pub flags: u16,
    /// Backend id the flow was sent to.
    pub backend_id: u32,
    /// Frontend id of the flow.
    pub frontend_id: u32,
    /// Original: the source address the flow takes (new with [`CT_F_SNAT`]); reply: the
    /// client's address. Network order.
    pub rev_addr_be: u32,
    /// Original: the source port the flow takes (new with [`CT_F_SNAT`]); reply: the client's
    /// port. Network order.
    pub rev_port_be: u16,
    /// Zero.
    pub _pad: u16,
}

/// [`CtEntry::flags`]: the flow's source is rewritten too (see [`CtEntry`]).
pub const CT_F_SNAT: u16 = 2;

/// First of the source ports a flow takes when its port is rewritten: on this node's address
/// for flows SNATed to backends behind other nodes, on the client's own address for flows whose
/// port is remapped (`Reason::DnatNewPortRemap`). Above Linux's default ephemeral range
/// (32768-60999), so on the node's address they never meet the node's own connections.
pub const SNAT_PORT_MIN: u16 = 61_000;
/// Last SNAT port (inclusive).
pub const SNAT_PORT_MAX: u16 = 65_535;
/// Ports tried for one new flow whose port is rewritten before it is dropped.
pub const SNAT_TRIES: u32 = 8;

/// The source a pod's connection to its own Service takes when it is balanced to itself
/// (hairpin): a link-local address the pod routes to its node, so the reply comes back
/// through the program (Cilium uses the same address).
pub const HAIRPIN_ADDR: [u8; 4] = [169, 254, 42, 1];

/// sessionAffinity ClientIP key: a client of a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct AffinityKey {
    /// [`Frontend::id`].
    pub frontend_id: u32,
    /// Client IPv4 address, network order.
    pub client_addr_be: u32,
}

/// Where a client's new connections to a frontend go while its affinity lasts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Affinity {
    /// When the client last opened a connection that followed this affinity (or created it):
    /// CLOCK_MONOTONIC_COARSE (`bpf_ktime_get_coarse_ns()`), ns.
    pub last_seen_ns: u64,
    /// The backend chosen for the client.
    pub backend_id: u32,
    /// Zero.
    pub _pad: u32,
}

/// A packet and byte counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes, from the start of the Ethernet header.
    pub bytes: u64,
}

/// Per-frontend counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FrontendStats {
    /// Packets sent to the frontend (original direction).
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
    /// New flows (backend choices).
    pub new_flows: u64,
}

macro_rules! assert_size {
    ($($t:ty => $n:expr),* $(,)?) => {
        $(const _: () = assert!(core::mem::size_of::<$t>() == $n);)*
    };
}
assert_size!(
    FrontendKey => 8,
    Frontend => 16,
    SlotKey => 8,
    Slot => 4,
    Backend => 12,
    CtKey => 16,
    CtEntry => 40,
    SrcRange => 8,
    AffinityKey => 8,
    Affinity => 16,
    Counter => 16,
    FrontendStats => 24,
    NodeAddrKey => 4,
    NodeAddr => 4,
    Device => 40,
);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is #[repr(C)], made of integers only, and bytemuck::Pod (derived above)
    // proves it has no padding.
    unsafe impl aya::Pod for FrontendKey {}
    unsafe impl aya::Pod for Frontend {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Slot {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for SrcRange {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for Affinity {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for FrontendStats {}
    unsafe impl aya::Pod for NodeAddrKey {}
    unsafe impl aya::Pod for NodeAddr {}
    unsafe impl aya::Pod for Device {}
}
