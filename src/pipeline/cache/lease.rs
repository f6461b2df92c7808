//! Build leases: the claim on building one key that holds across the nodes of a cluster.
//!
//! # Why not flock alone
//!
//! [`Cache::lock`](super::Cache::lock) takes an flock on `<cache>/locks/<stage>-<key>.lock`. On
//! one machine that is all one needs: waiters sleep in the kernel and a crashed holder's lock
//! goes with its process. Jobs of a Slurm allocation on different nodes share the cache over a
//! network file system, where flock is not a promise: Linux emulates it on NFS with POSIX
//! byte-range locks, which need lockd/NLM (NFSv3) or NFSv4 state, and some cluster file systems
//! (Lustre mounted without `-o flock`, some BeeGFS and GPFS setups) give locks that are local to
//! the node or that fail. So the flock stays, for waiting on the same node, and beside it the
//! builder holds a lease: `<cache>/locks/<stage>-<key>.lease`.
//!
//! # What holds where
//!
//! A lease is taken by creating its file with `O_CREAT|O_EXCL` (`create_new`), which is atomic
//! on local file systems, on NFSv3 and later and on the cluster file systems above: of several
//! creators exactly one succeeds. The file holds the holder ([`LeaseHolder`]: host, pid, the
//! pid's start time, Slurm job) as JSON and a token that no other lease carries. It is removed
//! on release, only while it is still the holder's own.
//!
//! A holder that dies cannot remove its lease, so a lease can go stale:
//!
//! - (a) its host is this host and its process is gone, or has another start time (the pid was
//!   reused): stale at once. This is judged only for leases whose file is owned by this
//!   process's user, since `/proc` mounted with `hidepid` hides other users' processes;
//!   other leases of this host wait for (b). It also assumes one pid namespace per host name;
//! - (b) its mtime is older than [`STALE_AFTER`]: while a lease is held, a thread of its holder
//!   rewrites the file every [`HEARTBEAT`], so a holder on another node that died (or lost the
//!   file system) stops refreshing it.
//!
//! A lease file that does not parse (garbage, or a lease between its creation and its first
//! write, when it is empty) counts as held until its mtime goes stale: taking it for stale at
//! once would let a waiter break a lease that is being taken, and give the key two builders.
//!
//! A lease is read by opening the file, then asking the open file for its metadata: NFS's
//! close-to-open consistency fetches fresh attributes on open, where a plain `stat` can answer
//! from an attribute cache up to a minute old.
//!
//! # The numbers, and the clocks
//!
//! A live holder's mtime is at most [`HEARTBEAT`] (10 s) old, plus the time its write takes to
//! reach the server. [`STALE_AFTER`] (60 s) leaves the other 50 s for a stalled node, a slow
//! server or a difference between clocks before a live holder is taken for dead; it is also the
//! longest a dead holder on another node delays the build. The heartbeat rewrites the file
//! rather than setting a time, so on NFS the server stamps the mtime with its own clock; the
//! reader compares it with its local clock. Staleness therefore assumes that every node's clock
//! agrees with the file server's to well within `STALE_AFTER - HEARTBEAT` (NTP on a cluster
//! gives milliseconds). A node whose clock runs ahead by more takes live leases for stale and
//! builds a key twice; one that runs behind only waits longer for dead holders. A holder that
//! stalls for longer than `STALE_AFTER` (suspended, partitioned) may likewise find its lease
//! taken over; its heartbeat then says so in the log.
//!
//! # Taking over a stale lease
//!
//! Removing a stale lease must not remove a fresh one that replaced it in the meantime: two
//! waiters that both read the stale lease could otherwise each remove "the lease", the second
//! removing the lease that the first had just taken. Renaming the file away and checking what
//! was renamed does not help: by then the fresh lease is gone, and putting it back races with a
//! third creator. So a waiter first claims the right to break that one lease, by creating
//! `<lease>.break-<id>-<generation>` with `O_EXCL`, where `<id>` names the stale file (a hash of
//! its content, with its unique token, and its inode). Holding the claim, it reads the lease
//! again and removes it only if it is still the same file and still stale. Only a claimant
//! removes a stale lease, and only one claimant per lease acts at a time, so what it removes is
//! what it checked. A claimant that died leaves its claim file behind; a claim is held for
//! milliseconds and is stale by the same rules, and then the next waiter claims the next
//! generation instead of removing the dead claim (removing it would race like the lease does).
//! The claimant that removes the lease removes its claim and the dead ones before it; a claimant
//! that dies in between leaves a few bytes that guard nothing, since the lease they name is gone.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{CacheError, io_err, now_unix};
use crate::fsutil;

