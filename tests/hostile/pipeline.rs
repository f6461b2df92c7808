//! Rows: the run itself: thread counts, sweeps, mirrors, the cache and run folders, `--force`
//! and `cache` commands. Each is refused before a stage reads anything it cannot bound.

use super::*;

/// A row running the project's own spec with these arguments.
macro_rules! run_args {
    ($what:expr, [$($arg:expr),*], $expect:expr) => {
        Row {
            what: $what,
            args: &["run", "pipeline.toml", $($arg),*],
            expect: Expect::Refused($expect),
            ..ROW
        }
    };
}

/// The project's spec with `mirror` as the only mirror of its one corpus file.
pub fn spec_with_mirror(mirror: &str) -> String {
    format!(
        "[pipeline]\nname = \"test\"\n\n[download]\nfiles = [{{ name = \"stories.txt\", mirrors = [\"{mirror}\"] }}]\n\n\
         [train_vocab]\nvocab_size = 300\n\n[model]\ndim = 16\nn_layers = 2\nn_heads = 4\nn_kv_heads = 2\nmax_seq_len = 8\n\n\
         [train]\nseq_len = 8\nmax_iters = 10\n"
    )
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// A spec file (`pipeline.toml`) whose one corpus file has this mirror.
fn mirror_spec(mirror: &str) -> &'static [(&'static str, &'static str)] {
    Box::leak(Box::new([(
        "pipeline.toml",
        leak(spec_with_mirror(mirror)),
    )]))
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

pub fn rows() -> Vec<Row> {
    let many: Vec<String> = (1..=1001).map(|i| i.to_string()).collect();
    let many = leak(format!("train.seed={}", many.join(",")));
    let forty = |key: &str| {
        let values: Vec<String> = (1..=40).map(|i| i.to_string()).collect();
        leak(format!("{key}={}", values.join(",")))
    };
    vec![
        run_args!(
            "--threads 100000 (each would be an OS thread)",
            ["--dry-run", "--threads", "100000"],
            "error: --threads 100000 is more than 1024; use at most the machine's cores"
        ),
        run_args!(
            "--threads 0",
            ["--dry-run", "--threads", "0"],
            "error: --threads must be at least 1"
        ),
        run_args!(
            "pipeline.threads of 100000",
            ["--dry-run", "--set", "pipeline.threads=100000"],
            "error: --set pipeline.threads=100000: key `pipeline.threads`: 100000 is more than 1024; use at most the machine's cores"
        ),
        run_args!(
            "pipeline.threads of 0",
            ["--dry-run", "--set", "pipeline.threads=0"],
            "error: --set pipeline.threads=0: key `pipeline.threads`: must be at least 1"
        ),
        Row {
            what: "a sweep of 40 × 40 variants",
            args: Box::leak(Box::new([
                "run",
                "pipeline.toml",
                "--dry-run",
                "--sweep",
                forty("train.seed"),
                "--sweep",
                forty("train.max_iters"),
            ])),
            expect: Expect::Refused(
                "error: the sweep makes 1600 variants (40 train.seed × 40 train.max_iters values); at most 1000 run at once: sweep fewer values, or split the sweep over several runs",
            ),
            ..ROW
        },
        Row {
            what: "a --sweep of 1001 values",
            args: Box::leak(Box::new([
                "run",
                "pipeline.toml",
                "--dry-run",
                "--sweep",
                many,
            ])),
            expect: Expect::Refused(leak(format!(
                "error: --sweep {many}: 1001 values are more than the 1000 variants a sweep may have"
            ))),
            ..ROW
        },
        Row {
            what: "a [sweep] table of 1001 values",
            setup: Some(|project| {
                let values: Vec<String> = (1..=1001).map(|i| i.to_string()).collect();
                let mut spec = fs::read_to_string(project.spec_path()).unwrap();
                spec.push_str(&format!(
                    "\n[sweep]\n\"train.seed\" = [{}]\n",
                    values.join(", ")
                ));
                fs::write(project.spec_path(), spec).unwrap();
            }),
            args: &["run", "pipeline.toml", "--dry-run"],
            expect: Expect::Refused(
                "error: pipeline.toml:23: key `sweep.\"train.seed\"`: 1001 values are more than the 1000 variants a sweep may have",
            ),
            ..ROW
        },
        run_args!(
            "two --sweep flags for one key (the first would be dropped)",
            [
                "--dry-run",
                "--sweep",
                "train.lr=1e-3",
                "--sweep",
                "train.lr=5e-4"
            ],
            "error: --sweep train.lr=5e-4: `train.lr` is already swept by --sweep train.lr=1e-3; give all its values in one --sweep"
        ),
        run_args!(
            "--set of a key the sweep varies (the value would be dropped)",
            [
                "--dry-run",
                "--set",
                "train.lr=1e-3",
                "--sweep",
                "train.lr=1e-3,5e-4"
            ],
            "error: --set train.lr=1e-3: `train.lr` is swept by --sweep train.lr=1e-3,5e-4, which would replace this value in every variant; drop one of the two"
        ),
        run_args!(
            "a sweep listing one value twice",
            ["--dry-run", "--sweep", "train.lr=1e-3,0.001"],
            "error: --sweep train.lr=1e-3,0.001: key `train.lr`: the sweep lists 0.001 twice"
        ),
        run_args!(
            "a sweep of the pipeline's own settings",
            ["--dry-run", "--sweep", "pipeline.name=a,b"],
            "error: --sweep pipeline.name=a,b: key `pipeline.name`: a sweep varies a stage setting such as train.lr, not a whole section or the pipeline's own settings"
        ),
        run_args!(
            "a --sweep without values",
            ["--dry-run", "--sweep", "train.lr"],
            "error: --sweep train.lr: expected KEY=V1,V2,..., e.g. train.lr=1e-3,3e-4"
        ),
        Row {
            what: "a [sweep] key with an empty list",
            files: &[("over.toml", "[sweep]\n\"train.lr\" = []\n")],
            args: &[
                "run",
                "pipeline.toml",
                "--overlay",
                "over.toml",
                "--dry-run",
            ],
            expect: Expect::Refused(
                "error: over.toml:2: key `sweep.\"train.lr\"`: must list at least one value",
            ),
            ..ROW
        },
        Row {
            what: "a [sweep] key with one value, not a list",
            files: &[("over.toml", "[sweep]\n\"train.lr\" = 1e-3\n")],
            args: &[
                "run",
                "pipeline.toml",
                "--overlay",
                "over.toml",
                "--dry-run",
            ],
            expect: Expect::Refused(
                "error: over.toml:2: key `sweep.\"train.lr\"`: must be a list of values",
            ),
            ..ROW
        },
        Row {
            what: "a mirror that is /dev/zero (status would hash it forever)",
            files: mirror_spec("/dev/zero"),
            args: &["status", "pipeline.toml"],
            expect: Expect::Refused(
                "error: pipeline.toml:5: key `download.files[0].mirrors[0]`: /dev/zero is a character device, not a file or a folder",
            ),
            ..ROW
        },
        Row {
            what: "a mirror that is /dev/zero, under --dry-run",
            files: mirror_spec("file:///dev/zero"),
            args: &["run", "pipeline.toml", "--dry-run"],
            expect: Expect::Refused(
                "error: pipeline.toml:5: key `download.files[0].mirrors[0]`: /dev/zero is a character device, not a file or a folder",
            ),
            ..ROW
        },
        Row {
            what: "a mirror that is a FIFO",
            files: mirror_spec("{dir}/pipe"),
            setup: Some(|project| mkfifo(&project.path("pipe"))),
            args: &["status", "pipeline.toml"],
            expect: Expect::Refused(
                "error: pipeline.toml:5: key `download.files[0].mirrors[0]`: {dir}/pipe is a FIFO, not a file or a folder",
            ),
            ..ROW
        },
        Row {
            what: "a mirror folder holding a FIFO",
            files: mirror_spec("{dir}/corpus"),
            setup: Some(|project| {
                fs::create_dir_all(project.path("corpus")).unwrap();
                fs::write(project.path("corpus/a.txt"), "Once upon a time.\n").unwrap();
                mkfifo(&project.path("corpus/pipe"));
            }),
            args: &["run", "pipeline.toml", "--until", "download"],
            expect: Expect::Refused(
                "error: stage download failed: could not fetch stories.txt: {dir}/corpus: {dir}/corpus/pipe is a FIFO, not a file",
            ),
            cache: CacheRule::MayAdd,
            ..ROW
        },
        Row {
            what: "a mirror folder holding a link to its own parent",
            files: mirror_spec("{dir}/corpus"),
            setup: Some(|project| {
                fs::create_dir_all(project.path("corpus")).unwrap();
                fs::write(project.path("corpus/a.txt"), "Once upon a time.\n").unwrap();
                std::os::unix::fs::symlink("..", project.path("corpus/up")).unwrap();
            }),
            args: &["run", "pipeline.toml", "--until", "download"],
            expect: Expect::Refused(
                "error: stage download failed: could not fetch stories.txt: {dir}/corpus: {dir}/corpus/up is a link to a folder, not a file",
            ),
            cache: CacheRule::MayAdd,
            ..ROW
        },
        Row {
            what: "a mirror that does not exist",
            files: mirror_spec("{dir}/missing.txt"),
            args: &["run", "pipeline.toml", "--until", "download"],
            expect: Expect::Refused(
                "error: stage download failed: could not fetch stories.txt: {dir}/missing.txt: No such file or directory (os error 2)",
            ),
            cache: CacheRule::MayAdd,
            ..ROW
        },
        Row {
            what: "a local file whose sha256 is not the spec's",
            setup: Some(|project| {
                let mut spec = fs::read_to_string(project.spec_path()).unwrap();
                spec = spec.replace(
                    "mirrors = [",
                    &format!("sha256 = \"{}\", mirrors = [", "ab".repeat(32)),
                );
                fs::write(project.spec_path(), spec).unwrap();
            }),
            args: &["run", "pipeline.toml", "--until", "download"],
            expect: Expect::Refused(
                "error: stage download failed: could not fetch stories.txt: {dir}/stories.txt: sha256 mismatch (expected abababababababababababababababababababababababababababababababab, got a2252cd4dfb990ff4132f8b769c21177a5c79323f41db05a8a6b9132b37eed52)",
            ),
            cache: CacheRule::MayAdd,
            ..ROW
        },
        Row {
            what: "a sha256 that is not 64 hex digits",
            setup: Some(|project| {
                let mut spec = fs::read_to_string(project.spec_path()).unwrap();
                spec = spec.replace("mirrors = [", "sha256 = \"xyz\", mirrors = [");
                fs::write(project.spec_path(), spec).unwrap();
            }),
            args: &["run", "pipeline.toml", "--dry-run"],
            expect: Expect::Refused(
                "error: pipeline.toml:5: key `download.files[0].sha256`: \"xyz\" is not 64 hexadecimal digits",
            ),
            ..ROW
        },
        Row {
            what: "the cache folder inside the mirror folder",
            files: mirror_spec("{dir}"),
            args: &["status", "pipeline.toml"],
            expect: Expect::Refused(
                "error: the cache folder .tinyllm/cache is inside the local mirror {dir} (download.files[0].mirrors[0]), so the corpus would take it in; point the mirror at a folder that holds only the corpus, or move the cache folder (--cache)",
            ),
            ..ROW
        },
        Row {
            what: "the run folders inside the mirror folder",
            files: mirror_spec("{dir}/corpus"),
            setup: Some(|project| {
                fs::create_dir_all(project.path("corpus")).unwrap();
                fs::write(project.path("corpus/a.txt"), "Once upon a time.\n").unwrap();
            }),
            args: &["run", "pipeline.toml", "--runs", "corpus/runs", "--dry-run"],
            expect: Expect::Refused(
                "error: the run folder corpus/runs is inside the local mirror {dir}/corpus (download.files[0].mirrors[0]), so the corpus would take it in; point the mirror at a folder that holds only the corpus, or move the run folder (--runs)",
            ),
            ..ROW
        },
        Row {
            what: "a cache path under a plain file",
            files: &[("plain-file", "not a folder")],
            args: &["run", "pipeline.toml", "--cache", "plain-file/cache"],
            expect: Expect::Refused(
                "error: cannot create cache folder plain-file/cache: Not a directory (os error 20)",
            ),
            ..ROW
        },
        Row {
            what: "TINYLLM_CACHE under a plain file",
            files: &[("plain-file", "not a folder")],
            args: &["run", "pipeline.toml", "--until", "download"],
            env: &[("TINYLLM_CACHE", "plain-file/cache")],
            expect: Expect::Refused(
                "error: cannot create cache folder plain-file/cache: Not a directory (os error 20)",
            ),
            ..ROW
        },
        Row {
            what: "pipeline.cache_dir under a plain file",
            files: &[("plain-file", "not a folder")],
            args: &[
                "run",
                "pipeline.toml",
                "--until",
                "download",
                "--set",
                "pipeline.cache_dir=\"plain-file/cache\"",
            ],
            expect: Expect::Refused(
                "error: cannot create cache folder plain-file/cache: Not a directory (os error 20)",
            ),
            ..ROW
        },
        Row {
            what: "a runs folder that is a plain file",
            files: &[("plain-file", "not a folder")],
            args: &[
                "run",
                "pipeline.toml",
                "--until",
                "download",
                "--runs",
                "plain-file",
            ],
            expect: Expect::Refused(
                "error: cannot write the run folder plain-file/test/default: Not a directory (os error 20)",
            ),
            ..ROW
        },
        Row {
            what: "bench train --threads 100000",
            args: &["bench", "train", "--threads", "100000"],
            expect: Expect::Refused(
                "error: --threads 100000 is more than 1024; use at most the machine's cores",
            ),
            ..ROW
        },
        run_args!(
            "--force of a stage that does not exist",
            ["--force", "trian"],
            "error: --force: unknown stage `trian`; stages are download, train_vocab, pretokenize, train, sample"
        ),
        Row {
            what: "cache gc --unreferenced with a runs path that is a file",
            files: &[("plain-file", "not a folder")],
            args: &["cache", "gc", "--unreferenced", "--runs", "plain-file"],
            expect: Expect::Refused(
                "error: cannot read the run folders in plain-file: Not a directory (os error 20)",
            ),
            ..ROW
        },
    ]
}
