//! Rows: the spec file, overlays, `--set` and `--sweep` values, refused when the spec is loaded,
//! before any stage runs (so also under `--dry-run`).

use super::*;

/// A row running `tinyllm run bad.toml --dry-run` on a spec whose text is given.
macro_rules! bad_spec {
    ($what:expr, $text:expr, $expect:expr) => {
        Row {
            what: $what,
            files: &[("bad.toml", $text)],
            args: &["run", "bad.toml", "--dry-run"],
            expect: Expect::Refused($expect),
            ..ROW
        }
    };
}

/// A row running the project's own spec with extra arguments.
macro_rules! bad_args {
    ($what:expr, [$($arg:expr),*], $expect:expr) => {
        Row {
            what: $what,
            args: &["run", "pipeline.toml", $($arg),*],
            expect: Expect::Refused($expect),
            ..ROW
        }
    };
}

pub fn rows() -> Vec<Row> {
    vec![
        bad_spec!(
            "an sbatch option with a line break, which would add a line to the job script",
            "[pipeline]\nname = \"x\"\n[slurm]\noptions = [\"--time=1:00\\nrm -rf ~\"]\n",
            "error: bad.toml:4: key `slurm.options[0]`: \"--time=1:00\\nrm -rf ~\" holds a line break or control character"
        ),
        bad_spec!(
            "a Slurm job of 10^12 tasks",
            "[pipeline]\nname = \"x\"\n[slurm]\nntasks = 1000000000000\n",
            "error: bad.toml:4: key `slurm.ntasks`: invalid value: integer `1000000000000`, expected u32"
        ),
        bad_spec!(
            "an unknown executor",
            "[pipeline]\nname = \"x\"\nexecutor = \"kubernetes\"\n",
            "error: bad.toml:3: key `pipeline.executor`: unknown variant `kubernetes`, expected `local` or `slurm`"
        ),
        bad_spec!(
            "a TOML syntax error",
            "[pipeline]\nname = \"x\"\n[train\nlr = 1\n",
            "error: bad.toml:3:7: invalid TOML: unclosed table, expected `]`"
        ),
        bad_spec!(
            "a key written twice",
            "[pipeline]\nname = \"x\"\n[train]\nlr = 1e-3\nlr = 2e-3\n",
            "error: bad.toml:5:1: invalid TOML: duplicate key"
        ),
        bad_spec!(
            "a misspelt key",
            "[pipeline]\nname = \"x\"\n[train]\nlrr = 1\n",
            "error: bad.toml:4:1: unknown key `train.lrr` (did you mean `train.lr`?)"
        ),
        bad_spec!(
            "a value of the wrong type",
            "[pipeline]\nname = \"x\"\n[train]\nbatch_size = \"eight\"\n",
            "error: bad.toml:4: key `train.batch_size`: invalid type: string \"eight\", expected usize"
        ),
        bad_spec!(
            "a negative count",
            "[pipeline]\nname = \"x\"\n[train]\nbatch_size = -4\n",
            "error: bad.toml:4: key `train.batch_size`: invalid value: integer `-4`, expected usize"
        ),
        bad_spec!(
            "an empty spec",
            "",
            "error: bad.toml: key `pipeline`: is required"
        ),
        bad_spec!(
            "a pipeline name that climbs out of the runs folder",
            "[pipeline]\nname = \"../escape\"\n",
            "error: bad.toml:2: key `pipeline.name`: \"../escape\" must be non-empty and use only letters, digits, '-', '_' and '.'"
        ),
        bad_spec!(
            "a download file name that is a path",
            "[pipeline]\nname = \"x\"\n[download]\nfiles = [{ name = \"../a.txt\", mirrors = [\"/etc/hosts\"] }]\n",
            "error: bad.toml:4: key `download.files[0].name`: \"../a.txt\" is not a plain file name; set `name`"
        ),
        bad_spec!(
            "two download files with one name",
            "[pipeline]\nname = \"x\"\n[download]\nfiles = [{ name = \"a.txt\", mirrors = [\"/etc/hosts\"] }, { name = \"a.txt\", mirrors = [\"/etc/hostname\"] }]\n",
            "error: bad.toml:4: key `download.files[1].name`: \"a.txt\" is also download.files[0]'s name: both would be saved as one file; give each its own `name`"
        ),
        bad_spec!(
            "a download file without a mirror",
            "[pipeline]\nname = \"x\"\n[download]\nfiles = [{ name = \"a.txt\", mirrors = [] }]\n",
            "error: bad.toml:4: key `download.files[0].mirrors`: must list at least one mirror"
        ),
        bad_spec!(
            "no download files",
            "[pipeline]\nname = \"x\"\n[download]\nfiles = []\n",
            "error: bad.toml:4: key `download.files`: must list at least one file"
        ),
        bad_spec!(
            "heads that do not divide the width",
            "[pipeline]\nname = \"x\"\n[model]\nn_heads = 5\n",
            "error: bad.toml:4: key `model.n_heads`: 5 does not divide dim 288"
        ),
        bad_spec!(
            "key/value heads that do not divide the heads",
            "[pipeline]\nname = \"x\"\n[model]\nn_kv_heads = 3\n",
            "error: bad.toml:4: key `model.n_kv_heads`: 3 does not divide n_heads 8"
        ),
        bad_spec!(
            "a model without layers",
            "[pipeline]\nname = \"x\"\n[model]\nn_layers = 0\n",
            "error: bad.toml:4: key `model.n_layers`: must be positive"
        ),
        bad_spec!(
            "an unknown preset",
            "[pipeline]\nname = \"x\"\n[model]\npreset = \"stories9000M\"\n",
            "error: bad.toml:4: key `model.preset`: unknown variant `stories9000M`, expected one of `tutorial`, `stories260K`, `stories15M`, `stories42M`, `stories110M`, `quickstart`"
        ),
        bad_spec!(
            "a vocabulary too large for u16 token ids",
            "[pipeline]\nname = \"x\"\n[train_vocab]\nvocab_size = 70000\n",
            "error: bad.toml:4: key `train_vocab.vocab_size`: 70000 is above 65535: token ids are stored as u16"
        ),
        bad_spec!(
            "a training window longer than the model's context",
            "[pipeline]\nname = \"x\"\n[train]\nseq_len = 100000\n",
            "error: bad.toml:4: key `train.seq_len`: 100000 is above model.max_seq_len 256"
        ),
        bad_spec!(
            "a learning rate that is not a number",
            "[pipeline]\nname = \"x\"\n[train]\nlr = nan\n",
            "error: bad.toml:4: key `train.lr`: NaN must be positive"
        ),
        bad_spec!(
            "an infinite learning rate",
            "[pipeline]\nname = \"x\"\n[train]\nlr = inf\n",
            "error: bad.toml:4: key `train.lr`: inf must be positive"
        ),
        bad_spec!(
            "a beta of 1 or more",
            "[pipeline]\nname = \"x\"\n[train]\nbeta1 = 1.5\n",
            "error: bad.toml:4: key `train.beta1`: 1.5 must be in [0, 1)"
        ),
        bad_spec!(
            "zero training steps",
            "[pipeline]\nname = \"x\"\n[train]\nmax_iters = 0\n",
            "error: bad.toml:4: key `train.max_iters`: must be positive"
        ),
        bad_spec!(
            "a held-out fraction of the whole corpus",
            "[pipeline]\nname = \"x\"\n[pretokenize]\nval_fraction = 1.5\n",
            "error: bad.toml:4: key `pretokenize.val_fraction`: 1.5 must be in [0, 1)"
        ),
        bad_spec!(
            "a negative temperature in the spec",
            "[pipeline]\nname = \"x\"\n[sample]\ntemperature = -1.0\n",
            "error: bad.toml:4: key `sample.temperature`: -1 must not be negative"
        ),
        bad_spec!(
            "no sample prompts",
            "[pipeline]\nname = \"x\"\n[sample]\nprompts = []\n",
            "error: bad.toml:4: key `sample.prompts`: must list at least one prompt"
        ),
        bad_spec!(
            "a sample count of 10^12",
            "[pipeline]\nname = \"x\"\n[sample]\nprompts = [\"a\", \"b\"]\nnum_samples = 1000000000000\n",
            "error: bad.toml:5: key `sample.num_samples`: 2 prompts × 1000000000000 samples is 2000000000000 stories, more than the 10000 the sample stage writes; use `tinyllm sample` for more"
        ),
        bad_spec!(
            "a device that is not one",
            "[pipeline]\nname = \"x\"\n[train]\ndevice = \"gpu\"\n",
            "error: bad.toml:4: key `train.device`: \"gpu\" is not a device: use \"cpu\", \"cuda\" or \"cuda:N\""
        ),
        Row {
            what: "a spec file that is not UTF-8",
            setup: Some(|project| {
                fs::write(project.path("bad.toml"), b"\xff\xfe[pipeline]").unwrap()
            }),
            args: &["run", "bad.toml"],
            expect: Expect::Refused(
                "error: cannot read bad.toml: stream did not contain valid UTF-8",
            ),
            ..ROW
        },
        Row {
            what: "a spec that does not exist",
            args: &["run", "no-such.toml"],
            expect: Expect::Refused(
                "error: cannot read no-such.toml: No such file or directory (os error 2)",
            ),
            ..ROW
        },
        Row {
            what: "a folder given as the spec",
            args: &["run", "."],
            expect: Expect::Refused("error: cannot read .: Is a directory (os error 21)"),
            ..ROW
        },
        bad_args!(
            "an overlay that does not exist",
            ["--overlay", "nope.toml"],
            "error: cannot read nope.toml: No such file or directory (os error 2)"
        ),
        Row {
            what: "a misspelt key in an overlay",
            files: &[("over.toml", "[train]\nbatch_sizes = 4\n")],
            args: &["run", "pipeline.toml", "--overlay", "over.toml"],
            expect: Expect::Refused(
                "error: over.toml:2:1: unknown key `train.batch_sizes` (did you mean `train.batch_size`?)",
            ),
            ..ROW
        },
        bad_args!(
            "--set without a value",
            ["--set", "train.lr"],
            "error: --set train.lr: expected KEY=VALUE, e.g. train.lr=1e-3"
        ),
        bad_args!(
            "--set with a value that is not TOML",
            ["--set", "train.lr=[1,"],
            "error: --set train.lr=[1,: `[1,` is not a TOML value (unclosed array, expected `]`)"
        ),
        bad_args!(
            "--set with a value of the wrong type",
            ["--set", "train.lr=\"fast\""],
            "error: --set train.lr=\"fast\": key `train.lr`: invalid type: string \"fast\", expected f64"
        ),
        bad_args!(
            "--set of a misspelt key",
            ["--set", "train.lrate=1"],
            "error: --set train.lrate=1: unknown key `train.lrate` (did you mean `train.lr`?)"
        ),
        bad_args!(
            "--sweep over a misspelt key",
            ["--sweep", "train.lrr=1e-3,2e-3"],
            "error: --sweep train.lrr=1e-3,2e-3: unknown key `train.lrr` (did you mean `train.lr`?)"
        ),
        bad_args!(
            "--set of a device that is not one",
            ["--set", "train.device=\"gpu\"", "--dry-run"],
            "error: --set train.device=\"gpu\": key `train.device`: \"gpu\" is not a device: use \"cpu\", \"cuda\" or \"cuda:N\""
        ),
    ]
}
