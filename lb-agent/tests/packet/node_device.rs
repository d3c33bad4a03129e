//! tc on node devices and pod interfaces, on the paths that depend on the FIB: SNAT decided by
//! where the backend is (not by the device its route leaves by), the SNAT address taken from
//! the backend's route, every rewritten packet redirected out of the device its route names,
//! and what goes to the stack instead.

use etherparse::{SlicedPacket, TransportSlice};
use lb_common::verdict::{Path, Reason};

use crate::{
    fixture::{Fixture, HookKind, TC_PASS, TC_REDIRECT},
    node_netns::{
        nodeport, skb_ctx, NodeNetns, LOCAL_POD, NODE_IP, NODE_IP2, NODE_MAC, OUTSIDE_IP,
        OUTSIDE_MAC, POD_GATEWAY, REMOTE_BACKEND, THIRD_NODE_BACKEND,
    },
    packets::{assert_checksums, frame},
};

/// The client as the frames below carry it.
const CLIENT: ([u8; 4], u16) = (OUTSIDE_IP, 45678);
/// Frames from the outside client to this node.
const TO_NODE: ([u8; 6], [u8; 6]) = (OUTSIDE_MAC, NODE_MAC);

/// The source port of a TCP frame.
fn sport(out: &[u8]) -> u16 {
    let p = SlicedPacket::from_ethernet(out).unwrap();
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!("not TCP")
    };
    t.source_port()
}

/// Test that tc on a node device SNATs a flow from outside to a backend on another node to this
/// node's address on the backend's route (eth0's for a backend through eth0, eth1's for one
/// through eth1) and a port from the SNAT range, DNATs it, decrements the TTL and redirects it
/// (the MACs are the neighbour subsystem's, at transmit); and that the reply, arriving on the
/// device the flow left by, is un-NATed to come from the NodePort and redirected to the client.
#[test]
fn tc_snats_flows_to_other_nodes_to_the_address_of_the_backends_route() {
    let node = NodeNetns::new("pkt-tcsnat");
    node.ns.enter(|| {
        let mut f = Fixture::here(vec![
            nodeport(30080, REMOTE_BACKEND, false),
            nodeport(30082, THIRD_NODE_BACKEND, false),
        ]);
        for (port, backend, source, device) in [
            (30080, REMOTE_BACKEND, NODE_IP, node.eth0),
            (30082, THIRD_NODE_BACKEND, NODE_IP2, node.eth1),
        ] {
            let pkt = frame(TO_NODE, CLIENT, (NODE_IP, port), 64, true);
            let (verdict, out) = f.run_ctx(HookKind::TcNic, &pkt, Some(&skb_ctx(node.eth0)));
            assert_eq!(verdict, TC_REDIRECT, "{port}");
            let snat_port = sport(&out);
            assert!(
                (61_000..=65_535).contains(&snat_port),
                "{port}: {snat_port}"
            );
            let want = frame(TO_NODE, (source, snat_port), (backend, 8080), 63, true);
            assert_eq!(
                out, want,
                "{port}: SNAT to the route's source, DNAT, TTL - 1"
            );
            assert_checksums(&out);

            let reply = frame(
                (OUTSIDE_MAC, NODE_MAC),
                (backend, 8080),
                (source, snat_port),
                64,
                false,
            );
            let (verdict, out) = f.run_ctx(HookKind::TcNic, &reply, Some(&skb_ctx(device)));
            assert_eq!(verdict, TC_REDIRECT, "{port}: reply");
            let want = frame((OUTSIDE_MAC, NODE_MAC), (NODE_IP, port), CLIENT, 63, false);
            assert_eq!(out, want, "{port}: reply from the NodePort to the client");
            assert_checksums(&out);
        }
        assert_eq!(f.verdict(Reason::DnatNew), 2);
        assert_eq!(f.verdict(Reason::RevNat), 2);
        assert_eq!(f.path(Path::TcRedirect), 4);
    });
}

