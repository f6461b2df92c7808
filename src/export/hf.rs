//! The Hugging Face format: `model.safetensors` (with the `format: pt` metadata transformers
//! asks for), `config.json`, `generation_config.json`, and a Llama-style fast tokenizer
//! (`tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`).
//!
//! The tokenizer is tinyllm's own `tokenizer.json` with the parts that tinyllm's code does
//! around the `tokenizers` pipeline written into it: a normalizer that prepends `▁` (the dummy
//! prefix space), a decoder that turns `▁` back into spaces, joins byte tokens and strips that
//! first space, and a post-processor that puts `<s>` before a text. One difference remains: a
//! literal `▁` in a text is a word boundary for Hugging Face but three byte tokens for tinyllm.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value as Json, json};

use super::{ExportError, check_out, io_error, write_folder};
use crate::fsutil;
use crate::generate::folder::{ModelFolder, TOKENIZER_JSON};
use crate::model::param_layout;
use crate::model::safetensors;
use crate::tokenizer::{BOS, EOS};

/// Writes the Hugging Face folder of the model folder `from` into `out` (created; it must not
/// exist or be empty). Every tensor's shape is checked against `config.json` first.
pub fn export(from: &Path, out: &Path) -> Result<(), ExportError> {
    let folder = ModelFolder::open(from)?;
    check_out(out)?;
    let dims = folder.config.tinyllm.dims;
    let layout = param_layout(&dims, &folder.config.llama_config());
    let tensors = safetensors::load(&folder.weights(), &layout)?;
    write_folder(out, |tmp| {
        let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::save(&tmp.join("model.safetensors"), &layout, &tensors, &metadata)?;
        folder.config.save(&tmp.join("config.json"))?;
        let write_json = |name: &str, value: &Json| {
            let path = tmp.join(name);
            let text = serde_json::to_vec_pretty(value).expect("JSON serializes");
            fsutil::write_atomic(&path, &text).map_err(io_error(&path))
        };
        write_json(
            "generation_config.json",
            &json!({
                "bos_token_id": BOS,
                "eos_token_id": EOS,
                "do_sample": true,
                "temperature": 1.0,
                "top_p": 0.9,
            }),
        )?;
        let source = from.join(TOKENIZER_JSON);
        let text = std::fs::read_to_string(&source).map_err(io_error(&source))?;
        let tokenizer: Json = serde_json::from_str(&text).map_err(|e| ExportError::Tokenizer {
            path: source.clone(),
            reason: e.to_string(),
        })?;
        write_json(TOKENIZER_JSON, &llama_style(tokenizer))?;
        write_json(
            "tokenizer_config.json",
            &json!({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "model_max_length": dims.max_seq_len,
                "clean_up_tokenization_spaces": false,
            }),
        )?;
        write_json(
            "special_tokens_map.json",
            &json!({ "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>" }),
        )
    })
}

/// tinyllm's `tokenizer.json` with the dummy prefix, decoder and BOS post-processor added.
fn llama_style(mut tokenizer: Json) -> Json {
    tokenizer["normalizer"] = json!({ "type": "Prepend", "prepend": "\u{2581}" });
    tokenizer["decoder"] = json!({
        "type": "Sequence",
        "decoders": [
            { "type": "Replace", "pattern": { "String": "\u{2581}" }, "content": " " },
            { "type": "ByteFallback" },
            { "type": "Fuse" },
            { "type": "Strip", "content": " ", "start": 1, "stop": 0 }
        ]
    });
    tokenizer["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [
            { "SpecialToken": { "id": "<s>", "type_id": 0 } },
            { "Sequence": { "id": "A", "type_id": 0 } }
        ],
        "pair": [
            { "SpecialToken": { "id": "<s>", "type_id": 0 } },
            { "Sequence": { "id": "A", "type_id": 0 } },
            { "SpecialToken": { "id": "<s>", "type_id": 1 } },
            { "Sequence": { "id": "B", "type_id": 1 } }
        ],
        "special_tokens": {
            "<s>": { "id": "<s>", "ids": [BOS], "tokens": ["<s>"] }
        }
    });
    tokenizer
}
