//! The sample stage and `tinyllm sample`: stories in the run folder, the same text for the same
//! seed, and one-line errors for bad checkpoints and options.

mod common;

use std::fs;

use common::{one_error_line as error_line, tinyllm, trained_project as trained};
use tinyllm::export::gguf::Value;
use tinyllm::export::gguf::read::GgufFile;

#[test]
fn the_pipeline_writes_samples_and_sample_reproduces_them() {
    let project = trained();
    let run_dir = project.runs().join("test/default");
    let samples = fs::read_to_string(run_dir.join("samples.md")).unwrap();
    assert!(samples.contains("## \"Tom had a\", sample 1"), "{samples}");
    let json: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(run_dir.join("artifacts/sample/samples.json")).unwrap(),
    )
    .unwrap();
    let all = json["samples"].as_array().unwrap();
    assert_eq!(all.len(), 2);
    assert!(
        all.iter()
            .any(|s| !s["text"].as_str().unwrap().trim().is_empty())
    );

    let output = project.run_command(&[]).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let again = String::from_utf8_lossy(&output.stdout);
    assert!(again.contains("sample       cached"), "{again}");
    assert!(!again.contains(" ran "), "{again}");

    let score = tinyllm(
        &["score", "--text", "Tom had a cat.", "--json"],
        Some(&run_dir),
    );
    assert!(score.status.success(), "{score:?}");
    let score: serde_json::Value = serde_json::from_slice(&score.stdout).unwrap();
    let ids = score["ids"].as_array().unwrap();
    assert_eq!(ids[0], 1, "BOS first");
    assert_eq!(score["losses"].as_array().unwrap().len(), ids.len() - 1);
    assert_eq!(score["logits"].as_array().unwrap().len(), ids.len());
    assert_eq!(score["logits"][0].as_array().unwrap().len(), 300);
    let loss = score["loss"].as_f64().unwrap();
    assert!(loss > 0.0 && loss < 300f64.ln() + 1.0, "{loss}");

    let sample = |seed: &str| {
        let output = tinyllm(
            &[
                "sample",
                "--prompt",
                "Tom had a",
                "--seed",
                seed,
                "--max-new-tokens",
                "12",
            ],
            Some(&run_dir),
        );
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let first = sample("3");
    assert!(first.starts_with("Tom had a"), "{first}");
    assert_eq!(first, sample("3"));
    // The stage's first sample used seed 42 with the spec's settings (top-p 0.9, temperature 1).
    let stage_text = all[0]["text"].as_str().unwrap();
    let output = tinyllm(
        &[
            "sample",
            "--prompt",
            "Tom had a",
            "--seed",
            "42",
            "--max-new-tokens",
            "20",
        ],
        Some(&run_dir.join("artifacts/train")),
    );
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!("Tom had a{stage_text}\n")
    );
}

