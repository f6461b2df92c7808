//! The cache's promises, shown with the real download stage and test stages for the others:
//! unchanged specs run nothing, a changed field re-runs exactly the stages it feeds, damaged
//! artifacts are caught by --verify, and sweeps share their upstream artifacts.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{Project, ran};
use tinyllm::pipeline::StageId::{self, *};
use tinyllm::pipeline::{Stage, StageContext, StageFailure, StageReport};

#[test]
fn second_run_of_an_unchanged_spec_runs_nothing_and_is_fast() {
    let project = Project::new();
    let first = project.run(&[]);
    assert_eq!(ran(&first[0]), StageId::ALL.to_vec());

    let started = Instant::now();
    let second = project.run(&[]);
    let elapsed = started.elapsed();
    assert!(ran(&second[0]).is_empty(), "{:?}", second[0].stages);
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
}

#[test]
fn second_run_of_the_binary_runs_nothing_within_a_second() {
    let project = Project::new();
    let run = || {
        let started = Instant::now();
        let output = project.download_command().output().unwrap();
        assert!(output.status.success(), "{output:?}");
        (String::from_utf8(output.stdout).unwrap(), started.elapsed())
    };
    let (first, _) = run();
    assert!(first.contains("download     ran"), "{first}");
    let (second, elapsed) = run();
    assert!(second.contains("download     cached"), "{second}");
    assert!(!second.contains(" ran "), "{second}");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
}

#[test]
fn a_changed_field_reruns_exactly_the_stages_it_feeds() {
    let project = Project::new();
    project.run(&[]);

    let train_change = project.run(&["train.lr=1e-3"]);
    assert_eq!(ran(&train_change[0]), vec![Train, Sample]);

    let model_change = project.run(&["model.n_layers=3"]);
    assert_eq!(ran(&model_change[0]), vec![Train, Sample]);

    let sample_change = project.run(&["sample.top_p=0.5"]);
    assert_eq!(ran(&sample_change[0]), vec![Sample]);

    let tokenizer_change = project.run(&["train_vocab.vocab_size=320"]);
    assert_eq!(
        ran(&tokenizer_change[0]),
        vec![TrainVocab, Pretokenize, Train, Sample]
    );

    let pretokenize_change = project.run(&["pretokenize.val_fraction=0.1"]);
    assert_eq!(
        ran(&pretokenize_change[0]),
        vec![Pretokenize, Train, Sample]
    );
}

#[test]
fn non_semantic_fields_rerun_nothing() {
    let project = Project::new();
    project.run(&[]);
    for set in [
        "train.log_interval=1",
        "train.checkpoint_interval=5",
        "train.keep_checkpoints=9",
        "download.retries=7",
        "download.timeout_secs=5",
        "pipeline.threads=1",
    ] {
        let result = project.run(&[set]);
        assert!(
            ran(&result[0]).is_empty(),
            "{set} re-ran {:?}",
            ran(&result[0])
        );
    }
}

#[test]
fn a_preset_and_its_dimensions_written_out_are_the_same_model() {
    let project = Project::new();
    project.write_spec_with_model("preset = \"stories260K\"\n", "");
    let preset = project.run(&["train_vocab.vocab_size=512"]);
    project.write_spec_with_model(
        "dim = 64\nn_layers = 5\nn_heads = 8\nn_kv_heads = 4\nmax_seq_len = 512\nmultiple_of = 4\nvocab_size = 512\n",
        "",
    );
    let spelled_out = project.run(&["train_vocab.vocab_size=512"]);
    assert!(
        ran(&spelled_out[0]).is_empty(),
        "{:?}",
        ran(&spelled_out[0])
    );
    assert_eq!(preset[0].stages[3].key, spelled_out[0].stages[3].key);
}

#[test]
fn verify_catches_a_corrupted_artifact_and_rebuilds_it() {
    let project = Project::new();
    let first = project.run(&[]);
    let train_dir = first[0].run_dir.join("artifacts/train");
    let record = train_dir.join("record.json");
    let original = fs::read(&record).unwrap();
    let mut corrupted = original.clone();
    corrupted[0] ^= 0x20;
    fs::write(&record, &corrupted).unwrap();

    // Without --verify only sizes are checked, and the size did not change.
    let unverified = project.run(&[]);
    assert!(ran(&unverified[0]).is_empty());

    let loaded = project.load(&[]);
    let mut opts = project.options();
    opts.verify = true;
    let verified = project.run_loaded(&loaded, &opts);
    // The sample was made from the damaged artifact (its key did not change): rebuilt too.
    assert_eq!(ran(&verified[0]), vec![Train, Sample]);
    assert_eq!(fs::read(&record).unwrap(), original);

    // A truncated file is caught even without --verify, and a dry run says what follows.
    fs::write(&record, b"{").unwrap();
    let mut dry = project.options();
    dry.dry_run = true;
    let mut out = Vec::new();
    tinyllm::pipeline::run(&loaded, &common::test_registry(), &dry, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("would rebuild: it was made from the train artifact, which is damaged"),
        "{out}"
    );
    let truncated = project.run(&[]);
    assert_eq!(ran(&truncated[0]), vec![Train, Sample]);
    assert_eq!(fs::read(&record).unwrap(), original);
}

/// A train stage whose output differs on every run (as training on a GPU may).
struct Unrepeatable;

impl Stage for Unrepeatable {
    fn id(&self) -> StageId {
        Train
    }

    fn run(&self, cx: &mut StageContext<'_>) -> Result<StageReport, StageFailure> {
        fs::write(cx.out_dir.join("weights"), tinyllm::fsutil::unique_suffix())?;
        Ok(StageReport::default())
    }
}

