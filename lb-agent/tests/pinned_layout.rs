//! Maps pinned by another build: the agent refuses to reuse a pinned map whose layout is not
//! the one its programs expect, and names the command that removes the old pins. Needs root (a
//! private bpffs, BPF maps and programs).

use aya::maps::MapData;
use aya_obj::{
    generated::bpf_map_type::BPF_MAP_TYPE_HASH,
    maps::{bpf_map_def, LegacyMap},
    EbpfSectionKind,
};
use lb_agent::dataplane::{self, Dataplane, DataplaneError, MapSizes};
use lb_common::maps::{Backend, MAP_BACKENDS};
use lb_tests::BpffsGuard;

/// Pins, as an older build would have, a hash map named `name` under `<bpffs>/maps`.
fn pin_hash_map(bpffs: &BpffsGuard, name: &str, key_size: u32, value_size: u32) {
    let maps = bpffs.path().join("maps");
    std::fs::create_dir_all(&maps).expect("maps directory");
    let def = bpf_map_def {
        map_type: BPF_MAP_TYPE_HASH as u32,
        key_size,
        value_size,
        max_entries: 16,
        ..bpf_map_def::default()
    };
    let obj = aya_obj::Map::Legacy(LegacyMap {
        def,
        inner_def: None,
        section_index: 0,
        section_kind: EbpfSectionKind::Maps,
        symbol_index: None,
        data: Vec::new(),
    });
    let map = MapData::create(obj, name, None).expect("create the map");
    map.pin(maps.join(name)).expect("pin the map");
}

/// Test that loading over a map pinned with another value size fails before any program is
/// loaded, with an error that names the map, both layouts and `lb-agent cleanup --bpffs DIR`,
/// and that after that cleanup the agent loads.
#[test]
fn a_map_pinned_with_another_layout_is_refused_naming_the_cleanup_command() {
    let bpffs = BpffsGuard::new("layout").expect("bpffs");
    let value_size = std::mem::size_of::<Backend>() as u32 + 8;
    pin_hash_map(&bpffs, MAP_BACKENDS, 4, value_size);

    let sizes = MapSizes {
        frontends: 64,
        slots: 1024,
        backends: 256,
        conntrack: 4096,
    };
    let e = match Dataplane::load(bpffs.path(), sizes) {
        Ok(_) => panic!("loaded over a map of another layout"),
        Err(e) => e,
    };
    assert!(
        matches!(&e, DataplaneError::PinnedLayout { name, .. } if *name == MAP_BACKENDS),
        "{e:?}"
    );
    let msg = e.to_string();
    let remedy = format!("lb-agent cleanup --bpffs {}", bpffs.path().display());
    assert!(msg.contains(&remedy), "{msg}");
    assert!(msg.contains(MAP_BACKENDS), "{msg}");
    assert!(msg.contains(&format!("{value_size}-byte values")), "{msg}");

    dataplane::cleanup(bpffs.path()).expect("cleanup");
    Dataplane::load(bpffs.path(), sizes).expect("load after cleanup");
}