/// How often a holder refreshes its lease's mtime.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// How old a lease's mtime may get before its holder counts as dead.
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// How often a waiter looks at a lease held by another process.
pub const POLL: Duration = Duration::from_secs(1);

/// Lease files are a few hundred bytes; a bigger one is garbage and is not read whole.
const MAX_LEASE_BYTES: u64 = 64 * 1024;
/// Claims on breaking one stale lease tried before waiting (each one left by a dead claimant).
const MAX_BREAK_GENERATIONS: u32 = 64;

/// The durations of the lease protocol (short ones in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub heartbeat: Duration,
    pub stale_after: Duration,
    pub poll: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            heartbeat: HEARTBEAT,
            stale_after: STALE_AFTER,
            poll: POLL,
        }
    }
}

/// Who holds a lease, as its file records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHolder {
    /// Host name, empty where it could not be read.
    pub host: String,
    pub pid: u32,
    /// The process's start time in clock ticks after boot (`/proc/<pid>/stat`, field 22), which
    /// tells the holder apart from a later process with the same pid.
    pub pid_start: Option<u64>,
    /// The Slurm job (`<job>` or `<array job>_<task>`), outside Slurm none.
    pub job: Option<String>,
    pub taken_unix: u64,
    /// Unique to this lease, so that a lease taken later is never taken for this one.
    #[serde(default)]
    pub token: String,
}

impl LeaseHolder {
    /// This process, now.
    fn current() -> Self {
        let host = this_host().unwrap_or_default().to_string();
        let pid = std::process::id();
        LeaseHolder {
            token: format!("{host}-{}", fsutil::unique_suffix()),
            host,
            pid,
            pid_start: match process(pid) {
                Process::Running { start } => start,
                Process::Gone | Process::Unknown => None,
            },
            job: slurm_job(|name| std::env::var(name).ok()),
            taken_unix: now_unix(),
        }
    }
}

/// The Slurm job a process runs in, from its environment, as `squeue` names it.
fn slurm_job(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let set = |name| var(name).filter(|value| !value.is_empty());
    let task = set("SLURM_ARRAY_TASK_ID");
    let job = task
        .as_ref()
        .and_then(|_| set("SLURM_ARRAY_JOB_ID"))
        .or_else(|| set("SLURM_JOB_ID"))?;
    Some(match task {
        Some(task) => format!("{job}_{task}"),
        None => job,
    })
}

/// A held lease; refreshed by a thread until dropped, then removed.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    holder: LeaseHolder,
    file_id: FileId,
    stop: Option<mpsc::Sender<()>>,
    heartbeat: Option<JoinHandle<()>>,
}

