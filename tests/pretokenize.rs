//! The pretokenize stage: the shards of the official archive layout hold exactly the tokens of
//! encoding each story on its own, validation is whole stories, and a shard that disagrees with
//! its manifest is caught.

mod common;

use std::fs;

use common::{Project, run_builtin_until, shared_tinystories};
use tinyllm::pipeline::StageId;
use tinyllm::pipeline::runner::VariantResult;
use tinyllm::stages::pretokenize::{Split, TokenShards};
use tinyllm::tokenizer::{BOS, Tokenizer};

fn run(project: &Project) -> Vec<VariantResult> {
    run_builtin_until(project, StageId::Pretokenize).unwrap()
}

fn read_tokens(path: &std::path::Path) -> Vec<u32> {
    fs::read(path)
        .unwrap()
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
        .collect()
}

#[test]
fn shards_of_the_official_layout_equal_encoding_story_by_story() {
    let Some(shared) = shared_tinystories() else {
        return;
    };
    let project = Project::new();
    let spec = format!(
        "[pipeline]\nname = \"shards\"\n[download]\nfiles = [{{ name = \"a.tar.gz\", mirrors = [\"{}\"] }}, {{ name = \"valid.txt\", mirrors = [\"{}\"] }}]\n[corpus]\ntrain_files = [\"data*.json\"]\nval_files = [\"valid.txt\"]\n[train_vocab]\nvocab_size = 1024\n",
        shared.join("TinyStories_sample.tar.gz").display(),
        shared.join("valid_head.txt").display()
    );
    fs::write(project.spec_path(), spec).unwrap();
    let results = run(&project);
    let artifacts = results[0].run_dir.join("artifacts");
    let tokenizer = Tokenizer::load(&artifacts.join("train_vocab/tokenizer.json")).unwrap();
    let shards = TokenShards::open_dir(&artifacts.join("pretokenize")).unwrap();
    assert_eq!(shards.set.vocab_size, 1024);

    for shard_name in ["data00", "data01"] {
        let json = fs::read_to_string(artifacts.join(format!("download/files/{shard_name}.json")))
            .unwrap();
        let stories: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        let mut expected = Vec::new();
        for story in &stories {
            expected.push(BOS);
            expected.extend(tokenizer.encode_reference(story["story"].as_str().unwrap().trim()));
        }
        let got = read_tokens(&artifacts.join(format!("pretokenize/train/{shard_name}.bin")));
        assert_eq!(got.len(), expected.len(), "{shard_name}");
        assert!(got == expected, "{shard_name}: tokens differ");
        let info = shards
            .shards(Split::Train)
            .find(|s| s.file.contains(shard_name))
            .unwrap();
        assert_eq!(info.stories as usize, stories.len());
        assert_eq!(info.tokens as usize, expected.len());
    }
    let val: Vec<_> = shards.shards(Split::Val).collect();
    assert_eq!(val.len(), 1);
    assert!(val[0].tokens > 50_000);
}

#[test]
fn without_validation_files_whole_stories_are_held_out() {
    let project = Project::new();
    let corpus = project.path("corpus");
    fs::create_dir_all(&corpus).unwrap();
    let stories: Vec<String> = (0..400)
        .map(|i| format!("Story {i}: the cat sat on the mat and was happy."))
        .collect();
    fs::write(corpus.join("stories.txt"), stories.join("\n")).unwrap();
    let spec = format!(
        "[pipeline]\nname = \"holdout\"\n[download]\nfiles = [{{ name = \"c\", mirrors = [\"{}\"] }}]\n[corpus]\ntrain_files = [\"*.txt\"]\nval_files = []\n[train_vocab]\nvocab_size = 300\n[pretokenize]\nval_fraction = 0.1\n",
        corpus.display()
    );
    fs::write(project.spec_path(), spec).unwrap();
    let results = run(&project);
    let dir = results[0].run_dir.join("artifacts/pretokenize");
    let shards = TokenShards::open_dir(&dir).unwrap();
    let train: u64 = shards.shards(Split::Train).map(|s| s.stories).sum();
    let val: u64 = shards.shards(Split::Val).map(|s| s.stories).sum();
    assert_eq!(train + val, 400);
    assert!((20..=60).contains(&val), "{val} held out");
    // Every held-out story starts with BOS and is whole: its tokens decode to one full story.
    let tokenizer = Tokenizer::load(
        &results[0]
            .run_dir
            .join("artifacts/train_vocab/tokenizer.json"),
    )
    .unwrap();
    let tokens = read_tokens(&dir.join("val/heldout.bin"));
    assert_eq!(tokens[0], BOS);
    for story in tokens.split(|&t| t == BOS).skip(1) {
        let text = tokenizer.decode(story);
        assert!(stories.contains(&text), "{text:?}");
    }
}

#[test]
fn a_shard_whose_size_disagrees_with_its_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("train")).unwrap();
    fs::write(dir.path().join("train/a.bin"), [0u8; 10]).unwrap();
    fs::write(
        dir.path().join("shards.json"),
        r#"{"vocab_size": 300, "shards": [{"file": "train/a.bin", "split": "train", "tokens": 6, "stories": 1, "text_bytes": 9}]}"#,
    )
    .unwrap();
    let err = TokenShards::open_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("a.bin: 10 bytes, but shards.json says 6 tokens (12 bytes)"),
        "{err}"
    );
}
