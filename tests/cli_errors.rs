//! A user's mistakes: each one line on stderr that names the file (with line and column) or the
//! key, a non-zero exit, no panic, and an untouched cache.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{Project, files_under};

/// Runs `tinyllm ARGS` in the project folder; returns stderr after checking the common promises.
fn fails(project: &Project, args: &[&str]) -> String {
    if !project.cache().exists() {
        project.run(&[]);
    }
    let cache_before = files_under(&project.cache());
    let output = Command::new(env!("CARGO_BIN_EXE_tinyllm"))
        .current_dir(project.dir.path())
        .args(args)
        .arg("--cache")
        .arg(project.cache())
        .arg("--runs")
        .arg(project.runs())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "{args:?} succeeded: {output:?}");
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert_eq!(
        files_under(&project.cache()),
        cache_before,
        "{args:?} touched the cache"
    );
    stderr
}

fn write(project: &Project, name: &str, text: &str) -> String {
    fs::write(project.path(name), text).unwrap();
    name.to_string()
}

#[test]
fn malformed_toml_names_file_line_and_column() {
    let project = Project::new();
    let spec = write(
        &project,
        "bad.toml",
        "[pipeline]\nname = \"x\"\n[train\nlr = 1\n",
    );
    let err = fails(&project, &["run", &spec]);
    assert!(err.contains("bad.toml:3:7: invalid TOML"), "{err}");
}

#[test]
fn unknown_key_suggests_the_close_one() {
    let project = Project::new();
    let spec = write(
        &project,
        "unk.toml",
        "[pipeline]\nname = \"x\"\n\n[train]\nlearning_rat = 1e-3\nlrr = 1\n",
    );
    let err = fails(&project, &["run", &spec]);
    assert!(err.contains("unk.toml:5:1"), "{err}");
    assert!(err.contains("unknown key `train.learning_rat`"), "{err}");
    let spec = write(
        &project,
        "unk2.toml",
        "[pipeline]\nname = \"x\"\n[train]\nlrr = 1\n",
    );
    let err = fails(&project, &["run", &spec]);
    assert!(
        err.contains("unknown key `train.lrr` (did you mean `train.lr`?)"),
        "{err}"
    );
}

#[test]
fn wrong_type_names_the_key_and_file() {
    let project = Project::new();
    let spec = write(
        &project,
        "ty.toml",
        "[pipeline]\nname = \"x\"\n[train]\nbatch_size = \"eight\"\n",
    );
    let err = fails(&project, &["run", &spec]);
    assert!(err.contains("ty.toml"), "{err}");
    assert!(err.contains("`train.batch_size`"), "{err}");
    assert!(err.contains("invalid type"), "{err}");
}

#[test]
fn invalid_values_name_the_key() {
    let project = Project::new();
    for (text, key, words) in [
        (
            "[model]\nn_heads = 5\n",
            "model.n_heads",
            "does not divide dim",
        ),
        (
            "[model]\nn_kv_heads = 3\n",
            "model.n_kv_heads",
            "does not divide n_heads",
        ),
        (
            "[train_vocab]\nvocab_size = 70000\n",
            "train_vocab.vocab_size",
            "65535",
        ),
        ("[train]\nlr = -1.0\n", "train.lr", "must be positive"),
        ("[sample]\ntop_p = 1.5\n", "sample.top_p", "(0, 1]"),
    ] {
        let spec = write(
            &project,
            "inv.toml",
            &format!("[pipeline]\nname = \"x\"\n{text}"),
        );
        let err = fails(&project, &["run", &spec]);
        assert!(err.contains("inv.toml"), "{err}");
        assert!(err.contains(&format!("`{key}`")), "{err}");
        assert!(err.contains(words), "{err}");
    }
}

#[test]
fn missing_spec_file_is_named() {
    let project = Project::new();
    let err = fails(&project, &["run", "no-such-spec.toml"]);
    assert!(err.contains("cannot read no-such-spec.toml"), "{err}");
}

