//! The entries of one frontend key: its key, ids, slots (a Maglev table or a plain list of its
//! backends), backends and source ranges; and the Maglev tables frontends share.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use lb_common::maps::{
    Backend, Frontend, FrontendKey, Slot, SlotKey, BE_F_LOCAL, FE_F_POD_SCOPE, FE_F_REJECT_EMPTY,
    FE_F_SOURCE_RANGES, NODEPORT_ANY_ADDR, SCOPE_ANY, SCOPE_PODS,
};

use super::{
    ids::{BackendIdent, Ids},
    proto_number, raw_port, raw_v4, Entries, Skipped, SrcRangeEntry,
};
use crate::{
    maglev,
    plan::{self, FrontendKind, OnEmpty, Protocol, Scope},
};

/// The entries one frontend key contributes, as built from its winning claimant.
#[derive(Clone, Debug)]
pub(super) struct Built {
    pub(super) frontend: Frontend,
    /// Backend ids in the plan's order of the backends.
    pub(super) backend_ids: Vec<u32>,
    /// (backend id, backend), in the same order.
    pub(super) backends: Vec<(u32, Backend)>,
    /// None: the slots are `backend_ids` as they are.
    pub(super) maglev: Option<MaglevSlots>,
    pub(super) src_ranges: Vec<SrcRangeEntry>,
}

/// A frontend's Maglev table and the backend list it was built for.
#[derive(Clone, Debug)]
pub(super) struct MaglevSlots {
    pub(super) backends: Vec<SocketAddr>,
    /// Indices into the frontend's `backend_ids`, one per slot.
    pub(super) table: Arc<[u32]>,
}

impl Built {
    pub(super) fn write_to(&self, key: FrontendKey, out: &mut Entries) {
        let id = self.frontend.id;
        out.frontends.insert(key, self.frontend);
        for (bid, b) in &self.backends {
            out.backends.insert(*bid, *b);
        }
        let slot = |i: usize| match &self.maglev {
            Some(m) => self.backend_ids[m.table[i] as usize],
            None => self.backend_ids[i],
        };
        for i in 0..self.frontend.slot_count as usize {
            out.slots.insert(
                SlotKey {
                    frontend_id: id,
                    slot: i as u32,
                },
                Slot {
                    backend_id: slot(i),
                },
            );
        }
        for r in &self.src_ranges {
            out.src_ranges.insert(*r);
        }
    }
}

/// Maglev tables by backend list, shared by the frontends that use them (a Service's NodePort,
/// LoadBalancer and external IP frontends of one port have the same backends), with how many
/// built frontends use each.
#[derive(Clone, Debug, Default)]
pub(super) struct MaglevCache {
    pub(super) tables: MaglevTables,
}

/// Maglev tables by backend list.
pub(super) type MaglevTables = HashMap<Vec<SocketAddr>, SharedTable>;

/// A Maglev table and how many built frontends use it.
#[derive(Clone, Debug)]
pub(super) struct SharedTable {
    pub(super) table: Arc<[u32]>,
    pub(super) users: usize,
}

impl MaglevCache {
    /// The table for `backends` (non-empty), built if no frontend uses it yet; `warm` holds
    /// tables from before a rebuild.
    fn take(&mut self, backends: &[SocketAddr], warm: &MaglevTables) -> Arc<[u32]> {
        if let Some(shared) = self.tables.get_mut(backends) {
            shared.users += 1;
            return shared.table.clone();
        }
        let t = match warm.get(backends) {
            Some(shared) => shared.table.clone(),
            None => {
                let names: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
                maglev::build(&names, maglev::table_size(names.len())).into()
            }
        };
        self.tables.insert(
            backends.to_vec(),
            SharedTable {
                table: t.clone(),
                users: 1,
            },
        );
        t
    }

    pub(super) fn release(&mut self, backends: &[SocketAddr]) {
        if let Some(shared) = self.tables.get_mut(backends) {
            shared.users -= 1;
            if shared.users == 0 {
                self.tables.remove(backends);
            }
        }
    }
}

/// The map key of a plan frontend, or why the dataplane cannot serve it. A NodePort's
/// unspecified address becomes [`NODEPORT_ANY_ADDR`], its scope [`SCOPE_ANY`] or
/// [`SCOPE_PODS`].
pub fn frontend_key(fe: &plan::Frontend) -> Result<FrontendKey, Skipped> {
    let IpAddr::V4(ip) = fe.ip else {
        return Err(Skipped::Ipv6 {
            service: fe.service.clone(),
            ip: fe.ip,
            port: fe.port,
            protocol: fe.protocol,
        });
    };
    if fe.protocol == Protocol::Sctp {
        return Err(Skipped::Sctp {
            service: fe.service.clone(),
            ip: fe.ip,
            port: fe.port,
        });
    }
    Ok(FrontendKey {
        addr_be: if ip.is_unspecified() {
            NODEPORT_ANY_ADDR
        } else {
            raw_v4(ip)
        },
        port_be: raw_port(fe.port),
        proto: proto_number(fe.protocol),
        scope: match fe.scope {
            Scope::Any => SCOPE_ANY,
            Scope::Pods => SCOPE_PODS,
        },
    })
}

