//! `tinyllm export`: the Hugging Face folder, and llama2.c's `model.bin` and `tokenizer.bin`
//! read back by a reader written here the way `run.c` reads them, which must compute the logits
//! tinyllm computes and encode prompts into tinyllm's ids. The GGUF file is read back with the
//! library's reader and run through the same forward pass and encoder, which work as llama.cpp's
//! `llama` architecture and SentencePiece tokenizer do (adjacent-pair RoPE, best-score merges).

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use common::{one_error_line as error_line, tinyllm, trained_project as trained};
use tinyllm::export::gguf::read::GgufFile;
use tinyllm::export::gguf::{TensorType, Value};
use tinyllm::generate::folder::ModelFolder;
use tinyllm::model::{param_layout, safetensors};

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
    /// The model of a GGUF export, its tensors under run.c's names (the q and k rows stay in
    /// adjacent-pair order, which is what run.c rotates).
    fn from_gguf(file: &GgufFile) -> RunC {
        let number = |key: &str| file.get(key).and_then(Value::as_u32).unwrap() as usize;
        let layers = number("llama.block_count");
        let tensor = |name: &str| file.tensor_f32(name).unwrap();
        let each_layer = |part: &str| -> Vec<f32> {
            (0..layers)
                .flat_map(|l| tensor(&format!("blk.{l}.{part}.weight")))
                .collect()
        };
        let embedding = tensor("token_embd.weight");
        let head = match file.tensor("output.weight") {
            Some(_) => tensor("output.weight"),
            None => embedding.clone(),
        };
        let weights = HashMap::from([
            ("rms_att", each_layer("attn_norm")),
            ("wq", each_layer("attn_q")),
            ("wk", each_layer("attn_k")),
            ("wv", each_layer("attn_v")),
            ("wo", each_layer("attn_output")),
            ("rms_ffn", each_layer("ffn_norm")),
            ("w1", each_layer("ffn_gate")),
            ("w2", each_layer("ffn_down")),
            ("w3", each_layer("ffn_up")),
            ("rms_final", tensor("output_norm.weight")),
            ("embedding", embedding),
            ("wcls", head),
        ]);
        RunC {
            dim: number("llama.embedding_length"),
            hidden: number("llama.feed_forward_length"),
            layers,
            heads: number("llama.attention.head_count"),
            kv_heads: number("llama.attention.head_count_kv"),
            vocab: number("llama.vocab_size"),
            seq_len: number("llama.context_length"),
            weights,
        }
    }

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

/// The weights of a train artifact by tinyllm's names, and its tokenizer.
fn our_weights(model_dir: &Path) -> (ModelFolder, HashMap<String, Vec<f32>>) {
    let folder = ModelFolder::open(model_dir).unwrap();
    let layout = param_layout(&folder.config.tinyllm.dims, &folder.config.llama_config());
    let tensors = safetensors::load(&folder.weights(), &layout).unwrap();
    let named = layout.into_iter().map(|p| p.name).zip(tensors).collect();
    (folder, named)
}

/// Undoes the export's RoPE reordering, written independently of it: adjacent-pair row
/// `2i + j` of each head is `rotate_half` row `j·head_dim/2 + i`.
fn from_adjacent_pairs(weight: &[f32], heads: usize, head_dim: usize) -> Vec<f32> {
    let columns = weight.len() / (heads * head_dim);
    let mut out = Vec::with_capacity(weight.len());
    for head in 0..heads {
        for j in 0..2 {
            for i in 0..head_dim / 2 {
                let row = head * head_dim + 2 * i + j;
                out.extend_from_slice(&weight[row * columns..(row + 1) * columns]);
            }
        }
    }
    out
}

/// tinyllm's name of each GGUF tensor of a `layers`-layer model.
fn gguf_names(layers: usize, tied: bool) -> Vec<(String, String)> {
    let mut names = vec![(
        "token_embd.weight".to_string(),
        "model.embed_tokens.weight".to_string(),
    )];
    for l in 0..layers {
        for (gguf, ours) in [
            ("attn_norm", "input_layernorm"),
            ("attn_q", "self_attn.q_proj"),
            ("attn_k", "self_attn.k_proj"),
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_norm", "post_attention_layernorm"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
        ] {
            names.push((
                format!("blk.{l}.{gguf}.weight"),
                format!("model.layers.{l}.{ours}.weight"),
            ));
        }
    }
    names.push(("output_norm.weight".into(), "model.norm.weight".into()));
    if !tied {
        names.push(("output.weight".into(), "lm_head.weight".into()));
    }
    names
}

