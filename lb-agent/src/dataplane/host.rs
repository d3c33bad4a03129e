//! The maps about this node rather than its Services: `LB_NODE_ADDRS` (the NodePort addresses
//! the programs look up) and `LB_DEVICES` (the node devices, for `inspect`): written from a
//! [`Host`], read back from pins.

use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{HashMap, Map, MapData};
use lb_common::maps::{Device, NodeAddr, NodeAddrKey, MAP_DEVICES, MAP_NODE_ADDRS};
use tracing::debug;

use super::{
    error::{map_err, missing, Result},
    Dataplane, Pinned,
};
use crate::{entries::raw_v4, host::Host};

impl Dataplane {
    /// Makes `LB_NODE_ADDRS` hold exactly `host`'s IPv4 NodePort addresses and `LB_DEVICES`
    /// exactly its devices: new entries first, then, if `remove`, the ones no longer there
    /// (until the agent knows the Node, it only adds). Returns the entries written to each.
    pub fn write_host(&mut self, host: &Host, remove: bool) -> Result<(usize, usize)> {
        let addrs: BTreeMap<NodeAddrKey, NodeAddr> = host
            .nodeport_addresses
            .iter()
            .filter_map(|(ip, index)| match ip {
                IpAddr::V4(a) => Some((
                    NodeAddrKey {
                        addr_be: raw_v4(*a),
                    },
                    NodeAddr { ifindex: *index },
                )),
                IpAddr::V6(_) => None,
            })
            .collect();
        let devices: BTreeMap<u32, Device> = host
            .devices
            .iter()
            .map(|(name, d)| {
                let device = Device {
                    name: padded(name),
                    kind: padded(&d.kind),
                    reasons: d.reasons,
                    _pad: 0,
                };
                (d.index, device)
            })
            .collect();
        let n = (addrs.len(), devices.len());
        self.make_equal(MAP_NODE_ADDRS, addrs, remove)?;
        self.make_equal(MAP_DEVICES, devices, remove)?;
        Ok(n)
    }

    /// Writes `wanted` into hash map `name` where it differs, then removes the other keys if
    /// `remove`.
    fn make_equal<K: aya::Pod + Ord, V: aya::Pod + PartialEq>(
        &mut self,
        name: &'static str,
        wanted: BTreeMap<K, V>,
        remove: bool,
    ) -> Result<()> {
        let map = self.ebpf.map_mut(name).ok_or_else(|| missing(name))?;
        let mut h: HashMap<&mut MapData, K, V> = HashMap::try_from(map).map_err(map_err(name))?;
        let now: BTreeMap<K, V> = h
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(name))?;
        for (k, v) in &wanted {
            if now.get(k) != Some(v) {
                debug!(map = name, "map write");
                h.insert(k, v, 0).map_err(map_err(name))?;
            }
        }
        if remove {
            for k in now.keys().filter(|k| !wanted.contains_key(k)) {
                match h.remove(k) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(name)(e)),
                }
            }
        }
        Ok(())
    }
}

/// `s` NUL-padded (and cut) to 16 bytes.
fn padded(s: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(s.bytes().take(15)) {
        *o = b;
    }
    out
}

/// The text of a NUL-padded name.
pub fn unpadded(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn read_all<K: aya::Pod + Ord, V: aya::Pod>(
    map: Option<&Map>,
    name: &'static str,
) -> Result<BTreeMap<K, V>> {
    let h: HashMap<_, K, V> =
        HashMap::try_from(map.ok_or_else(|| missing(name))?).map_err(map_err(name))?;
    h.iter().map(|kv| kv.map_err(map_err(name))).collect()
}

impl Pinned {
    /// `LB_NODE_ADDRS`: the NodePort addresses the programs answer on.
    pub fn node_addresses(&self) -> Result<BTreeMap<NodeAddrKey, NodeAddr>> {
        read_all(self.map(MAP_NODE_ADDRS), MAP_NODE_ADDRS)
    }

    /// `LB_DEVICES`: the node devices by ifindex.
    pub fn devices(&self) -> Result<BTreeMap<u32, Device>> {
        read_all(self.map(MAP_DEVICES), MAP_DEVICES)
    }
}
