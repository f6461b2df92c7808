//! A stage's view holds exactly what its key covers: every field of the spec is changed in turn,
//! and each stage's view and key are checked against the sections that stage may read.

use super::*;
use crate::engine::PrecisionSetting;
use crate::pipeline::spec::{DownloadFile, ModelConfig};

/// A spec with every optional field given, so that every field of it can be changed; its
/// mirrors are remote, so no key reads a file.
fn full_spec() -> PipelineSpec {
    let mut spec: PipelineSpec = toml::from_str("[pipeline]\nname = \"t\"\n").unwrap();
    spec.pipeline.cache_dir = Some("cache".into());
    spec.pipeline.runs_dir = Some("runs".into());
    spec.pipeline.threads = Some(2);
    // Explicit, so the key does not depend on this machine's CPU (`auto` would resolve by it).
    spec.train.precision = crate::engine::PrecisionSetting::F32;
    spec.download.files = vec![
        DownloadFile {
            name: Some("stories.tar.gz".into()),
            mirrors: vec!["https://example.com/stories.tar.gz".into()],
            sha256: Some("ab".repeat(32)),
            unpack: Some(true),
        },
        DownloadFile {
            name: Some("valid.txt".into()),
            mirrors: vec![
                "https://example.com/valid.txt".into(),
                "https://mirror.example.com/valid.txt".into(),
            ],
            sha256: None,
            unpack: Some(false),
        },
    ];
    spec.model = ModelConfig {
        preset: None,
        dim: Some(64),
        n_layers: Some(2),
        n_heads: Some(4),
        n_kv_heads: Some(2),
        vocab_size: Some(512),
        multiple_of: Some(32),
        max_seq_len: Some(128),
        ..ModelConfig::default()
    };
    // Not `auto`, whose meaning depends on the machine the tests run on.
    spec.sample.precision = PrecisionSetting::Bf16;
    // Settings that stay out of the spec's JSON at their defaults.
    spec.train.max_time = Some("10m".parse().unwrap());
    spec.train.schedule = crate::pipeline::spec::ScheduleKind::Wsd;
    spec.train.decay_fraction = 0.3;
    spec.train.optimizer = crate::pipeline::spec::OptimizerKind::Muon;
    spec.train.muon_lr = 0.03;
    spec.train.muon_momentum = 0.9;
    spec.train.muon_weight_decay = 0.01;
    spec
}

/// Every leaf of a JSON value with its dotted path (`download.files[1].name`); a list of plain
/// values counts as one leaf.
fn leaves(value: &Json, path: &str, out: &mut Vec<(String, Json)>) {
    match value {
        Json::Object(map) => {
            for (key, inner) in map {
                let inner_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                leaves(inner, &inner_path, out);
            }
        }
        Json::Array(items) if items.iter().any(|i| i.is_object()) => {
            for (i, item) in items.iter().enumerate() {
                leaves(item, &format!("{path}[{i}]"), out);
            }
        }
        other => out.push((path.to_string(), other.clone())),
    }
}

/// Another valid value of the same type.
fn changed(path: &str, value: &Json) -> Json {
    let other_variant = [
        ("train_vocab.kind", "char"),
        ("corpus.format", "lines"),
        ("sample.precision", "f32"),
        ("train.max_time", "20m"),
        ("train.schedule", "wsd_sqrt"),
        ("train.optimizer", "adamw"),
    ];
    if let Some((_, other)) = other_variant.iter().find(|(p, _)| *p == path) {
        return json!(other);
    }
    if path.ends_with(".device") {
        return json!("cuda");
    }
    if path.ends_with(".precision") {
        return json!("bf16");
    }
    match value {
        Json::Bool(b) => json!(!b),
        Json::Number(n) if n.is_u64() => json!(n.as_u64().unwrap() + 1),
        Json::Number(n) => json!(n.as_f64().unwrap() * 2.0 + 0.25),
        Json::String(s) => json!(format!("{s}x")),
        Json::Array(items) => {
            let mut items = items.clone();
            items.push(json!("more"));
            Json::Array(items)
        }
        other => panic!("{path}: no change written for {other}"),
    }
}

