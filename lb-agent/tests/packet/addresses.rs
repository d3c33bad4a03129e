//! Where frontends answer: NodePorts on this node's NodePort addresses (`LB_NODE_ADDRS`) and
//! nowhere else, and the externalTrafficPolicy Local short-circuit, which sends the pods'
//! packets to an external address to another set than the same packets from outside.

use std::net::Ipv4Addr;

use lb_common::verdict::{Path, Reason};

use crate::{
    fixture::{
        drop_, frontend, pass, Fixture, Frontend, FrontendKind, HookKind, OnEmpty, Protocol, Scope,
    },
    packets::{dst_of, tcp, udp, CLIENT},
};

/// This node's address, a NodePort address.
const NODE_IP: [u8; 4] = [172, 18, 0, 10];
/// Another address of the network, not this node's.
const OTHER_IP: [u8; 4] = [172, 18, 0, 99];
/// A client outside the cluster.
const OUTSIDE: [u8; 4] = [172, 18, 0, 100];
/// A load-balancer IP.
const LB_IP: [u8; 4] = [203, 0, 113, 50];
/// The backend on this node (the Local set) and the one on another node.
const LOCAL_BACKEND: &str = "10.244.0.11:8080";
const REMOTE_BACKEND: &str = "10.244.1.11:8080";

/// Pod interfaces' hooks and the node devices' tc. (The XDP accelerator in front of it finds the
/// same frontends; in the fixture's namespace, without routes, it leaves every packet to tc,
/// counted as `xdp_pass_tc` when it found a frontend.)
const POD_HOOKS: [HookKind; 2] = [HookKind::Tc, HookKind::XdpPod];
const NODE_HOOKS: [HookKind; 1] = [HookKind::TcNic];

fn external(kind: FrontendKind, ip: [u8; 4], port: u16, backends: &[&str]) -> Frontend {
    let mut fe = frontend(port, Protocol::Tcp, backends);
    fe.kind = kind;
    fe.ip = Ipv4Addr::from(ip).into();
    fe
}

/// Test that a NodePort frontend (address 0.0.0.0) answers, on every hook, for TCP and UDP,
/// on exactly the addresses in LB_NODE_ADDRS: an address added later is served, one removed
/// is not, nor is another address or 0.0.0.0 itself.
#[test]
fn node_ports_answer_on_the_node_port_addresses_only() {
    let tcp_np = external(FrontendKind::NodePort, [0; 4], 30080, &[LOCAL_BACKEND]);
    let mut udp_np = frontend(30053, Protocol::Udp, &["10.244.0.11:5353"]);
    udp_np.kind = FrontendKind::NodePort;
    udp_np.ip = Ipv4Addr::UNSPECIFIED.into();
    let mut f = Fixture::new(vec![tcp_np, udp_np]);
    f.node_addresses(&[NODE_IP]);
    let mut sport = 40000;
    let mut to = |f: &mut Fixture, hook, dst: [u8; 4], udp_too: bool| {
        sport += 1;
        let (verdict, out) = f.run(hook, &tcp(OUTSIDE, sport, dst, 30080, true));
        assert_eq!(verdict, pass(hook), "{hook:?}");
        let tcp_to = dst_of(&out).to_string();
        if !udp_too {
            return (tcp_to, String::new());
        }
        let (_, out) = f.run(hook, &udp(OUTSIDE, sport, dst, 30053));
        (tcp_to, dst_of(&out).to_string())
    };
    for hook in POD_HOOKS.into_iter().chain(NODE_HOOKS) {
        assert_eq!(
            to(&mut f, hook, NODE_IP, true),
            (LOCAL_BACKEND.to_string(), "10.244.0.11:5353".to_string()),
            "{hook:?}"
        );
        assert_eq!(to(&mut f, hook, OTHER_IP, false).0, "172.18.0.99:30080");
        assert_eq!(to(&mut f, hook, [0; 4], false).0, "0.0.0.0:30080");
    }
    assert_eq!(f.verdict(Reason::PassNoService), 6);
    // The accelerator: a frontend only on the NodePort address.
    for (dst, found) in [(NODE_IP, 1), (OTHER_IP, 0), ([0; 4], 0)] {
        let before = f.path(Path::XdpPassTc);
        let pkt = tcp(OUTSIDE, 40100, dst, 30080, true);
        assert_eq!(f.run(HookKind::Xdp, &pkt), (pass(HookKind::Xdp), pkt));
        assert_eq!(f.path(Path::XdpPassTc), before + found, "{dst:?}");
    }
    f.node_addresses(&[NODE_IP, OTHER_IP]);
    assert_eq!(
        to(&mut f, HookKind::TcNic, OTHER_IP, false).0,
        LOCAL_BACKEND
    );
    f.node_addresses(&[OTHER_IP]);
    assert_eq!(
        to(&mut f, HookKind::TcNic, NODE_IP, false).0,
        "172.18.0.10:30080"
    );
    assert_eq!(f.verdict(Reason::PassNoService), 7);
}

