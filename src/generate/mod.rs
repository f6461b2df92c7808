//! Text generation: a prompt through the KV-cache decoder, then one sampled token at a time,
//! streamed as text, until the end of a story (EOS, or BOS: the start of the next one),
//! `max_new_tokens`, the end of the model's context, or the caller's word (a stop string, a
//! client that left).
//!
//! A prompt longer than the context is an error rather than silently cut: the model never saw
//! positions past `max_seq_len`, and dropping the prompt's start would change what it means.

pub mod folder;
pub mod sampler;
mod session;

use std::ops::ControlFlow;
use std::time::Instant;

use crate::engine::{Backend, Rng};
use crate::model::{Decoder, Llama, ModelError, Shape};
use crate::tokenizer::{BOS, EOS, Tokenizer};
pub use sampler::Sampling;
pub use session::{Prompt, SampleError, SampleSink, sample_folder};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateOptions {
    pub sampling: Sampling,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Go on past the end of a story (into the next one) until `max_new_tokens` or the context
    /// is full: what a benchmark asks for to time a known number of tokens.
    pub ignore_end_of_story: bool,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The model ended the story (EOS) or began the next one (BOS).
    EndOfStory,
    MaxNewTokens,
    /// The model's context (`max_seq_len` positions) is full.
    ContextFull,
    /// The caller's `on_text` asked to stop (it found a stop string, or its reader left).
    Interrupted,
}

impl Stop {
    /// How samples and messages name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Stop::EndOfStory => "end of story",
            Stop::MaxNewTokens => "max_new_tokens",
            Stop::ContextFull => "context full",
            Stop::Interrupted => "the caller's request",
        }
    }
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub prompt_tokens: usize,
    /// The new tokens (without the stop token).
    pub tokens: Vec<u32>,
    /// The text of the new tokens, as it continues the prompt.
    pub text: String,
    pub stop: Stop,
    /// From the call to the first new token.
    pub first_token_secs: f64,
    pub secs: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(
        "the prompt is {tokens} tokens (with BOS) but the model's context is {max}; shorten it"
    )]
    PromptTooLong { tokens: usize, max: usize },
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// The token ids of `prompt` (BOS first; BOS alone when it is empty), refused when they leave
/// no room for a new token in a context of `context` positions.
pub fn prompt_ids(
    tokenizer: &Tokenizer,
    prompt: &str,
    context: usize,
) -> Result<Vec<u32>, GenerateError> {
    let mut ids = vec![BOS];
    if !prompt.is_empty() {
        ids.extend(tokenizer.encode(prompt));
    }
    if ids.len() >= context {
        return Err(GenerateError::PromptTooLong {
            tokens: ids.len(),
            max: context,
        });
    }
    Ok(ids)
}