#[test]
fn bad_checkpoints_and_options_are_one_line_errors() {
    let project = trained();
    let model = project.runs().join("test/default/artifacts/train");
    let copy = project.path("copy");
    fs::create_dir_all(&copy).unwrap();
    for name in ["model.safetensors", "config.json", "tokenizer.json"] {
        fs::copy(model.join(name), copy.join(name)).unwrap();
    }
    let prompt = ["sample", "--prompt", "Tom"];

    let line = error_line(&tinyllm(&["sample", "--prompt", ""], Some(&copy)));
    assert!(line.contains("--prompt is empty"), "{line}");
    for top_p in ["0", "1.5"] {
        let line = error_line(&tinyllm(&["sample", "--top-p", top_p], Some(&copy)));
        assert!(line.contains("must be in (0, 1]"), "{line}");
    }
    // A negative temperature is a number refused in words, not taken for a flag.
    let line = error_line(&tinyllm(&["sample", "--temperature", "-1"], Some(&copy)));
    assert!(
        line.contains("--temperature -1 must be 0 or more"),
        "{line}"
    );
    // A prompt longer than the context is refused before any of it is printed.
    let long = "Tom had a cat. ".repeat(20);
    let output = tinyllm(&["sample", "--prompt", &long], Some(&copy));
    let line = error_line(&output);
    assert!(
        line.contains("but the model's context is 32; shorten it"),
        "{line}"
    );
    assert!(output.stdout.is_empty(), "{output:?}");

    // A GPU asked for where there is none (or in a build without CUDA): one line, not a panic.
    for command in [
        &["sample", "--prompt", "Tom", "--device", "cuda"][..],
        &["score", "--text", "Tom", "--device", "cuda:1"],
    ] {
        let line = error_line(&tinyllm(command, Some(&copy)));
        assert!(
            line.contains("--features cuda")
                || line.contains("NVIDIA driver")
                || line.contains("no CUDA device"),
            "{line}"
        );
    }

    let config_path = copy.join("config.json");
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&config_path).unwrap()).unwrap();
    // A config that is consistent in itself but not with the weights.
    let mut wider = config.clone();
    wider["hidden_size"] = 128.into();
    wider["tinyllm"]["dims"]["dim"] = 128.into();
    wider["intermediate_size"] = 352.into();
    fs::write(&config_path, wider.to_string()).unwrap();
    let line = error_line(&tinyllm(&prompt, Some(&copy)));
    assert!(
        line.contains("config.json does not belong to these weights"),
        "{line}"
    );
    // A tokenizer with ids beyond the model's vocabulary.
    let mut vocab = config.clone();
    vocab["vocab_size"] = 280.into();
    vocab["tinyllm"]["dims"]["vocab_size"] = 280.into();
    fs::write(&config_path, vocab.to_string()).unwrap();
    let line = error_line(&tinyllm(&prompt, Some(&copy)));
    assert!(
        line.contains("the tokenizer has 300 tokens but the model's vocab_size is 280"),
        "{line}"
    );
    fs::remove_file(&config_path).unwrap();
    let line = error_line(&tinyllm(&prompt, Some(&copy)));
    assert!(line.contains("config.json missing"), "{line}");
}

/// A corpus too small for the vocabulary asked gives a tokenizer with fewer tokens than the
/// model's embedding: training, sampling and the exports take it (the extra ids are never made).
#[test]
fn a_tokenizer_smaller_than_the_model_samples_and_exports() {
    let project = common::training_project("max_iters = 2\neval_interval = 2\n");
    let output = project
        .run_command(&["--set", "train_vocab.vocab_size=2000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let vocab: usize = stdout
        .split("bpe vocab ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("train_vocab reports its size");
    assert!(vocab < 2000, "{stdout}");
    assert!(stdout.contains("sample       ran"), "{stdout}");
    let run_dir = project.runs().join("test/default");
    for format in ["hf", "llama2c", "gguf"] {
        let out = project.path(&format!("export-{format}"));
        let output = tinyllm(
            &["export", "--format", format, "--out", out.to_str().unwrap()],
            Some(&run_dir),
        );
        assert!(output.status.success(), "{format}: {output:?}");
    }
    let bin = fs::read(project.path("export-llama2c/tokenizer.bin")).unwrap();
    let (mut pieces, mut at) = (0, 4);
    while at < bin.len() {
        let len = i32::from_le_bytes(bin[at + 4..at + 8].try_into().unwrap()) as usize;
        at += 8 + len;
        pieces += 1;
    }
    assert_eq!(pieces, 2000, "run.c reads one piece per id of the model");

    // llama.cpp wants one distinct piece per id of the model: the ids no text makes are padding.
    let gguf = GgufFile::open(&project.path("export-gguf/model.gguf")).unwrap();
    let array = |key: &str| gguf.get(key).and_then(Value::as_array).unwrap().to_vec();
    let (tokens, types) = (
        array("tokenizer.ggml.tokens"),
        array("tokenizer.ggml.token_type"),
    );
    assert_eq!((tokens.len(), types.len()), (2000, 2000));
    assert_eq!(
        tokens[vocab].as_str(),
        Some(format!("[PAD{vocab}]").as_str())
    );
    assert_eq!(types[vocab], Value::I32(5), "unused");
    assert_eq!(types[vocab - 1], Value::I32(1), "normal");
    let distinct: std::collections::HashSet<_> = tokens.iter().map(|t| t.as_str()).collect();
    assert_eq!(distinct.len(), 2000);
}