/// Every metadata value of a GGUF export: the header's, the model's and the tokenizer's.
fn check_gguf_metadata(file: &GgufFile, folder: &ModelFolder, name: &str, file_type: u32) {
    assert_eq!(file.version, 3);
    assert_eq!(file.alignment, 32);
    assert_eq!(file.data_start % 32, 0);
    let dims = folder.config.tinyllm.dims;
    let get = |key: &str| {
        file.get(key)
            .unwrap_or_else(|| panic!("{key} is missing"))
            .clone()
    };
    let string = |key: &str| get(key).as_str().unwrap().to_string();
    let number = |key: &str| get(key).as_u32().unwrap() as usize;
    assert_eq!(string("general.architecture"), "llama");
    assert_eq!(string("general.name"), name);
    assert_eq!(get("general.alignment"), Value::U32(32));
    assert_eq!(get("general.file_type"), Value::U32(file_type));
    for (key, expected) in [
        ("llama.context_length", dims.max_seq_len),
        ("llama.embedding_length", dims.dim),
        ("llama.block_count", dims.n_layers),
        ("llama.feed_forward_length", dims.hidden_dim()),
        ("llama.rope.dimension_count", dims.head_dim()),
        ("llama.attention.head_count", dims.n_heads),
        ("llama.attention.head_count_kv", dims.n_kv_heads),
        ("llama.vocab_size", dims.vocab_size),
    ] {
        assert_eq!(number(key), expected, "{key}");
    }
    assert_eq!(
        get("llama.attention.layer_norm_rms_epsilon"),
        Value::F32(folder.config.rms_norm_eps as f32)
    );
    assert_eq!(
        get("llama.rope.freq_base"),
        Value::F32(folder.config.rope_theta as f32)
    );

    let tokenizer = &folder.tokenizer;
    assert_eq!(string("tokenizer.ggml.model"), "llama");
    let tokens: Vec<&str> = get_array(file, "tokenizer.ggml.tokens")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(tokens.len(), dims.vocab_size);
    let scores: Vec<f32> = get_array(file, "tokenizer.ggml.scores")
        .iter()
        .map(|v| v.as_f32().unwrap())
        .collect();
    let types: Vec<i32> = get_array(file, "tokenizer.ggml.token_type")
        .iter()
        .map(|v| match v {
            Value::I32(t) => *t,
            other => panic!("token type {other:?}"),
        })
        .collect();
    let merge_scores = tokenizer.merge_scores();
    for id in 0..dims.vocab_size {
        let (token, score, kind) = (tokens[id], scores[id], types[id]);
        match tokenizer.piece(id as u32) {
            Some(piece) if !piece.is_empty() => {
                assert_eq!(token, piece, "piece of id {id}");
                assert_eq!(score, merge_scores[id], "score of id {id}");
                let expected = match id {
                    0 => 2,
                    1 | 2 => 3,
                    3..259 => 6,
                    _ => 1,
                };
                assert_eq!(kind, expected, "type of {piece:?}");
            }
            _ => assert_eq!((token, kind), (format!("[PAD{id}]").as_str(), 5)),
        }
    }
    assert_eq!(tokens[..3], ["<unk>", "<s>", "</s>"]);
    assert_eq!(tokens[3 + 10], "<0x0A>");
    for (key, expected) in [
        ("tokenizer.ggml.bos_token_id", 1),
        ("tokenizer.ggml.eos_token_id", 2),
        ("tokenizer.ggml.eot_token_id", 1),
        ("tokenizer.ggml.unknown_token_id", 0),
    ] {
        assert_eq!(get(key), Value::U32(expected), "{key}");
    }
    assert_eq!(get("tokenizer.ggml.add_bos_token"), Value::Bool(true));
    assert_eq!(get("tokenizer.ggml.add_eos_token"), Value::Bool(false));
    assert_eq!(get("tokenizer.ggml.add_space_prefix"), Value::Bool(true));
}

fn get_array<'a>(file: &'a GgufFile, key: &str) -> &'a [Value] {
    file.get(key)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{key} is not an array"))
}

