//! Reading the maps back: the service map entries of the loaded maps or of pinned ones, and,
//! for `inspect` and the metrics, the counters and conntrack table of the pinned maps.

use std::{collections::BTreeMap, path::Path};

use aya::maps::{HashMap, LpmTrie, Map, MapData, PerCpuArray};
use lb_common::maps::{
    CtEntry, CtKey, FrontendStats, SrcRange, ALL_MAPS, MAP_BACKENDS, MAP_CT, MAP_FE_STATS,
    MAP_FRONTENDS, MAP_SLOTS, MAP_SRC_RANGES,
};

use super::{
    error::{map_err, missing, Result},
    Dataplane,
};
use crate::entries::{Entries, SrcRangeEntry};

impl Dataplane {
    /// The service map entries as the kernel holds them now.
    pub fn read_entries(&self) -> Result<Entries> {
        read_entries(|name| self.ebpf.map(name))
    }
}

/// Every entry of a hash map, sorted.
fn read_hash<K: aya::Pod + Ord, V: aya::Pod>(
    map: Option<&Map>,
    name: &'static str,
) -> Result<BTreeMap<K, V>> {
    let h: HashMap<_, K, V> =
        HashMap::try_from(map.ok_or_else(|| missing(name))?).map_err(map_err(name))?;
    h.iter().map(|kv| kv.map_err(map_err(name))).collect()
}

/// Reads the service maps through `get` (loaded maps or pinned ones).
pub fn read_entries<'a>(get: impl Fn(&'static str) -> Option<&'a Map>) -> Result<Entries> {
    let mut out = Entries {
        frontends: read_hash(get(MAP_FRONTENDS), MAP_FRONTENDS)?,
        slots: read_hash(get(MAP_SLOTS), MAP_SLOTS)?,
        backends: read_hash(get(MAP_BACKENDS), MAP_BACKENDS)?,
        ..Entries::default()
    };
    let ranges: LpmTrie<_, SrcRange, u32> =
        LpmTrie::try_from(get(MAP_SRC_RANGES).ok_or_else(|| missing(MAP_SRC_RANGES))?)
            .map_err(map_err(MAP_SRC_RANGES))?;
    for k in ranges.keys() {
        let k = k.map_err(map_err(MAP_SRC_RANGES))?;
        let len = k.prefix_len().saturating_sub(32) as u8;
        let d = k.data();
        out.src_ranges.insert(SrcRangeEntry {
            frontend_id: u32::from_be(d.frontend_id_be),
            addr_be: d.addr_be,
            prefix_len: len,
        });
    }
    Ok(out)
}

/// The pinned maps of an agent, opened read-only for `inspect`.
pub struct Pinned {
    maps: BTreeMap<&'static str, Map>,
}

impl Pinned {
    /// Opens every map pinned under `<root>/maps`.
    pub fn open(root: &Path) -> Result<Self> {
        let mut maps = BTreeMap::new();
        for name in ALL_MAPS {
            let path = root.join("maps").join(name);
            let data = MapData::from_pin(&path).map_err(map_err(name))?;
            maps.insert(name, Map::from_map_data(data).map_err(map_err(name))?);
        }
        Ok(Self { maps })
    }

    /// A map by name.
    pub fn map(&self, name: &'static str) -> Option<&Map> {
        self.maps.get(name)
    }

    /// The service map entries.
    pub fn entries(&self) -> Result<Entries> {
        read_entries(|n| self.maps.get(n))
    }

    /// Per-frontend counters summed over CPUs.
    pub fn frontend_stats(&self, id: u32) -> Result<FrontendStats> {
        let m = self
            .map(MAP_FE_STATS)
            .ok_or_else(|| missing(MAP_FE_STATS))?;
        let a: PerCpuArray<_, FrontendStats> =
            PerCpuArray::try_from(m).map_err(map_err(MAP_FE_STATS))?;
        let v = a.get(&id, 0).map_err(map_err(MAP_FE_STATS))?;
        Ok(v.iter()
            .fold(FrontendStats::default(), |acc, s| FrontendStats {
                packets: acc.packets + s.packets,
                bytes: acc.bytes + s.bytes,
                new_flows: acc.new_flows + s.new_flows,
            }))
    }

    /// Verdict counters summed over CPUs, by reason index.
    pub fn verdicts(&self) -> Result<Vec<lb_common::maps::Counter>> {
        self.counters(lb_common::maps::MAP_VERDICTS)
    }

    /// Path counters (how rewritten packets left the program that rewrote them) summed over
    /// CPUs, by path index.
    pub fn paths(&self) -> Result<Vec<lb_common::maps::Counter>> {
        self.counters(lb_common::maps::MAP_PATHS)
    }

    /// A per-CPU array of counters, summed over CPUs.
    fn counters(&self, name: &'static str) -> Result<Vec<lb_common::maps::Counter>> {
        let m = self.map(name).ok_or_else(|| missing(name))?;
        let a: PerCpuArray<_, lb_common::maps::Counter> =
            PerCpuArray::try_from(m).map_err(map_err(name))?;
        let mut out = Vec::new();
        for v in a.iter() {
            let v = v.map_err(map_err(name))?;
            out.push(
                v.iter()
                    .fold(lb_common::maps::Counter::default(), |acc, c| {
                        lb_common::maps::Counter {
                            packets: acc.packets + c.packets,
                            bytes: acc.bytes + c.bytes,
                        }
                    }),
            );
        }
        Ok(out)
    }

    /// The conntrack table.
    pub fn conntrack(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        let m = self.map(MAP_CT).ok_or_else(|| missing(MAP_CT))?;
        let h: HashMap<_, CtKey, CtEntry> = HashMap::try_from(m).map_err(map_err(MAP_CT))?;
        let mut out = Vec::new();
        for kv in h.iter() {
            out.push(kv.map_err(map_err(MAP_CT))?);
        }
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }
}
