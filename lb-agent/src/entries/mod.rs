//! From a plan to map entries, and from current entries to the ordered writes that reach the
//! desired ones. Pure: no I/O; the dataplane applies the [`MapOp`]s this module computes.
//!
//! Ids: every frontend (address, port, protocol) and every backend (address, port, protocol)
//! gets a small integer id that stays the same for as long as it exists, so conntrack entries
//! keep pointing at the right backend and per-frontend counters stay with their frontend. An id
//! freed in one sync is reused only in a later one, after the writes that stop using it landed.
//!
//! Two ways to the writes: [`desired`] + [`diff`] recompute and compare everything (start,
//! resync, Node changes); [`Desired`] keeps the desired entries per frontend key, and
//! [`Desired::update`] recomputes only the keys the changed Services claim (now or before),
//! diffing their old entries against their new ones with the same [`diff`], so a change costs
//! in proportion to those Services' entries, and its writes are exactly the ones the full path
//! would emit, in the same order.
//!
//! Files: this one holds the entries and the writes; `ids` the id assignments; `frontend` the
//! entries of one frontend key (its Maglev table or plain list); `desired` the whole desired
//! entries, rebuilt or updated by Service; `diff` the ordered writes between two entries.

mod desired;
mod diff;
mod frontend;
mod ids;
#[cfg(test)]
mod testing;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use lb_common::maps::{
    Backend, Frontend, FrontendKey, Slot, SlotKey, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

use crate::plan::Protocol;

pub use desired::{desired, Desired};
pub use diff::{apply_in_memory, diff, dump};
pub use frontend::frontend_key;
pub use ids::{Capacity, Ids};

/// The content of the service maps: what the kernel holds, or should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entries {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    pub slots: BTreeMap<SlotKey, Slot>,
    pub backends: BTreeMap<u32, Backend>,
    /// loadBalancerSourceRanges.
    pub src_ranges: BTreeSet<SrcRangeEntry>,
}

/// One loadBalancerSourceRanges entry: a source prefix allowed to reach a frontend (an
/// `LB_SRC_RANGES` key). Ordered by frontend id, then prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SrcRangeEntry {
    pub frontend_id: u32,
    /// Prefix address, network order.
    pub addr_be: u32,
    pub prefix_len: u8,
}

/// One map write. [`diff`] orders them so that no packet sees a half-built frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend(u32, Backend),
    PutSlot(SlotKey, Slot),
    /// Allow a source prefix to a frontend.
    PutSrcRange(SrcRangeEntry),
    /// Zero a frontend id's counters before the id is first used.
    ResetStats(u32),
    PutFrontend(FrontendKey, Frontend),
    DelFrontend(FrontendKey),
    DelSlot(SlotKey),
    DelBackend(u32),
    DelSrcRange(SrcRangeEntry),
}

/// Why a plan frontend has no map entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    #[error("{service} {ip}:{port}/{protocol:?}: IPv6 is not handled by the dataplane yet")]
    Ipv6 {
        service: String,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
    },
    #[error("{service} {ip}:{port}/SCTP: SCTP is not handled by the dataplane yet")]
    Sctp {
        service: String,
        ip: IpAddr,
        port: u16,
    },
    #[error("{service}: backend {backend} is IPv6 while the frontend is IPv4")]
    FamilyMismatch {
        service: String,
        backend: SocketAddr,
    },
    #[error("{service} {ip}:{port}: no free frontend id (capacity {capacity})")]
    FrontendsFull {
        service: String,
        ip: IpAddr,
        port: u16,
        capacity: u32,
    },
    #[error("{service}: no free backend id for {backend} (capacity {capacity})")]
    BackendsFull {
        service: String,
        backend: SocketAddr,
        capacity: u32,
    },
}

/// The IP protocol number of a plan protocol.
pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Sctp => PROTO_SCTP,
    }
}

/// Raw (network-order) form of an IPv4 address, as the kernel reads it from packets.
pub fn raw_v4(addr: std::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// Raw (network-order) form of a port.
pub fn raw_port(port: u16) -> u16 {
    port.to_be()
}