/// The tensor table against tinyllm's layout, and every value against tinyllm's weights, the
/// q and k rows put back: exactly for f32, and within the type's rounding otherwise.
fn check_gguf_tensors(file: &GgufFile, folder: &ModelFolder, ours: &HashMap<String, Vec<f32>>) {
    let dims = folder.config.tinyllm.dims;
    let tied = folder.config.tie_word_embeddings;
    let names = gguf_names(dims.n_layers, tied);
    let table: Vec<&str> = file.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        table,
        names.iter().map(|(g, _)| g.as_str()).collect::<Vec<_>>()
    );
    let layout = param_layout(&dims, &folder.config.llama_config());
    let matrices = match file.get("general.file_type").and_then(Value::as_u32) {
        Some(0) => TensorType::F32,
        Some(7) => TensorType::Q8_0,
        Some(32) => TensorType::Bf16,
        Some(1) => TensorType::F16,
        other => panic!("file type {other:?}"),
    };
    for (info, (gguf_name, our_name)) in file.tensors.iter().zip(&names) {
        let shape = &layout.iter().find(|p| &p.name == our_name).unwrap().shape;
        let reversed: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        assert_eq!(info.dims, reversed, "{gguf_name}");
        assert_eq!(info.offset % 32, 0);
        let expected_type = if shape.len() == 1 {
            TensorType::F32
        } else {
            matrices
        };
        assert_eq!(info.tensor_type, expected_type, "{gguf_name}");
        let mut values = file.tensor_f32(gguf_name).unwrap();
        if gguf_name.ends_with("attn_q.weight") {
            values = from_adjacent_pairs(&values, dims.n_heads, dims.head_dim());
        } else if gguf_name.ends_with("attn_k.weight") {
            values = from_adjacent_pairs(&values, dims.n_kv_heads, dims.head_dim());
        }
        let original = &ours[our_name];
        match expected_type {
            TensorType::F32 => assert_eq!(&values, original, "{gguf_name}"),
            // Half a unit in the last place of bf16's 8 bits, or of f16 where f16 is coarser:
            // its subnormals below 6.1e-5 are steps of 6e-8.
            TensorType::Bf16 | TensorType::F16 => {
                for (a, b) in values.iter().zip(original) {
                    assert!(
                        (a - b).abs() <= b.abs() / 256.0 + 3e-8,
                        "{gguf_name}: {a} vs {b}"
                    );
                }
            }
            // A q8_0 block of 32 values: each within half a step of the block's largest
            // magnitude / 127, plus the f16 scale's own rounding.
            TensorType::Q8_0 => {
                for (got, want) in values.chunks(32).zip(original.chunks(32)) {
                    let max = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    for (a, b) in got.iter().zip(want) {
                        assert!(
                            (a - b).abs() <= max / 127.0 * 0.5 + max / 1024.0,
                            "{gguf_name}: {a} vs {b} (block max {max})"
                        );
                    }
                }
            }
        }
    }
}

/// A tokenizer like llama.cpp's SentencePiece encoder over the file's pieces and scores.
fn gguf_tokenizer(file: &GgufFile) -> RunCTokenizer {
    let pieces = get_array(file, "tokenizer.ggml.tokens")
        .iter()
        .map(|v| v.as_str().unwrap().replace('\u{2581}', " ").into_bytes())
        .collect();
    let scores = get_array(file, "tokenizer.ggml.scores")
        .iter()
        .map(|v| v.as_f32().unwrap())
        .collect();
    RunCTokenizer { pieces, scores }
}

