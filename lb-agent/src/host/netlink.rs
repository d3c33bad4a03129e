//! rtnetlink, the little the agent needs of it: one dump each of the links, addresses and routes
//! of this network namespace ([`read`]), and a watch that says when any of them changed
//! ([`watch`]). Requests and messages are built and parsed with `netlink-packet-route`; each
//! attribute is parsed on its own, so one the crate cannot parse (kernels add some) is skipped
//! like any other the agent does not use, and the rest of its message is still read.

use std::io;

use netlink_packet_core::{
    Emitable, ErrorBuffer, ErrorMessage, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, Nla, NlaBuffer, NlasIterator, Parseable, ParseableParametrized, NLMSG_ALIGNTO,
    NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressHeader, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkHeader, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteLwEnCapType, RouteMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, Socket, SocketAddr};
use tokio::sync::mpsc;
use tracing::warn;

use super::{Address, HostView, Link, Route};

/// Multicast groups the watch joins: links, IPv4 and IPv6 addresses, IPv4 and IPv6 routes.
const GROUPS: u32 = (libc::RTMGRP_LINK
    | libc::RTMGRP_IPV4_IFADDR
    | libc::RTMGRP_IPV4_ROUTE
    | libc::RTMGRP_IPV6_IFADDR
    | libc::RTMGRP_IPV6_ROUTE) as u32;

/// The links, addresses and routes (every table) of this network namespace, now.
pub fn read() -> io::Result<HostView> {
    let sock = socket().map_err(|e| context(e, "opening an rtnetlink socket"))?;
    let mut view = HostView::default();
    // Every family (AF_UNSPEC, the default) and no filter: everything.
    let get_links = RouteNetlinkMessage::GetLink(LinkMessage::default());
    dump(&sock, 1, get_links, |m| view.links.extend(parse_link(m)))
        .map_err(|e| context(e, "dumping links"))?;
    let get_addresses = RouteNetlinkMessage::GetAddress(AddressMessage::default());
    dump(&sock, 2, get_addresses, |m| {
        view.addresses.extend(parse_address(m))
    })
    .map_err(|e| context(e, "dumping addresses"))?;
    let get_routes = RouteNetlinkMessage::GetRoute(RouteMessage::default());
    dump(&sock, 3, get_routes, |m| view.routes.extend(parse_route(m)))
        .map_err(|e| context(e, "dumping routes"))?;
    Ok(view)
}

/// A socket that talks to the kernel.
fn socket() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    Ok(sock)
}

/// `e` with `what` in front of its message.
fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Sends `request` as a dump (sequence number `seq`) and hands each reply's payload to `each`
/// until the kernel says it is done. A dump's replies are all of the one type it asked for.
fn dump(
    sock: &Socket,
    seq: u32,
    request: RouteNetlinkMessage,
    mut each: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
    msg.finalize();
    let mut out = vec![0; msg.buffer_len()];
    msg.serialize(&mut out);
    sock.send(&out, 0)?;
    loop {
        let (buf, _) = sock.recv_from_full()?;
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let msg = NetlinkBuffer::new_checked(rest)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            match msg.message_type() {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let error = ErrorBuffer::new_checked(&msg.payload())
                        .and_then(|b| ErrorMessage::parse(&b))
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    return match error.code {
                        Some(_) => Err(error.to_io()),
                        None => Ok(()),
                    };
                }
                NLMSG_NOOP | NLMSG_OVERRUN => {}
                _ => each(msg.payload()),
            }
            let next = (msg.length() as usize).next_multiple_of(NLMSG_ALIGNTO.into());
            rest = rest.get(next..).unwrap_or_default();
        }
    }
}

/// Sends a message on `tx` whenever a link, address or route is added, removed or changed in
/// this network namespace (and when the socket overflowed, so nothing is missed). A full
/// channel already holds a pending change, so bursts collapse into one.
pub fn watch(tx: mpsc::Sender<()>) -> io::Result<tokio::task::JoinHandle<()>> {
    let mut sock = netlink_sys::TokioSocket::new(NETLINK_ROUTE)?;
    sock.socket_mut().bind(&SocketAddr::new(0, GROUPS))?;
    Ok(tokio::spawn(async move {
        loop {
            match sock.recv_from_full().await {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    warn!("netlink watch overflowed; rereading links, addresses and routes");
                }
                Err(e) => {
                    warn!(
                        error = %e,
                        "netlink watch failed; interfaces and addresses are no longer followed"
                    );
                    return;
                }
            }
            let _ = tx.try_send(());
        }
    }))
}