/// The entries of `fe` under `key`, taking ids through `ids`; `pod_scope`: a [`SCOPE_PODS`]
/// entry with the same address, port and protocol is planned ([`FE_F_POD_SCOPE`]). On failure
/// nothing is built; the ids taken stay assigned until the caller releases what no key uses.
pub(super) fn build(
    fe: &plan::Frontend,
    key: FrontendKey,
    pod_scope: bool,
    ids: &mut Ids,
    maglev_cache: &mut MaglevCache,
    warm: &MaglevTables,
) -> Result<Built, Skipped> {
    let proto = key.proto;
    let id = match ids.frontend_ids.get(&key) {
        Some(id) => *id,
        None => {
            let id = ids.frontends.take().ok_or_else(|| Skipped::FrontendsFull {
                service: fe.service.clone(),
                ip: fe.ip,
                port: fe.port,
                capacity: ids.frontends.capacity,
            })?;
            ids.frontend_ids.insert(key, id);
            id
        }
    };
    let mut backend_ids = Vec::with_capacity(fe.backends.len());
    let mut backends = Vec::with_capacity(fe.backends.len());
    for b in &fe.backends {
        let SocketAddr::V4(b4) = b else {
            return Err(Skipped::FamilyMismatch {
                service: fe.service.clone(),
                backend: *b,
            });
        };
        let ident = BackendIdent {
            frontend_id: id,
            addr_be: raw_v4(*b4.ip()),
            port_be: raw_port(b4.port()),
            proto,
        };
        let bid = match ids.backend_ids.get(&ident) {
            Some(id) => *id,
            None => {
                let bid = ids.backends.take().ok_or_else(|| Skipped::BackendsFull {
                    service: fe.service.clone(),
                    backend: *b,
                    capacity: ids.backends.capacity,
                })?;
                ids.backend_ids.insert(ident, bid);
                bid
            }
        };
        let flags = if fe.local_backends.contains(b) {
            BE_F_LOCAL
        } else {
            0
        };
        backends.push((
            bid,
            Backend {
                frontend_id: id,
                addr_be: ident.addr_be,
                port_be: ident.port_be,
                proto,
                flags,
            },
        ));
        backend_ids.push(bid);
    }
    // ClusterIP traffic is seen whole by the client's node, and conntrack keeps each flow on
    // its backend: a plain list of the backends is the table. Traffic from outside may reach
    // any node (an external load balancer spreads it): there every node must pick the same
    // backend for a flow, and a backend change must move few flows: a Maglev table.
    let maglev = if fe.kind == FrontendKind::ClusterIP || backend_ids.is_empty() {
        None
    } else {
        let table = maglev_cache.take(&fe.backends, warm);
        Some(MaglevSlots {
            backends: fe.backends.clone(),
            table,
        })
    };
    let slot_count = match &maglev {
        Some(m) => m.table.len(),
        None => backend_ids.len(),
    } as u32;
    let mut flags = match fe.on_empty {
        Some(OnEmpty::Reject) => FE_F_REJECT_EMPTY,
        _ => 0,
    };
    if pod_scope {
        flags |= FE_F_POD_SCOPE;
    }
    let mut src_ranges = Vec::new();
    let enforce = fe.kind == FrontendKind::LoadBalancer
        || (fe.kind == FrontendKind::NodePort && ids.nodeport_source_ranges);
    if enforce && !fe.source_ranges.is_empty() {
        flags |= FE_F_SOURCE_RANGES;
        for r in &fe.source_ranges {
            if let IpAddr::V4(a) = r.addr {
                src_ranges.push(SrcRangeEntry {
                    frontend_id: id,
                    addr_be: raw_v4(a),
                    prefix_len: r.prefix_len,
                });
            }
        }
    }
    Ok(Built {
        frontend: Frontend {
            id,
            slot_count,
            flags,
            affinity_timeout_s: fe.affinity_timeout_seconds.unwrap_or(0),
        },
        backend_ids,
        backends,
        maglev,
        src_ranges,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        entries::{
            desired, diff, dump,
            testing::{fe, plan, CAP},
            Capacity, MapOp,
        },
        plan::{Plan, SourceRange},
    };

    /// Test that frontends the dataplane cannot serve yet are reported, not programmed.
    #[test]
    fn ipv6_and_sctp_frontends_are_skipped_with_a_reason() {
        let mut ids = Ids::new(CAP);
        let (e, skipped) = desired(
            &plan(vec![
                fe("fd00::10", 80, Protocol::Tcp, &["[fd00::1]:80"]),
                fe("10.96.0.1", 80, Protocol::Sctp, &["10.244.0.1:80"]),
                fe("10.96.0.2", 80, Protocol::Tcp, &["10.244.0.1:80"]),
            ]),
            &mut ids,
        );
        assert_eq!(skipped.len(), 2);
        assert!(skipped[0].to_string().contains("IPv6"));
        assert!(skipped[1].to_string().contains("SCTP"));
        assert_eq!(e.frontends.len(), 1);
    }

    /// Test that external frontends get a Maglev table of prime size and ClusterIP frontends a
    /// plain list, both over the same backend ids.
    #[test]
    fn external_frontends_get_a_maglev_table_cluster_ips_a_list() {
        let backends: Vec<std::net::SocketAddr> =
            ["10.244.0.1:80", "10.244.1.1:80", "10.244.2.1:80"]
                .iter()
                .map(|b| b.parse().unwrap())
                .collect();
        let mk = |kind, ip: &str, port| plan::Frontend {
            service: "ns/svc".into(),
            port_name: String::new(),
            kind,
            ip: ip.parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
            backends: backends.clone(),
            on_empty: None,
            affinity_timeout_seconds: None,
            scope: Scope::Any,
            source_ranges: Vec::new(),
            local_backends: Vec::new(),
        };
        let p = Plan {
            frontends: vec![
                mk(FrontendKind::ClusterIP, "10.96.0.1", 80),
                mk(FrontendKind::NodePort, "192.168.0.10", 30080),
            ],
        };
        let mut ids = Ids::new(Capacity {
            frontends: 8,
            backends: 8,
        });
        let (e, _) = desired(&p, &mut ids);
        let counts: Vec<u32> = e.frontends.values().map(|f| f.slot_count).collect();
        assert!(counts.contains(&3) && counts.contains(&509), "{counts:?}");
        let np = e.frontends.values().find(|f| f.slot_count == 509).unwrap();
        let mut share = BTreeMap::new();
        for slot in 0..509 {
            let s = e.slots[&SlotKey {
                frontend_id: np.id,
                slot,
            }];
            *share.entry(s.backend_id).or_insert(0) += 1;
        }
        assert_eq!(share.len(), 3);
        assert!(share.values().all(|n| (169..=170).contains(n)), "{share:?}");
    }

    /// Test that loadBalancerSourceRanges are programmed for LoadBalancer frontends only, and
    /// for NodePorts when asked, written before the frontend that needs them.
    #[test]
    fn source_ranges_guard_load_balancer_frontends_and_nodeports_on_request() {
        let mk = |kind, ip: &str| plan::Frontend {
            service: "ns/svc".into(),
            port_name: String::new(),
            kind,
            ip: ip.parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            backends: vec!["10.244.0.1:80".parse().unwrap()],
            on_empty: None,
            affinity_timeout_seconds: None,
            scope: Scope::Any,
            source_ranges: vec![SourceRange::parse("192.168.7.0/24").unwrap()],
            local_backends: Vec::new(),
        };
        let p = Plan {
            frontends: vec![
                mk(FrontendKind::LoadBalancer, "203.0.113.7"),
                mk(FrontendKind::NodePort, "172.18.0.10"),
            ],
        };
        let cap = Capacity {
            frontends: 8,
            backends: 8,
        };
        let flagged = |e: &Entries| {
            e.frontends
                .values()
                .filter(|f| f.flags & FE_F_SOURCE_RANGES != 0)
                .count()
        };
        let (e, _) = desired(&p, &mut Ids::new(cap));
        assert_eq!((flagged(&e), e.src_ranges.len()), (1, 1));
        assert!(
            dump(&e).contains("source-range 1 192.168.7.0/24"),
            "{}",
            dump(&e)
        );
        let mut ids = Ids::new(cap);
        ids.nodeport_source_ranges = true;
        let (e2, _) = desired(&p, &mut ids);
        assert_eq!((flagged(&e2), e2.src_ranges.len()), (2, 2));
        let ops = diff(&Entries::default(), &e2);
        let first_frontend = ops
            .iter()
            .position(|o| matches!(o, MapOp::PutFrontend(..)))
            .unwrap();
        let last_range = ops
            .iter()
            .rposition(|o| matches!(o, MapOp::PutSrcRange(..)))
            .unwrap();
        assert!(last_range < first_frontend, "{ops:?}");
    }
}
