//! The train_vocab stage in a pipeline: trains on the corpus's training files only, keeps to
//! vocab_size whatever the corpus's alphabet, cuts over-long stories (with a warning), and turns
//! bad corpora into one-line errors that name the file, with nothing cached.

mod common;

use std::fs;

use common::{Project, error_line, files_under, run_builtin_until, shared_tinystories};
use tinyllm::pipeline::runner::VariantResult;
use tinyllm::pipeline::{RunError, StageId};
use tinyllm::tokenizer::Tokenizer;

/// A project whose corpus is the folder `corpus/` of the project, with `extra` TOML appended.
fn project(extra: &str) -> Project {
    let project = Project::new();
    fs::create_dir_all(project.path("corpus")).unwrap();
    let spec = format!(
        "[pipeline]\nname = \"vocab\"\n[download]\nfiles = [{{ name = \"corpus\", mirrors = [\"{}\"] }}]\n[corpus]\ntrain_files = [\"*.json\", \"*.txt\"]\nval_files = []\n[train_vocab]\nvocab_size = 300\n{extra}",
        project.path("corpus").display()
    );
    fs::write(project.spec_path(), spec).unwrap();
    project
}

fn run(project: &Project) -> Result<Vec<VariantResult>, RunError> {
    run_builtin_until(project, StageId::TrainVocab)
}

#[test]
fn trains_a_bpe_on_the_shared_archive() {
    let Some(shared) = shared_tinystories() else {
        return;
    };
    let project = Project::new();
    let spec = format!(
        "[pipeline]\nname = \"vocab\"\n[download]\nfiles = [{{ name = \"a.tar.gz\", mirrors = [\"{}\"] }}]\n[corpus]\ntrain_files = [\"data*.json\"]\n",
        shared.join("TinyStories_sample.tar.gz").display()
    );
    fs::write(project.spec_path(), spec).unwrap();
    let results = run(&project).unwrap();
    let stage = &results[0].stages[1];
    assert_eq!(stage.metrics["vocab_size"], 4096.0);
    assert!(
        stage.metrics["bytes_per_token"] > 3.5,
        "{:?}",
        stage.metrics
    );
    let tokenizer = Tokenizer::load(
        &results[0]
            .run_dir
            .join("artifacts/train_vocab/tokenizer.json"),
    )
    .unwrap();
    let text = "Once upon a time, there was a little girl named Lily.";
    assert!(tokenizer.encode(text).len() <= 16);
    let listing =
        fs::read_to_string(results[0].run_dir.join("artifacts/train_vocab/vocab.txt")).unwrap();
    assert!(listing.starts_with("0\t<unk>\n1\t<s>\n2\t</s>\n3\t<0x00>\n"));
}

#[test]
fn the_sample_is_bounded_and_deterministic() {
    let project = project("max_train_bytes = 2000\n");
    let stories: Vec<String> = (0..400)
        .map(|i| format!("Story number {i} is short."))
        .collect();
    fs::write(project.path("corpus/a.txt"), stories.join("\n")).unwrap();
    let first = run(&project).unwrap();
    let bytes = first[0].stages[1].metrics["train_bytes"];
    assert!(bytes <= 2000.0 + 30.0 && bytes > 1000.0, "{bytes}");
    let tokenizer_json = first[0]
        .run_dir
        .join("artifacts/train_vocab/tokenizer.json");
    let original = fs::read(&tokenizer_json).unwrap();
    let loaded = project.load(&[]);
    let mut opts = project.options();
    opts.until = Some(StageId::TrainVocab);
    opts.force.insert(StageId::TrainVocab);
    tinyllm::pipeline::run(
        &loaded,
        &tinyllm::stages::builtin_registry(),
        &opts,
        &mut Vec::new(),
    )
    .unwrap();
    assert_eq!(fs::read(&tokenizer_json).unwrap(), original);
}

#[test]
fn a_corrupt_json_shard_is_named_with_its_position() {
    let project = project("");
    fs::write(
        project.path("corpus/data00.json"),
        "[{\"story\": \"Hi.\"},\n {\"story\": ",
    )
    .unwrap();
    let err = error_line(&run(&project).unwrap_err());
    assert!(err.contains("data00.json:2:"), "{err}");
    assert!(files_under(&project.cache().join("train_vocab")).is_empty());
}

#[test]
fn invalid_utf8_is_named_with_its_byte_offset() {
    let project = project("");
    fs::write(
        project.path("corpus/a.txt"),
        b"Once upon a time\n\xc3\x28 bad",
    )
    .unwrap();
    let err = error_line(&run(&project).unwrap_err());
    assert!(err.contains("a.txt: invalid UTF-8 at byte 17"), "{err}");
    assert!(files_under(&project.cache().join("train_vocab")).is_empty());
}

