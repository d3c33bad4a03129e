//! The eBPF object embedded at build time: whether the build had one, and whether maps an
//! earlier agent pinned have the layout its programs expect.

use std::path::Path;

use aya::maps::{MapInfo, MapType};
use aya_obj::generated::bpf_map_type;
use lb_common::maps::ALL_MAPS;

use super::error::{map_err, DataplaneError, MapLayout, Result};

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at build time; empty when the
/// build did not find it (build.rs then embeds an empty stub so that `cargo check` works).
pub(super) static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_OBJECT"));

/// Refuses an empty object: the agent was built without one.
pub(super) fn check_object(object: &[u8]) -> Result<()> {
    if object.is_empty() {
        return Err(DataplaneError::NoObject);
    }
    Ok(())
}

/// Checks every map already pinned under `maps_dir` against the layout `object` declares for it.
/// aya reuses a pinned map as it is, so a map pinned by a build with another key or value size
/// or map type would otherwise fail the verifier, or be read and written with the wrong layout.
/// `bpffs` is the directory the agent was given, named in the error's remedy.
pub(super) fn check_pinned_layouts(object: &[u8], bpffs: &Path, maps_dir: &Path) -> Result<()> {
    let parsed = aya_obj::Object::parse(object).map_err(|source| DataplaneError::Load {
        pin_dir: maps_dir.into(),
        source: Box::new(aya::EbpfError::ParseError(source)),
    })?;
    for name in ALL_MAPS {
        let path = maps_dir.join(name);
        if !path.exists() {
            continue;
        }
        let Some(expected) = parsed.maps.get(name).and_then(|m| {
            let map_type = bpf_map_type::try_from(m.map_type()).ok()?;
            Some(MapLayout {
                map_type: MapType::try_from(map_type).ok()?,
                key_size: m.key_size(),
                value_size: m.value_size(),
            })
        }) else {
            continue;
        };
        let info = MapInfo::from_pin(&path).map_err(map_err(name))?;
        let found = MapLayout {
            map_type: info.map_type().map_err(map_err(name))?,
            key_size: info.key_size(),
            value_size: info.value_size(),
        };
        if found != expected {
            return Err(DataplaneError::PinnedLayout {
                name,
                path,
                bpffs: bpffs.into(),
                found,
                expected,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that an agent built without its eBPF object refuses to load with an error that
    /// says what to run.
    #[test]
    fn an_empty_object_is_refused_naming_the_build_step() {
        let e = check_object(&[]).unwrap_err();
        assert!(matches!(e, DataplaneError::NoObject));
        assert!(e.to_string().contains("cargo xtask build-ebpf"), "{e}");
        assert!(check_object(b"\x7fELF").is_ok());
    }
}
