//! Reading what `lb-agent inspect --json` prints ([`crate::agent::inspect_json`]): frontends,
//! their backends, and the verdict and path counters.

use std::net::SocketAddr;

use serde_json::Value;

use crate::objects::Protocol;

/// The frontend `vip` (`protocol`) of an `inspect --json` output.
pub fn frontend(inspect: &Value, vip: SocketAddr, protocol: Protocol) -> Option<&Value> {
    inspect["frontends"].as_array()?.iter().find(|f| {
        f["frontend"].as_str() == Some(&vip.to_string())
            && f["protocol"].as_str() == Some(protocol.name())
    })
}

/// Every frontend of an `inspect --json` output as `ip:port/PROTO -> [backends]`, sorted.
pub fn frontend_summary(inspect: &Value) -> Vec<String> {
    let mut v: Vec<String> = inspect["frontends"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .map(|f| {
                    format!(
                        "{}/{} -> {:?}",
                        f["frontend"].as_str().unwrap_or("?"),
                        f["protocol"].as_str().unwrap_or("?"),
                        backend_addrs(f)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The backend addresses (`ip:port`) of an `inspect --json` frontend, sorted.
pub fn backend_addrs(frontend: &Value) -> Vec<String> {
    let mut v: Vec<String> = frontend["backends"]
        .as_array()
        .map(|b| {
            b.iter()
                .map(|b| b["addr"].as_str().unwrap_or("(missing)").to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The packets counted for verdict `reason` (e.g. `dnat_new_flow`). Panics if the output has no
/// such verdict (a bug in the test or an agent that changed its output).
pub fn verdict(inspect: &Value, reason: &str) -> u64 {
    inspect["verdicts"][reason]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no verdict {reason} in {inspect:#}"))
}

/// The packets counted for path `path` (e.g. `xdp_tx`). Panics if the output has no such path.
pub fn path(inspect: &Value, path: &str) -> u64 {
    inspect["paths"][path]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no path {path} in {inspect:#}"))
}

/// The node devices of an `inspect --json` output: `(ifname, reasons)`, by ifindex.
pub fn devices(inspect: &Value) -> Vec<(String, Vec<String>)> {
    inspect["devices"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .map(|d| {
                    let reasons = d["reasons"]
                        .as_array()
                        .map(|r| {
                            r.iter()
                                .filter_map(|r| r.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    (d["ifname"].as_str().unwrap_or("?").to_owned(), reasons)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The NodePort addresses of an `inspect --json` output, sorted as the map holds them.
pub fn nodeport_addresses(inspect: &Value) -> Vec<String> {
    inspect["nodeport_addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|a| a["addr"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
