//! Rows: the corpus, its split into training and validation text, the vocabulary, and
//! `tokenizer.json` files.

use super::*;

/// The project's spec with its own `[corpus]` table; `files` is the body of `download.files`.
macro_rules! spec {
    ($files:literal) => {
        concat!(
            "[pipeline]\nname = \"test\"\n[download]\nfiles = [",
            $files,
            "]\n[corpus]\ntrain_files = [\"stories.*\"]\nval_files = []\n",
            "[train_vocab]\nvocab_size = 300\n",
            "[model]\ndim = 16\nn_layers = 2\nn_heads = 4\nn_kv_heads = 2\nmax_seq_len = 8\n",
            "[train]\nseq_len = 8\nmax_iters = 10\n"
        )
    };
}

/// Lines with nothing but spaces.
const BLANK: &str = "\n  \n\n";

const RUN: &[&str] = &["run", "pipeline.toml"];
const TRAIN_ON_STORIES: &[&str] = &[
    "run",
    "pipeline.toml",
    "--set",
    "corpus.train_files=[\"stories.txt\"]",
    "--set",
    "corpus.val_files=[]",
];

/// Writes bytes that are not UTF-8 as the corpus.
fn invalid_utf8(project: &Project) {
    fs::write(project.path("bad.txt"), b"Once upon a time\n\xc3\x28 bad").unwrap();
}

/// One 150 kB story: a whole file read as one line.
fn one_long_story(project: &Project) {
    fs::write(project.path("long.txt"), "word ".repeat(30_000)).unwrap();
}

