//! Tokenizers on real and random text: round trips for any Unicode string, and the BPE's
//! compression on TinyStories.

mod common;

use std::sync::OnceLock;
use std::time::Instant;

use proptest::prelude::*;
use tinyllm::pipeline::spec::TokenizerKind;
use tinyllm::tokenizer::Tokenizer;

fn training_text() -> Vec<String> {
    let story = "Once upon a time, there was a little girl named Lily. She loved to play \
                 outside in the sunshine. 一只猫 said hi 🐱! Numbers: 123, 4.5%.";
    (0..200)
        .map(|i| format!("{story} Day {i}.\n\nThe end."))
        .collect()
}

fn tokenizers() -> &'static [Tokenizer; 2] {
    static TOKENIZERS: OnceLock<[Tokenizer; 2]> = OnceLock::new();
    TOKENIZERS.get_or_init(|| {
        [
            Tokenizer::train(TokenizerKind::Bpe, 400, &training_text()).unwrap(),
            Tokenizer::train(TokenizerKind::Char, 300, &training_text()).unwrap(),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 500,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_unicode_string_round_trips(text in any::<String>()) {
        for tokenizer in tokenizers() {
            prop_assert_eq!(tokenizer.decode(&tokenizer.encode(&text)), text.clone());
            prop_assert_eq!(tokenizer.encode(&text), tokenizer.encode_reference(&text));
        }
    }

    #[test]
    fn fast_encoding_equals_the_hugging_face_pipeline(
        text in "[\\p{Han}\\p{Emoji}\\x00-\\x1f ▁a-zA-Z0-9٣½.,]{0,60}"
    ) {
        for tokenizer in tokenizers() {
            prop_assert_eq!(tokenizer.encode(&text), tokenizer.encode_reference(&text));
        }
    }

    #[test]
    fn chinese_emoji_and_control_characters_round_trip(
        text in "[\\p{Han}\\p{Emoji}\\x00-\\x1f ▁a-z0-9]{0,40}"
    ) {
        for tokenizer in tokenizers() {
            prop_assert_eq!(tokenizer.decode(&tokenizer.encode(&text)), text.clone());
        }
    }
}

#[test]
fn bpe_4096_on_train_head_compresses_valid_head() {
    let Some(shared) = common::shared_tinystories() else {
        return;
    };
    let train = std::fs::read_to_string(shared.join("train_head.txt")).unwrap();
    let stories: Vec<String> = train.split('\n').map(str::to_string).collect();
    let started = Instant::now();
    let tokenizer = Tokenizer::train(TokenizerKind::Bpe, 4096, &stories).unwrap();
    let train_secs = started.elapsed().as_secs_f64();
    let valid = std::fs::read_to_string(shared.join("valid_head.txt")).unwrap();
    let ids = tokenizer.encode(&valid);
    assert_eq!(ids, tokenizer.encode_reference(&valid));
    let bytes_per_token = valid.len() as f64 / ids.len() as f64;
    eprintln!(
        "BPE 4096: trained in {train_secs:.1} s, vocab {}, valid_head {bytes_per_token:.3} bytes/token",
        tokenizer.vocab_size()
    );
    assert_eq!(tokenizer.decode(&ids), valid);
    assert!(bytes_per_token >= 3.5, "{bytes_per_token} bytes/token");
}
