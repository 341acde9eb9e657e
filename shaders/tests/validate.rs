//! Every registered shader parses and validates with naga (the compiler wgpu
//! uses) under the capabilities the engine requests, and every `.wgsl` file
//! on disk belongs to the registry.

use std::collections::BTreeSet;

use naga::valid::{Capabilities, ValidationFlags, Validator};
use theta_shaders::ALL;

#[test]
fn registry_is_not_empty() {
    assert!(!ALL.is_empty(), "no shaders registered");
}

#[test]
fn every_shader_validates_with_no_optional_capability() {
    for shader in ALL {
        let module = naga::front::wgsl::parse_str(shader.source)
            .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(shader.source)));
        Validator::new(ValidationFlags::all(), Capabilities::empty())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(shader.source)));
        for entry in shader.entries {
            assert!(
                module.entry_points.iter().any(|e| e.name == *entry),
                "{} has no entry point {entry}",
                shader.name
            );
        }
    }
}

#[test]
fn every_file_on_disk_is_registered() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/wgsl");
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
        .expect("read wgsl/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    assert!(!on_disk.is_empty(), "wgsl/ holds no shaders");
    let registered: BTreeSet<String> = ALL
        .iter()
        .flat_map(|s| s.files.iter().map(|f| f.to_string()))
        .collect();
    let missing: Vec<_> = on_disk.difference(&registered).collect();
    assert!(missing.is_empty(), "unregistered shader files: {missing:?}");
    let absent: Vec<_> = registered.difference(&on_disk).collect();
    assert!(absent.is_empty(), "registered but not on disk: {absent:?}");
}