fn set(root: &mut Json, path: &str, value: Json) {
    let mut node = root;
    for part in path.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (
                name,
                Some(rest.trim_end_matches(']').parse::<usize>().unwrap()),
            ),
            None => (part, None),
        };
        node = &mut node[name];
        if let Some(i) = index {
            node = &mut node[i];
        }
    }
    *node = value;
}

/// Whether `path` lies in a section (or the part of one) that `stage`'s view holds.
fn covered(stage: StageId, path: &str) -> bool {
    let within_any = |prefixes: &[&str]| {
        prefixes.iter().any(|p| {
            path == *p || path.starts_with(&format!("{p}.")) || path.starts_with(&format!("{p}["))
        })
    };
    match stage {
        StageId::Download => within_any(&["download"]),
        StageId::TrainVocab => within_any(&[
            "train_vocab",
            "corpus.train_files",
            "corpus.format",
            "corpus.separator",
        ]),
        StageId::Pretokenize => within_any(&["pretokenize", "corpus"]),
        StageId::Train => within_any(&["model", "train"]),
        StageId::Sample => within_any(&["sample"]),
    }
}

/// Whether a covered field is left out of the key on purpose.
fn unkeyed(path: &str) -> bool {
    let non_semantic =
        |section: &str, fields: &[&str]| fields.iter().any(|f| path == format!("{section}.{f}"));
    // A precision setting is keyed as what it resolves to (see
    // `precision_is_keyed_as_it_resolves`).
    let resolved = path.ends_with(".precision");
    (non_semantic("download", DownloadConfig::NON_SEMANTIC)
        || non_semantic("train", TrainConfig::NON_SEMANTIC)
        || non_semantic("train_vocab", TrainVocabConfig::NON_SEMANTIC)
        || non_semantic("pretokenize", PretokenizeConfig::NON_SEMANTIC)
        || non_semantic("sample", SampleConfig::NON_SEMANTIC)
        // A file with a checksum is the same file from any mirror.
        || path == "download.files[0].mirrors")
        && !resolved
}

#[test]
fn a_stage_sees_and_keys_exactly_the_sections_its_key_covers() {
    let base = full_spec();
    let base_json = serde_json::to_value(&base).unwrap();
    let mut fields = Vec::new();
    leaves(&base_json, "", &mut fields);
    assert!(fields.len() > 50, "{fields:?}");
    for (path, value) in &fields {
        let mut json = base_json.clone();
        set(&mut json, path, changed(path, value));
        let spec: PipelineSpec = serde_json::from_value(json)
            .unwrap_or_else(|e| panic!("{path}: the changed spec does not parse: {e}"));
        assert_ne!(spec, base, "{path} did not change");
        for stage in StageId::ALL {
            let before = StageView::new(stage, &base).unwrap();
            let after = StageView::new(stage, &spec).unwrap();
            let same_key = before.key_config() == after.key_config();
            if !covered(stage, path) {
                assert_eq!(before, after, "{stage} sees {path}");
                assert!(same_key, "{stage}'s key covers {path}");
            } else if unkeyed(path) {
                assert_ne!(before, after, "{stage} does not see {path}");
                assert!(same_key, "{stage}'s key covers the non-semantic {path}");
            } else {
                assert_ne!(before, after, "{stage} does not see {path}");
                assert!(!same_key, "{stage}'s key misses {path}");
            }
        }
    }
}

#[test]
fn the_resolved_model_reaches_the_train_key() {
    let train_key =
        |spec: &PipelineSpec| StageView::new(StageId::Train, spec).unwrap().key_config();
    let mut spec = full_spec();
    spec.model.vocab_size = None;
    let before = train_key(&spec);
    spec.train_vocab.vocab_size += 1;
    assert_ne!(
        train_key(&spec),
        before,
        "the model's vocabulary defaults to the tokenizer's"
    );

    let preset: PipelineSpec =
        toml::from_str("[pipeline]\nname = \"t\"\n[model]\npreset = \"stories260K\"\n").unwrap();
    let written_out: PipelineSpec = toml::from_str(
        "[pipeline]\nname = \"t\"\n[model]\ndim = 64\nn_layers = 5\nn_heads = 8\nn_kv_heads = 4\n\
         vocab_size = 512\nmultiple_of = 4\nmax_seq_len = 512\n",
    )
    .unwrap();
    assert_eq!(train_key(&preset), train_key(&written_out));
    assert_ne!(train_key(&preset), train_key(&full_spec()));
}

