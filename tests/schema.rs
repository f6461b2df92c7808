//! The committed JSON Schema is what `tinyllm schema` prints, and every shipped spec and overlay
//! loads.

use std::path::Path;
use std::process::Command;

#[test]
fn committed_schema_matches_the_binary() {
    let output = Command::new(env!("CARGO_BIN_EXE_tinyllm"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/schema.json"),
    )
    .unwrap();
    assert_eq!(
        printed, committed,
        "pipelines/schema.json is stale: run `cargo run -- schema > pipelines/schema.json`"
    );
}

#[test]
fn shipped_specs_and_overlays_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut specs = Vec::new();
    for entry in std::fs::read_dir(root.join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            specs.push(path);
        }
    }
    assert!(!specs.is_empty());
    let mut overlays: Vec<_> = std::fs::read_dir(root.join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    overlays.sort();
    for spec in &specs {
        let text = std::fs::read_to_string(spec).unwrap();
        assert!(
            text.starts_with("#:schema ./schema.json"),
            "{}",
            spec.display()
        );
        let base = tinyllm::pipeline::SpecSources {
            spec: spec.clone(),
            ..Default::default()
        };
        let spec_sets_preset = tinyllm::pipeline::load(&base)
            .unwrap_or_else(|e| panic!("{e}"))
            .variants[0]
            .spec
            .model
            .preset
            .is_some();
        for overlay in &overlays {
            let text = std::fs::read_to_string(overlay).unwrap();
            assert!(
                text.starts_with("#:schema ../pipelines/schema.json"),
                "{}",
                overlay.display()
            );
            // Presets and custom dimensions exclude each other, by design: an overlay that
            // sets one applies to the specs that set the same kind.
            let sets_dimensions = text.contains("\"model.dim\"") || text.contains("\"model.n_");
            let sets_preset = text.contains("preset =");
            if (sets_dimensions && spec_sets_preset) || (sets_preset && !spec_sets_preset) {
                continue;
            }
            let sources = tinyllm::pipeline::SpecSources {
                overlays: vec![overlay.clone()],
                ..base.clone()
            };
            tinyllm::pipeline::load(&sources)
                .unwrap_or_else(|e| panic!("{} + {}: {e}", spec.display(), overlay.display()));
        }
    }
}
