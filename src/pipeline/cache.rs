//! The content-addressed artifact cache.
//!
//! ```text
//! <cache>/<stage>/<key>/manifest.json + files   finished artifacts, never modified in place
//! <cache>/tmp/<stage>-<key>-<unique>/            artifacts being built (renamed into place)
//! <cache>/scratch/<stage>-<key>/                 resumable partial work of an unfinished stage
//! <cache>/locks/<stage>-<key>.lock               one builder per key among a node's processes
//! <cache>/locks/<stage>-<key>.lease              one builder per key across nodes (see `lease`)
//! ```
//!
//! An artifact exists only once its folder has been renamed into place with its manifest inside,
//! so a crash at any moment leaves either a finished artifact or nothing that a run takes for one.
//!
//! Building a key takes both the flock on its `.lock` file (waiters on one node sleep in the
//! kernel, and a crash releases it) and its lease, a file created exclusively and refreshed by a
//! heartbeat, which holds on network and cluster file systems where flock does not.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::dag::StageId;
use crate::fsutil;

pub mod lease;

pub use lease::{LeaseHolder, LeaseTiming};

/// How many hex digits of the key name an artifact's folder.
const KEY_DIR_LEN: usize = 16;
const MANIFEST: &str = "manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot create cache folder {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error(
        "cannot write to the cache folder {} ({source}); this run builds artifacts: make the folder writable, or use another one with --cache or TINYLLM_CACHE",
        path.display()
    )]
    ReadOnly { path: PathBuf, source: io::Error },
    #[error("cache {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An optional file of an artifact: a JSON object from paths inside the artifact to the user's
/// files they are copies of (a local corpus), so that errors can name the user's file.
pub const ORIGINS_JSON: &str = "origins.json";

/// One file of an artifact, as its manifest records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub blake3: String,
}

/// What an artifact is and how it was made; written last, so its presence marks a finished
/// artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub stage: String,
    pub stage_version: u32,
    pub key: String,
    pub config: Json,
    /// Input stage name → the key of the artifact that was read.
    pub inputs: BTreeMap<String, String>,
    pub files: Vec<FileEntry>,
    pub metrics: BTreeMap<String, f64>,
    pub summary: String,
    pub created_unix: u64,
    pub elapsed_secs: f64,
    pub tool_version: String,
}

/// A finished artifact in the cache.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub stage: StageId,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Artifact {
    pub fn key(&self) -> &str {
        &self.manifest.key
    }

    /// A file of the artifact by its path relative to the artifact's folder.
    pub fn file(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    /// `text` with every path to a copy of a user's file (see [`ORIGINS_JSON`]) replaced by the
    /// user's file; unchanged when the artifact records no origins.
    pub fn name_origins(&self, text: &str) -> String {
        let Ok(json) = fs::read_to_string(self.dir.join(ORIGINS_JSON)) else {
            return text.to_string();
        };
        let Ok(origins) = serde_json::from_str::<BTreeMap<String, String>>(&json) else {
            return text.to_string();
        };
        let mut text = text.to_string();
        // Longer paths first, so that `files/a.txt` is not taken for the start of `files/a.txt.gz`.
        let mut pairs: Vec<(String, &String)> = origins
            .iter()
            .map(|(copy, original)| (self.dir.join(copy).display().to_string(), original))
            .collect();
        pairs.sort_by_key(|(copy, _)| std::cmp::Reverse(copy.len()));
        for (copy, original) in pairs {
            text = replace_path(&text, &copy, original);
        }
        text
    }
}

/// Replaces `from` in `text` where it is a whole path or a path's leading folders (followed by
/// the end, a separator or punctuation, not by more of a file name).
fn replace_path(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(from) {
        let after = &rest[at + from.len()..];
        let whole = after
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || "._-".contains(c)));
        out.push_str(&rest[..at]);
        out.push_str(if whole { to } else { from });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// What a look-up found.
#[derive(Debug)]
pub enum Lookup {
    Hit(Box<Artifact>),
    Missing,
    /// The folder exists but does not hold what its manifest says (the reason is for the user).
    Damaged(String),
}

/// How hard a look-up checks an artifact's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Every file exists with the recorded size.
    Sizes,
    /// Every file's content hashes to the recorded blake3.
    Hashes,
}

/// The cache key of a stage: blake3 over its name, version, semantic config and input keys.
pub fn cache_key(stage: StageId, config: &Json, inputs: &BTreeMap<String, String>) -> String {
    let material = serde_json::json!({
        "stage": stage.name(),
        "version": stage.version(),
        "config": config,
        "inputs": inputs,
    });
    let canonical = canonical_json(&material);
    blake3::hash(canonical.as_bytes()).to_hex().to_string()
}