#[test]
fn precision_is_keyed_as_it_resolves() {
    use crate::engine::{Device, PrecisionSetting};
    let train_key = |precision: PrecisionSetting, device: Device| {
        let mut spec = full_spec();
        spec.train.precision = precision;
        spec.train.device = device;
        StageView::new(StageId::Train, &spec).unwrap().key_config()
    };
    let f32_key = train_key(PrecisionSetting::F32, Device::Cpu);
    assert!(
        f32_key.get("precision").is_none(),
        "an f32 key is the key of before precision existed: {f32_key}"
    );
    let bf16_key = train_key(PrecisionSetting::Bf16, Device::Cpu);
    assert_eq!(bf16_key["precision"], "bf16");
    assert_ne!(f32_key, bf16_key);
    // `auto` is keyed as what it resolves to, so it shares the artifact of that precision.
    assert_eq!(train_key(PrecisionSetting::Auto, Device::Cuda(0)), f32_key);
    let expected = match PrecisionSetting::Auto.resolve(Device::Cpu) {
        Precision::Bf16 => &bf16_key,
        Precision::F32 => &f32_key,
    };
    assert_eq!(&train_key(PrecisionSetting::Auto, Device::Cpu), expected);
}

#[test]
fn keys_are_those_of_the_whole_spec_sections_they_replace() {
    // The keys tinyllm computed from the whole spec before stages had views: the same JSON
    // means every artifact already in a cache keeps its key (f32 sampling, the only precision
    // there was, adds nothing to the sample key).
    let mut spec = full_spec();
    spec.sample.precision = PrecisionSetting::F32;
    let semantic_of = |section: Json, non_semantic: &[&str]| {
        let mut section = section;
        for field in non_semantic {
            section.as_object_mut().unwrap().remove(*field);
        }
        section
    };
    let c = &spec.corpus;
    let m = &spec.model;
    let expected = [
        (
            StageId::TrainVocab,
            json!({
                "train_vocab": semantic_of(
                    serde_json::to_value(&spec.train_vocab).unwrap(),
                    TrainVocabConfig::NON_SEMANTIC,
                ),
                "corpus": {
                    "train_files": c.train_files,
                    "format": c.format,
                    "separator": c.separator,
                },
            }),
        ),
        (
            StageId::Pretokenize,
            json!({
                "pretokenize": semantic_of(
                    serde_json::to_value(&spec.pretokenize).unwrap(),
                    PretokenizeConfig::NON_SEMANTIC,
                ),
                "corpus": spec.corpus,
            }),
        ),
        (
            StageId::Train,
            json!({
                "model": {
                    "dims": spec.model_dims().ok(),
                    "tie_embeddings": m.tie_embeddings,
                    "norm_eps": m.norm_eps,
                    "rope_theta": m.rope_theta,
                    "dropout": m.dropout,
                },
                "train": semantic_of(
                    serde_json::to_value(&spec.train).unwrap(),
                    TrainConfig::NON_SEMANTIC,
                ),
            }),
        ),
        (
            StageId::Sample,
            semantic_of(
                serde_json::to_value(&spec.sample).unwrap(),
                SampleConfig::NON_SEMANTIC,
            ),
        ),
    ];
    for (stage, old) in expected {
        let view = StageView::new(stage, &spec).unwrap();
        assert_eq!(
            crate::pipeline::cache::canonical_json(&view.key_config()),
            crate::pipeline::cache::canonical_json(&old),
            "{stage}"
        );
    }
}

