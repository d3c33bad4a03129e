//! The fixture every packet test runs on: programs and maps in a private bpffs, programmed
//! through the agent's own map writer, and the frontends and verdicts the tests speak of. Every
//! `lb_agent` name the tests use is imported here, and only here.

use std::net::{Ipv4Addr, SocketAddr};

use lb_agent::{
    dataplane::{Dataplane, MapSizes},
    entries::{self, Capacity, Entries, Ids},
    plan::Plan,
};
pub use lb_agent::{
    dataplane::{HookKind, Pinned},
    maglev,
    plan::{Frontend, FrontendKind, OnEmpty, Protocol, SourceRange},
};
use lb_common::verdict::Reason;
use lb_tests::BpffsGuard;

use crate::packets::VIP;

/// Program return values, as BPF_PROG_TEST_RUN reports them.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_PASS: u32 = -1i32 as u32;
pub const TC_DROP: u32 = 2;

/// Every program the load balancer attaches: tc, and XDP on NICs, veth NICs and pods.
pub const HOOKS: [HookKind; 4] = [
    HookKind::Tc,
    HookKind::Xdp,
    HookKind::XdpVeth,
    HookKind::XdpPod,
];

/// The verdict that lets a packet continue on `hook`.
pub fn pass(hook: HookKind) -> u32 {
    if hook == HookKind::Tc {
        TC_PASS
    } else {
        XDP_PASS
    }
}

/// The verdict that drops a packet on `hook`.
pub fn drop_(hook: HookKind) -> u32 {
    if hook == HookKind::Tc {
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
        source_ranges: Vec::new(),
        local_backends: Vec::new(),
    }
}

/// Programs and maps in a private bpffs, programmed through the agent's map writer.
pub struct Fixture {
    pub bpffs: BpffsGuard,
    pub dp: Dataplane,
    ids: Ids,
    pub current: Entries,
}

impl Fixture {
    pub fn new(frontends: Vec<Frontend>) -> Self {
        let bpffs = BpffsGuard::new("pkt").expect("bpffs");
        let sizes = MapSizes {
            frontends: 64,
            slots: 1024,
            backends: 256,
            conntrack: 4096,
        };
        let dp = Dataplane::load(bpffs.path(), sizes, aya::programs::XdpMode::Default)
            .expect("load programs");
        let ids = Ids::new(Capacity {
            frontends: 64,
            backends: 256,
        });
        let mut f = Self {
            bpffs,
            dp,
            ids,
            current: Entries::default(),
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

    pub fn run(&mut self, hook: HookKind, pkt: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; pkt.len() + 256];
        let r = self.dp.test_run(hook, pkt, &mut out, 1).expect("test run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
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
