//! rtnetlink, the little the agent needs of it: one dump each of the links, addresses and routes
//! of this network namespace ([`read`]), and a watch that says when any of them changed
//! ([`watch`]). Messages are parsed by hand (nlmsghdr, ifinfomsg, ifaddrmsg, rtmsg, rtattr, as
//! `linux/rtnetlink.h` lays them out); anything not understood is skipped.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, Socket, SocketAddr};
use tokio::sync::mpsc;
use tracing::warn;

use super::{Address, HostView, Link, Route};

/// Multicast groups the watch joins: links, IPv4 and IPv6 addresses, IPv4 and IPv6 routes
/// (`RTMGRP_LINK`, `RTMGRP_IPV4_IFADDR`, `RTMGRP_IPV4_ROUTE`, `RTMGRP_IPV6_IFADDR`,
/// `RTMGRP_IPV6_ROUTE`).
const GROUPS: u32 = 0x1 | 0x10 | 0x40 | 0x100 | 0x400;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;

const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;

const NLMSG_HDR_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const RTMSG_LEN: usize = 12;

/// The links, addresses and routes (every table) of this network namespace, now.
pub fn read() -> io::Result<HostView> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut view = HostView::default();
    for (seq, request) in [RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE]
        .into_iter()
        .enumerate()
    {
        dump(&sock, request, seq as u32 + 1, |kind, payload| match kind {
            RTM_NEWLINK => view.links.extend(parse_link(payload)),
            RTM_NEWADDR => view.addresses.extend(parse_address(payload)),
            RTM_NEWROUTE => view.routes.extend(parse_route(payload)),
            _ => {}
        })?;
    }
    Ok(view)
}

/// Sends a dump request of type `request` (every family) and hands each reply message to
/// `each` until the kernel says it is done.
fn dump(sock: &Socket, request: u16, seq: u32, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
    let body_len = match request {
        RTM_GETLINK => IFINFOMSG_LEN,
        RTM_GETADDR => IFADDRMSG_LEN,
        _ => RTMSG_LEN,
    };
    let len = NLMSG_HDR_LEN + body_len;
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&request.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // Family AF_UNSPEC (0) and zeroes: everything.
    msg.resize(len, 0);
    sock.send(&msg, 0)?;
    loop {
        let (buf, _) = sock.recv_from_full()?;
        let mut rest = &buf[..];
        while rest.len() >= NLMSG_HDR_LEN {
            let len = u32_at(rest, 0) as usize;
            let kind = u16_at(rest, 4);
            if len < NLMSG_HDR_LEN || len > rest.len() {
                break;
            }
            let payload = &rest[NLMSG_HDR_LEN..len];
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(
                        payload
                            .get(..4)
                            .and_then(|b| b.try_into().ok())
                            .unwrap_or([0; 4]),
                    );
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    return Ok(());
                }
                _ => each(kind, payload),
            }
            rest = &rest[align(len).min(rest.len())..];
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

fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .map_or(0, |s| u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// Netlink's 4-byte alignment.
fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// The attributes (type without the nested/byte-order bits, data) in `b`.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16_at(b, 0));
        let kind = u16_at(b, 2) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let data = &b[4..len];
        b = &b[align(len).min(b.len())..];
        Some((kind, data))
    })
}

