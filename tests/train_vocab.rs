//! The train_vocab stage in a pipeline: trains on the corpus's training files only, and turns
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
