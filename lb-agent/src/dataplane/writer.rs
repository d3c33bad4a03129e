//! The map writer: applies [`MapOp`]s in order, runs of puts into one hash map in batches.

use std::os::fd::{AsFd, AsRawFd};

use aya::{
    maps::{lpm_trie, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};
use lb_common::maps::{
    Backend, Frontend, FrontendKey, FrontendStats, Slot, SlotKey, SrcRange, MAP_BACKENDS,
    MAP_FE_STATS, MAP_FRONTENDS, MAP_SLOTS, MAP_SRC_RANGES,
};
use tracing::debug;

use super::{
    error::{map_err, missing, DataplaneError, Result},
    sys::update_batch,
    Dataplane,
};
use crate::entries::{MapOp, SrcRangeEntry};

impl Dataplane {
    /// Applies `ops` in order; stops at the first failure. Runs of puts into one hash map go to
    /// the kernel in batches (BPF_MAP_UPDATE_BATCH), element by element in order, as the single
    /// writes would: a full sync of 10,000 Services is 220,000 writes.
    pub fn apply(&mut self, ops: &[MapOp]) -> Result<()> {
        let mut i = 0;
        while i < ops.len() {
            let run = ops[i..]
                .iter()
                .take_while(|o| std::mem::discriminant(*o) == std::mem::discriminant(&ops[i]))
                .count();
            let done = match &ops[i] {
                MapOp::PutBackend(..) => {
                    self.put_batch(MAP_BACKENDS, &ops[i..i + run], |o| match o {
                        MapOp::PutBackend(id, b) => Some((*id, *b)),
                        _ => None,
                    })?
                }
                MapOp::PutSlot(..) => self.put_batch(MAP_SLOTS, &ops[i..i + run], |o| match o {
                    MapOp::PutSlot(k, s) => Some((*k, *s)),
                    _ => None,
                })?,
                MapOp::PutFrontend(..) => {
                    self.put_batch(MAP_FRONTENDS, &ops[i..i + run], |o| match o {
                        MapOp::PutFrontend(k, f) => Some((*k, *f)),
                        _ => None,
                    })?
                }
                _ => false,
            };
            if done {
                i += run;
                continue;
            }
            self.apply_one(&ops[i])?;
            i += 1;
        }
        Ok(())
    }

    /// Writes the puts `ops` into hash map `name` in batches; false if this kernel has no batch
    /// updates for the map (nothing written: the caller writes them one by one).
    fn put_batch<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        ops: &[MapOp],
        entry: impl Fn(&MapOp) -> Option<(K, V)>,
    ) -> Result<bool> {
        if ops.len() < 2 {
            return Ok(false);
        }
        let (keys, values): (Vec<K>, Vec<V>) = ops.iter().filter_map(entry).unzip();
        let map = self.ebpf.map(name).ok_or_else(|| missing(name))?;
        let Map::HashMap(data) = map else {
            return Ok(false);
        };
        let fd = data.fd().as_fd().as_raw_fd();
        for (k, v) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
            debug!(map = name, count = k.len(), "map batch write");
            match update_batch(fd, k, v) {
                Ok(()) => {}
                // Only the first batch can find batches unsupported; nothing is written then.
                Err(e)
                    if k.as_ptr() == keys.as_ptr()
                        && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP | 524)) =>
                {
                    return Ok(false);
                }
                Err(e) => {
                    return Err(DataplaneError::Map {
                        name,
                        source: Box::new(aya::maps::MapError::IoError(e)),
                    })
                }
            }
        }
        Ok(true)
    }

    /// Applies one op.
    fn apply_one(&mut self, op: &MapOp) -> Result<()> {
        debug!(?op, "map write");
        match op {
            MapOp::PutBackend(id, b) => {
                typed_hash::<u32, Backend>(&mut self.ebpf, MAP_BACKENDS)?
                    .insert(id, b, 0)
                    .map_err(map_err(MAP_BACKENDS))?;
            }
            MapOp::PutSlot(k, s) => {
                typed_hash::<SlotKey, Slot>(&mut self.ebpf, MAP_SLOTS)?
                    .insert(k, s, 0)
                    .map_err(map_err(MAP_SLOTS))?;
            }
            MapOp::ResetStats(id) => {
                let map = self
                    .ebpf
                    .map_mut(MAP_FE_STATS)
                    .ok_or_else(|| missing(MAP_FE_STATS))?;
                let mut stats: PerCpuArray<_, FrontendStats> =
                    PerCpuArray::try_from(map).map_err(map_err(MAP_FE_STATS))?;
                let n = aya::util::nr_cpus().map_or(1, |n| n);
                let zero =
                    PerCpuValues::try_from(vec![FrontendStats::default(); n]).map_err(|e| {
                        DataplaneError::Map {
                            name: MAP_FE_STATS,
                            source: Box::new(aya::maps::MapError::IoError(e)),
                        }
                    })?;
                stats.set(*id, zero, 0).map_err(map_err(MAP_FE_STATS))?;
            }
            MapOp::PutFrontend(k, f) => {
                typed_hash::<FrontendKey, Frontend>(&mut self.ebpf, MAP_FRONTENDS)?
                    .insert(k, f, 0)
                    .map_err(map_err(MAP_FRONTENDS))?;
            }
            MapOp::DelFrontend(k) => remove_ok_if_absent(
                typed_hash::<FrontendKey, Frontend>(&mut self.ebpf, MAP_FRONTENDS)?.remove(k),
                MAP_FRONTENDS,
            )?,
            MapOp::DelSlot(k) => remove_ok_if_absent(
                typed_hash::<SlotKey, Slot>(&mut self.ebpf, MAP_SLOTS)?.remove(k),
                MAP_SLOTS,
            )?,
            MapOp::PutSrcRange(r) => {
                let map = self
                    .ebpf
                    .map_mut(MAP_SRC_RANGES)
                    .ok_or_else(|| missing(MAP_SRC_RANGES))?;
                let mut trie: LpmTrie<_, SrcRange, u32> =
                    LpmTrie::try_from(map).map_err(map_err(MAP_SRC_RANGES))?;
                trie.insert(&src_range_key(r), 1, 0)
                    .map_err(map_err(MAP_SRC_RANGES))?;
            }
            MapOp::DelSrcRange(r) => {
                let map = self
                    .ebpf
                    .map_mut(MAP_SRC_RANGES)
                    .ok_or_else(|| missing(MAP_SRC_RANGES))?;
                let mut trie: LpmTrie<_, SrcRange, u32> =
                    LpmTrie::try_from(map).map_err(map_err(MAP_SRC_RANGES))?;
                remove_ok_if_absent(trie.remove(&src_range_key(r)), MAP_SRC_RANGES)?;
            }
            MapOp::DelBackend(id) => remove_ok_if_absent(
                typed_hash::<u32, Backend>(&mut self.ebpf, MAP_BACKENDS)?.remove(id),
                MAP_BACKENDS,
            )?,
        }
        Ok(())
    }
}

/// Entries per BPF_MAP_UPDATE_BATCH call.
const BATCH: usize = 8192;

fn typed_hash<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, K, V>> {
    let map = ebpf.map_mut(name).ok_or_else(|| missing(name))?;
    HashMap::try_from(map).map_err(map_err(name))
}

fn remove_ok_if_absent(r: Result<(), aya::maps::MapError>, name: &'static str) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// The LPM key of a source range: the frontend id (32 bits) and the prefix.
fn src_range_key(r: &SrcRangeEntry) -> lpm_trie::Key<SrcRange> {
    lpm_trie::Key::new(
        32 + u32::from(r.prefix_len),
        SrcRange {
            frontend_id_be: r.frontend_id.to_be(),
            addr_be: r.addr_be,
        },
    )
}
