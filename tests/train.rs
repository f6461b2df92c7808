//! The train stage through the real binary and in process: resuming after SIGKILL ends with the
//! same bits, a diverging run stops cleanly, a sweep writes its comparison, and a tokenizer that
//! does not fit the model is refused before training starts.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Project, error_line, files_under, run_builtin_until, training_project};
use tinyllm::pipeline::{Stage, StageContext, StageId};
use tinyllm::stages::train::Train;
use tinyllm::train::checkpoint;

fn tinyllm(project: &Project, extra: &[&str]) -> Command {
    let mut args = vec!["--until", "train"];
    args.extend_from_slice(extra);
    project.run_command(&args)
}

fn run_to_end(project: &Project, extra: &[&str]) -> Output {
    let output = tinyllm(project, extra).output().unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn final_weights_hash(project: &Project, variant: &str) -> String {
    let path = project
        .runs()
        .join(format!("test/{variant}/artifacts/train/model.safetensors"));
    tinyllm::fsutil::blake3_file(&path).unwrap().1
}

/// The step of the last line of a live `metrics.jsonl` (0 when there is none yet).
fn logged_step(metrics: &Path) -> u64 {
    let Ok(text) = fs::read_to_string(metrics) else {
        return 0;
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .max()
        .unwrap_or(0)
}

fn checkpoint_dirs(cache: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let scratch = cache.join("scratch");
    for entry in fs::read_dir(&scratch).into_iter().flatten().flatten() {
        for checkpoint in fs::read_dir(entry.path().join("checkpoints"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if checkpoint
                .file_name()
                .to_string_lossy()
                .starts_with("step-")
            {
                dirs.push(checkpoint.path());
            }
        }
    }
    dirs
}

#[test]
fn killed_five_times_the_run_ends_with_the_bits_of_an_uninterrupted_one() {
    killed_five_times_ends_with_uninterrupted_bits(
        "lr = 3e-3\nmax_iters = 140\neval_interval = 30\ncheckpoint_interval = 7\nkeep_checkpoints = 2\n",
    );
}

/// Muon's momentum buffers are in the checkpoints, so a resumed Muon run is bit-exact too.
#[test]
fn muon_killed_five_times_the_run_ends_with_the_bits_of_an_uninterrupted_one() {
    killed_five_times_ends_with_uninterrupted_bits(
        "lr = 3e-3\nmax_iters = 140\neval_interval = 30\ncheckpoint_interval = 7\nkeep_checkpoints = 2\noptimizer = \"muon\"\nmuon_lr = 0.01\n",
    );
}

/// Runs `settings` straight, then again killed (SIGKILL) five times at random points and
/// resumed: the final weights must be the same bits, and every checkpoint left whole.
fn killed_five_times_ends_with_uninterrupted_bits(settings: &str) {
    let straight = training_project(settings);
    run_to_end(&straight, &[]);
    let expected = final_weights_hash(&straight, "default");

    let killed = training_project(settings);
    let metrics = killed.runs().join("test/default/metrics.jsonl");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    eprintln!("kill schedule seed {seed}");
    let mut random = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut target = 0;
    for kill in 0..5 {
        target += 8 + random(16);
        let mut child = tinyllm(&killed, &[]).spawn().unwrap();
        let started = Instant::now();
        while logged_step(&metrics) < target {
            assert!(
                child.try_wait().unwrap().is_none(),
                "run {kill} ended before step {target}"
            );
            assert!(started.elapsed() < Duration::from_secs(120));
            std::thread::sleep(Duration::from_millis(2));
        }
        // Anywhere within the next few steps, checkpoint writes included.
        std::thread::sleep(Duration::from_millis(random(30)));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        eprintln!("killed run {kill} at step {}", logged_step(&metrics));
        assert!(
            files_under(&killed.cache().join("train")).is_empty(),
            "a killed run left a train artifact"
        );
        for dir in checkpoint_dirs(&killed.cache()) {
            checkpoint::verify(&dir)
                .unwrap_or_else(|e| panic!("{} is half-written: {e}", dir.display()));
        }
    }
    let output = run_to_end(&killed, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("resuming from step"), "{stderr}");
    assert_eq!(final_weights_hash(&killed, "default"), expected);
    // The live log was cut back to the checkpoint each time: one line per step, no repeats.
    let steps: Vec<u64> = fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=140).collect::<Vec<_>>());
    // The scratch checkpoints are gone once the artifact is published.
    assert!(checkpoint_dirs(&killed.cache()).is_empty());
}

/// The train records of a live `metrics.jsonl`: (step, lr, elapsed seconds).
fn train_records(metrics: &Path) -> Vec<(u64, f64, f64)> {
    fs::read_to_string(metrics)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "train")
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["lr"].as_f64().unwrap(),
                v["elapsed_secs"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_time_budget_killed_at_40_percent_resumes_on_the_same_schedule() {
    // Cosine from 3e-3 to 0 over 8 seconds of training; checkpoints every 3 steps.
    let settings = "lr = 3e-3\nmin_lr = 0.0\nmax_time = \"8s\"\nmax_iters = 1000000\neval_interval = 1000000\ncheckpoint_interval = 3\n";
    let straight = training_project(settings);
    run_to_end(&straight, &[]);
    let metrics = |p: &Project| p.runs().join("test/default/metrics.jsonl");
    let uninterrupted = train_records(&metrics(&straight));
    let training: serde_json::Value = serde_json::from_slice(
        &fs::read(
            straight
                .runs()
                .join("test/default/artifacts/train/training.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(training["stopped_by"], "max_time");
    assert_eq!(training["max_time_secs"], 8.0);
    assert_eq!(
        training["steps"].as_u64().unwrap(),
        uninterrupted.len() as u64
    );

    let killed = training_project(settings);
    let mut child = tinyllm(&killed, &[]).spawn().unwrap();
    let started = Instant::now();
    while train_records(&metrics(&killed))
        .last()
        .is_none_or(|r| r.2 < 0.4 * 8.0)
    {
        assert!(child.try_wait().unwrap().is_none(), "the run ended first");
        assert!(started.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let output = run_to_end(&killed, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("resuming from step"), "{stderr}");
    let resumed = train_records(&metrics(&killed));

    for (name, records) in [("uninterrupted", &uninterrupted), ("resumed", &resumed)] {
        let steps: Vec<u64> = records.iter().map(|r| r.0).collect();
        assert_eq!(
            steps,
            (1..=records.len() as u64).collect::<Vec<_>>(),
            "{name}"
        );
        let (_, last_lr, last_elapsed) = *records.last().unwrap();
        assert!(last_elapsed >= 8.0, "{name} stopped at {last_elapsed} s");
        assert!(last_lr < 3e-3 * 0.01, "{name} ended at lr {last_lr}");
        // After the warmup the cosine only goes down, across the resume point too: the
        // elapsed time came back with the checkpoint (a restarted clock would jump back up).
        for pair in records[5..].windows(2) {
            assert!(
                pair[1].1 <= pair[0].1 + 1e-12,
                "{name}: lr rose from {} at step {} to {} at step {}",
                pair[0].1,
                pair[0].0,
                pair[1].1,
                pair[1].0
            );
            assert!(pair[1].2 >= pair[0].2, "{name}: the clock went back");
        }
    }
    // Both spend the same budget: the same steps, within this machine's noise.
    let (a, b) = (uninterrupted.len() as f64, resumed.len() as f64);
    assert!(
        (a - b).abs() <= 0.3 * a,
        "uninterrupted {a} steps, killed and resumed {b}"
    );
}

#[test]
fn a_truncated_checkpoint_is_reported_and_the_previous_one_is_used() {
    let settings = "lr = 3e-3\nmax_iters = 30\neval_interval = 30\ncheckpoint_interval = 10\nkeep_checkpoints = 3\n";
    let straight = training_project(settings);
    run_to_end(&straight, &[]);
    let expected = final_weights_hash(&straight, "default");

    // Stop a run after its checkpoint at step 20, by running it to 20 steps under another
    // max_iters would change its schedule; instead, kill it once step 20 is checkpointed.
    let project = training_project(settings);
    let mut child = tinyllm(&project, &[]).spawn().unwrap();
    let started = Instant::now();
    let newest = loop {
        let mut dirs = checkpoint_dirs(&project.cache());
        dirs.sort();
        if dirs.len() >= 2 {
            child.kill().unwrap();
            child.wait().unwrap();
            let mut dirs = checkpoint_dirs(&project.cache());
            dirs.sort();
            break dirs.pop().unwrap();
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended first");
        assert!(started.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(2));
    };
    let model = newest.join("model.safetensors");
    let bytes = fs::read(&model).unwrap();
    fs::write(&model, &bytes[..bytes.len() - 100]).unwrap();

    let output = run_to_end(&project, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is damaged (model.safetensors is"),
        "{stderr}"
    );
    assert!(stderr.contains("resuming from step"), "{stderr}");
    assert_eq!(final_weights_hash(&project, "default"), expected);
}

#[test]
fn a_diverging_run_stops_with_the_step_and_caches_nothing() {
    let project = training_project("max_iters = 40\ncheckpoint_interval = 2\nlr = 1e6\n");
    let output = tinyllm(&project, &[]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(error.contains("the loss became"), "{error}");
    assert!(error.contains("at step"), "{error}");
    assert!(
        error.contains("The last good checkpoint is step") || error.contains("No checkpoint"),
        "{error}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(files_under(&project.cache().join("train")).is_empty());
}

#[test]
fn a_sweep_over_two_learning_rates_writes_the_comparison_plot_and_table() {
    let project =
        training_project("lr = 3e-3\nmax_iters = 12\neval_interval = 6\ncheckpoint_interval = 6\n");
    let output = run_to_end(&project, &["--sweep", "train.lr=3e-3,1e-3"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("train.val_bpb"), "{stdout}");
    let pipeline = project.runs().join("test");
    let csv = fs::read_to_string(pipeline.join("sweep.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let svg = fs::read_to_string(pipeline.join("sweep-loss.svg")).unwrap();
    assert_eq!(
        svg.lines().filter(|l| l.ends_with(" validation")).count(),
        2,
        "a validation curve per variant"
    );
    assert!(fs::metadata(pipeline.join("sweep-loss.png")).unwrap().len() > 5_000);
    let report = fs::read_to_string(pipeline.join("report.md")).unwrap();
    assert!(report.contains("![loss curves of every variant](sweep-loss.svg)"));
    for line in csv.lines().skip(1) {
        let variant = line.split(',').next().unwrap();
        let run = pipeline.join(variant);
        assert!(run.join("report.md").exists());
        assert!(run.join("metrics.jsonl").exists());
        assert!(run.join("artifacts/train/loss.png").exists());
    }
}

#[test]
fn a_tokenizer_larger_than_the_model_is_refused_before_training() {
    let project = training_project("lr = 3e-3\nmax_iters = 2\n");
    let results = run_builtin_until(&project, StageId::Pretokenize).unwrap();
    let run_dir = &results[0].run_dir;
    let mut spec = project.load(&[]).variants[0].spec.clone();
    spec.model.vocab_size = Some(280);
    spec.train_vocab.vocab_size = 280;
    let mut inputs = std::collections::BTreeMap::new();
    for stage in [StageId::TrainVocab, StageId::Pretokenize] {
        let key = &results[0]
            .stages
            .iter()
            .find(|s| s.stage == stage)
            .unwrap()
            .key;
        let cache = tinyllm::pipeline::Cache::new(project.cache());
        let tinyllm::pipeline::cache::Lookup::Hit(artifact) =
            cache.lookup(stage, key, tinyllm::pipeline::cache::Verify::Sizes)
        else {
            panic!("{stage} is cached");
        };
        inputs.insert(stage, *artifact);
    }
    let out = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let view = tinyllm::pipeline::StageView::new(StageId::Train, &spec).unwrap();
    let mut cx = StageContext {
        view: &view,
        out_dir: out.path(),
        scratch_dir: scratch.path(),
        run_dir,
        inputs: &inputs,
        quiet: true,
    };
    let err = Train.run(&mut cx).unwrap_err();
    let line = error_line(err.as_ref());
    assert!(
        line.contains("the tokenizer has 300 tokens but model.vocab_size is 280"),
        "{line}"
    );
    assert!(files_under(out.path()).is_empty(), "nothing was trained");
    assert!(files_under(scratch.path()).is_empty());
}