/// Test the externalTrafficPolicy Local short-circuit: a pod's packet to the NodePort and to
/// the load-balancer IP of such a Service goes to its pods-scope frontend, the Cluster set
/// (here a backend on another node), while the same packet from outside, arriving on a node
/// device, goes to the Local set (the NodePort's backend on this node) or, without one, is
/// dropped. A frontend address that is not this node's own (the load-balancer IP) needs no
/// NodePort address.
#[test]
fn pods_and_outside_clients_of_a_local_policy_service_reach_different_sets() {
    let pods_twin = |mut fe: Frontend, backends: &[&str]| {
        fe.scope = Scope::Pods;
        fe.backends = backends.iter().map(|b| b.parse().unwrap()).collect();
        fe.on_empty = None;
        fe
    };
    let np = external(FrontendKind::NodePort, [0; 4], 30081, &[LOCAL_BACKEND]);
    let mut lb = external(FrontendKind::LoadBalancer, LB_IP, 80, &[]);
    lb.on_empty = Some(OnEmpty::Drop);
    let mut f = Fixture::new(vec![
        pods_twin(np.clone(), &[REMOTE_BACKEND]),
        np,
        pods_twin(lb.clone(), &[REMOTE_BACKEND]),
        lb,
    ]);
    f.node_addresses(&[NODE_IP]);
    for (i, hook) in POD_HOOKS.into_iter().enumerate() {
        let sport = 41000 + i as u16;
        let (verdict, out) = f.run(hook, &tcp(CLIENT, sport, NODE_IP, 30081, true));
        assert_eq!(verdict, pass(hook), "{hook:?}");
        assert_eq!(
            dst_of(&out).to_string(),
            REMOTE_BACKEND,
            "{hook:?}: NodePort"
        );
        let (verdict, out) = f.run(hook, &tcp(CLIENT, sport + 100, LB_IP, 80, true));
        assert_eq!(verdict, pass(hook), "{hook:?}");
        assert_eq!(dst_of(&out).to_string(), REMOTE_BACKEND, "{hook:?}: LB IP");
    }
    for (i, hook) in NODE_HOOKS.into_iter().enumerate() {
        let sport = 42000 + i as u16;
        let (verdict, out) = f.run(hook, &tcp(OUTSIDE, sport, NODE_IP, 30081, true));
        assert_eq!(verdict, pass(hook), "{hook:?}");
        assert_eq!(
            dst_of(&out).to_string(),
            LOCAL_BACKEND,
            "{hook:?}: NodePort"
        );
        let (verdict, _) = f.run(hook, &tcp(OUTSIDE, sport, LB_IP, 80, true));
        assert_eq!(
            verdict,
            drop_(hook),
            "{hook:?}: LB IP without a local endpoint"
        );
    }
    // The accelerator: the NodePort found (left to tc here), the LB IP dropped as by tc.
    let pkt = tcp(OUTSIDE, 42100, NODE_IP, 30081, true);
    assert_eq!(f.run(HookKind::Xdp, &pkt), (pass(HookKind::Xdp), pkt));
    assert_eq!(f.path(Path::XdpPassTc), 1);
    let (verdict, _) = f.run(HookKind::Xdp, &tcp(OUTSIDE, 42100, LB_IP, 80, true));
    assert_eq!(
        verdict,
        drop_(HookKind::Xdp),
        "LB IP without a local endpoint"
    );
    assert_eq!(f.verdict(Reason::DnatNew), 5);
    assert_eq!(f.verdict(Reason::DropNoBackend), 2);
}
