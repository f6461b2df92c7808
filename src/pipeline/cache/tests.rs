//! The cache's unit tests: keys, manifests, lookups, locks and garbage collection.

use super::*;

fn manifest() -> Manifest {
    Manifest {
        stage: String::new(),
        stage_version: 1,
        key: String::new(),
        config: Json::Null,
        inputs: BTreeMap::new(),
        files: Vec::new(),
        metrics: BTreeMap::new(),
        summary: String::new(),
        created_unix: 0,
        elapsed_secs: 0.0,
        tool_version: String::new(),
    }
}

#[test]
fn canonical_json_sorts_keys_at_every_level() {
    let a = serde_json::json!({"b": 1, "a": {"d": [1, {"z": 0, "y": 1}], "c": 2.5}});
    assert_eq!(
        canonical_json(&a),
        r#"{"a":{"c":2.5,"d":[1,{"y":1,"z":0}]},"b":1}"#
    );
}

#[test]
fn keys_change_with_config_and_inputs() {
    let config = serde_json::json!({"lr": 1e-3});
    let inputs = BTreeMap::from([("download".to_string(), "k1".to_string())]);
    let base = cache_key(StageId::Train, &config, &inputs);
    assert_eq!(base, cache_key(StageId::Train, &config, &inputs));
    assert_ne!(
        base,
        cache_key(StageId::Train, &serde_json::json!({"lr": 2e-3}), &inputs)
    );
    let other_inputs = BTreeMap::from([("download".to_string(), "k2".to_string())]);
    assert_ne!(base, cache_key(StageId::Train, &config, &other_inputs));
    assert_ne!(base, cache_key(StageId::Sample, &config, &inputs));
}

#[test]
fn publish_then_lookup_detects_damage() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path().join("cache"));
    cache.ensure().unwrap();
    let key = "ab".repeat(32);
    let lock = cache.lock(StageId::Download, &key, || {}).unwrap();
    let pending = cache.begin(&lock).unwrap();
    fs::create_dir_all(pending.dir.join("files")).unwrap();
    fs::write(pending.dir.join("files/a.txt"), b"hello").unwrap();
    let artifact = cache.publish(pending, manifest(), &lock).unwrap();
    assert_eq!(artifact.manifest.files.len(), 1);
    assert!(matches!(
        cache.lookup(StageId::Download, &key, Verify::Hashes),
        Lookup::Hit(_)
    ));
    fs::write(artifact.dir.join("files/a.txt"), b"jello").unwrap();
    assert!(matches!(
        cache.lookup(StageId::Download, &key, Verify::Sizes),
        Lookup::Hit(_)
    ));
    assert!(matches!(
        cache.lookup(StageId::Download, &key, Verify::Hashes),
        Lookup::Damaged(_)
    ));
    fs::write(artifact.dir.join("files/a.txt"), b"hi").unwrap();
    assert!(matches!(
        cache.lookup(StageId::Download, &key, Verify::Sizes),
        Lookup::Damaged(_)
    ));
}

#[test]
fn begin_clears_leftovers_of_the_same_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());
    cache.ensure().unwrap();
    let key = "cd".repeat(32);
    let stale = cache.tmp_root().join(format!("train-{}-1-2-3", &key[..16]));
    let other = cache.tmp_root().join("train-0000000000000000-1-2-3");
    fs::create_dir_all(&stale).unwrap();
    fs::create_dir_all(&other).unwrap();
    let lock = cache.lock(StageId::Train, &key, || {}).unwrap();
    let pending = cache.begin(&lock).unwrap();
    assert!(!stale.exists());
    assert!(other.exists());
    assert!(pending.dir.exists());
}

#[test]
fn errors_name_the_users_files_for_their_copies_only() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join(ORIGINS_JSON),
        r#"{"files/a.txt": "/home/me/a.txt", "files/data": "/home/me/data"}"#,
    )
    .unwrap();
    let artifact = Artifact {
        stage: StageId::Download,
        dir: dir.path().to_path_buf(),
        manifest: manifest(),
    };
    let copy = |rel: &str| dir.path().join(rel).display().to_string();
    let text = format!(
        "{}: bad; {}:3:1: bad; {}: fine",
        copy("files/a.txt"),
        copy("files/data/b.json"),
        copy("files/a.txt.gz")
    );
    assert_eq!(
        artifact.name_origins(&text),
        format!(
            "/home/me/a.txt: bad; /home/me/data/b.json:3:1: bad; {}: fine",
            copy("files/a.txt.gz")
        )
    );
}