impl Lease {
    pub fn holder(&self) -> &LeaseHolder {
        &self.holder
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Closing the sender wakes the heartbeat at once; its thread closes the file, so that
        // removing it below leaves no `.nfs` placeholder behind on NFS.
        drop(self.stop.take());
        if let Some(thread) = self.heartbeat.take() {
            let _ = thread.join();
        }
        if let Ok(Some(seen)) = read(&self.path)
            && seen.file_id == self.file_id
            && seen.holder.as_ref().map(|h| &h.token) == Some(&self.holder.token)
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Takes the lease at `path`, waiting for as long as a live holder has it; `on_wait` is called
/// each time a poll finds it held (the caller decides what to say, and how often).
pub fn acquire(
    path: &Path,
    timing: &LeaseTiming,
    on_wait: &mut dyn FnMut(),
) -> Result<Lease, CacheError> {
    loop {
        if let Some(lease) = try_create(path, timing)? {
            return Ok(lease);
        }
        match read(path).map_err(io_err(path))? {
            // Released between the two calls: try again at once.
            None => continue,
            Some(seen) if seen.is_stale(timing) => {
                if break_stale(path, &seen, timing)? {
                    continue;
                }
            }
            Some(_) => {}
        }
        on_wait();
        thread::sleep(timing.poll);
    }
}

/// Who holds the lease at `path`, when a live holder does (not when it is free, stale, or
/// unreadable).
pub fn holder(path: &Path, timing: &LeaseTiming) -> Option<LeaseHolder> {
    let seen = read(path).ok()??;
    if seen.is_stale(timing) {
        None
    } else {
        seen.holder
    }
}

/// Whether someone may hold the lease at `path`: it exists and is not stale, or it cannot be
/// read (then removing what it guards is not safe).
pub fn is_live(path: &Path, timing: &LeaseTiming) -> bool {
    match read(path) {
        Ok(None) => false,
        Ok(Some(seen)) => !seen.is_stale(timing),
        Err(_) => true,
    }
}

/// Creates the lease file, or `None` when it exists.
fn try_create(path: &Path, timing: &LeaseTiming) -> Result<Option<Lease>, CacheError> {
    let mut file = match File::options().write(true).create_new(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let holder = LeaseHolder::current();
    let bytes = serde_json::to_vec(&holder).expect("a lease holder serializes to JSON");
    let written = file
        .write_all(&bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| file.metadata());
    let meta = match written {
        Ok(meta) => meta,
        Err(e) => {
            drop(file);
            let _ = fs::remove_file(path);
            return Err(io_err(path)(e));
        }
    };
    let (stop, stopped) = mpsc::channel();
    let spawned = {
        let path = path.to_path_buf();
        let token = holder.token.clone();
        let every = timing.heartbeat;
        thread::Builder::new()
            .name("cache-lease".into())
            .spawn(move || heartbeat(file, &bytes, &path, &token, every, &stopped))
    };
    let heartbeat = match spawned {
        Ok(thread) => thread,
        Err(e) => {
            let _ = fs::remove_file(path);
            return Err(io_err(path)(e));
        }
    };
    Ok(Some(Lease {
        path: path.to_path_buf(),
        holder,
        file_id: FileId::of(&meta),
        stop: Some(stop),
        heartbeat: Some(heartbeat),
    }))
}

/// Rewrites the lease every `every` until `stopped` closes, and says once in the log if the
/// lease was taken over (its holder stalled past the stale window, or a clock is off).
fn heartbeat(
    file: File,
    bytes: &[u8],
    path: &Path,
    token: &str,
    every: Duration,
    stopped: &mpsc::Receiver<()>,
) {
    let mut warned = false;
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
        let refreshed = refresh(&file, bytes);
        let ours = matches!(
            read(path),
            Ok(Some(Seen { holder: Some(ref h), .. })) if h.token == token
        );
        let problem = match refreshed {
            Err(e) => format!("cannot be refreshed ({e})"),
            Ok(()) if !ours => "was taken over by another process".to_string(),
            Ok(()) => continue,
        };
        if !warned {
            warned = true;
            tracing::warn!(
                "the build lease {} {problem}: another process may be building the same artifact",
                path.display()
            );
        }
    }
}

/// Rewrites the lease's content in place: a write makes the file server stamp the mtime with its
/// own clock, which every reader compares against.
fn refresh(file: &File, bytes: &[u8]) -> io::Result<()> {
    #[cfg(unix)]
    std::os::unix::fs::FileExt::write_all_at(file, bytes, 0)?;
    #[cfg(not(unix))]
    {
        let _ = bytes;
        file.set_modified(SystemTime::now())?;
    }
    file.sync_data()
}

/// Which file a name pointed at, to tell a file from a later one of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &fs::Metadata) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            FileId { dev: 0, ino: 0 }
        }
    }
}

/// A lease (or claim) file as one read found it.
#[derive(Debug)]
struct Seen {
    bytes: Vec<u8>,
    /// `None` for garbage (or a file still being written).
    holder: Option<LeaseHolder>,
    file_id: FileId,
    modified: Option<SystemTime>,
    /// The file's owner, where the platform has one.
    uid: Option<u32>,
}

/// Reads the file at `path`: `None` when there is none.
fn read(path: &Path) -> io::Result<Option<Seen>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // Metadata of the open file: fresh on NFS (see the module's doc), and of the file read.
    let meta = file.metadata()?;
    let mut bytes = Vec::new();
    file.take(MAX_LEASE_BYTES).read_to_end(&mut bytes)?;
    #[cfg(unix)]
    let uid = Some(std::os::unix::fs::MetadataExt::uid(&meta));
    #[cfg(not(unix))]
    let uid = None;
    Ok(Some(Seen {
        holder: serde_json::from_slice(&bytes).ok(),
        bytes,
        file_id: FileId::of(&meta),
        modified: meta.modified().ok(),
        uid,
    }))
}

impl Seen {
    /// Whether the holder is gone: a process of this host that no longer runs, or a holder
    /// anywhere that stopped refreshing the file.
    ///
    /// A file that does not parse is treated like a held one until its mtime goes stale: a
    /// lease is briefly empty between its creation and its first write, and taking that for
    /// stale would let a second waiter break a lease that is being taken.
    fn is_stale(&self, timing: &LeaseTiming) -> bool {
        if let Some(holder) = &self.holder
            && self.holder_is_gone(holder)
        {
            return true;
        }
        let age = self
            .modified
            .and_then(|m| SystemTime::now().duration_since(m).ok());
        age.is_some_and(|age| age > timing.stale_after)
    }