/// A NUL-terminated string attribute.
fn string(data: &[u8]) -> String {
    let end = data.iter().position(|&c| c == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// An address attribute of family `family` (AF_INET 2, AF_INET6 10).
fn ip(family: u8, data: &[u8]) -> Option<IpAddr> {
    match (family, data.len()) {
        (2, 4) => Some(IpAddr::V4(Ipv4Addr::new(
            data[0], data[1], data[2], data[3],
        ))),
        (10, 16) => {
            let octets: [u8; 16] = data.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

/// An RTM_NEWLINK payload: ifinfomsg {family, pad, type u16, index i32, flags u32, change u32}.
fn parse_link(p: &[u8]) -> Option<Link> {
    if p.len() < IFINFOMSG_LEN {
        return None;
    }
    let mut link = Link {
        index: u32_at(p, 4),
        name: String::new(),
        kind: String::new(),
        link_type: u16_at(p, 2),
        flags: u32_at(p, 8),
        master: 0,
    };
    for (kind, data) in attrs(&p[IFINFOMSG_LEN..]) {
        match kind {
            IFLA_IFNAME => link.name = string(data),
            IFLA_MASTER => link.master = u32_at(data, 0),
            IFLA_LINKINFO => {
                for (k, d) in attrs(data) {
                    if k == IFLA_INFO_KIND {
                        link.kind = string(d);
                    }
                }
            }
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

/// An RTM_NEWADDR payload: ifaddrmsg {family, prefixlen, flags, scope, index u32}. IPv4 names
/// the interface's own address in IFA_LOCAL (IFA_ADDRESS is the peer on point-to-point links).
fn parse_address(p: &[u8]) -> Option<Address> {
    if p.len() < IFADDRMSG_LEN {
        return None;
    }
    let family = p[0];
    let (mut local, mut address) = (None, None);
    for (kind, data) in attrs(&p[IFADDRMSG_LEN..]) {
        match kind {
            IFA_LOCAL => local = ip(family, data),
            IFA_ADDRESS => address = ip(family, data),
            _ => {}
        }
    }
    Some(Address {
        index: u32_at(p, 4),
        addr: local.or(address)?,
        prefix_len: p[1],
        scope: p[3],
    })
}

/// An RTM_NEWROUTE payload: rtmsg {family, dst_len, src_len, tos, table, protocol, scope, type,
/// flags u32}. A multipath route counts once per next hop's device.
fn parse_route(p: &[u8]) -> Vec<Route> {
    if p.len() < RTMSG_LEN {
        return Vec::new();
    }
    let family = p[0];
    let mut route = Route {
        index: 0,
        dst: None,
        dst_len: p[1],
        table: u32::from(p[4]),
        route_type: p[7],
    };
    let mut hops = Vec::new();
    for (kind, data) in attrs(&p[RTMSG_LEN..]) {
        match kind {
            RTA_DST => route.dst = ip(family, data),
            RTA_OIF => route.index = u32_at(data, 0),
            RTA_TABLE => route.table = u32_at(data, 0),
            RTA_MULTIPATH => {
                // rtnexthop {len u16, flags u8, hops u8, ifindex i32} then its attributes.
                let mut rest = data;
                while rest.len() >= 8 {
                    let len = usize::from(u16_at(rest, 0));
                    if len < 8 || len > rest.len() {
                        break;
                    }
                    hops.push(u32_at(rest, 4));
                    rest = &rest[align(len).min(rest.len())..];
                }
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
    use super::*;

    fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(4 + data.len() as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(data);
        v.resize(align(v.len()), 0);
        v
    }

    /// Test that a link message yields its index, name, kind, flags and master.
    #[test]
    fn link_messages_parse() {
        let mut p = vec![0u8, 0];
        p.extend_from_slice(&1u16.to_ne_bytes());
        p.extend_from_slice(&7u32.to_ne_bytes());
        p.extend_from_slice(&1u32.to_ne_bytes());
        p.extend_from_slice(&0u32.to_ne_bytes());
        p.extend(attr(IFLA_IFNAME, b"vxlan0\0"));
        p.extend(attr(IFLA_MASTER, &3u32.to_ne_bytes()));
        p.extend(attr(IFLA_LINKINFO, &attr(IFLA_INFO_KIND, b"vxlan\0")));
        let l = parse_link(&p).unwrap();
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

    /// Test that an IPv4 address is read from IFA_LOCAL (not the peer in IFA_ADDRESS) and an
    /// IPv6 one from IFA_ADDRESS, with prefix length, scope and interface.
    #[test]
    fn address_messages_parse() {
        let mut p = vec![2u8, 24, 0, 0];
        p.extend_from_slice(&5u32.to_ne_bytes());
        p.extend(attr(IFA_ADDRESS, &[10, 0, 0, 2]));
        p.extend(attr(IFA_LOCAL, &[10, 0, 0, 1]));
        let a = parse_address(&p).unwrap();
        assert_eq!(a.addr, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((a.index, a.prefix_len, a.scope), (5, 24, 0));
        let mut p = vec![10u8, 64, 0, 253];
        p.extend_from_slice(&6u32.to_ne_bytes());
        let mut v6 = [0u8; 16];
        v6[0] = 0xfe;
        v6[1] = 0x80;
        v6[15] = 1;
        p.extend(attr(IFA_ADDRESS, &v6));
        let a = parse_address(&p).unwrap();
        assert_eq!(a.addr, "fe80::1".parse::<IpAddr>().unwrap());
        assert_eq!((a.index, a.scope), (6, 253));
    }

    /// Test that a default route names its device and a multipath route each next hop's.
    #[test]
    fn route_messages_parse() {
        let mut p = vec![2u8, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        p.extend(attr(RTA_OIF, &4u32.to_ne_bytes()));
        let r = parse_route(&p);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].index, r[0].dst_len, r[0].table, r[0].route_type),
            (4, 0, 254, 1)
        );
        let hop = |index: u32| {
            let mut h = Vec::new();
            h.extend_from_slice(&8u16.to_ne_bytes());
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(&index.to_ne_bytes());
            h
        };
        let mut hops = hop(8);
        hops.extend(hop(9));
        let mut p = vec![2u8, 24, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        p.extend(attr(RTA_DST, &[192, 168, 5, 0]));
        p.extend(attr(RTA_MULTIPATH, &hops));
        let r = parse_route(&p);
        let idx: Vec<u32> = r.iter().map(|r| r.index).collect();
        assert_eq!(idx, [8, 9]);
        assert_eq!(r[0].dst, Some("192.168.5.0".parse().unwrap()));
    }

    /// Test that this namespace can be read (it always has a loopback device).
    #[test]
    fn this_namespace_reads() {
        let view = read().unwrap();
        assert!(view.links.iter().any(|l| l.name == "lo"), "{view:?}");
    }
}
