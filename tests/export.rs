//! `tinyllm export`: the Hugging Face folder, and llama2.c's `model.bin` and `tokenizer.bin`
//! read back by a reader written here the way `run.c` reads them, which must compute the logits
//! tinyllm computes and encode prompts into tinyllm's ids.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use common::{one_error_line as error_line, tinyllm, trained_project as trained};

#[test]
fn export_writes_a_hugging_face_folder_and_refuses_bad_input() {
    let project = trained();
    let run_dir = project.runs().join("test/default");
    let out = project.path("hf");
    let output = export("hf", &out, &run_dir);
    assert!(output.status.success(), "{output:?}");
    for name in [
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert!(out.join(name).is_file(), "{name} is missing");
    }
    let weights = fs::read(out.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&weights[8..8 + header_len]).unwrap();
    assert_eq!(header["__metadata__"]["format"], "pt");
    assert!(header["model.embed_tokens.weight"].is_object());
    let tokenizer: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("tokenizer.json")).unwrap()).unwrap();
    assert_eq!(tokenizer["normalizer"]["type"], "Prepend");
    assert_eq!(
        tokenizer["post_processor"]["special_tokens"]["<s>"]["ids"][0],
        1
    );
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["hidden_size"], 64);

    // The folder now exists and is not empty: refused, left as it was.
    let again = export("hf", &out, &run_dir);
    let line = error_line(&again);
    assert!(
        line.contains("already exists and is not an empty folder"),
        "{line}"
    );
    assert!(out.join("model.safetensors").is_file());

    let empty = project.path("empty");
    fs::create_dir_all(&empty).unwrap();
    let line = error_line(&export("hf", &project.path("x"), &empty));
    assert!(line.contains("not a model folder"), "{line}");
    assert!(!project.path("x").exists());
}

/// A `model.bin` in the layout run.c reads (version 0), loaded the way run.c loads it.
struct RunC {
    dim: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    seq_len: usize,
    weights: HashMap<&'static str, Vec<f32>>,
}

