//! `lb-agent inspect`: what the pinned maps hold, from the maps alone.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use anyhow::{Context, Result};
use lb_common::{
    maps::{
        CtEntry, CtKey, CT_DIR_ORIGINAL, CT_F_CLOSING, CT_F_SNAT, FE_F_REJECT_EMPTY, PROTO_TCP,
        PROTO_UDP, SCOPE_PODS,
    },
    verdict::{Path as FwdPath, Reason},
};
use serde_json::json;

use crate::{
    dataplane::{pinned_links, unpadded, Pinned},
    host::reason_names,
};

fn addr(raw: u32, port_raw: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(raw.to_ne_bytes()), u16::from_be(port_raw))
}

fn proto_name(p: u8) -> String {
    match p {
        PROTO_TCP => "TCP".into(),
        PROTO_UDP => "UDP".into(),
        other => other.to_string(),
    }
}

/// CLOCK_MONOTONIC_COARSE in ns, the conntrack clock (`bpf_ktime_get_coarse_ns`).
fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Everything `inspect` shows, as JSON.
pub fn inspect_json(root: &Path) -> Result<serde_json::Value> {
    let pinned = Pinned::open(root).with_context(|| {
        format!(
            "opening the maps pinned under {}",
            root.join("maps").display()
        )
    })?;
    let entries = pinned.entries()?;
    let mut frontends = Vec::new();
    for (k, f) in &entries.frontends {
        let mut backends = Vec::new();
        for slot in 0..f.slot_count {
            let s = entries.slots.get(&lb_common::maps::SlotKey {
                frontend_id: f.id,
                slot,
            });
            let b = s.and_then(|s| {
                entries
                    .backends
                    .get(&s.backend_id)
                    .map(|b| (s.backend_id, b))
            });
            backends.push(match b {
                Some((id, b)) => json!({"slot": slot, "backend_id": id, "addr": addr(b.addr_be, b.port_be).to_string()}),
                None => json!({"slot": slot, "backend_id": s.map(|s| s.backend_id), "addr": null}),
            });
        }
        let st = pinned.frontend_stats(f.id)?;
        frontends.push(json!({
            "frontend": addr(k.addr_be, k.port_be).to_string(),
            "protocol": proto_name(k.proto),
            "scope": if k.scope == SCOPE_PODS { "pods" } else { "any" },
            "id": f.id,
            "on_empty": if f.flags & FE_F_REJECT_EMPTY != 0 { "reject" } else { "drop" },
            "affinity_timeout_seconds": f.affinity_timeout_s,
            "backends": backends,
            "packets": st.packets, "bytes": st.bytes, "new_flows": st.new_flows,
        }));
    }
    let verdicts: BTreeMap<&str, serde_json::Value> = pinned
        .verdicts()?
        .iter()
        .zip(Reason::ALL)
        .map(|(c, r)| (r.name(), json!({"packets": c.packets, "bytes": c.bytes})))
        .collect();
    let paths: BTreeMap<&str, serde_json::Value> = pinned
        .paths()?
        .iter()
        .zip(FwdPath::ALL)
        .map(|(c, p)| (p.name(), json!({"packets": c.packets, "bytes": c.bytes})))
        .collect();
    let now = now_ns();
    let conntrack: Vec<_> = pinned
        .conntrack()?
        .iter()
        .map(|(k, e)| ct_json(k, e, now))
        .collect();
    let links: Vec<_> = pinned_links(root)
        .into_iter()
        .map(|l| json!({"hook": l.hook, "ifname": l.ifname, "ifindex": l.ifindex}))
        .collect();
    let devices = pinned.devices()?;
    let device_list: Vec<_> = devices
        .iter()
        .map(|(index, d)| {
            json!({
                "ifname": unpadded(&d.name),
                "ifindex": index,
                "kind": unpadded(&d.kind),
                "reasons": reason_names(d.reasons),
            })
        })
        .collect();
    let nodeport_addresses: Vec<_> = pinned
        .node_addresses()?
        .iter()
        .map(|(k, a)| {
            json!({
                "addr": Ipv4Addr::from(k.addr_be.to_ne_bytes()).to_string(),
                "ifindex": a.ifindex,
                "ifname": devices.get(&a.ifindex).map(|d| unpadded(&d.name)),
            })
        })
        .collect();
    Ok(json!({
        "frontends": frontends,
        "verdicts": verdicts,
        "paths": paths,
        "conntrack": conntrack,
        "links": links,
        "devices": device_list,
        "nodeport_addresses": nodeport_addresses,
    }))
}

