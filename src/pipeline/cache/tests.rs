//! The cache's unit tests: keys, manifests, lookups, locks, leases and garbage collection.

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

/// A cache whose lease waits poll quickly (staleness stays at its default).
fn quick_cache(dir: &Path) -> Cache {
    let cache = Cache::new(dir).with_lease_timing(LeaseTiming {
        poll: std::time::Duration::from_millis(5),
        ..LeaseTiming::default()
    });
    cache.ensure().unwrap();
    cache
}

/// Writes the lease of `key` as a process on another node would, with an mtime `age` old.
fn plant_foreign_lease(cache: &Cache, stage: StageId, key: &str, age: std::time::Duration) {
    let path = cache.lock_file(stage, key, "lease");
    let holder = LeaseHolder {
        host: "some-other-node".into(),
        pid: 1,
        pid_start: None,
        job: Some("4242_3".into()),
        taken_unix: now_unix(),
        token: "foreign".into(),
    };
    fs::write(&path, serde_json::to_vec(&holder).unwrap()).unwrap();
    let file = File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

#[test]
fn a_live_lease_on_another_node_blocks_the_lock_until_released() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, mpsc};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let cache = quick_cache(dir.path());
    let key = "ef".repeat(32);
    plant_foreign_lease(&cache, StageId::Train, &key, Duration::ZERO);
    assert_eq!(
        cache
            .lease_holder(StageId::Train, &key)
            .map(|h| (h.host, h.job)),
        Some(("some-other-node".into(), Some("4242_3".into())))
    );
    let waits = Arc::new(AtomicUsize::new(0));
    let (events, got) = mpsc::channel();
    let builder = {
        let (cache, key, waits) = (cache.clone(), key.clone(), waits.clone());
        std::thread::spawn(move || {
            let waiting = events.clone();
            let lock = cache
                .lock(StageId::Train, &key, move || {
                    waits.fetch_add(1, Ordering::SeqCst);
                    waiting.send("waiting").unwrap();
                })
                .unwrap();
            events.send("locked").unwrap();
            drop(lock);
        })
    };
    assert_eq!(got.recv_timeout(Duration::from_secs(2)), Ok("waiting"));
    assert!(got.recv_timeout(Duration::from_millis(100)).is_err());
    fs::remove_file(cache.lock_file(StageId::Train, &key, "lease")).unwrap();
    assert_eq!(got.recv_timeout(Duration::from_secs(2)), Ok("locked"));
    builder.join().unwrap();
    assert_eq!(waits.load(Ordering::SeqCst), 1);
}

#[test]
fn dropping_a_key_lock_removes_its_lease_and_frees_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cache = quick_cache(dir.path());
    let key = "12".repeat(32);
    let lease = cache.lock_file(StageId::Sample, &key, "lease");
    let lock = cache.lock(StageId::Sample, &key, || {}).unwrap();
    let holder = cache.lease_holder(StageId::Sample, &key).unwrap();
    assert_eq!(holder.pid, std::process::id());
    drop(lock);
    assert!(!lease.exists());
    assert_eq!(cache.lease_holder(StageId::Sample, &key), None);
    let again = cache
        .lock(StageId::Sample, &key, || panic!("waited for a free key"))
        .unwrap();
    assert!(lease.exists());
    drop(again);
}

#[test]
fn gc_keeps_the_folders_of_a_key_leased_on_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let cache = quick_cache(dir.path());
    let key = "34".repeat(32);
    let leftover = cache.tmp_root().join(format!("train-{}-1-2-3", &key[..16]));
    fs::create_dir_all(&leftover).unwrap();
    plant_foreign_lease(&cache, StageId::Train, &key, std::time::Duration::ZERO);
    let report = cache.gc(None, false, false).unwrap();
    assert!(report.removed.is_empty());
    assert!(leftover.exists());
    plant_foreign_lease(&cache, StageId::Train, &key, lease::STALE_AFTER * 2);
    let report = cache.gc(None, false, false).unwrap();
    assert_eq!(report.removed, vec![leftover.clone()]);
    assert!(!leftover.exists());
}
