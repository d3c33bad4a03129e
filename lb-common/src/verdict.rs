//! Verdict reasons: every packet the programs see is counted under exactly one of these.

/// Why a packet got the verdict it got; the index into the `LB_VERDICTS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4 (ARP, IPv6, VLAN-tagged, ...): passed untouched.
    PassNotIpv4 = 0,
    /// IPv4 but neither TCP nor UDP (ICMP, ...): passed untouched.
    PassNotL4 = 1,
    /// TCP/UDP to no frontend and not a reply of a tracked flow: passed untouched.
    PassNoService = 2,
    /// An IPv4 fragment: passed untouched (see docs/ARCHITECTURE.md, "Fragments").
    PassFragment = 3,
    /// Truncated or malformed headers: passed untouched for the stack to judge.
    PassMalformed = 4,
    /// First packet of a flow to a frontend: backend chosen, conntrack created, DNAT.
    DnatNew = 5,
    /// Packet of a tracked flow to a frontend: DNAT to the flow's backend.
    DnatEstablished = 6,
    /// Reply of a tracked flow: source rewritten back to the frontend.
    RevNat = 7,
    /// Frontend has no backends and its policy is drop.
    DropNoBackend = 8,
    /// Frontend has no backends and its policy is reject: ICMP port unreachable sent back.
    RejectNoBackend = 9,
    /// First packet of a flow whose conntrack insert failed: DNAT by flow hash all the same, so
    /// the flow keeps its backend while the backend set is unchanged.
    DnatNewUntracked = 10,
    /// Slot table inconsistent with the frontend (a half-applied update): dropped.
    DropNoSlot = 11,
    /// A checksum or store helper failed: the packet is dropped.
    AbortRewrite = 12,
    /// Frontend has no backends and its policy is reject, but this hook cannot send the reply
    /// (XDP on a pod veth cannot transmit into the pod): dropped.
    RejectDropped = 13,
}

/// Number of reasons; the size of the verdict array.
pub const REASON_COUNT: u32 = 14;

impl Reason {
    /// Every reason, in index order.
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::PassNotIpv4,
        Reason::PassNotL4,
        Reason::PassNoService,
        Reason::PassFragment,
        Reason::PassMalformed,
        Reason::DnatNew,
        Reason::DnatEstablished,
        Reason::RevNat,
        Reason::DropNoBackend,
        Reason::RejectNoBackend,
        Reason::DnatNewUntracked,
        Reason::DropNoSlot,
        Reason::AbortRewrite,
        Reason::RejectDropped,
    ];

    /// Stable snake_case name, used in `inspect` output and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassNotL4 => "pass_not_tcp_udp",
            Reason::PassNoService => "pass_no_service",
            Reason::PassFragment => "pass_fragment",
            Reason::PassMalformed => "pass_malformed",
            Reason::DnatNew => "dnat_new_flow",
            Reason::DnatEstablished => "dnat_established",
            Reason::RevNat => "reverse_nat",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::RejectNoBackend => "reject_no_backend",
            Reason::DnatNewUntracked => "dnat_new_untracked",
            Reason::DropNoSlot => "drop_no_slot",
            Reason::AbortRewrite => "abort_rewrite",
            Reason::RejectDropped => "reject_dropped",
        }
    }
}