/// JSON with object keys sorted at every level, whatever map type serde_json was built with.
///
/// ```
/// use tinyllm::pipeline::cache::canonical_json;
/// let config = serde_json::json!({ "lr": 5e-4, "batch_size": 8 });
/// assert_eq!(canonical_json(&config), r#"{"batch_size":8,"lr":0.0005}"#);
/// ```
pub fn canonical_json(value: &Json) -> String {
    fn write(value: &Json, out: &mut String) {
        match value {
            Json::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Json::String(key.clone()).to_string());
                    out.push(':');
                    write(&map[key], out);
                }
                out.push('}');
            }
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// The cache folder.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    lease: LeaseTiming,
}

/// An exclusive claim on building one key, on every node that shares the cache; released when
/// dropped (or, for a crash, once the lease goes stale).
#[derive(Debug)]
pub struct KeyLock {
    // Declared first so that it is released before the flock: a waiter on this node that gets
    // the flock then finds the lease free instead of polling for it.
    _lease: lease::Lease,
    _file: File,
    stage: StageId,
    key: String,
}

/// An artifact being built in a temporary folder.
#[derive(Debug)]
pub struct Pending {
    pub dir: PathBuf,
    stage: StageId,
    key: String,
}

/// What `cache ls` shows of one artifact.
#[derive(Debug, Clone)]
pub struct ArtifactSummary {
    pub stage: String,
    pub key: String,
    pub bytes: u64,
    pub created_unix: u64,
    pub summary: String,
    pub dir: PathBuf,
}

/// What `cache gc` removed (or would remove).
#[derive(Debug, Default)]
pub struct GcReport {
    pub removed: Vec<PathBuf>,
    pub bytes: u64,
}

