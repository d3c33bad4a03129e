//! Verdict reasons: every packet is counted under exactly one of these, by the program that
//! decided it (on node devices, XDP counts only what it finishes; tc counts the rest); and the
//! paths rewritten packets leave by.

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
    /// Rewriting the packet, or turning it into a reject reply, failed (a bounds check or a
    /// kernel helper): the packet is dropped.
    AbortRewrite = 12,
    /// Frontend has no backends and its policy is reject, but this hook cannot send the reply
    /// (XDP on a pod veth cannot transmit into the pod): dropped.
    RejectDropped = 13,
    /// New flow whose source port must be rewritten (SNAT to a backend behind another node, or
    /// a port remap), and no port tried was free: dropped.
    DropSnatExhausted = 14,
    /// The source is outside the frontend's loadBalancerSourceRanges: dropped.
    DropSourceRange = 15,
    /// First packet of a flow whose backend already talks to the same client address and
    /// port for another live flow (two frontends sharing a backend, the client reusing its
    /// port): the flow's source port is remapped so the two stay apart.
    DnatNewPortRemap = 16,
}

/// Number of reasons; the size of the verdict array.
pub const REASON_COUNT: u32 = 17;

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
        Reason::DropSnatExhausted,
        Reason::DropSourceRange,
        Reason::DnatNewPortRemap,
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
            Reason::DropSnatExhausted => "drop_snat_exhausted",
            Reason::DropSourceRange => "drop_source_range",
            Reason::DnatNewPortRemap => "dnat_new_port_remap",
        }
    }
}

/// How a rewritten packet left the program that rewrote it; the index into `LB_PATHS`.
///
/// On node devices the XDP program is an accelerator in front of the tc program: it finishes
/// only what it can send itself and leaves the rest untouched for tc (`xdp_pass_*`), which then
/// decides the packet again and counts it. The tc programs send every packet they rewrite
/// themselves (`tc_redirect`), except the two cases the stack must handle (`tc_stack_*`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// XDP sent it back out of the device it came in on, MACs from the FIB (XDP_TX).
    XdpTx = 0,
    /// XDP left it untouched for tc: its route leaves by another device, has no neighbour entry
    /// yet, or the FIB could not say (counted by XDP; tc then decides and counts the packet).
    XdpPassTc = 1,
    /// XDP left it untouched for tc: it carries a CHECKSUM_PARTIAL seed, which XDP_TX would hand
    /// on as if it were a full checksum.
    XdpPassPartial = 2,
    /// tc sent it out of the device its route names, TTL - 1, the neighbour subsystem filling
    /// in the MACs (`bpf_redirect_neigh`): the stack, and so netfilter, never sees it.
    TcRedirect = 3,
    /// The FIB does not forward it: its destination is this node itself (a hostNetwork
    /// backend), or there is no route to it at all. tc handed it to the stack.
    TcStackNotForwarded = 4,
    /// The FIB could not forward it otherwise (forwarding disabled, an unreachable or
    /// prohibit route, larger than the MTU) or its TTL is 1: tc handed it to the stack, which
    /// answers or drops it.
    TcStackFib = 5,
}

/// Number of paths; the size of the path array.
pub const PATH_COUNT: u32 = 6;

impl Path {
    /// Every path, in index order.
    pub const ALL: [Path; PATH_COUNT as usize] = [
        Path::XdpTx,
        Path::XdpPassTc,
        Path::XdpPassPartial,
        Path::TcRedirect,
        Path::TcStackNotForwarded,
        Path::TcStackFib,
    ];

    /// Stable snake_case name.
    pub const fn name(self) -> &'static str {
        match self {
            Path::XdpTx => "xdp_tx",
            Path::XdpPassTc => "xdp_pass_tc",
            Path::XdpPassPartial => "xdp_pass_partial",
            Path::TcRedirect => "tc_redirect",
            Path::TcStackNotForwarded => "tc_stack_not_fwded",
            Path::TcStackFib => "tc_stack_fib",
        }
    }
}
