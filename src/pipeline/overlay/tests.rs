//! Loading specs: merging, flags, sweeps, and errors that name their place.

use super::sweep::split_top_level;
use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn sources(spec: PathBuf) -> SpecSources {
    SpecSources {
        spec,
        ..Default::default()
    }
}

#[test]
fn overlays_merge_deeply_and_set_wins() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(
        dir.path(),
        "p.toml",
        "[pipeline]\nname = \"p\"\n[train]\nlr = 1e-3\nbatch_size = 4\n",
    );
    let overlay = write(dir.path(), "o.toml", "[train]\nbatch_size = 2\n");
    let loaded = load(&SpecSources {
        spec,
        overlays: vec![overlay],
        sets: vec!["train.seed=7".into(), "sample.prompts=[\"Hi\"]".into()],
        sweeps: vec![],
    })
    .unwrap();
    let spec = &loaded.variants[0].spec;
    assert_eq!(spec.train.lr, 1e-3);
    assert_eq!(spec.train.batch_size, 2);
    assert_eq!(spec.train.seed, 7);
    assert_eq!(spec.sample.prompts, vec!["Hi".to_string()]);
    assert_eq!(loaded.variants[0].name, "default");
}

#[test]
fn bare_words_are_strings() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), "p.toml", "[pipeline]\nname = \"p\"\n");
    let mut s = sources(spec);
    s.sets = vec!["train_vocab.kind=char".into()];
    let loaded = load(&s).unwrap();
    assert_eq!(
        loaded.variants[0].spec.train_vocab.kind,
        crate::pipeline::spec::TokenizerKind::Char
    );
}

#[test]
fn durations_and_percentages_need_no_quotes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), "p.toml", "[pipeline]\nname = \"p\"\n");
    let mut s = sources(spec);
    s.sets = vec!["train.max_time=1h30m".into(), "train.min_lr=10%".into()];
    let loaded = load(&s).unwrap();
    let train = &loaded.variants[0].spec.train;
    assert_eq!(train.max_time.map(|b| b.secs()), Some(5400.0));
    assert_eq!(train.min_lr.resolve(2.0), 0.2);
    s.sets = vec!["train.max_time=10x".into()];
    let err = load(&s).unwrap_err().to_string();
    assert!(err.contains("train.max_time"), "{err}");
}

#[test]
fn unknown_key_names_file_line_and_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(
        dir.path(),
        "p.toml",
        "[pipeline]\nname = \"p\"\n\n[train]\nlrr = 1e-3\n",
    );
    let err = load(&sources(spec)).unwrap_err().to_string();
    assert!(err.contains("p.toml:5:1"), "{err}");
    assert!(err.contains("unknown key `train.lrr`"), "{err}");
    assert!(err.contains("did you mean `train.lr`"), "{err}");
}

#[test]
fn type_errors_name_the_key_and_its_origin() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), "p.toml", "[pipeline]\nname = \"p\"\n");
    let overlay = write(dir.path(), "o.toml", "[train]\nlr = \"fast\"\n");
    let err = load(&SpecSources {
        spec,
        overlays: vec![overlay],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("o.toml"), "{err}");
    assert!(err.contains("train.lr"), "{err}");
}

#[test]
fn sweep_table_and_flag_make_the_cartesian_product() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(
        dir.path(),
        "p.toml",
        "[pipeline]\nname = \"p\"\n[sweep]\n\"train.lr\" = [1e-3, 3e-4]\n",
    );
    let mut s = sources(spec);
    s.sweeps = vec!["train.seed=1,2,3".into()];
    let loaded = load(&s).unwrap();
    assert_eq!(loaded.variants.len(), 6);
    assert_eq!(loaded.swept_keys, vec!["train.lr", "train.seed"]);
    assert_eq!(loaded.variants[0].name, "lr=0.001,seed=1");
    assert_eq!(loaded.variants[5].spec.train.lr, 3e-4);
    assert_eq!(loaded.variants[5].spec.train.seed, 3);
    assert!(loaded.variants.iter().all(|v| v.spec.sweep.is_empty()));
}

#[test]
fn missing_required_keys_and_repeated_sweep_values_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), "p.toml", "[train]\nlr = 1e-3\n");
    let err = load(&sources(spec)).unwrap_err().to_string();
    assert!(err.contains("p.toml: key `pipeline`: is required"), "{err}");

    let spec = write(dir.path(), "q.toml", "[pipeline]\nname = \"q\"\n");
    let mut s = sources(spec);
    s.sweeps = vec!["train.lr=1e-3,0.001".into()];
    let err = load(&s).unwrap_err().to_string();
    assert!(err.contains("--sweep train.lr=1e-3,0.001"), "{err}");
    assert!(err.contains("lists 0.001 twice"), "{err}");
}