fn read_i32s(bytes: &[u8], count: usize) -> Vec<i32> {
    bytes[..4 * count]
        .chunks(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

impl RunC {
    fn load(path: &Path) -> RunC {
        let bytes = fs::read(path).unwrap();
        let header = read_i32s(&bytes, 7);
        let sizes: Vec<usize> = header.iter().map(|n| n.unsigned_abs() as usize).collect();
        let [dim, hidden, layers, heads, kv_heads, vocab, seq_len] = sizes[..] else {
            unreachable!("seven numbers were read")
        };
        let shared = header[5] > 0;
        let floats: Vec<f32> = bytes[28..]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let head_size = dim / heads;
        let kv_dim = kv_heads * head_size;
        let mut sizes = vec![
            ("embedding", vocab * dim),
            ("rms_att", layers * dim),
            ("wq", layers * dim * dim),
            ("wk", layers * dim * kv_dim),
            ("wv", layers * dim * kv_dim),
            ("wo", layers * dim * dim),
            ("rms_ffn", layers * dim),
            ("w1", layers * dim * hidden),
            ("w2", layers * hidden * dim),
            ("w3", layers * dim * hidden),
            ("rms_final", dim),
            ("freq_cis_real", seq_len * head_size / 2),
            ("freq_cis_imag", seq_len * head_size / 2),
        ];
        if !shared {
            sizes.push(("wcls", vocab * dim));
        }
        let mut weights = HashMap::new();
        let mut at = 0;
        for (name, size) in sizes {
            weights.insert(name, floats[at..at + size].to_vec());
            at += size;
        }
        assert_eq!(at, floats.len(), "the file holds exactly the weights");
        if shared {
            weights.insert("wcls", weights["embedding"].clone());
        }
        RunC {
            dim,
            hidden,
            layers,
            heads,
            kv_heads,
            vocab,
            seq_len,
            weights,
        }
    }

    /// The logits after each token of `tokens`, one position at a time with a KV cache.
    fn logits(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let (dim, hidden) = (self.dim, self.hidden);
        let head_size = dim / self.heads;
        let kv_dim = self.kv_heads * head_size;
        let kv_mul = self.heads / self.kv_heads;
        let w = &self.weights;
        let matmul = |x: &[f32], weight: &[f32], n: usize, d: usize| -> Vec<f32> {
            (0..d)
                .map(|i| (0..n).map(|j| weight[i * n + j] * x[j]).sum())
                .collect()
        };
        let rmsnorm = |x: &[f32], weight: &[f32]| -> Vec<f32> {
            let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + 1e-5;
            let scale = 1.0 / ss.sqrt();
            x.iter().zip(weight).map(|(v, g)| g * scale * v).collect()
        };
        let mut key_cache = vec![vec![0.0f32; self.seq_len * kv_dim]; self.layers];
        let mut value_cache = key_cache.clone();
        let mut all = Vec::new();
        for (pos, &token) in tokens.iter().enumerate() {
            let token = token as usize;
            let mut x = w["embedding"][token * dim..(token + 1) * dim].to_vec();
            for l in 0..self.layers {
                let xb = rmsnorm(&x, &w["rms_att"][l * dim..(l + 1) * dim]);
                let mut q = matmul(&xb, &w["wq"][l * dim * dim..], dim, dim);
                let mut k = matmul(&xb, &w["wk"][l * dim * kv_dim..], dim, kv_dim);
                let v = matmul(&xb, &w["wv"][l * dim * kv_dim..], dim, kv_dim);
                for i in (0..dim).step_by(2) {
                    let freq = 1.0 / 10000f32.powf((i % head_size) as f32 / head_size as f32);
                    let (fci, fcr) = (pos as f32 * freq).sin_cos();
                    for vec in [&mut q, &mut k] {
                        if i < vec.len() {
                            let (v0, v1) = (vec[i], vec[i + 1]);
                            vec[i] = v0 * fcr - v1 * fci;
                            vec[i + 1] = v0 * fci + v1 * fcr;
                        }
                    }
                }
                key_cache[l][pos * kv_dim..(pos + 1) * kv_dim].copy_from_slice(&k);
                value_cache[l][pos * kv_dim..(pos + 1) * kv_dim].copy_from_slice(&v);
                let mut attended = vec![0.0f32; dim];
                for h in 0..self.heads {
                    let q = &q[h * head_size..(h + 1) * head_size];
                    let offset = |t: usize| t * kv_dim + (h / kv_mul) * head_size;
                    let scores: Vec<f32> = (0..=pos)
                        .map(|t| {
                            let k = &key_cache[l][offset(t)..offset(t) + head_size];
                            q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>()
                                / (head_size as f32).sqrt()
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f32 = exps.iter().sum();
                    for (t, e) in exps.iter().enumerate() {
                        let v = &value_cache[l][offset(t)..offset(t) + head_size];
                        for i in 0..head_size {
                            attended[h * head_size + i] += e / sum * v[i];
                        }
                    }
                }
                let out = matmul(&attended, &w["wo"][l * dim * dim..], dim, dim);
                x.iter_mut().zip(out).for_each(|(a, b)| *a += b);
                let xb = rmsnorm(&x, &w["rms_ffn"][l * dim..(l + 1) * dim]);
                let h1 = matmul(&xb, &w["w1"][l * dim * hidden..], dim, hidden);
                let h3 = matmul(&xb, &w["w3"][l * dim * hidden..], dim, hidden);
                let gated: Vec<f32> = h1
                    .iter()
                    .zip(&h3)
                    .map(|(a, b)| a / (1.0 + (-a).exp()) * b)
                    .collect();
                let out = matmul(&gated, &w["w2"][l * dim * hidden..], hidden, dim);
                x.iter_mut().zip(out).for_each(|(a, b)| *a += b);
            }
            let x = rmsnorm(&x, &w["rms_final"]);
            all.push(matmul(&x, &w["wcls"], dim, self.vocab));
        }
        all
    }
}

/// A `tokenizer.bin`, with run.c's encoder: a leading space token, one token per UTF-8
/// character (its bytes when the vocabulary lacks it), then the best-scoring merge of adjacent
/// tokens, again and again.
struct RunCTokenizer {
    pieces: Vec<Vec<u8>>,
    scores: Vec<f32>,
}

impl RunCTokenizer {
    fn load(path: &Path, vocab: usize) -> RunCTokenizer {
        let bytes = fs::read(path).unwrap();
        let longest = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        let (mut pieces, mut scores, mut at) = (Vec::new(), Vec::new(), 4);
        for _ in 0..vocab {
            scores.push(f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()));
            let len = read_i32s(&bytes[at + 4..], 1)[0] as usize;
            pieces.push(bytes[at + 8..at + 8 + len].to_vec());
            at += 8 + len;
        }
        assert_eq!(at, bytes.len());
        assert_eq!(longest, pieces.iter().map(Vec::len).max().unwrap());
        RunCTokenizer { pieces, scores }
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        let lookup: HashMap<&[u8], u32> = self
            .pieces
            .iter()
            .enumerate()
            .map(|(id, piece)| (piece.as_slice(), id as u32))
            .collect();
        let mut tokens = vec![lookup[b" ".as_slice()]];
        for c in text.chars() {
            let mut buf = [0u8; 4];
            let bytes = c.encode_utf8(&mut buf).as_bytes();
            match lookup.get(bytes) {
                Some(&id) => tokens.push(id),
                None => tokens.extend(bytes.iter().map(|&b| b as u32 + 3)),
            }
        }
        loop {
            let best = (0..tokens.len().saturating_sub(1))
                .filter_map(|i| {
                    let joined = [
                        &self.pieces[tokens[i] as usize][..],
                        &self.pieces[tokens[i + 1] as usize][..],
                    ]
                    .concat();
                    lookup.get(joined.as_slice()).map(|&id| (i, id))
                })
                .fold(None::<(usize, u32)>, |best, (i, id)| match best {
                    Some((_, b)) if self.scores[b as usize] >= self.scores[id as usize] => best,
                    _ => Some((i, id)),
                });
            let Some((i, id)) = best else { break };
            tokens[i] = id;
            tokens.remove(i + 1);
        }
        tokens
    }
}

/// `tinyllm export --format FORMAT --out OUT --checkpoint FROM`.
fn export(format: &str, out: &Path, from: &Path) -> std::process::Output {
    let out = out.to_str().unwrap();
    tinyllm(&["export", "--format", format, "--out", out], Some(from))
}

fn score(run_dir: &Path, text: &str) -> (Vec<u32>, Vec<Vec<f32>>) {
    let output = tinyllm(&["score", "--text", text, "--json"], Some(run_dir));
    assert!(output.status.success(), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let ids = serde_json::from_value(json["ids"].clone()).unwrap();
    let logits = serde_json::from_value(json["logits"].clone()).unwrap();
    (ids, logits)
}

#[test]
fn llama2c_export_computes_our_logits_and_encodes_our_ids_the_run_c_way() {
    let project = trained();
    let run_dir = project.runs().join("test/default");
    let out = project.path("llama2c");
    let output = export("llama2c", &out, &run_dir);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("-z"));

    let model = RunC::load(&out.join("model.bin"));
    assert_eq!(
        (
            model.dim,
            model.layers,
            model.heads,
            model.kv_heads,
            model.vocab,
            model.seq_len
        ),
        (64, 2, 4, 2, 300, 32)
    );
    let tokenizer = RunCTokenizer::load(&out.join("tokenizer.bin"), model.vocab);
    assert_eq!(tokenizer.pieces[1], b"\n<s>\n");
    assert_eq!(tokenizer.pieces[3 + 10], b"<0x0A>");

    for text in ["Tom had a cat.", "Lily saw 12 big dogs!", "héllo ☃ ok"] {
        let (ids, logits) = score(&run_dir, text);
        assert_eq!(tokenizer.encode(text), ids[1..], "{text:?}");
        let theirs = model.logits(&ids);
        for (position, (ours, theirs)) in logits.iter().zip(&theirs).enumerate() {
            let worst = ours
                .iter()
                .zip(theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "{text:?} position {position}: {worst}");
        }
    }

    // Version 1: the same numbers behind a 256-byte header, norms first.
    let v1 = project.path("llama2c-v1");
    let output = export("llama2c-v1", &v1, &run_dir);
    assert!(output.status.success(), "{output:?}");
    let bytes = fs::read(v1.join("model.bin")).unwrap();
    assert_eq!(
        &bytes[..4],
        b"24ka",
        "the magic ak42 as a little-endian u32"
    );
    assert_eq!(read_i32s(&bytes[4..], 8), [1, 64, 192, 2, 4, 2, 300, 32]);
    assert_eq!(bytes[36], 1, "tied embedding");
    let legacy = fs::read(out.join("model.bin")).unwrap();
    let rope_tables = 2 * 32 * 16 / 2 * 4;
    assert_eq!(bytes.len() - 256, legacy.len() - 28 - rope_tables);
    let embedding = 300 * 64 * 4;
    let norms = (2 * 2 + 1) * 64 * 4;
    assert_eq!(
        bytes[256 + norms..256 + norms + embedding],
        legacy[28..28 + embedding]
    );
    assert_eq!(
        fs::read(v1.join("tokenizer.bin")).unwrap(),
        fs::read(out.join("tokenizer.bin")).unwrap()
    );

    // An existing folder is not overwritten.
    let line = error_line(&export("llama2c", &out, &run_dir));
    assert!(line.contains("already exists"), "{line}");

    // A model trained with another RoPE base would run in run.c, wrongly: refused.
    let copy = project.path("theta");
    fs::create_dir_all(&copy).unwrap();
    let model_dir = run_dir.join("artifacts/train");
    for name in ["model.safetensors", "config.json", "tokenizer.json"] {
        fs::copy(model_dir.join(name), copy.join(name)).unwrap();
    }
    let config_path = copy.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&config_path).unwrap()).unwrap();
    config["rope_theta"] = 500000.0.into();
    fs::write(&config_path, config.to_string()).unwrap();
    let refused = project.path("refused");
    let line = error_line(&export("llama2c", &refused, &copy));
    assert!(line.contains("RoPE with theta 10000"), "{line}");
    assert!(!refused.exists());
}
