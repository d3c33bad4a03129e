//! The XDP accelerator on a node device, on the paths that depend on the FIB: what it finishes
//! itself (SNAT to a backend behind another node and its reply, sent back out with XDP_TX) and
//! what it leaves untouched, without writing any state, for the tc program behind it (a local
//! backend, a backend behind another device), which then decides the packet alone.

use etherparse::{SlicedPacket, TransportSlice};
use lb_common::verdict::{Path, Reason};

use crate::{
    fixture::{Fixture, HookKind, Pinned, TC_REDIRECT, XDP_PASS, XDP_TX},
    node_netns::{
        nodeport, skb_ctx, xdp_ctx, NodeNetns, LOCAL_POD, NODE_IP, NODE_MAC, OTHER_NODE_MAC,
        OUTSIDE_IP, OUTSIDE_MAC, REMOTE_BACKEND, THIRD_NODE_BACKEND,
    },
    packets::{assert_checksums, frame},
};

/// Test the flows XDP finishes, with exact bytes and checksums: a flow from outside to a backend
/// behind another node, reached back out of the device it came in on, is SNATed to this node's
/// address and a port from the SNAT range and sent back out by XDP_TX with the next hop's MACs
/// and TTL - 1; its reply is un-NATed to come from the NodePort and sent to the client the
/// same way.
#[test]
fn nodeport_flows_to_another_node_are_snated_and_sent_back_out_by_xdp() {
    let node = NodeNetns::new("pkt-xdp");
    node.ns.enter(|| {
        let mut f = Fixture::here(vec![nodeport(30080, REMOTE_BACKEND, false)]);
        let mut run = |pkt: &[u8]| {
            let ctx = xdp_ctx(node.eth0, pkt.len());
            f.run_ctx(HookKind::Xdp, pkt, Some(&ctx))
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
            (REMOTE_BACKEND, 8080),
            63,
            true,
        );
        assert_eq!(out, want, "SNATed, routed to the other node");
        assert_checksums(&out);

        let reply = frame(
            (OTHER_NODE_MAC, NODE_MAC),
            (REMOTE_BACKEND, 8080),
            (NODE_IP, snat_port),
            64,
            false,
        );
        let (verdict, out) = run(&reply);
        assert_eq!(verdict, XDP_TX);
        let want = frame((NODE_MAC, OUTSIDE_MAC), (NODE_IP, 30080), client, 63, false);
        assert_eq!(out, want, "reply from the NodePort to the client");
        assert_checksums(&out);
        assert_eq!(f.path(Path::XdpTx), 2);
        assert_eq!(f.verdict(Reason::DnatNew), 1);
        assert_eq!(f.verdict(Reason::RevNat), 1);
    });
}

/// Test that XDP leaves untouched what it cannot send back out of its device: a flow to a
/// backend on this node (its route leaves by the pod's interface) and one to a backend behind
/// another device, counted as `xdp_pass_tc`, with no conntrack entry, affinity or new flow
/// written and no verdict counted; tc, given the same packet, then decides it alone: DNAT
/// only to the local backend (the client's address kept), SNAT to the other, each redirected,
/// and each counted once.
#[test]
fn xdp_leaves_what_it_cannot_send_back_out_untouched_for_tc() {
    let node = NodeNetns::new("pkt-xdppass");
    node.ns.enter(|| {
        let mut f = Fixture::here(vec![
            nodeport(30081, LOCAL_POD, true),
            nodeport(30082, THIRD_NODE_BACKEND, false),
        ]);
        let to_node = (OUTSIDE_MAC, NODE_MAC);
        for (port, backend) in [(30081, LOCAL_POD), (30082, THIRD_NODE_BACKEND)] {
            let pkt = frame(to_node, (OUTSIDE_IP, 45679), (NODE_IP, port), 64, true);
            let (counted, entries) = (f.verdict_total(), conntrack_entries(&f));
            let ctx = xdp_ctx(node.eth0, pkt.len());
            let (verdict, out) = f.run_ctx(HookKind::Xdp, &pkt, Some(&ctx));
            assert_eq!((verdict, &out), (XDP_PASS, &pkt), "{port}: untouched");
            assert_eq!(conntrack_entries(&f), entries, "{port}: no state");
            assert_eq!(f.verdict_total(), counted, "{port}: tc counts it");

            let ctx = skb_ctx(node.eth0);
            let (verdict, out) = f.run_ctx(HookKind::TcNic, &pkt, Some(&ctx));
            assert_eq!(verdict, TC_REDIRECT, "{port}");
            let p = SlicedPacket::from_ethernet(&out).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
                panic!("not IPv4")
            };
            assert_eq!(ip.header().destination(), backend, "{port}");
            assert_eq!(ip.header().ttl(), 63, "{port}");
            let snat = ip.header().source() != OUTSIDE_IP;
            assert_eq!(
                snat,
                backend != LOCAL_POD,
                "{port}: SNAT only to the other node"
            );
            assert_checksums(&out);
            assert_eq!(f.verdict_total(), counted + 1, "{port}: counted once");
            assert_eq!(conntrack_entries(&f), entries + 2, "{port}: tc's flow");
        }
        let pinned = Pinned::open(f.bpffs.path()).unwrap();
        for fe in f.current.frontends.values() {
            assert_eq!(pinned.frontend_stats(fe.id).unwrap().new_flows, 1);
        }
        assert_eq!(f.path(Path::XdpPassTc), 2);
        assert_eq!(f.path(Path::TcRedirect), 2);
        assert_eq!(f.path(Path::XdpTx), 0);
    });
}

/// The number of conntrack entries.
fn conntrack_entries(f: &Fixture) -> usize {
    let pinned = Pinned::open(f.bpffs.path()).unwrap();
    pinned.conntrack().unwrap().len()
}