#[test]
fn an_empty_corpus_is_an_error() {
    let project = project("");
    fs::write(project.path("corpus/a.txt"), "\n\n  \n").unwrap();
    let err = error_line(&run(&project).unwrap_err());
    assert!(err.contains("hold no text"), "{err}");
    assert!(err.contains("a.txt"), "{err}");

    let project = self::project("");
    fs::write(project.path("corpus/notes.md"), "text").unwrap();
    let err = error_line(&run(&project).unwrap_err());
    assert!(
        err.contains("no corpus file matches corpus.train_files"),
        "{err}"
    );
    assert!(err.contains("notes.md"), "{err}");
    assert!(files_under(&project.cache().join("train_vocab")).is_empty());
}

#[test]
fn vocab_sizes_outside_the_limits_are_spec_errors() {
    for (size, words) in [("70000", "above 65535"), ("200", "below 259")] {
        let project = project("");
        let err =
            tinyllm::pipeline::load(&project.sources(&[&format!("train_vocab.vocab_size={size}")]))
                .unwrap_err()
                .to_string();
        assert!(err.contains("train_vocab.vocab_size"), "{err}");
        assert!(err.contains(words), "{err}");
    }
}

#[test]
fn a_large_alphabet_keeps_to_vocab_size() {
    // 600 distinct CJK characters, a few much more frequent than the rest.
    let rare: String = (0..600u32)
        .map(|i| char::from_u32(0x4E00 + i).unwrap())
        .collect();
    let stories: Vec<String> = (0..300)
        .map(|i| format!("猫和狗 {i} 猫和狗 {}", &rare[(i % 100) * 18..][..18]))
        .chain([rare.clone()])
        .collect();
    let project = project("");
    fs::write(project.path("corpus/a.txt"), stories.join("\n")).unwrap();
    let results = run(&project).unwrap();
    assert_eq!(results[0].stages[1].metrics["vocab_size"], 300.0);
    let tokenizer = Tokenizer::load(
        &results[0]
            .run_dir
            .join("artifacts/train_vocab/tokenizer.json"),
    )
    .unwrap();
    assert_eq!(tokenizer.vocab_size(), 300);
    for text in [stories[0].as_str(), &rare] {
        assert_eq!(tokenizer.decode(&tokenizer.encode(text)), text);
    }
    // The frequent characters have tokens of their own; the rarest fall back to bytes.
    assert_eq!(tokenizer.encode("猫").len(), 2, "▁ and 猫");
    assert_eq!(
        tokenizer.encode(&rare[rare.len() - 9..]).len(),
        10,
        "▁ and 3 × 3 bytes"
    );
}

#[test]
fn a_huge_single_story_is_cut_into_pieces_with_one_warning() {
    let project = project("");
    // 5 MB of text on one line: a corpus whose stories the settings do not find.
    let story = common::synthetic_stories(60_000).replace('\n', " ");
    assert!(story.len() > 5_000_000);
    fs::write(project.path("corpus/book.txt"), &story).unwrap();
    let output = project
        .run_command(&["--until", "train_vocab"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("book.txt: a story longer than 100.0 kB (the longest 5.")
            && warnings[0].contains("corpus.format = \"auto\""),
        "{stderr}"
    );
    let tokenizer = Tokenizer::load(
        &project
            .runs()
            .join("vocab/default/artifacts/train_vocab/tokenizer.json"),
    )
    .unwrap();
    assert_eq!(tokenizer.vocab_size(), 300);
    // Its pieces were trained on: some tokens merge characters of the story's words.
    assert!(
        (0..300u32).any(|id| tokenizer
            .piece(id)
            .is_some_and(|p| p.starts_with('▁') && p.len() > 4)),
        "no merges"
    );
}

#[test]
fn long_stories_split_into_capped_pieces_at_spaces() {
    use tinyllm::data::corpus::split_long;
    let story = "word ".repeat(1000) + &"猫".repeat(500);
    let pieces: Vec<&str> = split_long(&story, 64).collect();
    assert_eq!(pieces.concat(), story);
    assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= 64));
    assert!(pieces[..10].iter().all(|p| p.ends_with(' ')), "{pieces:?}");
    assert_eq!(split_long("short", 64).collect::<Vec<_>>(), ["short"]);
    assert_eq!(split_long("", 64).count(), 0);
    assert!(split_long("🐱🐱🐱", 1).all(|p| p == "🐱"));
    let cap = tinyllm::stages::train_vocab::MAX_STORY_BYTES;
    let book = "Tom had a ball. ".repeat(400_000);
    assert!(split_long(&book, cap).all(|p| p.len() <= cap && p.ends_with(' ')));
}