/// Edits the model folder's tokenizer.json with `edit`.
fn edit_tokenizer(project: &Project, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = project.path("model/tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    fs::write(path, serde_json::to_vec(&json).unwrap()).unwrap();
}

pub fn rows() -> Vec<Row> {
    vec![
        // The corpus and its files.
        Row {
            what: "the training patterns match no corpus file",
            args: RUN,
            expect: Expect::Refused(
                "error: stage train_vocab failed: no corpus file matches corpus.train_files [\"*.json\"]; the corpus holds: stories.txt",
            ),
            cache: CacheRule::MayAdd,
            ..ROW
        },
        Row {
            what: "the validation patterns match no corpus file",
            args: &[
                "run",
                "pipeline.toml",
                "--set",
                "corpus.train_files=[\"stories.txt\"]",
            ],
            expect: Expect::Refused(
                "error: stage pretokenize failed: no corpus file matches corpus.val_files [\"TinyStories-valid.txt\"]; the corpus holds: stories.txt",
            ),
            cache: CacheRule::MayAdd,
            ..ROW
        },
        Row {
            what: "a corpus of blank lines",
            files: &[
                ("blank.txt", BLANK),
                (
                    "pipeline.toml",
                    spec!(r#"{ name = "stories.txt", mirrors = ["{dir}/blank.txt"] }"#),
                ),
            ],
            args: RUN,
            expect: Expect::Refused(
                "error: stage train_vocab failed: the files matching corpus.train_files hold no text ({dir}/blank.txt)",
            ),
            cache: CacheRule::MayAdd,
            ..ROW
        },
        Row {
            what: "validation files of blank lines",
            files: &[
                ("blank.txt", BLANK),
                (
                    "pipeline.toml",
                    spec!(
                        r#"{ name = "stories.txt", mirrors = ["{dir}/stories.txt"] }, { name = "valid.txt", mirrors = ["{dir}/blank.txt"] }"#
                    ),
                ),
            ],
            args: &[
                "run",
                "pipeline.toml",
                "--set",
                "corpus.val_files=[\"valid.txt\"]",
            ],
            expect: Expect::Refused(
                "error: stage pretokenize failed: the files matching corpus.val_files hold no text ({dir}/blank.txt)",
            ),
            cache: CacheRule::MayAdd,
            ..ROW
        },
        Row {
            what: "a JSON shard whose story is a number",
            files: &[
                ("bad.json", "[{\"story\": \"Hi.\"},\n {\"story\": 3}]"),
                (
                    "pipeline.toml",
                    spec!(r#"{ name = "stories.json", mirrors = ["{dir}/bad.json"] }"#),
                ),
            ],
            args: RUN,
            expect: Expect::Refused(
                "error: stage train_vocab failed: {dir}/bad.json:2:12: not a JSON array of stories: invalid type: integer `3`, expected a string at line 2 column 12",
            ),
            cache: CacheRule::MayAdd,
            ..ROW
        },
        Row {
            what: "a corpus file that is not UTF-8",
            files: &[(
                "pipeline.toml",
                spec!(r#"{ name = "stories.txt", mirrors = ["{dir}/bad.txt"] }"#),
            )],
            setup: Some(invalid_utf8),
            args: RUN,
            expect: Expect::Refused(
                "error: stage train_vocab failed: {dir}/bad.txt: invalid UTF-8 at byte 17",
            ),
            cache: CacheRule::MayAdd,
            ..ROW
        },
        Row {
            what: "a story of 150 kB (a file the corpus settings did not split)",
            files: &[(
                "pipeline.toml",
                spec!(r#"{ name = "stories.txt", mirrors = ["{dir}/long.txt"] }"#),
            )],
            setup: Some(one_long_story),
            args: &["run", "pipeline.toml", "--until", "train_vocab"],
            expect: Expect::Warned(
                " WARN {dir}/long.txt: a story longer than 100.0 kB (the longest 150.0 kB), cut into pieces to train the vocabulary; check that corpus.format = \"auto\" and corpus.separator = \"<|endoftext|>\" split the corpus into its stories",
            ),
            env: &[("NO_COLOR", "1")],
            ..ROW
        },
        // Training and validation text.
        Row {
            what: "val_fraction holds out none of a two-story corpus",
            args: TRAIN_ON_STORIES,
            expect: Expect::Refused(
                "error: stage pretokenize failed: pretokenize.val_fraction = 0.01 held out none of the corpus's 2 stories (44 tokens), too few for a validation split: add stories, raise val_fraction to 0.6 or more, or set corpus.val_files",
            ),
            cache: CacheRule::MayAdd,
            ..ROW
        },
        Row {
            what: "val_fraction holds out every story",
            args: &[
                "run",
                "pipeline.toml",
                "--set",
                "corpus.train_files=[\"stories.txt\"]",
                "--set",
                "corpus.val_files=[]",
                "--set",
                "pretokenize.val_fraction=0.99",
            ],
            expect: Expect::Refused(
                "error: stage pretokenize failed: pretokenize.val_fraction = 0.99 held out all 2 stories of the corpus, leaving none to train on: lower it, or set corpus.val_files",
            ),
            cache: CacheRule::MayAdd,
            ..ROW
        },
        Row {
            what: "a held-out split for a corpus of one story",
            files: &[("stories.txt", "One story only.\n")],
            args: TRAIN_ON_STORIES,
            expect: Expect::Refused(
                "error: stage pretokenize failed: the corpus holds a single story, which pretokenize.val_fraction = 0.01 cannot split into training and validation text: add stories, or set corpus.val_files",
            ),
            cache: CacheRule::MayAdd,
            ..ROW
        },
        Row {
            what: "a validation split shorter than one training window",
            args: &[
                "run",
                "pipeline.toml",
                "--set",
                "corpus.train_files=[\"stories.txt\"]",
                "--set",
                "corpus.val_files=[]",
                "--set",
                "pretokenize.val_fraction=0.6",
                "--set",
                "model.max_seq_len=64",
                "--set",
                "train.seq_len=32",
            ],
            expect: Expect::Refused(
                "error: stage train failed: the validation split holds 17 tokens, fewer than one window of train.seq_len + 1 = 33: raise pretokenize.val_fraction, set corpus.val_files to more text, or lower train.seq_len",
            ),
            cache: CacheRule::MayAdd,
            ..ROW
        },
        // The vocabulary's settings.
        Row {
            what: "a vocabulary too small for the byte tokens",
            args: &[
                "run",
                "pipeline.toml",
                "--set",
                "train_vocab.vocab_size=100",
            ],
            expect: Expect::Refused(
                "error: --set train_vocab.vocab_size=100: key `train_vocab.vocab_size`: 100 is below 259, the 3 special tokens plus 256 byte-fallback tokens",
            ),
            ..ROW
        },
        Row {
            what: "a vocabulary too large for u16 token ids",
            args: &[
                "run",
                "pipeline.toml",
                "--set",
                "train_vocab.vocab_size=70000",
            ],
            expect: Expect::Refused(
                "error: --set train_vocab.vocab_size=70000: key `train_vocab.vocab_size`: 70000 is above 65535: token ids are stored as u16",
            ),
            ..ROW
        },
        Row {
            what: "a vocabulary trained on no bytes",
            args: &[
                "run",
                "pipeline.toml",
                "--set",
                "train_vocab.max_train_bytes=0",
            ],
            expect: Expect::Refused(
                "error: --set train_vocab.max_train_bytes=0: key `train_vocab.max_train_bytes`: must be positive",
            ),
            ..ROW
        },
        Row {
            what: "a validation fraction of 1.5",
            args: &[
                "run",
                "pipeline.toml",
                "--set",
                "pretokenize.val_fraction=1.5",
            ],
            expect: Expect::Refused(
                "error: --set pretokenize.val_fraction=1.5: key `pretokenize.val_fraction`: 1.5 must be in [0, 1)",
            ),
            ..ROW
        },
        Row {
            what: "an empty story separator",
            args: &[
                "run",
                "pipeline.toml",
                "--set",
                "corpus.format=\"separator\"",
                "--set",
                "corpus.separator=\"\"",
            ],
            expect: Expect::Refused(
                "error: --set corpus.separator=\"\": key `corpus.separator`: must not be empty",
            ),
            ..ROW
        },
        // tokenizer.json files.
        Row {
            what: "a tokenizer file that does not exist",
            args: &["tokenize", "--tokenizer", "nope.json", "hi"],
            expect: Expect::Refused("error: nope.json: No such file or directory (os error 2)"),
            ..ROW
        },
        Row {
            what: "a tokenizer folder without tokenizer.json",
            args: &["tokenize", "--tokenizer", "{dir}", "hi"],
            expect: Expect::Refused(
                "error: {dir}/tokenizer.json: No such file or directory (os error 2)",
            ),
            ..ROW
        },
        Row {
            what: "a tokenizer file that is not JSON",
            files: &[("t.json", "garbage")],
            args: &["tokenize", "--tokenizer", "t.json", "hi"],
            expect: Expect::Refused(
                "error: t.json: not a tokenizer.json: expected value at line 1 column 1",
            ),
            ..ROW
        },
        Row {
            what: "a tokenizer that is a device",
            args: &["tokenize", "--tokenizer", "/dev/zero", "hi"],
            expect: Expect::Refused("error: /dev/zero: not a file"),
            ..ROW
        },
        Row {
            what: "a tokenizer file of 60 MB",
            setup: Some(|project| {
                let file = fs::File::create(project.path("t.json")).unwrap();
                file.set_len(60_000_000).unwrap();
            }),
            args: &["tokenize", "--tokenizer", "t.json", "hi"],
            expect: Expect::Refused(
                "error: t.json: 60.0 MB is too large for a tokenizer.json (at most 50.0 MB)",
            ),
            ..ROW
        },
        Row {
            what: "a tokenizer without byte fallback",
            needs_model: true,
            setup: Some(|project| {
                edit_tokenizer(project, |t| t["model"]["byte_fallback"] = false.into())
            }),
            args: &["tokenize", "--tokenizer", "model", "hi"],
            expect: Expect::Refused(
                "error: model/tokenizer.json: not a tinyllm tokenizer: its BPE model has no byte fallback, which encoding any text needs",
            ),
            ..ROW
        },
        Row {
            what: "a tokenizer with dropout",
            needs_model: true,
            setup: Some(|project| edit_tokenizer(project, |t| t["model"]["dropout"] = 0.5.into())),
            args: &["tokenize", "--tokenizer", "model/tokenizer.json", "hi"],
            expect: Expect::Refused(
                "error: model/tokenizer.json: not a tinyllm tokenizer: its BPE model has dropout, which makes encoding random",
            ),
            ..ROW
        },
        Row {
            what: "a tokenizer whose model is not a BPE",
            needs_model: true,
            setup: Some(|project| {
                edit_tokenizer(project, |t| {
                    t["model"] = serde_json::json!({
                        "type": "WordLevel", "vocab": { "<unk>": 0 }, "unk_token": "<unk>"
                    })
                })
            }),
            args: &["tokenize", "--tokenizer", "model", "hi"],
            expect: Expect::Refused(
                "error: model/tokenizer.json: not a tinyllm tokenizer: its model is not a BPE",
            ),
            ..ROW
        },
        Row {
            what: "a tokenizer missing a byte token",
            needs_model: true,
            setup: Some(|project| {
                edit_tokenizer(project, |t| {
                    t["model"]["vocab"]["<0x41>"] = 4000.into();
                })
            }),
            args: &["tokenize", "--tokenizer", "model", "hi"],
            expect: Expect::Refused(
                "error: model/tokenizer.json: not a tinyllm tokenizer: the BPE model's id 68 should be <0x41>",
            ),
            ..ROW
        },
        Row {
            what: "a model folder whose tokenizer.json is not JSON (the path said once)",
            needs_model: true,
            files: &[("model/tokenizer.json", "garbage")],
            args: &["sample", "--checkpoint", "model", "--prompt", "Tom"],
            expect: Expect::Refused(
                "error: model/tokenizer.json: not a tokenizer.json: expected value at line 1 column 1",
            ),
            ..ROW
        },
    ]
}
