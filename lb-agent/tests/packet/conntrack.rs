//! Conntrack: flows keep their backend across backend changes, and flows from one client port
//! to two Services sharing a backend stay apart (port remap, reply key take-over).

use std::net::{Ipv4Addr, SocketAddr};

use lb_common::verdict::Reason;

use crate::{
    fixture::{frontend, pass, Fixture, HookKind, Protocol, HOOKS},
    packets::{assert_checksums, dst_of, src_of, tcp, tcp_fin, udp, CLIENT, VIP},
};

/// The second frontend's address in the tests of two frontends sharing a backend.
const VIP2: [u8; 4] = [10, 96, 0, 20];

/// Two TCP frontends, VIP:80 and VIP2:80, with the one backend 10.244.0.11:8080.
fn two_frontends_one_backend() -> Fixture {
    let mut second = frontend(80, Protocol::Tcp, &["10.244.0.11:8080"]);
    second.service = "test/other".into();
    second.ip = Ipv4Addr::from(VIP2).into();
    Fixture::new(vec![
        frontend(80, Protocol::Tcp, &["10.244.0.11:8080"]),
        second,
    ])
}

/// Test that two live flows from one client port to two Services sharing a backend stay apart:
/// the second one's source port is remapped (its reply key would be the first one's), both
/// replies are reverse-NATed to their own frontend and the client's own port, and the first
/// flow's retransmitted SYN is not remapped.
#[test]
fn flows_from_one_client_port_to_two_frontends_sharing_a_backend_stay_apart() {
    let backend = [10, 244, 0, 11];
    for hook in HOOKS {
        let mut f = two_frontends_one_backend();

        let (_, out) = f.run(hook, &tcp(CLIENT, 40000, VIP, 80, true));
        assert_eq!(out, tcp(CLIENT, 40000, backend, 8080, true), "{hook:?}");
        let (verdict, out) = f.run(hook, &tcp(CLIENT, 40000, VIP2, 80, true));
        assert_eq!(verdict, pass(hook), "{hook:?}");
        let (src, port) = src_of(&out);
        assert_eq!(src, CLIENT, "{hook:?}: the source address stays");
        assert!(
            (lb_common::maps::SNAT_PORT_MIN..=lb_common::maps::SNAT_PORT_MAX).contains(&port),
            "{hook:?}: remapped port {port}"
        );
        assert_eq!(out, tcp(CLIENT, port, backend, 8080, true), "{hook:?}");
        assert_checksums(&out);
        assert_eq!(f.verdict(Reason::DnatNewPortRemap), 1, "{hook:?}");

        // The second flow's next packet takes the same port; the first flow's SYN again keeps
        // the client's own.
        let (_, out) = f.run(hook, &tcp(CLIENT, 40000, VIP2, 80, false));
        assert_eq!(out, tcp(CLIENT, port, backend, 8080, false), "{hook:?}");
        let (_, out) = f.run(hook, &tcp(CLIENT, 40000, VIP, 80, true));
        assert_eq!(out, tcp(CLIENT, 40000, backend, 8080, true), "{hook:?}");

        let (verdict, out) = f.run(hook, &tcp(backend, 8080, CLIENT, 40000, false));
        assert_eq!(verdict, pass(hook), "{hook:?}");
        assert_eq!(
            out,
            tcp(VIP, 80, CLIENT, 40000, false),
            "{hook:?}: first reply"
        );
        let (verdict, out) = f.run(hook, &tcp(backend, 8080, CLIENT, port, false));
        assert_eq!(verdict, pass(hook), "{hook:?}");
        assert_eq!(
            out,
            tcp(VIP2, 80, CLIENT, 40000, false),
            "{hook:?}: second reply"
        );
        assert_checksums(&out);
        assert_eq!(f.verdict(Reason::RevNat), 2, "{hook:?}");
    }
}

