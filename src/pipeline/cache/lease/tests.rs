//! Lease tests: staleness by host, pid and mtime, the heartbeat, release, and racing takeovers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use super::*;

/// Quick heartbeats and polls. Stale leases are planted with an mtime [`OLD`]; staleness itself
/// stays long enough that a test thread descheduled on a loaded machine is not taken for dead.
fn quick() -> LeaseTiming {
    LeaseTiming {
        heartbeat: Duration::from_millis(20),
        stale_after: Duration::from_secs(5),
        poll: Duration::from_millis(5),
    }
}

/// An age past `quick().stale_after`.
const OLD: Duration = Duration::from_secs(10);

/// Default staleness (nothing goes stale by mtime during a test), quick polls.
fn patient() -> LeaseTiming {
    LeaseTiming {
        poll: Duration::from_millis(5),
        ..LeaseTiming::default()
    }
}

fn holder_on(host: &str, pid: u32, pid_start: Option<u64>) -> LeaseHolder {
    LeaseHolder {
        host: host.to_string(),
        pid,
        pid_start,
        job: Some("4242".into()),
        taken_unix: now_unix(),
        token: format!("test-{}", fsutil::unique_suffix()),
    }
}

fn set_age(path: &Path, age: Duration) {
    let file = File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

/// Writes a lease file by hand whose mtime is `age` old.
fn plant(path: &Path, holder: &LeaseHolder, age: Duration) {
    fs::write(path, serde_json::to_vec(holder).unwrap()).unwrap();
    set_age(path, age);
}

fn lease_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("train-0123456789abcdef.lease")
}

/// Takes the lease, failing the test if that meant waiting.
fn acquire_at_once(path: &Path, timing: &LeaseTiming) -> Lease {
    acquire(path, timing, &mut || {
        panic!("waited for a lease that is free or stale")
    })
    .unwrap()
}

fn own_start() -> Option<u64> {
    match process(std::process::id()) {
        Process::Running { start } => start,
        other => panic!("this process reads as {other:?}"),
    }
}

#[test]
fn lease_with_an_old_mtime_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = lease_path(&dir);
    plant(&path, &holder_on("some-other-node", 1, None), OLD);
    let lease = acquire_at_once(&path, &quick());
    let on_disk: LeaseHolder = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(&on_disk, lease.holder());
    assert_eq!(on_disk.pid, std::process::id());
}

#[test]
fn fresh_lease_of_another_host_is_live() {
    let dir = tempfile::tempdir().unwrap();
    let path = lease_path(&dir);
    let other = holder_on("some-other-node", 1, None);
    plant(&path, &other, Duration::ZERO);
    assert_eq!(holder(&path, &quick()), Some(other));
    assert!(is_live(&path, &quick()));
    set_age(&path, OLD);
    assert_eq!(holder(&path, &quick()), None);
    assert!(!is_live(&path, &quick()));
}

#[cfg(target_os = "linux")]
#[test]
fn lease_of_a_dead_process_of_this_host_is_taken_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = lease_path(&dir);
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let host = this_host().expect("a Linux host has a name");
    plant(&path, &holder_on(host, pid, Some(1)), Duration::ZERO);
    assert!(!is_live(&path, &patient()));
    drop(acquire_at_once(&path, &patient()));
}

#[cfg(target_os = "linux")]
#[test]
fn lease_of_a_reused_pid_is_taken_over_and_of_a_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = lease_path(&dir);
    let host = this_host().expect("a Linux host has a name");
    let start = own_start().expect("this process has a start time");
    let live = holder_on(host, std::process::id(), Some(start));
    plant(&path, &live, Duration::ZERO);
    assert_eq!(holder(&path, &patient()), Some(live));

    plant(
        &path,
        &holder_on(host, std::process::id(), Some(start + 1)),
        Duration::ZERO,
    );
    assert_eq!(holder(&path, &patient()), None);
    drop(acquire_at_once(&path, &patient()));
}

#[test]
fn garbage_is_held_until_its_mtime_goes_stale() {
    let dir = tempfile::tempdir().unwrap();
    let path = lease_path(&dir);
    fs::write(&path, b"{\"host\": \"half-writ").unwrap();
    assert!(is_live(&path, &quick()));
    assert_eq!(holder(&path, &quick()), None);
    set_age(&path, OLD);
    assert!(!is_live(&path, &quick()));
    drop(acquire_at_once(&path, &quick()));
}

#[test]
fn dropping_a_lease_removes_its_file_only_while_it_is_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = lease_path(&dir);
    let lease = acquire_at_once(&path, &quick());
    assert_eq!(holder(&path, &quick()).as_ref(), Some(lease.holder()));
    drop(lease);
    assert!(!path.exists());

    // A lease taken over while its holder stalled belongs to the new holder.
    let lease = acquire_at_once(&path, &patient());
    let successor = holder_on("some-other-node", 1, None);
    fs::remove_file(&path).unwrap();
    plant(&path, &successor, Duration::ZERO);
    drop(lease);
    assert_eq!(holder(&path, &patient()), Some(successor));
}

