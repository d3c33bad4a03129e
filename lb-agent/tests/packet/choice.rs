//! Backend choice for new flows: sessionAffinity ClientIP, spread without it, and the Maglev
//! table the agent builds.

use std::net::{Ipv4Addr, SocketAddr};

use crate::{
    fixture::{frontend, maglev, Fixture, FrontendKind, HookKind, Protocol, HOOKS},
    packets::{assert_checksums, dst_of, octets, tcp, CLIENT, VIP},
};

/// Test that with sessionAffinity ClientIP every new flow of a client goes to the client's
/// backend, other clients are still spread, and a removed backend ends the affinity.
#[test]
fn client_ip_affinity_keeps_a_clients_new_flows_on_one_backend() {
    let backends = ["10.244.0.11:8080", "10.244.0.12:8080", "10.244.0.13:8080"];
    let mut fe = frontend(80, Protocol::Tcp, &backends);
    fe.affinity_timeout_seconds = Some(10800);
    let mut f = Fixture::new(vec![fe.clone()]);
    for hook in HOOKS {
        let first = dst_of(&f.run(hook, &tcp(CLIENT, 30000, VIP, 80, true)).1);
        for port in 30001..30040u16 {
            let (_, out) = f.run(hook, &tcp(CLIENT, port, VIP, 80, true));
            assert_eq!(dst_of(&out), first, "{hook:?} port {port}");
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in 1..=60u8 {
        let (_, out) = f.run(HookKind::Tc, &tcp([10, 244, 1, c], 1000, VIP, 80, true));
        seen.insert(dst_of(&out));
    }
    assert_eq!(seen.len(), 3, "other clients spread: {seen:?}");
    // Remove the client's backend: its next new flow goes elsewhere and sticks there.
    let mine = dst_of(&f.run(HookKind::Tc, &tcp(CLIENT, 31000, VIP, 80, true)).1);
    fe.backends.retain(|b| *b != mine);
    f.program(vec![fe]);
    let next = dst_of(&f.run(HookKind::Tc, &tcp(CLIENT, 31001, VIP, 80, true)).1);
    assert_ne!(next, mine);
    for port in 31002..31010u16 {
        let (_, out) = f.run(HookKind::Tc, &tcp(CLIENT, port, VIP, 80, true));
        assert_eq!(dst_of(&out), next);
    }
}

/// Test that without affinity one client's flows spread over the backends.
#[test]
fn without_affinity_one_clients_flows_spread() {
    let backends = ["10.244.0.11:8080", "10.244.0.12:8080", "10.244.0.13:8080"];
    let mut f = Fixture::new(vec![frontend(80, Protocol::Tcp, &backends)]);
    let mut seen = std::collections::BTreeSet::new();
    for port in 30000..30060u16 {
        seen.insert(dst_of(
            &f.run(HookKind::Tc, &tcp(CLIENT, port, VIP, 80, true)).1,
        ));
    }
    assert_eq!(seen.len(), 3);
}

/// Test that a client's affinity ends after its timeout: a new flow whose hash points at
/// another backend follows the affinity before the timeout, and its hash after.
#[test]
fn client_ip_affinity_expires_after_its_timeout() {
    let backends = ["10.244.0.11:8080", "10.244.0.12:8080", "10.244.0.13:8080"];
    let mut fe = frontend(80, Protocol::Tcp, &backends);
    fe.affinity_timeout_seconds = Some(1);
    let mut f = Fixture::new(vec![fe]);
    let first = dst_of(&f.run(HookKind::Tc, &tcp(CLIENT, 30000, VIP, 80, true)).1);
    // A client port whose own hash picks another backend than the affinity's.
    let slot_of = |port: u16| {
        let h = lb_common::hash::flow_hash(
            u32::from_ne_bytes(CLIENT),
            u32::from_ne_bytes(VIP),
            port.to_be(),
            80u16.to_be(),
            6,
        );
        backends[lb_common::hash::slot_of(h, 3) as usize]
            .parse::<SocketAddr>()
            .unwrap()
    };
    let (p1, p2) = {
        let mut others = (30001..31000u16).filter(|p| slot_of(*p) != first);
        (others.next().unwrap(), others.next().unwrap())
    };
    let (_, out) = f.run(HookKind::Tc, &tcp(CLIENT, p1, VIP, 80, true));
    assert_eq!(dst_of(&out), first, "within the timeout the affinity wins");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (_, out) = f.run(HookKind::Tc, &tcp(CLIENT, p2, VIP, 80, true));
    assert_eq!(
        dst_of(&out),
        slot_of(p2),
        "after the timeout the flow's hash decides"
    );
}

/// Test that the program picks, for a frontend reached from outside, the backend the Maglev
/// table built by the agent names for the flow's hash: the kernel and the userspace reference
/// model (lb_common's flow hash over lb_agent's Maglev table) agree on every flow.
#[test]
fn external_frontends_choose_the_maglev_tables_backend() {
    const EXT_IP: [u8; 4] = [172, 18, 0, 200];
    let backends: Vec<String> = (1..=5).map(|i| format!("10.244.{i}.7:8080")).collect();
    let refs: Vec<&str> = backends.iter().map(String::as_str).collect();
    let mut fe = frontend(80, Protocol::Tcp, &refs);
    fe.kind = FrontendKind::ExternalIP;
    fe.ip = Ipv4Addr::from(EXT_IP).into();
    let mut f = Fixture::new(vec![fe]);
    let m = maglev::table_size(backends.len());
    let table = maglev::build(&backends, m);
    for port in 20000..20200u16 {
        let h = lb_common::hash::flow_hash(
            u32::from_ne_bytes(CLIENT),
            u32::from_ne_bytes(EXT_IP),
            port.to_be(),
            80u16.to_be(),
            6,
        );
        let want = &backends[table[lb_common::hash::slot_of(h, m) as usize] as usize];
        let (ip, bport) = octets(want);
        let (_, out) = f.run(HookKind::Tc, &tcp(CLIENT, port, EXT_IP, 80, true));
        assert_eq!(
            out,
            tcp(CLIENT, port, ip, bport, true),
            "flow from port {port}"
        );
        assert_checksums(&out);
    }
}