#[test]
fn a_stage_asking_for_another_stages_view_gets_an_error() {
    let views = StageViews::new(&full_spec()).unwrap();
    for stage in StageId::ALL {
        let view = views.get(stage);
        assert_eq!(view.stage(), stage);
        let asks = [
            (StageId::Download, view.download().is_ok()),
            (StageId::TrainVocab, view.train_vocab().is_ok()),
            (StageId::Pretokenize, view.pretokenize().is_ok()),
            (StageId::Train, view.train().is_ok()),
            (StageId::Sample, view.sample().is_ok()),
        ];
        for (asked, ok) in asks {
            assert_eq!(ok, asked == stage, "{stage} asked for {asked}'s view");
        }
    }
    let err = views.get(StageId::Sample).train().unwrap_err();
    assert_eq!(
        err.to_string(),
        "the train stage's settings were asked for, but this is the sample stage's view"
    );
}

#[test]
fn editing_a_local_corpus_changes_the_download_key() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("stories");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("a.txt"), "Tom had a cat.").unwrap();
    let toml = format!(
        "[pipeline]\nname = \"t\"\n[download]\nfiles = [{{ mirrors = [{:?}] }}]\n",
        folder.to_string_lossy()
    );
    let spec: PipelineSpec = toml::from_str(&toml).unwrap();
    let key = || {
        StageView::new(StageId::Download, &spec)
            .unwrap()
            .key_config()
    };
    let first = key();
    assert_eq!(first, key(), "the same content gives the same key");
    std::fs::write(folder.join("a.txt"), "Tom had a dog.").unwrap();
    let edited = key();
    assert_ne!(first, edited);
    std::fs::write(folder.join("b.txt"), "Lily ran.").unwrap();
    assert_ne!(edited, key(), "a new file changes it too");
}

#[test]
fn the_sample_key_holds_the_resolved_precision_unless_f32() {
    let key = |setting: PrecisionSetting| {
        let mut spec = full_spec();
        spec.sample.precision = setting;
        StageView::new(StageId::Sample, &spec).unwrap().key_config()
    };
    assert_eq!(key(PrecisionSetting::Bf16)["precision"], json!("bf16"));
    assert!(key(PrecisionSetting::F32).get("precision").is_none());
    let resolved = PrecisionSetting::Auto.resolve(crate::engine::Device::Cpu);
    let same = match resolved {
        Precision::F32 => PrecisionSetting::F32,
        Precision::Bf16 => PrecisionSetting::Bf16,
    };
    assert_eq!(key(PrecisionSetting::Auto), key(same));
}

#[test]
fn a_time_budget_is_keyed_and_settings_at_their_defaults_are_not() {
    let key = |edit: &dyn Fn(&mut PipelineSpec)| {
        let mut spec: PipelineSpec = toml::from_str("[pipeline]\nname = \"t\"\n").unwrap();
        spec.train.precision = PrecisionSetting::F32;
        edit(&mut spec);
        StageView::new(StageId::Train, &spec).unwrap().key_config()
    };
    let plain = key(&|_| {});
    // Keys written before these settings existed still match.
    for absent in [
        "max_time",
        "schedule",
        "decay_fraction",
        "optimizer",
        "muon_lr",
        "muon_momentum",
        "muon_weight_decay",
    ] {
        assert!(
            plain["train"].get(absent).is_none(),
            "{absent} is in {plain}"
        );
    }
    let ten = key(&|s| s.train.max_time = Some("10m".parse().unwrap()));
    let twenty = key(&|s| s.train.max_time = Some("20m".parse().unwrap()));
    assert_eq!(ten["train"]["max_time"], "10m");
    assert_ne!(ten, plain);
    assert_ne!(ten, twenty);
    let fraction = key(&|s| {
        s.train.min_lr = "10%"
            .parse::<crate::train::schedule::Percent>()
            .map(crate::pipeline::spec::MinLr::Fraction)
            .unwrap()
    });
    assert_eq!(fraction["train"]["min_lr"], "10%");
    let muon = key(&|s| s.train.optimizer = crate::pipeline::spec::OptimizerKind::Muon);
    assert_eq!(muon["train"]["optimizer"], "muon");
    assert_ne!(muon, plain);
}