/// Test how a new connection from a reused client port treats the reply key of an earlier one
/// to another Service sharing the backend: while the earlier one is closed only one way (the
/// client's FIN) it keeps the key, the new one is remapped and the backend's FIN still reaches
/// the earlier one's client; once closed both ways its key is taken over (as the kernel's NAT
/// reuses TIME_WAIT tuples), the client keeps its port and replies come from the new Service.
#[test]
fn a_new_connection_takes_over_the_reply_key_of_a_connection_closed_both_ways() {
    let backend = [10, 244, 0, 11];
    for hook in HOOKS {
        let mut f = two_frontends_one_backend();

        // Closed one way: remapped, and the earlier connection still gets its FIN.
        f.run(hook, &tcp(CLIENT, 41000, VIP, 80, true));
        f.run(hook, &tcp_fin(CLIENT, 41000, VIP, 80));
        let (_, out) = f.run(hook, &tcp(CLIENT, 41000, VIP2, 80, true));
        let (_, port) = src_of(&out);
        assert_ne!(port, 41000, "{hook:?}: remapped while half closed");
        let (_, out) = f.run(hook, &tcp_fin(backend, 8080, CLIENT, 41000));
        assert_eq!(
            out,
            tcp_fin(VIP, 80, CLIENT, 41000),
            "{hook:?}: the FIN of the first"
        );

        // Closed both ways: taken over.
        f.run(hook, &tcp(CLIENT, 41001, VIP, 80, true));
        f.run(hook, &tcp_fin(CLIENT, 41001, VIP, 80));
        f.run(hook, &tcp_fin(backend, 8080, CLIENT, 41001));
        let (_, out) = f.run(hook, &tcp(CLIENT, 41001, VIP2, 80, true));
        assert_eq!(
            out,
            tcp(CLIENT, 41001, backend, 8080, true),
            "{hook:?}: own port kept"
        );
        assert_eq!(f.verdict(Reason::DnatNewPortRemap), 1, "{hook:?}");
        let (_, out) = f.run(hook, &tcp(backend, 8080, CLIENT, 41001, false));
        assert_eq!(
            out,
            tcp(VIP2, 80, CLIENT, 41001, false),
            "{hook:?}: reply from the new one"
        );
    }
}

/// Test that tracked flows keep their backend when backends are added; that when their backend
/// is removed, TCP connections stay with it (as with kube-proxy: a terminating pod finishes its
/// connections) while UDP flows move to a live backend.
#[test]
fn conntrack_keeps_flows_on_their_backend_and_moves_udp_off_a_removed_one() {
    let two = ["10.244.0.11:8080", "10.244.0.12:8080"];
    let five = [
        "10.244.0.11:8080",
        "10.244.0.12:8080",
        "10.244.0.13:8080",
        "10.244.0.14:8080",
        "10.244.0.15:8080",
    ];
    let mut f = Fixture::new(vec![
        frontend(80, Protocol::Tcp, &two),
        frontend(80, Protocol::Udp, &two),
    ]);
    let pkt = |udp_: bool, port: u16| {
        if udp_ {
            udp(CLIENT, port, VIP, 80)
        } else {
            tcp(CLIENT, port, VIP, 80, true)
        }
    };
    // Many flows, so that some would hash elsewhere once the table changes.
    let mut chosen = Vec::new();
    for udp_ in [false, true] {
        for port in 41000..41040u16 {
            let (_, out) = f.run(HookKind::Tc, &pkt(udp_, port));
            chosen.push(dst_of(&out));
        }
    }
    f.program(vec![
        frontend(80, Protocol::Tcp, &five),
        frontend(80, Protocol::Udp, &five),
    ]);
    let mut i = 0;
    for udp_ in [false, true] {
        for port in 41000..41040u16 {
            let (_, out) = f.run(HookKind::Tc, &pkt(udp_, port));
            assert_eq!(dst_of(&out), chosen[i], "flow {port} moved");
            i += 1;
        }
    }
    assert_eq!(f.verdict(Reason::DnatEstablished), 80);
    // Remove 10.244.0.11.
    f.program(vec![
        frontend(80, Protocol::Tcp, &five[1..]),
        frontend(80, Protocol::Udp, &five[1..]),
    ]);
    let mut i = 0;
    for udp_ in [false, true] {
        for port in 41000..41040u16 {
            let (_, out) = f.run(HookKind::Tc, &pkt(udp_, port));
            let now = dst_of(&out);
            let was = chosen[i];
            i += 1;
            if udp_ && was.ip() == std::net::Ipv4Addr::new(10, 244, 0, 11) {
                assert_ne!(now.ip(), was.ip(), "UDP flow {port} kept a removed backend");
                assert!(five[1..]
                    .iter()
                    .any(|b| b.parse::<SocketAddr>().unwrap().ip() == now.ip()));
            } else {
                assert_eq!(now.ip(), was.ip(), "flow {port} (udp {udp_}) moved");
            }
        }
    }
}
