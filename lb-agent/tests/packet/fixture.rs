//! The fixture every packet test runs on: programs and maps in a private bpffs, programmed
//! through the agent's own map writer, and the frontends and verdicts the tests speak of. Every
//! `lb_agent` name the tests use is imported here, and only here.

use std::net::{Ipv4Addr, SocketAddr};

pub use lb_agent::{
    dataplane::{probe, HookKind, Pinned},
    maglev,
    plan::{Frontend, FrontendKind, OnEmpty, Protocol, Scope, SourceRange},
};
use lb_agent::{
    dataplane::{Dataplane, MapSizes},
    entries::{self, Capacity, Entries, Ids},
    host::Host,
    plan::Plan,
};
use lb_common::verdict::Reason;
use lb_tests::BpffsGuard;

use crate::packets::VIP;

/// Program return values, as BPF_PROG_TEST_RUN reports them.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const TC_PASS: u32 = -1i32 as u32;
pub const TC_DROP: u32 = 2;
pub const TC_REDIRECT: u32 = 7;

/// The programs that translate every packet of a flow they see: tc on pod interfaces and on
/// node devices, XDP on pod interfaces. In the fixture's network namespace, which has no
/// routes, tc hands what it rewrote to the stack (it would redirect it along a route).
pub const HOOKS: [HookKind; 3] = [HookKind::Tc, HookKind::TcNic, HookKind::XdpPod];

/// Every program: [`HOOKS`] and the XDP accelerator on node devices, which finishes only what
/// it can send back out of its device (and drops, and rejects) and leaves everything else
/// untouched, and uncounted, for tc.
pub const ALL_HOOKS: [HookKind; 4] = [
    HookKind::Tc,
    HookKind::TcNic,
    HookKind::XdpPod,
    HookKind::Xdp,
];

/// Whether `hook` is a tc program (else XDP).
pub fn is_tc(hook: HookKind) -> bool {
    matches!(hook, HookKind::Tc | HookKind::TcNic)
}

/// Whether `hook` counts the packets it passes (the XDP accelerator leaves that to tc).
pub fn counts_passes(hook: HookKind) -> bool {
    hook != HookKind::Xdp
}

/// The verdict that lets a packet continue on `hook`.
pub fn pass(hook: HookKind) -> u32 {
    if is_tc(hook) {
        TC_PASS
    } else {
        XDP_PASS
    }
}

/// The verdict that drops a packet on `hook`.
pub fn drop_(hook: HookKind) -> u32 {
    if is_tc(hook) {
        TC_DROP
    } else {
        XDP_DROP
    }
}

/// A ClusterIP frontend on [`VIP`]; without backends it rejects.
pub fn frontend(port: u16, protocol: Protocol, backends: &[&str]) -> Frontend {
    Frontend {
        service: "test/svc".into(),
        port_name: String::new(),
        kind: FrontendKind::ClusterIP,
        ip: Ipv4Addr::from(VIP).into(),
        port,
        protocol,
        backends: backends
            .iter()
            .map(|b| b.parse::<SocketAddr>().unwrap())
            .collect(),
        on_empty: backends.is_empty().then_some(OnEmpty::Reject),
        affinity_timeout_seconds: None,
        scope: Default::default(),
        source_ranges: Vec::new(),
        local_backends: Default::default(),
    }
}

/// Programs and maps in a private bpffs, programmed through the agent's map writer, run in a
/// network namespace of their own without routes (or, from [`Fixture::here`], in the calling
/// thread's).
pub struct Fixture {
    pub bpffs: BpffsGuard,
    pub dp: Dataplane,
    ids: Ids,
    pub current: Entries,
    /// Where the programs run (their FIB lookups see its routes); None: the caller's.
    ns: Option<lb_tests::NetNs>,
}

impl Fixture {
    /// The fixture in a network namespace of its own with no routes: every FIB lookup fails,
    /// so the programs' decisions do not depend on the machine's routes.
    pub fn new(frontends: Vec<Frontend>) -> Self {
        let mut f = Self::here(frontends);
        f.ns = Some(lb_tests::NetNs::new("pkt").expect("netns"));
        f
    }

    /// The fixture in the calling thread's network namespace (a test's node namespace).
    pub fn here(frontends: Vec<Frontend>) -> Self {
        let bpffs = BpffsGuard::new("pkt").expect("bpffs");
        let sizes = MapSizes {
            frontends: 64,
            slots: 1024,
            backends: 256,
            conntrack: 4096,
        };
        let dp = Dataplane::load(bpffs.path(), sizes).expect("load programs");
        let ids = Ids::new(Capacity {
            frontends: 64,
            backends: 256,
        });
        let mut f = Self {
            bpffs,
            dp,
            ids,
            current: Entries::default(),
            ns: None,
        };
        f.program(frontends);
        f
    }

    pub fn program(&mut self, frontends: Vec<Frontend>) {
        let (desired, skipped) = entries::desired(&Plan { frontends }, &mut self.ids);
        assert!(skipped.is_empty(), "{skipped:?}");
        let ops = entries::diff(&self.current, &desired);
        self.dp.apply(&ops).expect("apply");
        self.current = desired;
    }

    /// Makes `addrs` this node's NodePort addresses (`LB_NODE_ADDRS`), as the agent writes them.
    pub fn node_addresses(&mut self, addrs: &[[u8; 4]]) {
        let host = Host {
            devices: Default::default(),
            nodeport_addresses: addrs
                .iter()
                .map(|a| (Ipv4Addr::from(*a).into(), 1))
                .collect(),
            ..Host::default()
        };
        self.dp
            .write_host(&host, true)
            .expect("write LB_NODE_ADDRS");
    }

    /// Runs `hook` once on `pkt`: its verdict and the packet it left.
    pub fn run(&mut self, hook: HookKind, pkt: &[u8]) -> (u32, Vec<u8>) {
        self.run_ctx(hook, pkt, None)
    }

    /// [`Fixture::run`] with a context (`struct xdp_md` or `struct __sk_buff`).
    pub fn run_ctx(&mut self, hook: HookKind, pkt: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>) {
        let dp = &mut self.dp;
        let mut go = move || {
            let mut out = vec![0u8; pkt.len() + 256];
            let r = dp
                .test_run_ctx(hook, pkt, &mut out, 1, ctx)
                .expect("test run");
            out.truncate(r.data_size_out as usize);
            (r.return_value, out)
        };
        match &self.ns {
            Some(ns) => ns.enter(go),
            None => go(),
        }
    }

    /// Packets counted under `path`.
    pub fn path(&self, path: lb_common::verdict::Path) -> u64 {
        let p = Pinned::open(self.bpffs.path()).expect("pins");
        p.paths().expect("paths")[path as usize].packets
    }

    pub fn verdict(&self, reason: Reason) -> u64 {
        let p = Pinned::open(self.bpffs.path()).expect("pins");
        p.verdicts().expect("verdicts")[reason as usize].packets
    }

    pub fn verdict_total(&self) -> u64 {
        let p = Pinned::open(self.bpffs.path()).expect("pins");
        p.verdicts()
            .expect("verdicts")
            .iter()
            .map(|c| c.packets)
            .sum()
    }
}