#[test]
fn unknown_overlay_key_names_the_overlay() {
    let project = Project::new();
    let spec = project.spec_path();
    let overlay = write(&project, "over.toml", "[train]\nbatch_sizes = 4\n");
    let err = fails(
        &project,
        &["run", spec.to_str().unwrap(), "--overlay", &overlay],
    );
    assert!(err.contains("over.toml:2:1"), "{err}");
    assert!(err.contains("did you mean `train.batch_size`"), "{err}");
}

#[test]
fn malformed_set_is_named() {
    let project = Project::new();
    let spec = project.spec_path();
    let spec = spec.to_str().unwrap();
    let err = fails(&project, &["run", spec, "--set", "train.lr"]);
    assert!(err.contains("--set train.lr: expected KEY=VALUE"), "{err}");
    let err = fails(&project, &["run", spec, "--set", "train.lr=[1,"]);
    assert!(err.contains("is not a TOML value"), "{err}");
    let err = fails(&project, &["run", spec, "--set", "train.lr=\"fast\""]);
    assert!(
        err.contains("--set train.lr=\"fast\": key `train.lr`"),
        "{err}"
    );
    let err = fails(&project, &["run", spec, "--set", "train.lrate=1"]);
    assert!(err.contains("unknown key `train.lrate`"), "{err}");
}

#[test]
fn sweep_over_an_unknown_key_is_named() {
    let project = Project::new();
    let spec = project.spec_path();
    let err = fails(
        &project,
        &[
            "run",
            spec.to_str().unwrap(),
            "--sweep",
            "train.lrr=1e-3,2e-3",
        ],
    );
    assert!(err.contains("--sweep train.lrr=1e-3,2e-3"), "{err}");
    assert!(err.contains("did you mean `train.lr`"), "{err}");

    project.write_spec("[sweep]\n\"train.seeed\" = [1, 2]\n");
    let err = fails(&project, &["run", spec.to_str().unwrap()]);
    assert!(err.contains("pipeline.toml"), "{err}");
    assert!(err.contains("unknown key `train.seeed`"), "{err}");
}

#[test]
fn unwritable_cache_folder_is_named() {
    let project = Project::new();
    fs::write(project.path("plain-file"), "not a folder").unwrap();
    let blocked = project.path("plain-file").join("cache");
    let output = Command::new(env!("CARGO_BIN_EXE_tinyllm"))
        .arg("run")
        .arg(project.spec_path())
        .arg("--cache")
        .arg(&blocked)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot create cache folder"), "{stderr}");
    assert!(stderr.contains(&blocked.display().to_string()), "{stderr}");
    assert!(!stderr.contains("panicked"));
    assert!(!Path::new(&blocked).exists());
}