impl Cache {
    /// A handle on a cache folder; nothing is created until [`Cache::ensure`].
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Cache {
            root: root.into(),
            lease: LeaseTiming::default(),
        }
    }

    /// The same cache with other lease durations (tests use short ones).
    pub fn with_lease_timing(mut self, timing: LeaseTiming) -> Self {
        self.lease = timing;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the cache's folders, failing with the folder that cannot be created (or, when the
    /// cache folder exists, saying that it cannot be written to).
    pub fn ensure(&self) -> Result<(), CacheError> {
        let existed = self.root.is_dir();
        let failed = |path: PathBuf| {
            move |source| {
                if existed && source_is_denied(&source) {
                    CacheError::ReadOnly {
                        path: self.root.clone(),
                        source,
                    }
                } else {
                    CacheError::Create { path, source }
                }
            }
        };
        for dir in [
            self.root.clone(),
            self.tmp_root(),
            self.root.join("locks"),
            self.root.join("scratch"),
        ] {
            fs::create_dir_all(&dir).map_err(failed(dir.clone()))?;
        }
        // Creating a folder can succeed where writing a file fails (read-only mounts).
        let probe = self
            .tmp_root()
            .join(format!(".probe-{}", fsutil::unique_suffix()));
        File::create(&probe).map_err(failed(self.root.clone()))?;
        let _ = fs::remove_file(probe);
        Ok(())
    }

    fn tmp_root(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The name of an artifact's folder: the key's first hex digits.
    pub fn key_dir_name(key: &str) -> &str {
        &key[..KEY_DIR_LEN.min(key.len())]
    }

    /// Where the finished artifact of `key` lives.
    pub fn artifact_dir(&self, stage: StageId, key: &str) -> PathBuf {
        self.root.join(stage.name()).join(Self::key_dir_name(key))
    }

    /// A folder that survives a crash, for a stage to resume from; removed once it succeeds.
    pub fn scratch_dir(&self, stage: StageId, key: &str) -> PathBuf {
        self.root
            .join("scratch")
            .join(format!("{}-{}", stage.name(), Self::key_dir_name(key)))
    }

    /// Finds the finished artifact of `key` and checks its files.
    pub fn lookup(&self, stage: StageId, key: &str, verify: Verify) -> Lookup {
        let dir = self.artifact_dir(stage, key);
        let manifest_path = dir.join(MANIFEST);
        let text = match fs::read_to_string(&manifest_path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => {
                return Lookup::Missing;
            }
            Err(e) => return Lookup::Damaged(format!("cannot read its manifest: {e}")),
        };
        let manifest: Manifest = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => return Lookup::Damaged(format!("its manifest is unreadable: {e}")),
        };
        if manifest.key != key || manifest.stage != stage.name() {
            return Lookup::Damaged("its manifest belongs to another key".into());
        }
        let problem = manifest.files.par_iter().find_map_any(|entry| {
            let path = dir.join(&entry.path);
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(_) => return Some(format!("{} is missing", entry.path)),
            };
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).ok()?;
                let hash = blake3::hash(target.as_os_str().as_encoded_bytes());
                return (hash.to_hex().as_str() != entry.blake3)
                    .then(|| format!("{} points elsewhere", entry.path));
            }
            if meta.len() != entry.size {
                return Some(format!(
                    "{} has {} bytes, the manifest says {}",
                    entry.path,
                    meta.len(),
                    entry.size
                ));
            }
            if verify == Verify::Hashes {
                match fsutil::blake3_file(&path) {
                    Ok((_, hash)) if hash == entry.blake3 => None,
                    Ok(_) => Some(format!("{} does not match its recorded hash", entry.path)),
                    Err(e) => Some(format!("{} cannot be read: {e}", entry.path)),
                }
            } else {
                None
            }
        });
        match problem {
            Some(reason) => Lookup::Damaged(reason),
            None => Lookup::Hit(Box::new(Artifact {
                stage,
                dir,
                manifest,
            })),
        }
    }

    /// `<cache>/locks/<stage>-<key>.<extension>`.
    fn lock_file(&self, stage: StageId, key: &str, extension: &str) -> PathBuf {
        self.root.join("locks").join(format!(
            "{}-{}.{extension}",
            stage.name(),
            Self::key_dir_name(key)
        ))
    }

    /// Takes the build lock of `key`, its flock and then its lease, waiting as long as another
    /// process (on this node or another) holds either; `on_wait` is called once, when the first
    /// wait begins.
    pub fn lock(
        &self,
        stage: StageId,
        key: &str,
        on_wait: impl FnOnce(),
    ) -> Result<KeyLock, CacheError> {
        let mut on_wait = Some(on_wait);
        let mut waiting = || {
            if let Some(on_wait) = on_wait.take() {
                on_wait();
            }
        };
        let path = self.lock_file(stage, key, "lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                waiting();
                file.lock().map_err(io_err(&path))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        let lease = lease::acquire(
            &self.lock_file(stage, key, "lease"),
            &self.lease,
            &mut waiting,
        )?;
        Ok(KeyLock {
            _lease: lease,
            _file: file,
            stage,
            key: key.to_string(),
        })
    }

    /// Who is building `key`, when a live holder has its lease (another node's process included).
    pub fn lease_holder(&self, stage: StageId, key: &str) -> Option<LeaseHolder> {
        lease::holder(&self.lock_file(stage, key, "lease"), &self.lease)
    }

    /// Starts building the artifact of a locked key in a fresh temporary folder, after removing
    /// what earlier, interrupted builds of the same key left there.
    pub fn begin(&self, lock: &KeyLock) -> Result<Pending, CacheError> {
        let prefix = format!("{}-{}-", lock.stage.name(), Self::key_dir_name(&lock.key));
        let tmp_root = self.tmp_root();
        if let Ok(entries) = fs::read_dir(&tmp_root) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = tmp_root.join(format!("{prefix}{}", fsutil::unique_suffix()));
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Pending {
            dir,
            stage: lock.stage,
            key: lock.key.clone(),
        })
    }

    /// Hashes the built files, writes the manifest and renames the folder into place, replacing
    /// a damaged or forced-out artifact of the same key.
    pub fn publish(
        &self,
        pending: Pending,
        mut manifest: Manifest,
        _lock: &KeyLock,
    ) -> Result<Artifact, CacheError> {
        let files = fsutil::list_files(&pending.dir).map_err(io_err(&pending.dir))?;
        let entries: Result<Vec<FileEntry>, CacheError> = files
            .par_iter()
            .filter(|p| p.as_os_str() != MANIFEST)
            .map(|relative| {
                let path = pending.dir.join(relative);
                let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
                let (size, blake3) = if meta.file_type().is_symlink() {
                    let target = fs::read_link(&path).map_err(io_err(&path))?;
                    let hash = blake3::hash(target.as_os_str().as_encoded_bytes());
                    (0, hash.to_hex().to_string())
                } else {
                    File::open(&path)
                        .and_then(|f| f.sync_all())
                        .map_err(io_err(&path))?;
                    fsutil::blake3_file(&path).map_err(io_err(&path))?
                };
                Ok(FileEntry {
                    path: relative.to_string_lossy().replace('\\', "/"),
                    size,
                    blake3,
                })
            })
            .collect();
        manifest.files = entries?;
        manifest.key = pending.key.clone();
        manifest.stage = pending.stage.name().to_string();
        let manifest_json =
            serde_json::to_vec_pretty(&manifest).expect("a manifest serializes to JSON");
        let manifest_path = pending.dir.join(MANIFEST);
        fsutil::write_atomic(&manifest_path, &manifest_json).map_err(io_err(&manifest_path))?;

        let final_dir = self.artifact_dir(pending.stage, &pending.key);
        let stage_dir = final_dir.parent().expect("artifact folders have a parent");
        fs::create_dir_all(stage_dir).map_err(io_err(stage_dir))?;
        if final_dir.exists() {
            let trash = self
                .tmp_root()
                .join(format!("trash-{}", fsutil::unique_suffix()));
            fs::rename(&final_dir, &trash).map_err(io_err(&final_dir))?;
            let _ = fs::remove_dir_all(&trash);
        }
        fs::rename(&pending.dir, &final_dir).map_err(io_err(&final_dir))?;
        fsutil::sync_dir(stage_dir).map_err(io_err(stage_dir))?;
        let scratch = self.scratch_dir(pending.stage, &pending.key);
        let _ = fs::remove_dir_all(scratch);
        Ok(Artifact {
            stage: pending.stage,
            dir: final_dir,
            manifest,
        })
    }

    /// Every finished artifact, by stage then age.
    pub fn list(&self) -> Vec<ArtifactSummary> {
        let mut out = Vec::new();
        for stage in StageId::ALL {
            let Ok(entries) = fs::read_dir(self.root.join(stage.name())) else {
                continue;
            };
            for entry in entries.flatten() {
                let dir = entry.path();
                let Ok(text) = fs::read_to_string(dir.join(MANIFEST)) else {
                    continue;
                };
                let Ok(manifest) = serde_json::from_str::<Manifest>(&text) else {
                    continue;
                };
                out.push(ArtifactSummary {
                    stage: stage.name().to_string(),
                    key: manifest.key,
                    bytes: fsutil::dir_size(&dir),
                    created_unix: manifest.created_unix,
                    summary: manifest.summary,
                    dir,
                });
            }
        }
        out.sort_by(|a, b| {
            let order = |s: &str| StageId::from_name(s);
            (order(&a.stage), a.created_unix).cmp(&(order(&b.stage), b.created_unix))
        });
        out
    }

    /// Removes what interrupted runs left (temporary folders whose key nobody is building, and
    /// their scratch work when `scratch` is set) and, when `keep` is given, every artifact whose
    /// folder is not in it.
    pub fn gc(
        &self,
        keep: Option<&std::collections::HashSet<PathBuf>>,
        scratch: bool,
        dry_run: bool,
    ) -> Result<GcReport, CacheError> {
        let mut report = GcReport::default();
        let remove = |path: PathBuf, report: &mut GcReport| -> Result<(), CacheError> {
            report.bytes += fsutil::dir_size(&path);
            if !dry_run {
                fs::remove_dir_all(&path).map_err(io_err(&path))?;
            }
            report.removed.push(path);
            Ok(())
        };
        let mut leftovers = Vec::new();
        if let Ok(entries) = fs::read_dir(self.tmp_root()) {
            leftovers.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        if scratch && let Ok(entries) = fs::read_dir(self.root.join("scratch")) {
            leftovers.extend(entries.flatten().map(|e| e.path()));
        }
        for path in leftovers {
            if !self.is_being_built(&path) {
                remove(path, &mut report)?;
            }
        }
        if let Some(keep) = keep {
            for artifact in self.list() {
                let canonical = artifact.dir.canonicalize().unwrap_or(artifact.dir.clone());
                if !keep.contains(&canonical) {
                    remove(artifact.dir, &mut report)?;
                }
            }
        }
        Ok(report)
    }

    /// Whether another process holds the lock of the key a tmp or scratch folder belongs to: its
    /// flock (this node) or a live lease (any node).
    fn is_being_built(&self, path: &Path) -> bool {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let Some((stage, rest)) = StageId::ALL
            .iter()
            .filter_map(|s| Some((*s, name.strip_prefix(&format!("{}-", s.name()))?)))
            .max_by_key(|(s, _)| s.name().len())
        else {
            return false;
        };
        let key: String = rest.chars().take(KEY_DIR_LEN).collect();
        let flocked = File::options()
            .write(true)
            .open(self.lock_file(stage, &key, "lock"))
            .is_ok_and(|file| matches!(file.try_lock(), Err(fs::TryLockError::WouldBlock)));
        flocked || lease::is_live(&self.lock_file(stage, &key, "lease"), &self.lease)
    }
}

/// Whether an error says the file system refused a write (permissions, a read-only mount).
fn source_is_denied(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::PermissionDenied || err.kind() == io::ErrorKind::ReadOnlyFilesystem
}

/// Seconds since the Unix epoch, for manifests.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