#[test]
fn a_forced_rebuild_that_changes_an_artifact_rebuilds_what_was_made_from_it() {
    let project = Project::new();
    let registry = common::test_registry().with(Unrepeatable);
    let loaded = project.load(&[]);
    let run = |opts: &tinyllm::pipeline::RunOptions| {
        tinyllm::pipeline::run(&loaded, &registry, opts, &mut Vec::new()).unwrap()
    };
    run(&project.options());
    let mut opts = project.options();
    opts.force.insert(Train);
    assert_eq!(ran(&run(&opts)[0]), vec![Train, Sample]);

    // The same bytes again: nothing downstream changes.
    opts.force = [TrainVocab].into();
    assert_eq!(ran(&run(&opts)[0]), vec![TrainVocab]);
}

#[test]
fn stopping_before_a_stage_unlinks_its_artifact_of_other_settings() {
    let project = Project::new();
    let first = project.run(&[]);
    let sample_link = first[0].run_dir.join("artifacts/sample");
    assert!(sample_link.join("manifest.json").exists());

    // The same settings up to train: the sample artifact is still this variant's.
    let mut opts = project.options();
    opts.until = Some(Train);
    project.run_loaded(&project.load(&[]), &opts);
    assert!(sample_link.join("manifest.json").exists());

    // A new train key: the linked samples are another model's.
    let changed = project.run_loaded(&project.load(&["train.lr=1e-3"]), &opts);
    assert_eq!(ran(&changed[0]), vec![Train]);
    assert!(fs::symlink_metadata(&sample_link).is_err());
    assert!(changed[0].run_dir.join("artifacts/train").exists());
}

#[test]
fn a_fully_cached_run_does_not_write_to_the_cache() {
    let project = Project::new();
    project.run(&[]);
    // A cache whose folders cannot be created (as on a read-only mount) serves a cached run.
    let tmp = project.cache().join("tmp");
    fs::remove_dir_all(&tmp).unwrap();
    fs::write(&tmp, "not a folder").unwrap();
    let again = project.run(&[]);
    assert!(ran(&again[0]).is_empty());

    let loaded = project.load(&["train.lr=1e-3"]);
    let err = tinyllm::pipeline::run(
        &loaded,
        &common::test_registry(),
        &project.options(),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("cannot create cache folder"),
        "{err}"
    );
}

#[test]
fn force_rebuilds_the_named_stage() {
    let project = Project::new();
    project.run(&[]);
    let loaded = project.load(&[]);
    let mut opts = project.options();
    opts.force.insert(TrainVocab);
    let forced = project.run_loaded(&loaded, &opts);
    assert_eq!(ran(&forced[0]), vec![TrainVocab]);
}

#[test]
fn a_sweep_runs_upstream_once_and_train_per_value_and_prints_the_table() {
    let project = Project::new();
    project.write_spec("\n[sweep]\n\"train.lr\" = [1e-3, 5e-4, 2.5e-4]\n");
    let loaded = project.load(&[]);
    assert_eq!(loaded.variants.len(), 3);
    let mut out = Vec::new();
    let results = tinyllm::pipeline::run(
        &loaded,
        &common::test_registry(),
        &project.options(),
        &mut out,
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();

    let runs_of = |stage: StageId| results.iter().filter(|r| ran(r).contains(&stage)).count();
    assert_eq!(runs_of(Download), 1);
    assert_eq!(runs_of(TrainVocab), 1);
    assert_eq!(runs_of(Pretokenize), 1);
    assert_eq!(runs_of(Train), 3);
    assert_eq!(runs_of(Sample), 3);

    let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["lr=0.001", "lr=0.0005", "lr=0.00025"]);
    assert!(out.contains("variant"), "{out}");
    assert!(out.contains("train.lr"), "{out}");
    assert!(out.contains("train.final_loss"), "{out}");
    for line in ["lr=0.001", "lr=0.0005", "lr=0.00025"] {
        assert!(out.lines().any(|l| l.starts_with(line)), "{out}");
    }
    let csv = fs::read_to_string(project.runs().join("test/sweep.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 4, "{csv}");
    assert!(
        rows[0].starts_with("variant,train.lr,train.final_loss"),
        "{csv}"
    );
    // The made-up loss is smallest at lr = 5e-4.
    assert!(rows[2].ends_with(",1"), "{csv}");
    for result in &results {
        assert!(result.run_dir.join("spec.toml").exists());
        assert!(result.run_dir.join("artifacts/train").exists());
    }
}

#[test]
fn run_folder_links_the_artifacts_and_holds_the_resolved_spec() {
    let project = Project::new();
    let results = project.run(&["train.lr=2e-3"]);
    let run_dir = &results[0].run_dir;
    assert_eq!(run_dir, &project.runs().join("test/default"));
    let spec = fs::read_to_string(run_dir.join("spec.toml")).unwrap();
    assert!(spec.contains("lr = 0.002"), "{spec}");
    for stage in StageId::ALL {
        let link = run_dir.join("artifacts").join(stage.name());
        assert!(link.join("manifest.json").exists(), "{}", link.display());
    }
    let record = fs::read_to_string(run_dir.join("stages.json")).unwrap();
    assert!(record.contains("\"train\""), "{record}");
}

#[test]
fn dry_run_changes_nothing() {
    let project = Project::new();
    let loaded = project.load(&[]);
    let mut opts = project.options();
    opts.dry_run = true;
    let results = project.run_loaded(&loaded, &opts);
    assert!(ran(&results[0]).is_empty());
    assert!(!project.cache().exists());
    assert!(!project.runs().exists());
}
