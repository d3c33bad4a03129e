//! The ordered writes between two entries, their effect on an in-memory copy, and a text dump
//! of entries for golden tests.

use std::collections::BTreeSet;

use super::{Entries, MapOp};

/// The writes that turn `current` into `desired`, in an order that never shows a packet a
/// half-built frontend: backends, then slots and source ranges, then frontends are added or
/// changed; then frontends, slots, backends and source ranges are deleted. A frontend therefore
/// only ever points at slots and backends that exist.
pub fn diff(current: &Entries, desired: &Entries) -> Vec<MapOp> {
    let mut ops = Vec::new();
    for (id, b) in &desired.backends {
        if current.backends.get(id) != Some(b) {
            ops.push(MapOp::PutBackend(*id, *b));
        }
    }
    for (k, s) in &desired.slots {
        if current.slots.get(k) != Some(s) {
            ops.push(MapOp::PutSlot(*k, *s));
        }
    }
    for r in desired.src_ranges.difference(&current.src_ranges) {
        ops.push(MapOp::PutSrcRange(*r));
    }
    let current_ids: BTreeSet<u32> = current.frontends.values().map(|f| f.id).collect();
    for (k, f) in &desired.frontends {
        if current.frontends.get(k) != Some(f) {
            if !current_ids.contains(&f.id) {
                ops.push(MapOp::ResetStats(f.id));
            }
            ops.push(MapOp::PutFrontend(*k, *f));
        }
    }
    for k in current.frontends.keys() {
        if !desired.frontends.contains_key(k) {
            ops.push(MapOp::DelFrontend(*k));
        }
    }
    for k in current.slots.keys() {
        if !desired.slots.contains_key(k) {
            ops.push(MapOp::DelSlot(*k));
        }
    }
    for id in current.backends.keys() {
        if !desired.backends.contains_key(id) {
            ops.push(MapOp::DelBackend(*id));
        }
    }
    for r in current.src_ranges.difference(&desired.src_ranges) {
        ops.push(MapOp::DelSrcRange(*r));
    }
    ops
}

/// Applies `ops` to an in-memory copy, as the kernel maps would change.
pub fn apply_in_memory(entries: &mut Entries, ops: &[MapOp]) {
    for op in ops {
        match op {
            MapOp::PutBackend(id, b) => {
                entries.backends.insert(*id, *b);
            }
            MapOp::PutSlot(k, s) => {
                entries.slots.insert(*k, *s);
            }
            MapOp::ResetStats(_) => {}
            MapOp::PutFrontend(k, f) => {
                entries.frontends.insert(*k, *f);
            }
            MapOp::DelFrontend(k) => {
                entries.frontends.remove(k);
            }
            MapOp::DelSlot(k) => {
                entries.slots.remove(k);
            }
            MapOp::DelBackend(id) => {
                entries.backends.remove(id);
            }
            MapOp::PutSrcRange(r) => {
                entries.src_ranges.insert(*r);
            }
            MapOp::DelSrcRange(r) => {
                entries.src_ranges.remove(r);
            }
        }
    }
}

/// A sorted text dump of map entries, one line each: for golden tests and debugging.
/// Frontends sort by their text; slots and backends by id.
pub fn dump(e: &Entries) -> String {
    use std::fmt::Write as _;
    let addr = |a: u32, p: u16| {
        std::net::SocketAddrV4::new(std::net::Ipv4Addr::from(a.to_ne_bytes()), u16::from_be(p))
    };
    let mut out = String::new();
    let mut lines = Vec::new();
    for (k, f) in &e.frontends {
        lines.push(format!(
            "frontend {}/{} id={} slots={} flags={} affinity={}",
            addr(k.addr_be, k.port_be),
            k.proto,
            f.id,
            f.slot_count,
            f.flags,
            f.affinity_timeout_s
        ));
    }
    lines.sort();
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    for (k, s) in &e.slots {
        let _ = writeln!(out, "slot {}/{} -> {}", k.frontend_id, k.slot, s.backend_id);
    }
    for (id, b) in &e.backends {
        let _ = writeln!(
            out,
            "backend {id} {}/{}",
            addr(b.addr_be, b.port_be),
            b.proto
        );
    }
    for r in &e.src_ranges {
        let _ = writeln!(
            out,
            "source-range {} {}/{}",
            r.frontend_id,
            addr(r.addr_be, 0).ip(),
            r.prefix_len
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use lb_common::maps::SlotKey;

    use super::*;
    use crate::{
        entries::{
            desired,
            testing::{fe, plan, CAP},
            Ids,
        },
        plan::Protocol,
    };

    /// Test that the diff adds backends, slots, then frontends, and deletes in reverse.
    #[test]
    fn diff_orders_writes_so_no_frontend_points_at_missing_entries() {
        let mut ids = Ids::new(CAP);
        let (old, _) = desired(
            &plan(vec![fe(
                "10.96.0.1",
                80,
                Protocol::Tcp,
                &["10.244.0.1:80", "10.244.0.2:80"],
            )]),
            &mut ids,
        );
        let (new, _) = desired(
            &plan(vec![fe("10.96.0.2", 80, Protocol::Tcp, &["10.244.0.3:80"])]),
            &mut ids,
        );
        let ops = diff(&old, &new);
        let rank = |op: &MapOp| match op {
            MapOp::PutBackend(..) => 0,
            MapOp::PutSlot(..) => 1,
            MapOp::PutSrcRange(..) => 1,
            MapOp::ResetStats(_) => 2,
            MapOp::PutFrontend(..) => 3,
            MapOp::DelFrontend(_) => 4,
            MapOp::DelSlot(_) => 5,
            MapOp::DelBackend(_) => 6,
            MapOp::DelSrcRange(..) => 7,
        };
        assert!(
            ops.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
            "{ops:#?}"
        );
        let mut applied = old.clone();
        apply_in_memory(&mut applied, &ops);
        assert_eq!(applied, new);
        assert!(diff(&new, &new).is_empty());
    }

    /// Test that every prefix of the ordered writes leaves each frontend's slots and backends
    /// present (no packet sees a half-built frontend).
    #[test]
    fn every_prefix_of_the_writes_is_consistent() {
        let mut ids = Ids::new(CAP);
        let steps = [
            vec![fe(
                "10.96.0.1",
                80,
                Protocol::Tcp,
                &["10.244.0.1:80", "10.244.0.2:80", "10.244.0.3:80"],
            )],
            vec![fe("10.96.0.1", 80, Protocol::Tcp, &["10.244.0.2:80"])],
            vec![
                fe(
                    "10.96.0.1",
                    80,
                    Protocol::Tcp,
                    &["10.244.0.4:80", "10.244.0.5:80"],
                ),
                fe("10.96.0.2", 53, Protocol::Udp, &["10.244.0.4:53"]),
            ],
            vec![],
        ];
        let mut current = Entries::default();
        for step in steps {
            let (want, _) = desired(&plan(step), &mut ids);
            let ops = diff(&current, &want);
            for n in 0..=ops.len() {
                let mut e = current.clone();
                apply_in_memory(&mut e, &ops[..n]);
                for f in e.frontends.values() {
                    for slot in 0..f.slot_count {
                        let s = e.slots.get(&SlotKey {
                            frontend_id: f.id,
                            slot,
                        });
                        let s = s.unwrap_or_else(|| {
                            panic!("slot {slot} of {} missing after {n} ops", f.id)
                        });
                        assert!(e.backends.contains_key(&s.backend_id));
                    }
                }
            }
            current = want;
        }
        assert_eq!(current, Entries::default());
    }
}