#[test]
fn unknown_stage_names_are_refused_by_the_command_line() {
    let project = Project::new();
    let output = Command::new(env!("CARGO_BIN_EXE_tinyllm"))
        .arg("run")
        .arg(project.spec_path())
        .args(["--until", "trian"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown stage `trian`"), "{stderr}");
}

#[test]
fn cuda_without_a_cuda_build_or_a_gpu_is_one_line() {
    let project = common::training_project("max_iters = 2\n");
    let output = project.run_command(&["--device", "cuda"]).output().unwrap();
    let line = common::one_error_line(&output);
    assert!(line.contains("CUDA"), "{line}");
    assert!(
        !project.runs().join("test/default/artifacts/train").exists(),
        "no train artifact"
    );
    let line = common::one_error_line(&common::tinyllm(
        &[
            "bench",
            "train",
            "--preset",
            "stories260K",
            "--device",
            "cuda:1",
        ],
        None,
    ));
    assert!(line.contains("CUDA"), "{line}");
    let line = common::one_error_line(&common::tinyllm(
        &[
            "bench",
            "generate",
            "--preset",
            "stories260K",
            "--device",
            "cuda",
        ],
        None,
    ));
    assert!(line.contains("CUDA"), "{line}");
    let line = common::one_error_line(&common::tinyllm(
        &[
            "bench",
            "matmul",
            "--preset",
            "stories260K",
            "--device",
            "cuda",
        ],
        None,
    ));
    assert!(line.contains("CUDA"), "{line}");
}

/// `bench matmul` refuses sizes it cannot hold before allocating anything, in one line that
/// names the settings to lower.
#[test]
fn bench_matmul_refuses_sizes_beyond_its_bounds_in_one_line() {
    for (batch, seq, wanted) in [
        ("100000000", "256", "--batch × --seq"),
        ("0", "256", "--batch × --seq"),
        ("64", "1024", "lower --batch or --seq"),
    ] {
        let line = common::one_error_line(&common::tinyllm(
            &[
                "bench",
                "matmul",
                "--preset",
                "stories110M",
                "--batch",
                batch,
                "--seq",
                seq,
            ],
            None,
        ));
        assert!(line.contains(wanted), "{batch} × {seq}: {line}");
    }
}

#[test]
fn a_device_that_is_not_one_names_the_key() {
    let project = common::training_project("max_iters = 2\n");
    let output = project
        .run_command(&["--set", "train.device=\"gpu\"", "--dry-run"])
        .output()
        .unwrap();
    let line = common::one_error_line(&output);
    assert!(
        line.contains("train.device") && line.contains("\"gpu\" is not a device"),
        "{line}"
    );
}

/// A batch far beyond memory is one line that says so and which setting to lower, with exit
/// code 1: not a panic (101), an abort (134) nor the kernel's kill (137).
#[test]
fn a_batch_beyond_memory_is_one_out_of_memory_line() {
    let output = common::tinyllm(
        &[
            "bench",
            "train",
            "--dim",
            "64",
            "--n-layers",
            "1",
            "--n-heads",
            "2",
            "--vocab-size",
            "300",
            "--batch",
            "100000000",
            "--seq",
            "256",
            "--steps",
            "1",
        ],
        None,
    );
    let line = common::one_error_line(&output);
    assert!(line.contains("this benchmark needs about"), "{line}");
    assert!(
        line.contains("for the activations of batch 100000000 × seq 256"),
        "{line}"
    );
    assert!(line.ends_with("; lower --batch or --seq"), "{line}");
}

#[test]
fn a_head_size_the_model_cannot_have_is_refused_before_any_stage() {
    let project = Project::new();
    project.write_spec_with_model(
        "dim = 1040\nn_heads = 1\nn_kv_heads = 1\nmax_seq_len = 8\n",
        "",
    );
    let spec_text = fs::read_to_string(project.spec_path()).unwrap();
    let dim_line = 1 + spec_text
        .lines()
        .position(|l| l == "dim = 1040")
        .expect("the spec writes dim");
    for extra in [&["--dry-run"][..], &[]] {
        let output = project.run_command(extra).output().unwrap();
        let line = common::one_error_line(&output);
        assert!(
            line.contains(&format!("pipeline.toml:{dim_line}: key `model.dim`")),
            "{line}"
        );
        assert!(line.contains("head size dim/n_heads = 1040"), "{line}");
        assert!(line.contains("at most 512"), "{line}");
        assert!(
            String::from_utf8_lossy(&output.stdout).is_empty(),
            "{output:?}"
        );
        assert!(!project.cache().exists(), "{extra:?} created the cache");
        assert!(!project.runs().exists(), "{extra:?} created a run folder");
    }
}

/// A precision that is not one: on the command line, clap's error line names the flag and the
/// values there are (clap's usage hint follows it); in a spec, one line names the key.
#[test]
fn a_precision_that_is_not_one_is_one_line() {
    for command in [
        &["sample", "--checkpoint", "nowhere", "--precision", "fp16"][..],
        &["bench", "generate", "--precision", "fp16"][..],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tinyllm"))
            .args(command)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command:?}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{command:?}: {stderr}");
        assert!(
            errors[0].starts_with("error: ")
                && errors[0].contains("--precision")
                && errors[0]
                    .contains("\"fp16\" is not a precision: use \"f32\", \"bf16\" or \"auto\""),
            "{stderr}"
        );
    }
    let project = common::training_project("max_iters = 2\n");
    let output = project
        .run_command(&["--set", "sample.precision=\"fp16\"", "--dry-run"])
        .output()
        .unwrap();
    let line = common::one_error_line(&output);
    assert!(
        line.contains("sample.precision") && line.contains("\"fp16\" is not a precision"),
        "{line}"
    );
}