/// The attributes of a message whose fixed header is `header_len` bytes; a malformed one ends
/// them.
fn attributes(message: &[u8], header_len: usize) -> impl Iterator<Item = NlaBuffer<&[u8]>> {
    NlasIterator::new(message.get(header_len..).unwrap_or_default()).map_while(Result::ok)
}

/// An RTM_NEWLINK message: index, ARPHRD type and IFF flags from its header, name, master and
/// kind from its attributes. None without a name.
fn parse_link(message: &[u8]) -> Option<Link> {
    let header = LinkHeader::parse(message).ok()?;
    let mut link = Link {
        index: header.index,
        name: String::new(),
        kind: String::new(),
        link_type: header.link_layer_type.into(),
        flags: header.flags.bits(),
        master: 0,
    };
    // IFLA_LINKINFO's number, as the crate knows it.
    let link_info = LinkAttribute::LinkInfo(Vec::new()).kind();
    for nla in attributes(message, header.buffer_len()) {
        if nla.kind() == link_info {
            // Only IFLA_INFO_KIND, read on its own: the kind-specific data beside it is what
            // new kernels extend, and the kind must not be lost when that fails to parse.
            let kind = NlasIterator::new(nla.value())
                .map_while(Result::ok)
                .find_map(|info| InfoKind::parse(&info).ok());
            link.kind = kind.map(|k| k.to_string()).unwrap_or_default();
            continue;
        }
        match LinkAttribute::parse_with_param(&nla, header.interface_family) {
            Ok(LinkAttribute::IfName(name)) => link.name = name,
            Ok(LinkAttribute::Controller(master)) => link.master = master,
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

/// An RTM_NEWADDR message. IPv4 names the interface's own address in IFA_LOCAL (IFA_ADDRESS is
/// the peer on point-to-point links); IPv6 has IFA_ADDRESS only.
fn parse_address(message: &[u8]) -> Option<Address> {
    let header = AddressHeader::parse(message).ok()?;
    let (mut local, mut address) = (None, None);
    for nla in attributes(message, header.buffer_len()) {
        match AddressAttribute::parse(&nla) {
            Ok(AddressAttribute::Local(a)) => local = Some(a),
            Ok(AddressAttribute::Address(a)) => address = Some(a),
            _ => {}
        }
    }
    Some(Address {
        index: header.index,
        addr: local.or(address)?,
        prefix_len: header.prefix_len,
        scope: header.scope.into(),
    })
}

/// An RTM_NEWROUTE message. A multipath route counts once per next hop's device (and once with
/// none, should the crate fail to parse its next hops).
fn parse_route(message: &[u8]) -> Vec<Route> {
    let Ok(header) = RouteHeader::parse(message) else {
        return Vec::new();
    };
    let mut route = Route {
        index: 0,
        dst: None,
        dst_len: header.destination_prefix_length,
        table: header.table.into(),
        route_type: header.kind.into(),
    };
    // The encapsulation type only matters to RTA_ENCAP, which is not read.
    let param = (header.address_family, header.kind, RouteLwEnCapType::None);
    let mut hops = Vec::new();
    for nla in attributes(message, header.buffer_len()) {
        match RouteAttribute::parse_with_param(&nla, param) {
            Ok(RouteAttribute::Destination(RouteAddress::Inet(a))) => route.dst = Some(a.into()),
            Ok(RouteAttribute::Destination(RouteAddress::Inet6(a))) => route.dst = Some(a.into()),
            Ok(RouteAttribute::Oif(index)) => route.index = index,
            Ok(RouteAttribute::Table(table)) => route.table = table,
            Ok(RouteAttribute::MultiPath(next_hops)) => {
                hops.extend(next_hops.iter().map(|h| h.interface_index));
            }
            _ => {}
        }
    }
    if hops.is_empty() {
        return vec![route];
    }
    hops.into_iter()
        .map(|index| Route {
            index,
            ..route.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::DefaultNla;
    use netlink_packet_route::{
        address::AddressScope,
        link::{LinkFlags, LinkInfo, LinkLayerType},
        route::{RouteNextHop, RouteProtocol, RouteType},
        AddressFamily,
    };

    use super::*;

    /// The bytes of `m`, as the kernel would send them.
    fn bytes(m: &impl Emitable) -> Vec<u8> {
        let mut b = vec![0; m.buffer_len()];
        m.emit(&mut b);
        b
    }

    /// Test that a link message yields its index, name, kind, flags and master.
    #[test]
    fn link_messages_parse() {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.header.link_layer_type = LinkLayerType::Ether;
        m.header.flags = LinkFlags::Up;
        m.attributes = vec![
            LinkAttribute::IfName("vxlan0".into()),
            LinkAttribute::Controller(3),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Vxlan)]),
        ];
        let l = parse_link(&bytes(&m)).unwrap();
        assert_eq!(
            (
                l.index,
                l.name.as_str(),
                l.kind.as_str(),
                l.flags,
                l.master,
                l.link_type
            ),
            (7, "vxlan0", "vxlan", 1, 3, 1)
        );
    }

    /// Test that an attribute the crate cannot parse is skipped and the rest still read, and
    /// that kind-specific link data it cannot parse does not hide the link's kind.
    #[test]
    fn unparsable_link_attributes_are_skipped() {
        // IFLA_MTU of two bytes, and IFLA_INFO_DATA (2) too short for any vxlan attribute.
        let bad_mtu =
            LinkAttribute::Other(DefaultNla::new(LinkAttribute::Mtu(0).kind(), vec![0; 2]));
        let bad_info = LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Other(DefaultNla::new(2, vec![1, 2, 3])),
        ]);
        for bad in [&bad_mtu, &bad_info] {
            let b = bytes(bad);
            let nla = NlaBuffer::new_checked(&b[..]).unwrap();
            assert!(LinkAttribute::parse_with_param(&nla, AddressFamily::Unspec).is_err());
        }
        let mut m = LinkMessage::default();
        m.header.index = 9;
        m.attributes = vec![bad_mtu, LinkAttribute::IfName("vx1".into()), bad_info];
        let l = parse_link(&bytes(&m)).unwrap();
        assert_eq!(
            (l.index, l.name.as_str(), l.kind.as_str()),
            (9, "vx1", "vxlan")
        );
    }

    /// Test that an IPv4 address is read from IFA_LOCAL (not the peer in IFA_ADDRESS) and an
    /// IPv6 one from IFA_ADDRESS, with prefix length, scope and interface.
    #[test]
    fn address_messages_parse() {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = 24;
        m.header.index = 5;
        m.attributes = vec![
            AddressAttribute::Address("10.0.0.2".parse().unwrap()),
            AddressAttribute::Local("10.0.0.1".parse().unwrap()),
        ];
        let a = parse_address(&bytes(&m)).unwrap();
        assert_eq!(a.addr, "10.0.0.1".parse::<std::net::IpAddr>().unwrap());
        assert_eq!((a.index, a.prefix_len, a.scope), (5, 24, 0));
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet6;
        m.header.prefix_len = 64;
        m.header.scope = AddressScope::Link;
        m.header.index = 6;
        m.attributes = vec![AddressAttribute::Address("fe80::1".parse().unwrap())];
        let a = parse_address(&bytes(&m)).unwrap();
        assert_eq!(a.addr, "fe80::1".parse::<std::net::IpAddr>().unwrap());
        assert_eq!((a.index, a.scope), (6, 253));
    }

    /// Test that a default route names its device, RTA_TABLE overrides the header's table
    /// and a multipath route counts once per next hop's device.
    #[test]
    fn route_messages_parse() {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = 254;
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        m.attributes = vec![RouteAttribute::Oif(4)];
        let r = parse_route(&bytes(&m));
        assert_eq!(r.len(), 1);
        assert_eq!(
            (
                r[0].index,
                r[0].dst,
                r[0].dst_len,
                r[0].table,
                r[0].route_type
            ),
            (4, None, 0, 254, 1)
        );
        m.header.table = 252;
        m.attributes.push(RouteAttribute::Table(1000));
        assert_eq!(parse_route(&bytes(&m))[0].table, 1000);
        let hop = |index: u32| {
            let mut h = RouteNextHop::default();
            h.interface_index = index;
            h
        };
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 24;
        m.header.table = 254;
        m.header.kind = RouteType::Unicast;
        m.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet("192.168.5.0".parse().unwrap())),
            RouteAttribute::MultiPath(vec![hop(8), hop(9)]),
        ];
        let r = parse_route(&bytes(&m));
        let idx: Vec<u32> = r.iter().map(|r| r.index).collect();
        assert_eq!(idx, [8, 9]);
        assert_eq!(r[0].dst, Some("192.168.5.0".parse().unwrap()));
        assert_eq!((r[1].dst_len, r[1].table), (24, 254));
    }

    /// Test that a dump of a real namespace reads links (kind, master, flags, type), addresses
    /// (scope) and routes (tables beyond 255, multipath) exactly as set up (needs root).
    #[test]
    fn a_namespace_reads_as_set_up() {
        let ns = lb_tests::NetNs::new("netlink").unwrap();
        for args in [
            "link add v0 type veth peer name v1",
            "link add br0 type bridge",
            "link set v1 master br0",
            "addr add 10.9.0.1/24 dev v0",
            "addr add fd00:9::1/64 dev v0 nodad",
            "addr add 10.9.3.1/24 dev br0",
            "link set v0 up",
            "link set v1 up",
            "link set br0 up",
            "route add default via 10.9.0.2 dev v0",
            "route add 10.9.1.0/24 dev v0 table 1000",
            "route add 10.9.2.0/24 nexthop via 10.9.0.2 dev v0 nexthop via 10.9.3.2 dev br0",
        ] {
            ns.ip(&args.split(' ').collect::<Vec<_>>()).unwrap();
        }
        let [lo, v0, v1, br0] = ["lo", "v0", "v1", "br0"].map(|n| ns.ifindex(n).unwrap());
        let view = ns.enter(read).unwrap();
        let link = |index| view.link(index).unwrap();
        let up = crate::host::IFF_UP;
        assert_eq!(
            (
                link(lo).name.as_str(),
                link(lo).kind.as_str(),
                link(lo).link_type
            ),
            ("lo", "", 772)
        );
        assert_eq!(
            (
                link(v0).name.as_str(),
                link(v0).kind.as_str(),
                link(v0).master,
                link(v0).link_type
            ),
            ("v0", "veth", 0, 1)
        );
        assert_eq!((link(v1).kind.as_str(), link(v1).master), ("veth", br0));
        assert_eq!(link(br0).kind, "bridge");
        assert!(
            [lo, v0, v1, br0].iter().all(|&i| link(i).flags & up != 0),
            "{view:?}"
        );
        assert_eq!(view.links.len(), 4, "{view:?}");
        let address = |index, addr: &str, prefix_len, scope| Address {
            index,
            addr: addr.parse().unwrap(),
            prefix_len,
            scope,
        };
        let mut global: Vec<&Address> = view.addresses.iter().filter(|a| a.scope != 253).collect();
        global.sort_by_key(|a| (a.index, a.addr));
        assert_eq!(
            global,
            [
                &address(lo, "127.0.0.1", 8, 254),
                &address(lo, "::1", 128, 254),
                &address(v0, "10.9.0.1", 24, 0),
                &address(v0, "fd00:9::1", 64, 0),
                &address(br0, "10.9.3.1", 24, 0),
            ]
        );
        assert!(
            view.addresses.iter().any(|a| a.index == v0
                && a.scope == 253
                && matches!(a.addr, std::net::IpAddr::V6(v6) if v6.segments()[0] == 0xfe80)),
            "{view:?}"
        );
        let route = |index, dst: Option<&str>, dst_len, table, route_type| Route {
            index,
            dst: dst.map(|d| d.parse().unwrap()),
            dst_len,
            table,
            route_type,
        };
        for r in [
            route(v0, None, 0, 254, 1),
            route(v0, Some("10.9.0.0"), 24, 254, 1),
            route(v0, Some("10.9.1.0"), 24, 1000, 1),
            route(v0, Some("10.9.2.0"), 24, 254, 1),
            route(br0, Some("10.9.2.0"), 24, 254, 1),
            route(v0, Some("10.9.0.1"), 32, 255, 2),
            route(v0, Some("fd00:9::"), 64, 254, 1),
        ] {
            assert!(view.routes.contains(&r), "{r:?} not in {view:?}");
        }
    }

    /// Test that this namespace can be read (it always has a loopback device).
    #[test]
    fn this_namespace_reads() {
        let view = read().unwrap();
        assert!(view.links.iter().any(|l| l.name == "lo"), "{view:?}");
    }
}