#[test]
fn gguf_export_holds_our_weights_tokenizer_and_logits() {
    let project = trained();
    let run_dir = project.runs().join("test/default");
    let (folder, ours) = our_weights(&run_dir.join("artifacts/train"));
    let out = project.path("gguf");
    let output = export("gguf", &out, &run_dir);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("ollama create"));
    let file = GgufFile::open(&out.join("model.gguf")).unwrap();
    check_gguf_metadata(&file, &folder, "test/default", 0);
    check_gguf_tensors(&file, &folder, &ours);
    let modelfile = fs::read_to_string(out.join("Modelfile")).unwrap();
    assert!(modelfile.contains("\nFROM ./model.gguf\n"), "{modelfile}");
    assert!(
        modelfile.contains("\nPARAMETER num_ctx 32\n"),
        "{modelfile}"
    );
    assert!(
        modelfile.contains("TEMPLATE \"{{ .Prompt }}\""),
        "{modelfile}"
    );

    // llama.cpp's computation, on the file's tensors: tinyllm's logits and ids.
    let model = RunC::from_gguf(&file);
    let tokenizer = gguf_tokenizer(&file);
    for text in ["Tom had a cat.", "Lily saw 12 big dogs!", "héllo ☃ ok"] {
        let (ids, logits) = score(&run_dir, text);
        assert_eq!(tokenizer.encode(text), ids[1..], "{text:?}");
        for (position, (ours, theirs)) in logits.iter().zip(model.logits(&ids)).enumerate() {
            let worst = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "{text:?} position {position}: {worst}");
        }
    }

    for (format, file_type) in [("gguf-q8_0", 7), ("gguf-bf16", 32), ("gguf-f16", 1)] {
        let out = project.path(format);
        let output = export(format, &out, &run_dir);
        assert!(output.status.success(), "{output:?}");
        let file = GgufFile::open(&out.join("model.gguf")).unwrap();
        check_gguf_metadata(&file, &folder, "test/default", file_type);
        check_gguf_tensors(&file, &folder, &ours);
    }
    let q8 = fs::metadata(project.path("gguf-q8_0/model.gguf"))
        .unwrap()
        .len();
    let f32 = fs::metadata(out.join("model.gguf")).unwrap().len();
    assert!(q8 * 3 < f32, "q8_0 {q8} bytes, f32 {f32}");

    // An existing folder is not overwritten.
    let line = error_line(&export("gguf", &out, &run_dir));
    assert!(line.contains("already exists"), "{line}");
}

#[test]
fn gguf_export_of_an_untied_model_has_its_own_output_head() {
    let project = trained();
    let model_dir = project.runs().join("test/default/artifacts/train");
    let (folder, mut ours) = our_weights(&model_dir);
    // The same model with an output head of its own: the embedding, scaled so that using
    // the embedding in its place would show in the logits.
    let untied = project.path("untied");
    fs::create_dir_all(&untied).unwrap();
    fs::copy(
        model_dir.join("tokenizer.json"),
        untied.join("tokenizer.json"),
    )
    .unwrap();
    let mut config = folder.config.clone();
    config.tie_word_embeddings = false;
    config.save(&untied.join("config.json")).unwrap();
    let head: Vec<f32> = ours["model.embed_tokens.weight"]
        .iter()
        .map(|v| v * 1.5)
        .collect();
    ours.insert("lm_head.weight".into(), head);
    let layout = param_layout(&config.tinyllm.dims, &config.llama_config());
    let tensors: Vec<Vec<f32>> = layout.iter().map(|p| ours[&p.name].clone()).collect();
    safetensors::save(
        &untied.join("model.safetensors"),
        &layout,
        &tensors,
        &Default::default(),
    )
    .unwrap();

    let out = project.path("gguf");
    let output = export("gguf", &out, &untied);
    assert!(output.status.success(), "{output:?}");
    let file = GgufFile::open(&out.join("model.gguf")).unwrap();
    let folder = ModelFolder::open(&untied).unwrap();
    check_gguf_metadata(&file, &folder, "untied", 0);
    check_gguf_tensors(&file, &folder, &ours);
    let model = RunC::from_gguf(&file);
    let (ids, logits) = score(&untied, "Tom had a cat.");
    let theirs = model.logits(&ids);
    let last = logits.len() - 1;
    let worst = logits[last]
        .iter()
        .zip(&theirs[last])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "{worst}");
}

