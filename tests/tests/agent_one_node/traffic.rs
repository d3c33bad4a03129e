//! Traffic through the agent: new TCP connections and UDP flows spread over every backend with
//! either pod hook, a pod created after the agent started, and what `inspect` shows afterwards.

use std::net::{Ipv4Addr, SocketAddr};

use lb_tests::inspect::{backend_addrs, frontend, verdict};
use lb_tests::lab::{backend_addrs_of, echo_service, CLIENT_IP, TCP_TARGET};
use lb_tests::objects::Protocol;
use lb_tests::{Lab, PodHook};

use crate::{MIN_SHARE, SPREAD_FLOWS};

/// Test body: 300 new TCP connections spread over 3 backends, answered from the VIP.
fn tcp_connections_spread(hook: PodHook) {
    let lab = Lab::with_echo("tcp-spread", 3, hook, &[1, 2, 3]);
    // P(a backend under 15% of 300 by luck) <= 3 P(Bin(300, 1/3) <= 44) = 5e-13.
    let spread = lab.client().tcp_spread(echo_service().vip(80), 300);
    spread.assert_spread(&["b1", "b2", "b3"], MIN_SHARE);
}

/// Test body: 300 UDP flows spread over 3 backends, answered from the VIP.
fn udp_flows_spread(hook: PodHook) {
    let lab = Lab::with_echo("udp-spread", 3, hook, &[1, 2, 3]);
    // P(a backend under 15% of 300 by luck) <= 3 P(Bin(300, 1/3) <= 44) = 5e-13.
    let spread = lab.client().udp_spread(echo_service().vip(53), 300);
    spread.assert_spread(&["b1", "b2", "b3"], MIN_SHARE);
}

/// Test that with the tc pod hook, 300 new TCP connections to a ClusterIP spread over all 3
/// backends without a failure, each answered from the VIP and each backend seeing the client's
/// real address.
#[test]
fn tcp_connections_spread_over_all_backends_with_the_tc_hook() {
    tcp_connections_spread(PodHook::Tc);
}

/// Test that with the XDP pod hook, 300 new TCP connections to a ClusterIP spread over all 3
/// backends without a failure, each answered from the VIP and each backend seeing the client's
/// real address.
#[test]
fn tcp_connections_spread_over_all_backends_with_the_xdp_hook() {
    tcp_connections_spread(PodHook::Xdp);
}

/// Test that with the tc pod hook, 300 UDP flows to a ClusterIP spread over all 3 backends, each
/// answer coming from VIP:53 and each backend seeing the client's real address.
#[test]
fn udp_flows_spread_over_all_backends_with_the_tc_hook() {
    udp_flows_spread(PodHook::Tc);
}

/// Test that with the XDP pod hook, 300 UDP flows to a ClusterIP spread over all 3 backends, each
/// answer coming from VIP:53 and each backend seeing the client's real address.
#[test]
fn udp_flows_spread_over_all_backends_with_the_xdp_hook() {
    udp_flows_spread(PodHook::Xdp);
}

/// Test that a pod interface created after the agent started gets the program: a new client pod
/// reaches the Service over TCP and UDP, answered from the VIP, backends seeing its address.
#[test]
fn a_pod_created_after_the_agent_started_reaches_the_service() {
    let mut lab = Lab::with_echo("late", 3, PodHook::Tc, &[1, 2, 3]);
    let svc = echo_service();
    let ifname = lab
        .node
        .add_pod("late", Ipv4Addr::new(10, 244, 0, 30))
        .unwrap()
        .host_ifname()
        .to_string();
    lab.wait_inspect(&format!("a link on {ifname}"), |v| {
        v["links"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["ifname"] == ifname.as_str()))
    });
    let late = lab.node.pod("late").client();
    let all = ["b1", "b2", "b3"];
    // Each check fails by chance with P <= 2.2e-8 (see SPREAD_FLOWS).
    late.tcp_spread(svc.vip(80), SPREAD_FLOWS)
        .assert_spread(&all, MIN_SHARE);
    late.udp_spread(svc.vip(53), SPREAD_FLOWS)
        .assert_spread(&all, MIN_SHARE);
}

/// Test that `lb-agent inspect --json` after traffic shows the frontend with its 3 backends,
/// exactly one new flow per connection made, dnat_new_flow and reverse_nat counts, and both
/// conntrack entries of every connection (client side to the VIP, backend side back).
#[test]
fn inspect_shows_backends_counters_and_conntrack_after_traffic() {
    let lab = Lab::with_echo("inspect", 3, PodHook::Tc, &[1, 2, 3]);
    let svc = echo_service();
    let vip = svc.vip(80);
    let n = 30;
    let mut flows = Vec::new();
    for i in 0..n {
        let r = lab.client().tcp(vip, &format!("inspect-{i}")).unwrap();
        assert_eq!(r.peer, vip);
        let backend = lab.node.pod(&r.identity).addr(TCP_TARGET);
        flows.push((SocketAddr::from((CLIENT_IP, r.local.port())), backend));
    }
    // Every flow must be answered by a backend of the Service; whether 10 flows reach all 3 is
    // chance (they miss one 5% of the time), and the spread tests check the spread.
    let udp = 10;
    lab.client()
        .udp_spread(svc.vip(53), udp)
        .assert_answered_by(&["b1", "b2", "b3"]);

    let v = lab.inspect();
    let fe = frontend(&v, vip, Protocol::Tcp).unwrap();
    assert_eq!(
        backend_addrs(fe),
        backend_addrs_of(&[1, 2, 3], TCP_TARGET)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    assert_eq!(fe["new_flows"], n, "{fe:#}");
    assert!(fe["packets"].as_u64().unwrap() >= 5 * n as u64, "{fe:#}");
    assert!(fe["bytes"].as_u64().unwrap() > 0, "{fe:#}");
    let fe_udp = frontend(&v, svc.vip(53), Protocol::Udp).unwrap();
    assert_eq!(fe_udp["new_flows"], udp, "{fe_udp:#}");
    assert!(verdict(&v, "dnat_new_flow") >= (n + udp) as u64);
    assert!(verdict(&v, "dnat_established") > 0);
    assert!(verdict(&v, "reverse_nat") > 0);
    let ct = v["conntrack"].as_array().unwrap();
    let has = |dir: &str, src: SocketAddr, dst: SocketAddr, nat: SocketAddr| {
        ct.iter().any(|e| {
            e["protocol"] == "TCP"
                && e["direction"] == dir
                && e["src"] == src.to_string().as_str()
                && e["dst"] == dst.to_string().as_str()
                && e["nat"] == nat.to_string().as_str()
        })
    };
    for (client, backend) in &flows {
        assert!(
            has("original", *client, vip, *backend),
            "no original entry {client} -> {vip} nat {backend}"
        );
        assert!(
            has("reply", *backend, *client, vip),
            "no reply entry {backend} -> {client} nat {vip}"
        );
    }
}
