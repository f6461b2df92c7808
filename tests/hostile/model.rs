//! Rows: model folders (`config.json`, weights), `sample`, `score`, `export`, `bench`, and the
//! memory a model and batch would need.

use super::*;

/// Rewrites `{dir}/model/config.json` with `edit` applied.
fn edit_config(project: &Project, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = project.path("model/config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    fs::write(path, config.to_string()).unwrap();
}

/// Sets one of the model's dimensions in both places `config.json` holds it.
fn set_dim(project: &Project, hf_field: &str, tinyllm_field: &str, value: u64) {
    edit_config(project, |config| {
        config[hf_field] = value.into();
        config["tinyllm"]["dims"][tinyllm_field] = value.into();
    });
}

fn context_of_a_trillion(project: &Project) {
    set_dim(
        project,
        "max_position_embeddings",
        "max_seq_len",
        1_000_000_000_000,
    );
}

fn context_beyond_i32(project: &Project) {
    set_dim(
        project,
        "max_position_embeddings",
        "max_seq_len",
        3_000_000_000,
    );
}

fn ten_million_layers(project: &Project) {
    set_dim(project, "num_hidden_layers", "n_layers", 10_000_000);
}

fn hidden_size_alone(project: &Project) {
    edit_config(project, |config| config["hidden_size"] = 128.into());
}

fn heads_that_do_not_divide(project: &Project) {
    set_dim(project, "num_attention_heads", "n_heads", 5);
}

fn negative_norm_eps(project: &Project) {
    edit_config(project, |config| config["rms_norm_eps"] = (-1.0).into());
}

fn zero_rope_theta(project: &Project) {
    edit_config(project, |config| config["rope_theta"] = 0.0.into());
}

fn other_rope_theta(project: &Project) {
    edit_config(project, |config| config["rope_theta"] = 20000.0.into());
}

fn smaller_vocabulary(project: &Project) {
    set_dim(project, "vocab_size", "vocab_size", 280);
}

/// Puts a NaN in the first value of the first tensor (the token embedding).
fn nan_weight(project: &Project) {
    let path = project.path("model/model.safetensors");
    let mut bytes = fs::read(&path).unwrap();
    let start = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    fs::write(path, bytes).unwrap();
}

/// What `tinyllm` is told in the rows that need a trained model.
const MODEL: &str = "{dir}/model";

/// The figure a memory refusal compares with, the same on every machine.
const MEMORY_8G: &[(&str, &str)] = &[("TINYLLM_MEMORY_LIMIT", "8G")];

pub fn rows() -> Vec<Row> {
    let folder_row = |what, setup: fn(&Project), args, expect| Row {
        what,
        setup: Some(setup),
        needs_model: true,
        args,
        expect: Expect::Refused(expect),
        ..ROW
    };
    vec![
        // Options, refused before the model folder is opened.
        Row {
            what: "sample --temperature -1 (a negative number, not a flag)",
            args: &["sample", "--checkpoint", MODEL, "--temperature", "-1"],
            expect: Expect::Refused(
                "error: --temperature -1 must be 0 or more (0: always the most likely token)",
            ),
            ..ROW
        },
        Row {
            what: "sample --temperature nan",
            args: &["sample", "--checkpoint", MODEL, "--temperature", "nan"],
            expect: Expect::Refused(
                "error: --temperature NaN must be 0 or more (0: always the most likely token)",
            ),
            ..ROW
        },
        Row {
            what: "sample --top-p -0.5",
            args: &["sample", "--checkpoint", MODEL, "--top-p", "-0.5"],
            expect: Expect::Refused("error: --top-p -0.5 must be in (0, 1]"),
            ..ROW
        },
        Row {
            what: "sample --top-p 1.5",
            args: &["sample", "--checkpoint", MODEL, "--top-p", "1.5"],
            expect: Expect::Refused("error: --top-p 1.5 must be in (0, 1]"),
            ..ROW
        },
        Row {
            what: "sample --prompt \"\"",
            args: &["sample", "--checkpoint", MODEL, "--prompt", ""],
            expect: Expect::Refused(
                "error: --prompt is empty; give the story's opening, or leave --prompt out to start from nothing",
            ),
            ..ROW
        },
        Row {
            what: "sample from a folder that is not a model",
            args: &["sample", "--checkpoint", "{dir}/nothing"],
            expect: Expect::Refused(
                "error: {dir}/nothing: not a model folder: config.json, model.safetensors, tokenizer.json missing (a train artifact, e.g. runs/<pipeline>/<variant>/artifacts/train, has them)",
            ),
            ..ROW
        },
        Row {
            what: "score with neither --text nor --file",
            args: &["score", "--checkpoint", MODEL],
            expect: Expect::Refused(
                "error: give --text, or --file PATH to read it from a file (- for standard input)",
            ),
            ..ROW
        },
        Row {
            what: "score with both --text and --file",
            args: &["score", "--checkpoint", MODEL, "--text", "a", "--file", "b"],
            expect: Expect::Refused("error: give --text or --file, not both"),
            ..ROW
        },
        Row {
            what: "score --file that does not exist",
            args: &["score", "--checkpoint", MODEL, "--file", "{dir}/nope.txt"],
            expect: Expect::Refused(
                "error: cannot read {dir}/nope.txt: No such file or directory (os error 2)",
            ),
            ..ROW
        },
        Row {
            what: "bench train --seq beyond the preset's context (was clamped silently)",
            args: &["bench", "train", "--seq", "100000", "--steps", "1"],
            expect: Expect::Refused(
                "error: --seq 100000 is above the tutorial preset's max_seq_len 256; lower --seq, or give custom dimensions (--dim …), whose context is --seq",
            ),
            ..ROW
        },
        Row {
            what: "bench train --batch 0",
            args: &["bench", "train", "--batch", "0"],
            expect: Expect::Refused(
                "error: --batch, --seq, --grad-accum and --steps must be at least 1",
            ),
            ..ROW
        },
        Row {
            what: "bench train with a batch beyond memory",
            args: &[
                "bench",
                "train",
                "--dim",
                "64",
                "--n-layers",
                "1",
                "--n-heads",
                "2",
                "--vocab-size",
                "300",
                "--batch",
                "1000000",
                "--seq",
                "256",
                "--steps",
                "1",
            ],
            expect: Expect::Refused(
                "error: this benchmark needs about 3.6 TB of memory (581.1 kB for the weights and gradients of a 72.6k-parameter model, 581.1 kB for the AdamW moments of a 72.6k-parameter model, 3.6 TB for the activations of batch 1000000 × seq 256, 290.6 kB for a host copy of the weights of a 72.6k-parameter model), more than the 8.0 GB TINYLLM_MEMORY_LIMIT allows; lower --batch or --seq",
            ),
            env: MEMORY_8G,
            ..ROW
        },
        Row {
            what: "bench train with a model beyond memory",
            args: &[
                "bench",
                "train",
                "--dim",
                "4096",
                "--n-layers",
                "1000",
                "--n-heads",
                "32",
                "--vocab-size",
                "300",
                "--batch",
                "1",
                "--seq",
                "8",
                "--steps",
                "1",
            ],
            expect: Expect::Refused(
                "error: this benchmark needs about 4.0 TB of memory (1.6 TB for the weights and gradients of a 201.6B-parameter model, 1.6 TB for the AdamW moments of a 201.6B-parameter model, 1.5 GB for the activations of batch 1 × seq 8, 806.4 GB for a host copy of the weights of a 201.6B-parameter model), more than the 8.0 GB TINYLLM_MEMORY_LIMIT allows; choose a smaller preset or smaller dimensions (--dim, --n-layers)",
            ),
            env: MEMORY_8G,
            ..ROW
        },
        Row {
            what: "bench generate --new-tokens beyond the preset's context",
            args: &["bench", "generate", "--new-tokens", "100000"],
            expect: Expect::Refused(
                "error: --new-tokens 100000 is more than the model's context holds (max_seq_len 256); ask for at most 256",
            ),
            ..ROW
        },
        Row {
            what: "bench generate --runs 0",
            args: &["bench", "generate", "--runs", "0"],
            expect: Expect::Refused("error: --new-tokens and --runs must be at least 1"),
            ..ROW
        },
        Row {
            what: "--set model.n_layers=1000000 (training beyond memory), --dry-run",
            args: &[
                "run",
                "pipeline.toml",
                "--set",
                "model.n_layers=1000000",
                "--dry-run",
            ],
            expect: Expect::Refused(
                "error: --set model.n_layers=1000000: key `model.n_layers`: training needs about 154.9 GB of memory (31.0 GB for the weights and gradients of a 3.9B-parameter model, 31.0 GB for the AdamW moments of a 3.9B-parameter model, 62.0 GB for the activations of batch 8 × seq 8, 15.5 GB for a host copy of the weights of a 3.9B-parameter model, 15.5 GB for the summed gradients of a 3.9B-parameter model), more than the 8.0 GB TINYLLM_MEMORY_LIMIT allows; choose a smaller model (model.dim, model.n_layers, model.vocab_size)",
            ),
            env: MEMORY_8G,
            ..ROW
        },
        Row {
            what: "--set train.batch_size=100000000 (activations beyond memory)",
            args: &[
                "run",
                "pipeline.toml",
                "--set",
                "train.batch_size=100000000",
            ],
            expect: Expect::Refused(
                "error: --set train.batch_size=100000000: key `train.batch_size`: training needs about 3.9 TB of memory (100.5 kB for the weights and gradients of a 12.6k-parameter model, 100.5 kB for the AdamW moments of a 12.6k-parameter model, 3.9 TB for the activations of batch 100000000 × seq 8, 50.2 kB for a host copy of the weights of a 12.6k-parameter model, 50.2 kB for the summed gradients of a 12.6k-parameter model), more than the 8.0 GB TINYLLM_MEMORY_LIMIT allows; lower train.batch_size (or train.seq_len)",
            ),
            env: MEMORY_8G,
            ..ROW
        },
        // Model folders whose parts disagree or ask for the impossible.
        folder_row(
            "sample with config.json's context at 10^12 positions",
            context_of_a_trillion,
            &["sample", "--checkpoint", MODEL],
            "error: {dir}/model/config.json: not a tinyllm model config: tinyllm.dims.max_seq_len 1000000000000 is above 1048576, the longest context tinyllm supports",
        ),
        folder_row(
            "export --format llama2c-v1 with a context beyond the i32 header",
            context_beyond_i32,
            &[
                "export",
                "--checkpoint",
                MODEL,
                "--format",
                "llama2c-v1",
                "--out",
                "{dir}/out",
            ],
            "error: {dir}/model/config.json: not a tinyllm model config: tinyllm.dims.max_seq_len 3000000000 is above 1048576, the longest context tinyllm supports",
        ),
        folder_row(
            "sample with config.json at 10^7 layers",
            ten_million_layers,
            &["sample", "--checkpoint", MODEL],
            "error: {dir}/model/model.safetensors: 473.4 kB of weights, but config.json describes a model of 492800019264 parameters (2.0 TB as f32); config.json does not belong to these weights",
        ),
        folder_row(
            "bench generate with config.json at 10^7 layers",
            ten_million_layers,
            &["bench", "generate", "--checkpoint", MODEL],
            "error: {dir}/model/model.safetensors: 473.4 kB of weights, but config.json describes a model of 492800019264 parameters (2.0 TB as f32); config.json does not belong to these weights",
        ),
        folder_row(
            "export --format llama2c with config.json at 10^7 layers",
            ten_million_layers,
            &[
                "export",
                "--checkpoint",
                MODEL,
                "--format",
                "llama2c",
                "--out",
                "{dir}/out",
            ],
            "error: {dir}/model/model.safetensors: 473.4 kB of weights, but config.json describes a model of 492800019264 parameters (2.0 TB as f32); config.json does not belong to these weights",
        ),
        folder_row(
            "config.json's hidden_size disagrees with tinyllm.dims",
            hidden_size_alone,
            &["sample", "--checkpoint", MODEL],
            "error: {dir}/model/config.json: not a tinyllm model config: hidden_size is 128 but tinyllm.dims.dim gives 64; make them agree",
        ),
        folder_row(
            "config.json with heads that do not divide dim",
            heads_that_do_not_divide,
            &["score", "--checkpoint", MODEL, "--text", "Once"],
            "error: {dir}/model/config.json: not a tinyllm model config: tinyllm.dims.n_heads 5 does not divide dim 64",
        ),
        folder_row(
            "config.json with rms_norm_eps -1",
            negative_norm_eps,
            &["score", "--checkpoint", MODEL, "--text", "Once"],
            "error: {dir}/model/config.json: not a tinyllm model config: rms_norm_eps is -1; it must be a positive number (1e-5 as trained)",
        ),
        folder_row(
            "config.json with rope_theta 0",
            zero_rope_theta,
            &["sample", "--checkpoint", MODEL],
            "error: {dir}/model/config.json: not a tinyllm model config: rope_theta is 0; it must be a positive number (10000 as trained)",
        ),
        folder_row(
            "export --format llama2c of a model with another RoPE theta",
            other_rope_theta,
            &[
                "export",
                "--checkpoint",
                MODEL,
                "--format",
                "llama2c",
                "--out",
                "{dir}/out",
            ],
            "error: this model cannot be written as llama2c: run.c computes RoPE with theta 10000, this model was trained with 20000",
        ),
        folder_row(
            "a tokenizer with more tokens than config.json's vocabulary",
            smaller_vocabulary,
            &["sample", "--checkpoint", MODEL],
            "error: {dir}/model: the tokenizer has 300 tokens but the model's vocab_size is 280: its ids from 280 up are beyond the model; the tokenizer belongs to another model",
        ),
        folder_row(
            "score with a NaN among the weights",
            nan_weight,
            &["score", "--checkpoint", MODEL, "--text", "Once upon a time"],
            "error: {dir}/model/model.safetensors: tensor model.embed_tokens.weight holds NaN at index 0: the weights are damaged (a run that diverged?) and would give NaN logits",
        ),
        Row {
            what: "score --text \"\"",
            needs_model: true,
            args: &["score", "--checkpoint", MODEL, "--text", ""],
            expect: Expect::Refused(
                "error: --text has nothing to score (it is empty or blank); give a text",
            ),
            ..ROW
        },
        Row {
            what: "score --text of blanks",
            needs_model: true,
            args: &["score", "--checkpoint", MODEL, "--text", "  \n "],
            expect: Expect::Refused(
                "error: --text has nothing to score (it is empty or blank); give a text",
            ),
            ..ROW
        },
        Row {
            what: "sample with a prompt longer than the context",
            needs_model: true,
            args: &[
                "sample",
                "--checkpoint",
                MODEL,
                "--prompt",
                "Once upon a time there was a little girl named Lily. She liked to play outside in the sun with her dog and her cat every day.",
            ],
            expect: Expect::Refused(
                "error: the prompt is 105 tokens (with BOS) but the model's context is 32; shorten it",
            ),
            ..ROW
        },
        Row {
            what: "export into a folder that is not empty",
            needs_model: true,
            files: &[("out/keep.txt", "mine")],
            args: &[
                "export",
                "--checkpoint",
                MODEL,
                "--format",
                "hf",
                "--out",
                "{dir}/out",
            ],
            expect: Expect::Refused(
                "error: {dir}/out: already exists and is not an empty folder; choose another --out or remove it",
            ),
            ..ROW
        },
    ]
}