#[test]
fn heartbeat_refreshes_the_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = lease_path(&dir);
    let timing = quick();
    let lease = acquire_at_once(&path, &timing);
    set_age(&path, OLD);
    let age = || {
        SystemTime::now()
            .duration_since(fs::metadata(&path).unwrap().modified().unwrap())
            .unwrap_or_default()
    };
    let started = std::time::Instant::now();
    while age() >= OLD && started.elapsed() < Duration::from_secs(2) {
        thread::sleep(timing.heartbeat);
    }
    assert!(age() < Duration::from_secs(2), "mtime is {:?} old", age());
    assert_eq!(holder(&path, &timing).as_ref(), Some(lease.holder()));
}

#[test]
fn dropping_a_lease_stops_its_heartbeat_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let path = lease_path(&dir);
    let lease = acquire_at_once(&path, &LeaseTiming::default());
    let started = std::time::Instant::now();
    drop(lease);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn racing_waiters_hold_a_stale_lease_one_at_a_time() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 15;
    let dir = tempfile::tempdir().unwrap();
    let path = Arc::new(lease_path(&dir));
    let timing = quick();
    let busy = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    // Threads count failures instead of panicking, which would leave the others at a barrier.
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (path, busy, overlaps, held, barrier) = (
                path.clone(),
                busy.clone(),
                overlaps.clone(),
                held.clone(),
                barrier.clone(),
            );
            thread::spawn(move || {
                let mut errors = Vec::new();
                for _ in 0..ROUNDS {
                    barrier.wait();
                    match acquire(&path, &timing, &mut || {}) {
                        Ok(lease) => {
                            if busy.swap(true, Ordering::SeqCst) {
                                overlaps.fetch_add(1, Ordering::SeqCst);
                            }
                            thread::sleep(Duration::from_millis(2));
                            busy.store(false, Ordering::SeqCst);
                            held.fetch_add(1, Ordering::SeqCst);
                            drop(lease);
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                    barrier.wait();
                }
                errors
            })
        })
        .collect();
    let mut left_behind = Vec::new();
    for round in 0..ROUNDS {
        let dead = holder_on("some-other-node", round as u32 + 1, None);
        plant(&path, &dead, OLD);
        barrier.wait();
        barrier.wait();
        left_behind.extend(
            fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name()),
        );
        for name in &left_behind {
            let _ = fs::remove_file(dir.path().join(name));
        }
    }
    let errors: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(errors, Vec::<String>::new());
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two holders at once");
    assert_eq!(held.load(Ordering::SeqCst), THREADS * ROUNDS);
    assert!(left_behind.is_empty(), "left behind: {left_behind:?}");
}

#[test]
fn a_dead_claimants_claim_is_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = lease_path(&dir);
    plant(&path, &holder_on("some-other-node", 1, None), OLD);
    let stale = read(&path).unwrap().unwrap();
    let claim = dir.path().join(format!(
        "train-0123456789abcdef.lease.break-{}-0",
        stale.id()
    ));
    plant(
        &claim,
        &holder_on("some-other-node", 2, None),
        Duration::ZERO,
    );
    // A live claimant is left to finish.
    assert!(!break_stale(&path, &stale, &quick()).unwrap());
    assert!(path.exists());
    set_age(&claim, OLD);
    drop(acquire_at_once(&path, &quick()));
    assert!(!claim.exists());
}

#[test]
fn stat_fields_are_counted_after_the_command_name() {
    let mut fields = vec!["0"; 52];
    fields[0] = "S";
    fields[22 - 3] = "98765";
    let stat = format!("4321 (a (b) c) {}", fields.join(" "));
    assert_eq!(parse_stat(&stat), Process::Running { start: Some(98765) });
    assert_eq!(
        parse_stat("4321 (sh) Z 1 2 3"),
        Process::Gone,
        "a zombie has closed its files"
    );
}

#[test]
fn slurm_job_names_array_tasks_like_squeue() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(slurm_job(env(&[])), None);
    assert_eq!(
        slurm_job(env(&[("SLURM_JOB_ID", "1234")])).as_deref(),
        Some("1234")
    );
    assert_eq!(
        slurm_job(env(&[
            ("SLURM_JOB_ID", "1239"),
            ("SLURM_ARRAY_JOB_ID", "1234"),
            ("SLURM_ARRAY_TASK_ID", "5"),
        ]))
        .as_deref(),
        Some("1234_5")
    );
    assert_eq!(
        slurm_job(env(&[
            ("SLURM_JOB_ID", "1239"),
            ("SLURM_ARRAY_TASK_ID", "5")
        ]))
        .as_deref(),
        Some("1239_5")
    );
}