#[test]
fn gguf_reader_refuses_broken_files_with_one_clear_error() {
    let project = trained();
    let run_dir = project.runs().join("test/default");
    let out = project.path("gguf");
    assert!(export("gguf", &out, &run_dir).status.success());
    let good = fs::read(out.join("model.gguf")).unwrap();
    let file = GgufFile::open(&out.join("model.gguf")).unwrap();
    let broken = project.path("broken.gguf");
    let open = |bytes: &[u8]| -> String {
        fs::write(&broken, bytes).unwrap();
        let err = GgufFile::open(&broken).unwrap_err().to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    };

    // Every cut through the header, metadata and table, and cuts through the data.
    let header_end = file.data_start as usize;
    let cuts = (0..header_end.min(4096))
        .chain((header_end..good.len()).step_by(997))
        .chain([good.len() - 1]);
    for cut in cuts {
        let err = open(&good[..cut]);
        assert!(err.contains("not a GGUF file"), "{cut}: {err}");
    }

    let mut bytes = good.clone();
    bytes[..4].copy_from_slice(b"GGML");
    assert!(open(&bytes).contains("not the magic \"GGUF\""));

    let mut bytes = good.clone();
    bytes[4..8].copy_from_slice(&7u32.to_le_bytes());
    assert!(open(&bytes).contains("version 7"));

    let mut bytes = good.clone();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = open(&bytes);
    assert!(
        err.contains("the tensor count is 18446744073709551615"),
        "{err}"
    );

    let mut bytes = good.clone();
    bytes[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(open(&bytes).contains("the metadata count"));

    // The first key's length, then the first key's value type.
    let mut bytes = good.clone();
    bytes[24..32].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert!(open(&bytes).contains("the length of metadata key 0"));
    let key_len = u64::from_le_bytes(good[24..32].try_into().unwrap()) as usize;
    let mut bytes = good.clone();
    bytes[32 + key_len..36 + key_len].copy_from_slice(&99u32.to_le_bytes());
    assert!(open(&bytes).contains("unknown value type 99"));

    // The tokens array's length.
    let key = b"tokenizer.ggml.tokens";
    let at = good.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    let mut bytes = good.clone();
    bytes[at + 8..at + 16].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(open(&bytes).contains("the length of \"tokenizer.ggml.tokens\""));

    // The first tensor's type, its dims, and its offset beyond the file.
    let name = b"token_embd.weight";
    let at = good.windows(name.len()).rposition(|w| w == name).unwrap() + name.len();
    let mut bytes = good.clone();
    bytes[at..at + 4].copy_from_slice(&5u32.to_le_bytes());
    assert!(open(&bytes).contains("5 dimensions"));
    let mut bytes = good.clone();
    bytes[at + 4..at + 12].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(open(&bytes).contains("overflow"));
    let type_at = at + 4 + 2 * 8;
    let mut bytes = good.clone();
    bytes[type_at..type_at + 4].copy_from_slice(&12u32.to_le_bytes());
    assert!(open(&bytes).contains("a k-quant"));
    let mut bytes = good.clone();
    bytes[type_at + 4..type_at + 12].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(open(&bytes).contains("lies beyond"));
    let mut bytes = good.clone();
    bytes[type_at + 4..type_at + 12].copy_from_slice(&4u64.to_le_bytes());
    assert!(open(&bytes).contains("not a multiple of the alignment 32"));
}

/// `tests/interop/gguf_read.py` reads the export with llama.cpp's `gguf` Python package. It runs
/// where `TINYLLM_GGUF_PYTHON` names a Python that has the package (CI sets it, and
/// `TINYLLM_REQUIRE_GGUF_PYTHON=1` so that a missing one fails instead of skipping).
#[test]
fn gguf_export_reads_back_in_the_gguf_python_package() {
    let required = std::env::var_os("TINYLLM_REQUIRE_GGUF_PYTHON").is_some_and(|v| v == "1");
    let python = std::env::var_os("TINYLLM_GGUF_PYTHON");
    let usable = python.as_ref().is_some_and(|python| {
        std::process::Command::new(python)
            .args(["-c", "import gguf, numpy"])
            .status()
            .is_ok_and(|s| s.success())
    });
    let Some(python) = python.filter(|_| usable) else {
        assert!(
            !required,
            "TINYLLM_REQUIRE_GGUF_PYTHON is set and TINYLLM_GGUF_PYTHON is not a Python with the gguf package"
        );
        eprintln!(
            "skipped: set TINYLLM_GGUF_PYTHON to a Python with the gguf package to read the export with it"
        );
        return;
    };
    let project = trained();
    let run_dir = project.runs().join("test/default");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/gguf_read.py");
    for format in ["gguf", "gguf-q8_0"] {
        let out = project.path(format);
        assert!(export(format, &out, &run_dir).status.success());
        let output = std::process::Command::new(&python)
            .arg(&script)
            .arg(env!("CARGO_BIN_EXE_tinyllm"))
            .arg(&run_dir)
            .arg(out.join("model.gguf"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{format}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.ends_with("OK\n"), "{stdout}");
        println!("{format}:\n{stdout}");
    }
}