/// Test that SNAT follows where the backend is, not the device its route leaves by: a backend
/// on this node reached back out of eth0 (as an overlay or a second NIC could route it) is only
/// DNATed, keeping the client's address; a backend on another node routed through the pod
/// interface is SNATed (to that interface's address); and tc on a pod interface never SNATs a
/// pod's flow to another node.
#[test]
fn snat_follows_where_the_backend_is_not_its_routes_device() {
    let node = NodeNetns::new("pkt-tclocal");
    node.ns.enter(|| {
        let mut f = Fixture::here(vec![
            nodeport(30083, REMOTE_BACKEND, true),
            nodeport(30084, LOCAL_POD, false),
            nodeport(30085, REMOTE_BACKEND, false),
        ]);
        let ctx = skb_ctx(node.eth0);
        let pkt = frame(TO_NODE, CLIENT, (NODE_IP, 30083), 64, true);
        let (verdict, out) = f.run_ctx(HookKind::TcNic, &pkt, Some(&ctx));
        assert_eq!(verdict, TC_REDIRECT);
        let want = frame(TO_NODE, CLIENT, (REMOTE_BACKEND, 8080), 63, true);
        assert_eq!(out, want, "local: DNAT only");

        let pkt = frame(TO_NODE, CLIENT, (NODE_IP, 30084), 64, true);
        let (verdict, out) = f.run_ctx(HookKind::TcNic, &pkt, Some(&ctx));
        assert_eq!(verdict, TC_REDIRECT);
        let want = frame(
            TO_NODE,
            (POD_GATEWAY, sport(&out)),
            (LOCAL_POD, 8080),
            63,
            true,
        );
        assert_eq!(out, want, "not local: SNAT to the route's source");
        assert_checksums(&out);

        // A pod's flow to the same frontend, on the pod hook: DNAT only.
        let from_pod = frame(TO_NODE, (LOCAL_POD, 40000), (NODE_IP, 30085), 64, true);
        let (verdict, out) = f.run_ctx(HookKind::Tc, &from_pod, Some(&skb_ctx(node.lxc1)));
        assert_eq!(verdict, TC_REDIRECT);
        let want = frame(
            TO_NODE,
            (LOCAL_POD, 40000),
            (REMOTE_BACKEND, 8080),
            63,
            true,
        );
        assert_eq!(out, want, "pod traffic keeps its source");
        assert_checksums(&out);
    });
}

/// Test that a pod balanced to itself through its node's NodePort (hairpin) is redirected back
/// into its own interface, from the hairpin address, and so is its reply, from the NodePort:
/// the stack would drop the reply, whose source is this node's address, as a martian.
#[test]
fn a_pod_balanced_to_itself_through_a_nodeport_is_redirected_back_into_its_interface() {
    const HAIRPIN: [u8; 4] = lb_common::maps::HAIRPIN_ADDR;
    let node = NodeNetns::new("pkt-tchairpin");
    node.ns.enter(|| {
        let mut f = Fixture::here(vec![nodeport(30086, LOCAL_POD, true)]);
        let ctx = skb_ctx(node.lxc1);
        let macs = (OUTSIDE_MAC, NODE_MAC);
        let pkt = frame(macs, (LOCAL_POD, 40001), (NODE_IP, 30086), 64, true);
        let (verdict, out) = f.run_ctx(HookKind::Tc, &pkt, Some(&ctx));
        assert_eq!(verdict, TC_REDIRECT);
        let want = frame(macs, (HAIRPIN, 40001), (LOCAL_POD, 8080), 63, true);
        assert_eq!(out, want);
        let reply = frame(macs, (LOCAL_POD, 8080), (HAIRPIN, 40001), 64, false);
        let (verdict, out) = f.run_ctx(HookKind::Tc, &reply, Some(&ctx));
        assert_eq!(verdict, TC_REDIRECT);
        let want = frame(macs, (NODE_IP, 30086), (LOCAL_POD, 40001), 63, false);
        assert_eq!(out, want);
        assert_checksums(&out);
    });
}

/// Test what tc hands to the stack, counted by path: a backend at this node's own address (a
/// hostNetwork pod: the FIB does not forward to it), and a packet whose TTL is 1 (the stack
/// answers with time exceeded); both still translated.
#[test]
fn tc_hands_local_destinations_and_expiring_packets_to_the_stack() {
    let node = NodeNetns::new("pkt-tcstack");
    node.ns.enter(|| {
        let mut f = Fixture::here(vec![
            nodeport(30087, NODE_IP, true),
            nodeport(30088, LOCAL_POD, true),
        ]);
        let ctx = skb_ctx(node.eth0);
        let pkt = frame(TO_NODE, CLIENT, (NODE_IP, 30087), 64, true);
        let (verdict, out) = f.run_ctx(HookKind::TcNic, &pkt, Some(&ctx));
        assert_eq!(verdict, TC_PASS);
        assert_eq!(out, frame(TO_NODE, CLIENT, (NODE_IP, 8080), 64, true));
        assert_eq!(f.path(Path::TcStackNotForwarded), 1);

        let pkt = frame(TO_NODE, CLIENT, (NODE_IP, 30088), 1, true);
        let (verdict, out) = f.run_ctx(HookKind::TcNic, &pkt, Some(&ctx));
        assert_eq!(verdict, TC_PASS);
        assert_eq!(out, frame(TO_NODE, CLIENT, (LOCAL_POD, 8080), 1, true));
        assert_eq!(f.path(Path::TcStackFib), 1);
        assert_eq!(f.path(Path::TcRedirect), 0);
    });
}