/// Continues `prompt` (BOS alone when it is empty), calling `on_text` with each new piece of
/// text as soon as it is whole UTF-8; `on_text` breaks to end the generation there.
pub fn generate<S: Shape, B: Backend<Float = f32>>(
    model: &Llama<S, B>,
    decoder: &mut Decoder<B>,
    tokenizer: &Tokenizer,
    prompt: &str,
    options: &GenerateOptions,
    on_text: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<Generation, GenerateError> {
    let ids = prompt_ids(tokenizer, prompt, model.dims().max_seq_len)?;
    generate_ids(model, decoder, tokenizer, ids, options, on_text)
}

/// Continues the prompt `ids` (from [`prompt_ids`]). The decoder is replaced by a larger one
/// when it has no room for the prompt and the new tokens: its cache is sized by what this
/// generation needs, not by the model's whole context. When `on_text` breaks, the generation ends
/// at once ([`Stop::Interrupted`]) and `on_text` is not called again.
pub fn generate_ids<S: Shape, B: Backend<Float = f32>>(
    model: &Llama<S, B>,
    decoder: &mut Decoder<B>,
    tokenizer: &Tokenizer,
    mut ids: Vec<u32>,
    options: &GenerateOptions,
    mut on_text: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<Generation, GenerateError> {
    let started = Instant::now();
    let context = model.dims().max_seq_len;
    if ids.len() >= context {
        return Err(GenerateError::PromptTooLong {
            tokens: ids.len(),
            max: context,
        });
    }
    let positions = ids
        .len()
        .saturating_add(options.max_new_tokens)
        .min(context);
    if decoder.capacity() < positions {
        *decoder = model.decoder(positions)?;
    }
    decoder.reset();
    let mut logits = Vec::new();
    for &token in &ids {
        logits = model.decode_step(decoder, token)?;
    }
    let prompt_tokens = ids.len();
    let prompt_text = tokenizer.decode(&ids);
    let mut emitted = 0;
    let mut rng = Rng::new(options.seed);
    let mut first_token_secs = None;
    let mut stop = Stop::MaxNewTokens;
    for _ in 0..options.max_new_tokens {
        let next = sampler::sample(&logits, &options.sampling, &mut rng);
        first_token_secs.get_or_insert(started.elapsed().as_secs_f64());
        if (next == EOS || next == BOS) && !options.ignore_end_of_story {
            stop = Stop::EndOfStory;
            break;
        }
        ids.push(next);
        let full = tokenizer.decode(&ids);
        if let Some(new) = full.strip_prefix(prompt_text.as_str())
            && !new.ends_with('\u{FFFD}')
            && let Some(piece) = new.get(emitted..)
            && !piece.is_empty()
        {
            let flow = on_text(piece);
            emitted = new.len();
            if flow.is_break() {
                stop = Stop::Interrupted;
                break;
            }
        }
        if decoder.len() == context {
            stop = Stop::ContextFull;
            break;
        }
        logits = model.decode_step(decoder, next)?;
    }
    let tokens = ids[prompt_tokens..].to_vec();
    let full = tokenizer.decode(&ids);
    let text = full
        .strip_prefix(prompt_text.as_str())
        .map_or_else(|| tokenizer.decode(&tokens), str::to_string);
    if stop != Stop::Interrupted
        && let Some(rest) = text.get(emitted..).filter(|rest| !rest.is_empty())
    {
        // The last piece; whether it asks to stop changes nothing now.
        let _ = on_text(rest);
    }
    Ok(Generation {
        prompt_tokens,
        tokens,
        text,
        stop,
        first_token_secs: first_token_secs.unwrap_or(0.0),
        secs: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Cpu;
    use crate::model::{LlamaConfig, ModelDims, RuntimeShape};
    use crate::pipeline::spec::TokenizerKind;

    /// Continues "Tom" with a random model; `on_text` says whether to go on after each piece.
    fn continue_tom(mut on_text: impl FnMut(&str) -> ControlFlow<()>) -> (Generation, Vec<String>) {
        let texts = vec!["Tom had a cat. The cat was happy. Lily had a dog.".to_string()];
        let tokenizer = Tokenizer::train(TokenizerKind::Char, 300, &texts).unwrap();
        let dims = ModelDims {
            dim: 16,
            n_layers: 1,
            n_heads: 2,
            n_kv_heads: 1,
            vocab_size: 300,
            multiple_of: 4,
            max_seq_len: 64,
        };
        let shape = RuntimeShape::new(dims).unwrap();
        let model = Llama::new(Cpu::<f32>::new(), shape, LlamaConfig::default(), 1).unwrap();
        let mut decoder = model.decoder(1).unwrap();
        let options = GenerateOptions {
            sampling: Sampling {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
            },
            max_new_tokens: 40,
            seed: 3,
            ignore_end_of_story: true,
        };
        let mut pieces = Vec::new();
        let generation = generate(&model, &mut decoder, &tokenizer, "Tom", &options, |piece| {
            pieces.push(piece.to_string());
            on_text(piece)
        })
        .unwrap();
        (generation, pieces)
    }

    #[test]
    fn on_text_breaking_ends_the_generation_at_that_piece() {
        let (whole, all_pieces) = continue_tom(|_| ControlFlow::Continue(()));
        assert_eq!(whole.stop, Stop::MaxNewTokens);
        assert_eq!(whole.tokens.len(), 40);
        assert!(all_pieces.len() >= 3, "{all_pieces:?}");
        let mut calls = 0;
        let (cut, pieces) = continue_tom(|_| {
            calls += 1;
            if calls == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(cut.stop, Stop::Interrupted);
        assert_eq!(pieces, all_pieces[..2]);
        assert!(cut.tokens.len() < whole.tokens.len());
        assert_eq!(cut.tokens, whole.tokens[..cut.tokens.len()]);
    }
}
