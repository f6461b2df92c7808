//! The model's logits equal Hugging Face `LlamaForCausalLM`'s on the same weights (golden files
//! written by tests/golden/make_golden.py), and weights survive a safetensors round trip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tinyllm::engine::Cpu;
use tinyllm::model::{Llama, LlamaConfig, ModelDims, RuntimeShape};

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn check(name: &str) {
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden(&format!("{name}.json"))).unwrap())
            .unwrap();
    let dims: ModelDims = serde_json::from_value(record["dims"].clone()).unwrap();
    let config = LlamaConfig {
        norm_eps: record["norm_eps"].as_f64().unwrap(),
        rope_theta: record["rope_theta"].as_f64().unwrap(),
        tie_embeddings: record["tie_embeddings"].as_bool().unwrap(),
    };
    let shape = RuntimeShape::new(dims).unwrap();
    let mut model = Llama::load_safetensors(
        Cpu::<f32>::new(),
        shape,
        config,
        &golden(&format!("{name}.safetensors")),
    )
    .unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(record["input_ids"].clone()).unwrap();
    let (batch, seq) = (ids.len(), ids[0].len());
    let flat: Vec<u32> = ids.concat();
    model.forward(&flat, None, batch, seq, 1.0).unwrap();
    let ours = model.logits().unwrap().unwrap();
    let theirs: Vec<f64> = serde_json::from_value(record["logits"].clone()).unwrap();
    assert_eq!(ours.len(), theirs.len());
    let max_diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    let spread = theirs.iter().map(|x| x.abs()).fold(0.0, f64::max);
    assert!(
        spread > 1.0,
        "the golden logits are too flat to tell anything: {spread}"
    );
    eprintln!("{name}: max |ours − Hugging Face| = {max_diff:e} (logits up to {spread:.2})");
    assert!(
        max_diff <= 1e-4,
        "{name}: max |ours − Hugging Face| = {max_diff:e}"
    );
}

#[test]
fn logits_match_hugging_face_tied() {
    check("tiny_tied");
}

#[test]
fn logits_match_hugging_face_untied() {
    check("tiny_untied");
}

#[test]
fn safetensors_round_trip_keeps_every_weight() {
    let dims = ModelDims {
        dim: 16,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        vocab_size: 32,
        multiple_of: 4,
        max_seq_len: 8,
    };
    let shape = RuntimeShape::new(dims).unwrap();
    let config = LlamaConfig {
        tie_embeddings: false,
        ..Default::default()
    };
    let model = Llama::new(Cpu::<f32>::new(), shape, config, 5).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    model.save_safetensors(&path, &metadata).unwrap();
    let loaded = Llama::load_safetensors(Cpu::<f32>::new(), shape, config, &path).unwrap();
    assert_eq!(loaded.params().tensors(), model.params().tensors());
    // A checkpoint of another shape is refused, naming the tensor.
    let other = RuntimeShape::new(ModelDims {
        dim: 32,
        n_heads: 4,
        ..dims
    })
    .unwrap();
    let err = Llama::load_safetensors(Cpu::<f32>::new(), other, config, &path)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model.embed_tokens.weight has shape [32, 16]"),
        "{err}"
    );
}