#[test]
fn sweep_values_that_read_alike_get_distinct_run_folders() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), "p.toml", "[pipeline]\nname = \"p\"\n");
    let long = "a".repeat(300);
    let mut s = sources(spec);
    s.sweeps = vec![format!(
        "sample.prompts=[\"Tom?\"],[\"Tom!\"],[\"tom?\"],[\"Ann\"],[\"{long}\"]"
    )];
    let loaded = load(&s).unwrap();
    let names: Vec<&str> = loaded.variants.iter().map(|v| v.name.as_str()).collect();
    let folded: std::collections::HashSet<String> =
        names.iter().map(|n| n.to_lowercase()).collect();
    assert_eq!(folded.len(), 5, "{names:?}");
    assert_eq!(names[3], "prompts=__Ann__");
    assert!(names[0].starts_with("prompts=__Tom___-"), "{names:?}");
    assert!(names.iter().all(|n| n.len() <= 96), "{names:?}");
    // The same values name the same folders on every run.
    assert_eq!(load(&s).unwrap().variants[0].name, loaded.variants[0].name);
}

#[test]
fn sweeps_that_would_drop_a_value_or_expand_beyond_the_bound_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), "p.toml", "[pipeline]\nname = \"p\"\n");
    let mut s = sources(spec);
    s.sweeps = vec!["train.lr=1e-3".into(), "train.lr=5e-4".into()];
    let err = load(&s).unwrap_err().to_string();
    assert!(
        err.contains("already swept by --sweep train.lr=1e-3"),
        "{err}"
    );

    s.sweeps = vec!["train.lr=1e-3,5e-4".into()];
    s.sets = vec!["train.lr=3e-4".into()];
    let err = load(&s).unwrap_err().to_string();
    assert!(
        err.starts_with("--set train.lr=3e-4: `train.lr` is swept"),
        "{err}"
    );

    let values = |n: usize| (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    s.sets.clear();
    s.sweeps = vec![
        format!("train.seed={}", values(100)),
        format!("train.max_iters={}", values(11)),
    ];
    let err = load(&s).unwrap_err().to_string();
    assert!(err.starts_with("the sweep makes 1100 variants"), "{err}");
    s.sweeps.pop();
    s.sweeps.push(format!("train.max_iters={}", values(10)));
    assert_eq!(load(&s).unwrap().variants.len(), MAX_VARIANTS);
}

#[test]
fn split_respects_brackets_and_quotes() {
    assert_eq!(
        split_top_level("[\"a,b\", \"c\"],'x,y',3"),
        vec!["[\"a,b\", \"c\"]", "'x,y'", "3"]
    );
}

#[test]
fn broken_rules_name_the_line_of_the_key_where_a_file_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(
        dir.path(),
        "p.toml",
        "[pipeline]\nname = \"p\"\n\n[model]\nn_layers = 2\ndim = 1040\nn_heads = 1\nn_kv_heads = 1\n",
    );
    let err = load(&sources(spec)).unwrap_err().to_string();
    assert!(
        err.contains("p.toml:6: key `model.dim`: 1040 gives"),
        "{err}"
    );

    let overlay = write(dir.path(), "o.toml", "\n[model]\ndim = 1040\n");
    let spec = write(
        dir.path(),
        "q.toml",
        "[pipeline]\nname = \"q\"\n[model]\nn_heads = 1\nn_kv_heads = 1\n",
    );
    let err = load(&SpecSources {
        spec,
        overlays: vec![overlay],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("o.toml:3: key `model.dim`"), "{err}");

    let err = load(&sources(write(
        dir.path(),
        "r.toml",
        "[pipeline]\nname = \"r\"\n[model]\nn_heads = 7\n",
    )))
    .unwrap_err()
    .to_string();
    assert!(err.contains("r.toml:4: key `model.n_heads`"), "{err}");
    let err = load(&sources(write(
        dir.path(),
        "s.toml",
        "[pipeline]\nname = \"s\"\n[model]\nn_heads = 1\nn_kv_heads = 1\nmultiple_of = 0\n",
    )))
    .unwrap_err()
    .to_string();
    assert!(err.contains("s.toml:6: key `model.multiple_of`"), "{err}");

    let mut s = sources(write(dir.path(), "t.toml", "[pipeline]\nname = \"t\"\n"));
    s.sets = ["model.dim=1040", "model.n_heads=1", "model.n_kv_heads=1"]
        .map(String::from)
        .to_vec();
    let err = load(&s).unwrap_err().to_string();
    assert!(
        err.starts_with("--set model.dim=1040: key `model.dim`"),
        "{err}"
    );
}

#[test]
fn a_default_that_breaks_a_rule_names_the_file_without_a_line() {
    let dir = tempfile::tempdir().unwrap();
    // dim keeps the default 288, which 96 heads cut into heads of 3: the rule is charged to
    // `model.dim`, which no file writes.
    let spec = write(
        dir.path(),
        "p.toml",
        "[pipeline]\nname = \"p\"\n[model]\nn_heads = 96\n",
    );
    let err = load(&sources(spec)).unwrap_err().to_string();
    assert!(err.contains("p.toml: key `model.dim`: 288 gives"), "{err}");
    assert!(err.contains("head size dim/n_heads = 3"), "{err}");
}
