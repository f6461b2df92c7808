//! The pretokenize stage: the shards of the official archive layout hold exactly the tokens of
//! encoding each story on its own, validation is whole stories, corpus files with one name each
//! get their own shard, and a shard list that disagrees with its files is caught, `--verify`
//! included.

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
        let info = shards
            .shards(Split::Train)
            .find(|s| s.source.as_deref() == Some(&format!("{shard_name}.json")))
            .unwrap();
        let got = read_tokens(&artifacts.join("pretokenize").join(&info.file));
        assert_eq!(got.len(), expected.len(), "{shard_name}");
        assert!(got == expected, "{shard_name}: tokens differ");
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

/// A project whose corpus is the folder `corpus/` of the project, holding `files`, with `extra`
/// TOML appended to the spec.
fn corpus_project(files: &[(&str, &str)], extra: &str) -> Project {
    let project = Project::new();
    let corpus = project.path("corpus");
    for (name, text) in files {
        let path = corpus.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    let spec = format!(
        "[pipeline]\nname = \"stems\"\n[download]\nfiles = [{{ name = \"c\", mirrors = [\"{}\"] }}]\n[train_vocab]\nvocab_size = 300\n{extra}",
        corpus.display()
    );
    fs::write(project.spec_path(), spec).unwrap();
    project
}

fn stories(prefix: &str, count: usize) -> String {
    (0..count)
        .map(|i| format!("{prefix} story {i}: the cat sat on the mat."))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn files_with_one_stem_and_a_validation_file_named_heldout_get_their_own_shards() {
    let json: Vec<serde_json::Value> = (0..7)
        .map(|i| serde_json::json!({ "story": format!("Json story {i}.") }))
        .collect();
    let json = serde_json::to_string(&json).unwrap();
    let project = corpus_project(
        &[
            ("a/stories.txt", &stories("First", 30)),
            ("b/stories.txt", &stories("Second", 12)),
            ("stories.txt", &stories("Third", 5)),
            ("stories.json", &json),
            ("valid/heldout.txt", &stories("Valid", 4)),
        ],
        "[corpus]\ntrain_files = [\"*/stories.txt\", \"stories.*\"]\nval_files = [\"valid/heldout.txt\"]\n",
    );
    let results = run(&project);
    let dir = results[0].run_dir.join("artifacts/pretokenize");
    let shards = TokenShards::open_dir(&dir).unwrap();
    let mut sources: Vec<(&str, u64)> = shards
        .set
        .shards
        .iter()
        .map(|s| (s.source.as_deref().unwrap(), s.stories))
        .collect();
    sources.sort();
    assert_eq!(
        sources,
        [
            ("a/stories.txt", 30),
            ("b/stories.txt", 12),
            ("stories.json", 7),
            ("stories.txt", 5),
            ("valid/heldout.txt", 4)
        ]
    );
    for shard in &shards.set.shards {
        let tokens = read_tokens(&dir.join(&shard.file));
        assert_eq!(tokens.len() as u64, shard.tokens, "{}", shard.file);
        assert_eq!(
            tokens.iter().filter(|&&t| t == BOS).count() as u64,
            shard.stories,
            "{}",
            shard.file
        );
    }
}

/// Rewrites an artifact's `shards.json` with `edit` and records the new file in its manifest,
/// as a build that went wrong would have left it.
fn tamper_shard_list(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let list_path = dir.join("shards.json");
    let mut list: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&list_path).unwrap()).unwrap();
    edit(&mut list);
    fs::write(&list_path, serde_json::to_vec_pretty(&list).unwrap()).unwrap();
    let (size, hash) = tinyllm::fsutil::blake3_file(&list_path).unwrap();
    let manifest_path = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&manifest_path).unwrap()).unwrap();
    for entry in manifest["files"].as_array_mut().unwrap() {
        if entry["path"] == "shards.json" {
            entry["size"] = size.into();
            entry["blake3"] = hash.clone().into();
        }
    }
    fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

#[test]
fn verify_rebuilds_a_shard_list_that_names_a_file_twice_or_misstates_a_size() {
    let project = corpus_project(
        &[("a.txt", &stories("A", 40)), ("b.txt", &stories("B", 30))],
        "[corpus]\ntrain_files = [\"*.txt\"]\nval_files = []\n[pretokenize]\nval_fraction = 0.1\n",
    );
    let results = run(&project);
    let dir = fs::canonicalize(results[0].run_dir.join("artifacts/pretokenize")).unwrap();
    let edits: [fn(&mut serde_json::Value); 2] = [
        |list| {
            let shards = list["shards"].as_array_mut().unwrap();
            let mut twice = shards[0].clone();
            twice["split"] = "val".into();
            shards.push(twice);
        },
        |list| {
            let tokens = list["shards"][1]["tokens"].as_u64().unwrap();
            list["shards"][1]["tokens"] = (tokens + 1).into();
        },
    ];
    for (edit, says) in edits.into_iter().zip(["twice", "says"]) {
        let original = fs::read(dir.join("shards.json")).unwrap();
        tamper_shard_list(&dir, edit);
        let output = project
            .run_command(&["--until", "pretokenize"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("pretokenize  cached"), "{stdout}");
        let output = project
            .run_command(&["--until", "pretokenize", "--verify"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("rebuilding: the cached artifact is damaged") && stdout.contains(says),
            "{stdout}"
        );
        assert_eq!(fs::read(dir.join("shards.json")).unwrap(), original);
    }
}

#[test]
fn a_shard_list_naming_a_file_twice_or_outside_its_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("train")).unwrap();
    fs::write(dir.path().join("train/a.bin"), [0u8; 4]).unwrap();
    let shard = |file: &str, tokens: u64| {
        format!(
            r#"{{"file": "{file}", "split": "train", "tokens": {tokens}, "stories": 1, "text_bytes": 9}}"#
        )
    };
    for (shards, says) in [
        (
            vec![shard("train/a.bin", 2), shard("train//a.bin", 2)],
            "lists train//a.bin twice",
        ),
        (vec![shard("../a.bin", 2)], "not a path inside the folder"),
        (
            vec![shard("/etc/hostname", 2)],
            "not a path inside the folder",
        ),
        (vec![shard("", 0)], "not a path inside the folder"),
        (
            vec![shard("train/a.bin", u64::MAX)],
            "4 bytes, but shards.json says 18446744073709551615 tokens (36893488147419103230 bytes)",
        ),
    ] {
        fs::write(
            dir.path().join("shards.json"),
            format!(
                r#"{{"vocab_size": 300, "shards": [{}]}}"#,
                shards.join(", ")
            ),
        )
        .unwrap();
        let err = TokenShards::open_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
}
