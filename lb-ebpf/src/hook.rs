//! The contract between the decision and the program types it runs on: the [`Hook`] trait,
//! the [`Action`] the decision asks for and the [`Nat`] rewrite it describes.
//!
//! Dependencies go one way: `lb.rs` (the decision, and `run`, which drives a packet through a
//! hook) sees the hooks only through this file; each attach type lives in a file of its own
//! (`xdp.rs`, `tc.rs`) that implements [`Hook`] and never sees `lb.rs`; `main.rs` holds the
//! entry points that tie the two together.
//!
//! Adding a hook type (say cgroup socket programs): write one file beside `xdp.rs` and `tc.rs`
//! (`sock.rs`) with a type that wraps the program's context and implements [`Hook`]: its
//! verdicts, the packet bounds, where a rewritten packet goes ([`Hook::route`], asked before
//! anything is written, so a hook may decline a packet it cannot finish) and how it is sent
//! ([`Hook::send`]), how it rewrites a [`Nat`], which source a flow to another node takes
//! ([`Hook::snat_source`]) and how, or whether ([`Hook::CAN_REJECT`]), it rejects. It imports
//! this file (and `parse`, `fib`, `reject`, `stats` as it needs them), never `lb`. Then declare
//! the module in `main.rs` and add an entry point there that calls `lb::run` on it. A hook
//! that sees a socket address rather than a packet (cgroup `connect4`, `sendmsg4`) has nothing
//! for `run` to parse: it needs a second driver beside `run` in `lb.rs`, which builds the
//! [`Headers`] from the address and calls `decide`; the hook's file still only implements
//! [`Hook`], its `rewrite` writing the address back.

use lb_common::verdict::{Path, Reason};

use crate::parse::Headers;

/// A program type the load balancer runs on.
pub trait Hook {
    type Verdict: Copy;
    /// Where a rewritten packet goes, as [`Hook::route`] found it before anything was written,
    /// for [`Hook::send`].
    type Route: Copy;
    /// Let the packet continue (to the next program or the stack).
    const PASS: Self::Verdict;
    const DROP: Self::Verdict;
    /// The hook sits on a node device (traffic from outside and from other nodes), not on a
    /// pod's interface: new flows to backends on other nodes are SNATed ([`Hook::snat_source`]).
    const NODE_DEVICE: bool;
    /// The hook runs in front of another program of this load balancer that sees every packet
    /// it passes (XDP on a node device, in front of tc): it counts only the packets it
    /// finishes itself, so each packet's verdict is counted once, by the program that decided
    /// it.
    const ACCELERATOR: bool = false;
    fn start(&self) -> usize;
    fn end(&self) -> usize;
    /// Length of the whole packet.
    fn len(&self) -> u64;
    /// Makes the headers directly readable, where the hook needs that.
    fn prepare(&self) {}
    /// Where packet `h` goes once rewritten by `nat`, asked before the decision writes any
    /// state (conntrack, affinity, counters). `Err(path)`: this hook cannot finish the packet
    /// and leaves it untouched for the next program, counted under `path` (the XDP
    /// accelerator, which only sends what it can send itself).
    fn route(&self, h: &Headers, nat: &Nat) -> Result<Self::Route, Path>;
    /// Rewrites the destination and/or source address and port of a parsed packet, with
    /// checksums.
    fn rewrite(&self, h: &Headers, nat: &Nat) -> Option<()>;
    /// Sends the rewritten packet along `route`, counting the path it takes; returns its
    /// verdict.
    fn send(&self, h: &Headers, route: &Self::Route) -> Self::Verdict;
    /// The source address a new flow from `h` to `backend_addr` takes when the backend is on
    /// another node: this node's address on the route to it. Asked on node devices only.
    fn snat_source(&self, _h: &Headers, _backend_addr: u32) -> Option<u32> {
        None
    }
    /// Whether [`Hook::reject`] can send a reply from this hook.
    const CAN_REJECT: bool = true;
    /// The hook sees traffic from this node's pods (it is on pod interfaces): frontends with
    /// a pod-scoped variant (`FE_F_POD_SCOPE`) serve it with that one.
    const FROM_PODS: bool = false;
    /// Turns the packet into an ICMP port unreachable to its sender and returns the verdict
    /// that sends it back.
    fn reject(&self, h: &Headers) -> Option<Self::Verdict>;
}

/// What the decision asks the hook to do with the packet, and under which reason it counts.
pub enum Action<R> {
    Pass(Reason),
    Drop(Reason),
    /// Answer with ICMP port unreachable.
    Reject(Reason),
    /// Leave the packet untouched for the next program: nothing was written, nothing is counted
    /// but the path.
    Leave(Path),
    /// Rewrite by the [`Nat`], then send along the route [`Hook::route`] gave.
    Rewrite(Reason, Nat, R),
}

/// The rewrite of a packet: its destination, its source, or both; checksums follow.
///
/// Plain fields rather than `Option`s: every register the program spills must be initialised,
/// and LLVM spills an `Option`'s payload even when it is `None`.
#[derive(Clone, Copy)]
pub struct Nat {
    /// Rewrite the destination to (`dst_addr`, `dst_port`).
    pub dst: bool,
    /// Rewrite the source to (`src_addr`, `src_port`).
    pub src: bool,
    pub dst_addr: u32,
    pub dst_port: u16,
    pub src_port: u16,
    pub src_addr: u32,
}

impl Nat {
    /// A destination rewrite; `with_src` adds a source rewrite.
    #[inline(always)]
    pub fn dnat(addr: u32, port: u16) -> Self {
        Nat {
            dst: true,
            src: false,
            dst_addr: addr,
            dst_port: port,
            src_port: 0,
            src_addr: 0,
        }
    }

    /// The source rewrite of a reply.
    #[inline(always)]
    pub fn snat(addr: u32, port: u16) -> Self {
        Nat {
            dst: false,
            src: true,
            dst_addr: 0,
            dst_port: 0,
            src_port: port,
            src_addr: addr,
        }
    }

    /// Adds a source rewrite.
    #[inline(always)]
    pub fn with_src(mut self, addr: u32, port: u16) -> Self {
        self.src = true;
        self.src_addr = addr;
        self.src_port = port;
        self
    }

    /// Adds a destination rewrite.
    #[inline(always)]
    pub fn with_dst(mut self, addr: u32, port: u16) -> Self {
        self.dst = true;
        self.dst_addr = addr;
        self.dst_port = port;
        self
    }
}

/// One side's rewrite: where its address and port are in the packet, and their old and new
/// values (raw).
#[derive(Clone, Copy)]
pub struct Change {
    pub addr_off: usize,
    pub port_off: usize,
    pub old_addr: u32,
    pub new_addr: u32,
    pub old_port: u16,
    pub new_port: u16,
}

/// The destination rewrite of `nat` (meaningful when `nat.dst`).
#[inline(always)]
pub fn dst_change(h: &Headers, nat: &Nat) -> Change {
    Change {
        addr_off: h.l3_off + 16,
        port_off: h.l4_off + 2,
        old_addr: h.daddr,
        new_addr: nat.dst_addr,
        old_port: h.dport,
        new_port: nat.dst_port,
    }
}

/// The source rewrite of `nat` (meaningful when `nat.src`).
#[inline(always)]
pub fn src_change(h: &Headers, nat: &Nat) -> Change {
    Change {
        addr_off: h.l3_off + 12,
        port_off: h.l4_off,
        old_addr: h.saddr,
        new_addr: nat.src_addr,
        old_port: h.sport,
        new_port: nat.src_port,
    }
}