    /// Whether the holder is a process of this host that has exited (or whose pid now belongs to
    /// another process); false whenever that cannot be known.
    fn holder_is_gone(&self, holder: &LeaseHolder) -> bool {
        let this_host = this_host().filter(|h| !h.is_empty());
        if this_host != Some(holder.host.as_str()) {
            return false;
        }
        // With `/proc` mounted `hidepid`, other users' processes look gone: judge ours only.
        if self.uid.is_none() || self.uid != own_uid() {
            return false;
        }
        match process(holder.pid) {
            Process::Gone => true,
            Process::Running { start } => holder
                .pid_start
                .zip(start)
                .is_some_and(|(recorded, now)| recorded != now),
            Process::Unknown => false,
        }
    }

    /// A name for this very file: its content (with its token) and its inode.
    fn id(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.bytes);
        hasher.update(&self.file_id.dev.to_le_bytes());
        hasher.update(&self.file_id.ino.to_le_bytes());
        hasher.finalize().to_hex()[..16].to_string()
    }

    fn is_same_file(&self, other: &Seen) -> bool {
        self.file_id == other.file_id && self.bytes == other.bytes
    }
}

/// Removes the stale lease `stale` from `path` under a claim on breaking it (see the module's
/// doc). True when the lease file is no longer `stale` (removed here or elsewhere): try to
/// take it again at once; false when another live waiter is breaking it: wait.
fn break_stale(path: &Path, stale: &Seen, timing: &LeaseTiming) -> Result<bool, CacheError> {
    let id = stale.id();
    let claim_path = |generation: u32| {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".break-{id}-{generation}"));
        path.with_file_name(name)
    };
    for generation in 0..MAX_BREAK_GENERATIONS {
        let claim = claim_path(generation);
        let mut file = match File::options().write(true).create_new(true).open(&claim) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                match read(&claim).map_err(io_err(&claim))? {
                    // The claimant finished (and the lease is gone) or died.
                    None => return Ok(true),
                    Some(other) if other.is_stale(timing) => continue,
                    Some(_) => return Ok(false),
                }
            }
            Err(e) => return Err(io_err(&claim)(e)),
        };
        let claimant =
            serde_json::to_vec(&LeaseHolder::current()).expect("a lease holder serializes to JSON");
        let result = file
            .write_all(&claimant)
            .map_err(io_err(&claim))
            .and_then(|()| {
                let now = read(path).map_err(io_err(path))?;
                if let Some(now) = now
                    && now.is_same_file(stale)
                    && now.is_stale(timing)
                {
                    match fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err(path)(e)),
                    }
                }
                Ok(true)
            });
        drop(file);
        // The earlier generations' claimants are dead, and the lease they meant to break is
        // gone or no longer stale: their claims guard nothing now.
        for generation in (0..=generation).rev() {
            let _ = fs::remove_file(claim_path(generation));
        }
        return result;
    }
    Ok(false)
}

/// What `/proc` says of a pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Process {
    /// No such process (or only its zombie, which has closed its files).
    Gone,
    Running {
        start: Option<u64>,
    },
    /// This system has no `/proc`, or did not answer.
    Unknown,
}

fn process(pid: u32) -> Process {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => parse_stat(&stat),
        Err(e) if e.kind() == io::ErrorKind::NotFound && Path::new("/proc/self/stat").exists() => {
            Process::Gone
        }
        Err(_) => Process::Unknown,
    }
}

/// Reads `/proc/<pid>/stat`: `pid (comm) state …`, where comm may hold spaces and parentheses,
/// so fields are counted after the last `)`, where field 3 (the state) begins.
fn parse_stat(stat: &str) -> Process {
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    if fields.first() == Some(&"Z") {
        return Process::Gone;
    }
    Process::Running {
        start: fields.get(22 - 3).and_then(|s| s.parse().ok()),
    }
}

/// This host's name, from the kernel.
pub fn this_host() -> Option<&'static str> {
    static HOST: OnceLock<Option<String>> = OnceLock::new();
    HOST.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
    })
    .as_deref()
}

/// This process's user, as the owner of its `/proc` entry.
#[cfg(unix)]
fn own_uid() -> Option<u32> {
    static UID: OnceLock<Option<u32>> = OnceLock::new();
    *UID.get_or_init(|| {
        fs::metadata("/proc/self")
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
    })
}

#[cfg(not(unix))]
fn own_uid() -> Option<u32> {
    None
}

#[cfg(test)]
mod tests;
