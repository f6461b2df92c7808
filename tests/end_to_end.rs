//! End-to-end checks of the release binary on the shipped TinyStories pipeline (`.ci/run` runs
//! them with `cargo test --release -- --ignored`). The download is pointed at a server on
//! 127.0.0.1 serving the shared sample archive, the way a user points it at a mirror.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::server::Server;
use common::{Project, shared_tinystories};

const SAMPLE_SHA256: &str = "72714ce42437320c551d891effd0d6ac14252d95be5d693bb0062e328aba67d6";

fn tinyllm(project: &Project, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_tinyllm"))
        .current_dir(project.dir.path())
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "tinyllm {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

#[test]
#[ignore = "end-to-end: run by .ci/run in release mode"]
fn shipped_pipeline_downloads_caches_verifies_and_cleans() {
    let Some(shared) = shared_tinystories() else {
        return;
    };
    let server = Server::start(fs::read(shared.join("TinyStories_sample.tar.gz")).unwrap());
    let project = Project::new();
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tinystories.toml");
    let overlay = project.path("mirror.toml");
    fs::write(
        &overlay,
        format!(
            "[download]\nfiles = [{{ name = \"TinyStories_all_data.tar.gz\", sha256 = \"{SAMPLE_SHA256}\", mirrors = [\"{}\", \"{}\"] }}]\n",
            server.url("/missing/TinyStories_all_data.tar.gz"),
            server.url("/ok/TinyStories_all_data.tar.gz"),
        ),
    )
    .unwrap();
    let spec = spec.to_str().unwrap();
    let overlay = overlay.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", spec, "--overlay", overlay, "--until", "download"];
        args.extend_from_slice(extra);
        tinyllm(&project, &args)
    };

    let first = stdout(&run(&[]));
    assert!(first.contains("download     ran"), "{first}");
    let data = project.path("runs/tinystories/default/artifacts/download/files/data01.json");
    assert!(data.exists());

    let second = stdout(&run(&[]));
    assert!(second.contains("download     cached"), "{second}");

    // Tamper with a shard without changing its size: only --verify notices, and rebuilds it.
    let mut bytes = fs::read(&data).unwrap();
    let last = bytes.len() - 2;
    bytes[last] = b' ';
    fs::write(&data, &bytes).unwrap();
    let unverified = stdout(&run(&[]));
    assert!(unverified.contains("download     cached"), "{unverified}");
    let verified = stdout(&run(&["--verify"]));
    assert!(verified.contains("damaged"), "{verified}");
    assert!(verified.contains("download     ran"), "{verified}");

    let status = stdout(&tinyllm(&project, &["status", spec, "--overlay", overlay]));
    assert!(
        status.contains("download") && status.contains("cached"),
        "{status}"
    );

    let listing = stdout(&tinyllm(&project, &["cache", "ls"]));
    assert!(listing.contains("1 artifacts"), "{listing}");
    let kept = stdout(&tinyllm(&project, &["cache", "gc", "--unreferenced"]));
    assert!(kept.contains("removed 0 folders"), "{kept}");
    fs::remove_dir_all(project.path("runs")).unwrap();
    let removed = stdout(&tinyllm(&project, &["cache", "gc", "--unreferenced"]));
    assert!(removed.contains("removed 1 folders"), "{removed}");
    let empty = stdout(&tinyllm(&project, &["cache", "ls"]));
    assert!(empty.contains("no artifacts"), "{empty}");
}

#[test]
#[ignore = "end-to-end: run by .ci/run in release mode"]
fn the_ten_minute_pipeline_trains_and_a_rerun_is_cached() {
    if shared_tinystories().is_none() {
        return;
    }
    let project = Project::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = project.path("cache");
    let runs = project.path("runs");
    let run = || {
        let output = Command::new(env!("CARGO_BIN_EXE_tinyllm"))
            .current_dir(root)
            .args([
                "run",
                "pipelines/tinystories-10min.toml",
                "--until",
                "train",
            ])
            .args([
                "--set",
                "train.max_iters=24",
                "--set",
                "train.warmup_iters=4",
            ])
            .args([
                "--set",
                "train.eval_interval=12",
                "--set",
                "train.eval_windows=24",
            ])
            .args([
                "--set",
                "train.checkpoint_interval=8",
                "--set",
                "train.log_interval=1",
            ])
            .arg("--cache")
            .arg(&cache)
            .arg("--runs")
            .arg(&runs)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout(&output)
    };
    let first = run();
    assert!(first.contains("train        ran"), "{first}");
    let run_dir = runs.join("tinystories-10min/default");
    let train = run_dir.join("artifacts/train");
    for file in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "metrics.jsonl",
        "training.json",
        "loss.svg",
        "loss.png",
    ] {
        assert!(train.join(file).exists(), "{file} is missing");
    }
    let training: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(train.join("training.json")).unwrap()).unwrap();
    assert_eq!(training["steps"], 24);
    assert_eq!(training["tokens"], 24 * 8 * 256);
    let bpb = training["final"]["val_bpb"].as_f64().unwrap();
    assert!(bpb > 0.5 && bpb < 3.0, "{bpb}");
    let losses: Vec<f64> = fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 24);
    assert!(losses[23] < losses[0] - 1.0, "{losses:?}");
    let report = fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(report.contains("artifacts/train/loss.svg"), "{report}");

    let second = run();
    assert!(second.contains("train        cached"), "{second}");
    assert!(!second.contains(" ran "), "{second}");
}