fn ct_json(k: &CtKey, e: &CtEntry, now: u64) -> serde_json::Value {
    json!({
        "protocol": proto_name(k.proto),
        "direction": if k.dir == CT_DIR_ORIGINAL { "original" } else { "reply" },
        "src": addr(k.saddr_be, k.sport_be).to_string(),
        "dst": addr(k.daddr_be, k.dport_be).to_string(),
        "nat": addr(e.nat_addr_be, e.nat_port_be).to_string(),
        "snat": (e.flags & CT_F_SNAT != 0).then(|| addr(e.rev_addr_be, e.rev_port_be).to_string()),
        "backend_id": e.backend_id,
        "frontend_id": e.frontend_id,
        "closing": e.flags & CT_F_CLOSING != 0,
        "age_seconds": now.saturating_sub(e.created_ns) / 1_000_000_000,
        "idle_seconds": now.saturating_sub(e.last_seen_ns) / 1_000_000_000,
    })
}

/// The same as [`inspect_json`], for people; at most `conntrack_limit` conntrack entries.
pub fn inspect_text(root: &Path, conntrack_limit: Option<usize>) -> Result<String> {
    let v = inspect_json(root)?;
    let mut out = String::new();
    let empty = Vec::new();
    let list = |key: &str| v[key].as_array().unwrap_or(&empty).clone();
    writeln!(
        out,
        "Frontends (a NodePort's address 0.0.0.0: every NodePort address):"
    )?;
    for f in list("frontends") {
        writeln!(
            out,
            "  {} {}{}  id {}  {} backends  on-empty {}  packets {}  bytes {}  new flows {}",
            f["protocol"].as_str().unwrap_or(""),
            f["frontend"].as_str().unwrap_or(""),
            if f["scope"] == "pods" {
                " (from pods)"
            } else {
                ""
            },
            f["id"],
            f["backends"].as_array().map_or(0, |b| b.len()),
            f["on_empty"].as_str().unwrap_or(""),
            f["packets"],
            f["bytes"],
            f["new_flows"],
        )?;
        for b in f["backends"].as_array().unwrap_or(&empty) {
            writeln!(
                out,
                "    slot {:>3} -> backend {:>4} {}",
                b["slot"],
                b["backend_id"],
                b["addr"].as_str().unwrap_or("(missing)")
            )?;
        }
    }
    writeln!(out, "Verdicts:")?;
    if let Some(m) = v["verdicts"].as_object() {
        for r in Reason::ALL {
            let c = &m[r.name()];
            writeln!(
                out,
                "  {:<20} packets {:>10}  bytes {:>12}",
                r.name(),
                c["packets"],
                c["bytes"]
            )?;
        }
    }
    writeln!(out, "Paths rewritten packets left by:")?;
    if let Some(m) = v["paths"].as_object() {
        for p in FwdPath::ALL {
            let c = &m[p.name()];
            writeln!(
                out,
                "  {:<20} packets {:>10}  bytes {:>12}",
                p.name(),
                c["packets"],
                c["bytes"]
            )?;
        }
    }
    let ct = list("conntrack");
    writeln!(out, "Conntrack ({} entries):", ct.len())?;
    let shown = conntrack_limit.unwrap_or(ct.len());
    if shown < ct.len() {
        writeln!(out, "  (showing {shown})")?;
    }
    for e in ct.into_iter().take(shown) {
        writeln!(
            out,
            "  {} {:<8} {} -> {}  nat {}{}  backend {} frontend {}  age {}s idle {}s{}",
            e["protocol"].as_str().unwrap_or(""),
            e["direction"].as_str().unwrap_or(""),
            e["src"].as_str().unwrap_or(""),
            e["dst"].as_str().unwrap_or(""),
            e["nat"].as_str().unwrap_or(""),
            e["snat"]
                .as_str()
                .map(|s| format!("  snat {s}"))
                .unwrap_or_default(),
            e["backend_id"],
            e["frontend_id"],
            e["age_seconds"],
            e["idle_seconds"],
            if e["closing"].as_bool() == Some(true) {
                "  closing"
            } else {
                ""
            },
        )?;
    }
    writeln!(out, "Node devices:")?;
    for d in list("devices") {
        let reasons: Vec<&str> = d["reasons"]
            .as_array()
            .map(|r| r.iter().filter_map(|r| r.as_str()).collect())
            .unwrap_or_default();
        let kind = d["kind"].as_str().unwrap_or("");
        writeln!(
            out,
            "  {} (ifindex {}{}): {}",
            d["ifname"].as_str().unwrap_or(""),
            d["ifindex"],
            if kind.is_empty() {
                String::new()
            } else {
                format!(", {kind}")
            },
            reasons.join(", "),
        )?;
    }
    writeln!(out, "NodePort addresses:")?;
    for a in list("nodeport_addresses") {
        writeln!(
            out,
            "  {} on {}",
            a["addr"].as_str().unwrap_or(""),
            a["ifname"]
                .as_str()
                .map_or_else(|| format!("ifindex {}", a["ifindex"]), str::to_owned),
        )?;
    }
    writeln!(out, "Links:")?;
    for l in list("links") {
        writeln!(
            out,
            "  {} on {} (ifindex {})",
            l["hook"].as_str().unwrap_or(""),
            l["ifname"].as_str().unwrap_or(""),
            l["ifindex"]
        )?;
    }
    Ok(out)
}
