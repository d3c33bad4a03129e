//! NodePort paths that depend on the FIB (SNAT to a backend behind another node, XDP_TX with
//! the next hop's MACs), run in a node network namespace of their own.

use std::net::Ipv4Addr;

use etherparse::{SlicedPacket, TransportSlice};

use crate::{
    fixture::{frontend, Fixture, FrontendKind, HookKind, Pinned, Protocol, XDP_PASS},
    packets::{assert_checksums, frame},
};

/// A node device in a network namespace of its own, for the FIB-dependent paths: `eth0`
/// (172.18.0.10/24, MAC 02:00:00:00:00:10) with permanent neighbours for another node
/// (172.18.0.11) and an outside client (172.18.0.100), a route to the other node's pods
/// (10.244.1.0/24) through it, and a local pod interface `lxc1` (10.244.0.11/32).
struct NodeNetns {
    ns: lb_tests::NetNs,
    eth0: u32,
}

const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x10];

const OTHER_NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];

const OUTSIDE_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0];

const NODE_IP: [u8; 4] = [172, 18, 0, 10];

const OUTSIDE_IP: [u8; 4] = [172, 18, 0, 100];

impl NodeNetns {
    fn new(tag: &str) -> Self {
        let ns = lb_tests::NetNs::new(tag).unwrap();
        for args in [
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", "wire",
            ][..],
            &["link", "set", "eth0", "address", "02:00:00:00:00:10", "up"],
            &["link", "set", "wire", "up"],
            &["addr", "add", "172.18.0.10/24", "dev", "eth0"],
            &[
                "neigh",
                "add",
                "172.18.0.11",
                "lladdr",
                "02:00:00:00:00:11",
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
            &[
                "neigh",
                "add",
                "172.18.0.100",
                "lladdr",
                "02:00:00:00:01:00",
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
            &[
                "route",
                "add",
                "10.244.1.0/24",
                "via",
                "172.18.0.11",
                "dev",
                "eth0",
            ],
            &[
                "link", "add", "lxc1", "type", "veth", "peer", "name", "pod1",
            ],
            &["link", "set", "lxc1", "up"],
            &["link", "set", "pod1", "up"],
            &["route", "add", "10.244.0.11/32", "dev", "lxc1"],
        ] {
            ns.ip(args).unwrap();
        }
        for key in ["ipv4/conf/all/forwarding", "ipv4/conf/eth0/forwarding"] {
            ns.set_sysctl(key, "1").unwrap();
        }
        let eth0 = ns.ifindex("eth0").unwrap();
        NodeNetns { ns, eth0 }
    }

    /// A `struct xdp_md` for a packet of `len` bytes arriving on eth0.
    fn xdp_ctx(&self, len: usize) -> Vec<u8> {
        [0u32, len as u32, 0, self.eth0, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect()
    }
}

/// Test the NodePort paths that depend on the FIB, with exact bytes and checksums: a flow from
/// outside to a backend behind another node is SNATed to this node's address and a port from
/// the SNAT range and sent back out of the NIC by XDP_TX with the next hop's MACs and TTL - 1;
/// its reply is un-NATed to come from the NodePort and sent to the client the same way; a flow
/// to a backend on this node passes to the stack, unSNATed.
#[test]
fn nodeport_flows_are_snated_and_forwarded_by_the_fib() {
    const XDP_TX: u32 = 3;
    let node = NodeNetns::new("pkt-fib");
    let mut remote = frontend(30080, Protocol::Tcp, &["10.244.1.11:8080"]);
    remote.kind = FrontendKind::NodePort;
    remote.ip = Ipv4Addr::from(NODE_IP).into();
    let mut local = remote.clone();
    local.port = 30081;
    local.backends = vec!["10.244.0.11:8080".parse().unwrap()];
    node.ns.enter(|| {
        let mut f = Fixture::new(vec![remote, local]);
        let mut run = |pkt: &[u8]| {
            let ctx = node.xdp_ctx(pkt.len());
            let mut out = vec![0u8; pkt.len() + 256];
            let r =
                f.dp.test_run_ctx(HookKind::Xdp, pkt, &mut out, 1, Some(&ctx))
                    .expect("test run");
            out.truncate(r.data_size_out as usize);
            (r.return_value, out)
        };
        let client = (OUTSIDE_IP, 45678);
        let to_node = (OUTSIDE_MAC, NODE_MAC);
        let (verdict, out) = run(&frame(to_node, client, (NODE_IP, 30080), 64, true));
        assert_eq!(verdict, XDP_TX);
        let p = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("not TCP")
        };
        let snat_port = t.source_port();
        assert!(
            (61_000..=65_535).contains(&snat_port),
            "SNAT port {snat_port}"
        );
        let want = frame(
            (NODE_MAC, OTHER_NODE_MAC),
            (NODE_IP, snat_port),
            ([10, 244, 1, 11], 8080),
            63,
            true,
        );
        assert_eq!(out, want, "SNATed, routed to the other node");
        assert_checksums(&out);

        let reply = frame(
            (OTHER_NODE_MAC, NODE_MAC),
            ([10, 244, 1, 11], 8080),
            (NODE_IP, snat_port),
            64,
            false,
        );
        let (verdict, out) = run(&reply);
        assert_eq!(verdict, XDP_TX);
        let want = frame((NODE_MAC, OUTSIDE_MAC), (NODE_IP, 30080), client, 63, false);
        assert_eq!(out, want, "reply from the NodePort to the client");
        assert_checksums(&out);

        let (verdict, out) = run(&frame(
            to_node,
            (OUTSIDE_IP, 45679),
            (NODE_IP, 30081),
            64,
            true,
        ));
        assert_eq!(
            verdict, XDP_PASS,
            "a local backend is reached through the stack"
        );
        let want = frame(
            to_node,
            (OUTSIDE_IP, 45679),
            ([10, 244, 0, 11], 8080),
            64,
            true,
        );
        assert_eq!(out, want, "DNAT only: the backend sees the client");
        assert_checksums(&out);

        let pinned = Pinned::open(f.bpffs.path()).unwrap();
        let paths = pinned.paths().unwrap();
        use lb_common::verdict::Path;
        assert_eq!(paths[Path::Tx as usize].packets, 2);
        assert_eq!(paths[Path::PassLocal as usize].packets, 1);
    });
}
