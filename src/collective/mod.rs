//! Data parallelism's one seam: the ranks of a job and the few collective operations training
//! needs (sum over ranks, broadcast from one rank, barrier).
//!
//! We never move bytes ourselves: a job started by `mpirun` or `srun` talks through the MPI the
//! user's cluster already runs (feature `mpi`), and GPU gradients go through NCCL (feature
//! `cuda`, see `engine::cuda::nccl`). A process started on its own is the one rank of
//! [`Single`], which costs nothing and needs no library.
//!
//! The world is process-global because MPI is: it is started once, before any stage runs
//! ([`init_from_launcher`]), and ended once ([`finish`]). On any failure of a job of several
//! ranks, [`finish`] (and the panic hook [`init_from_launcher`] installs) aborts the whole job
//! instead of returning: a rank that returns while its peers wait in a collective would leave
//! them waiting forever.

#[cfg(feature = "mpi")]
mod mpi;

use std::sync::OnceLock;

/// The ranks of a job and their collective operations. Every rank must make the same calls in
/// the same order: a collective returns only once every rank has entered it.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..size()`; rank 0 alone writes results.
    fn rank(&self) -> usize;
    /// How many ranks the job has.
    fn size(&self) -> usize;
    /// This process's rank among those of its machine (which GPU it takes).
    fn local_rank(&self) -> usize;
    /// Replaces `values` on every rank by their element-wise sum over the ranks.
    fn all_reduce_sum_f32(&self, values: &mut [f32]);
    /// [`Collective::all_reduce_sum_f32`] in double precision (losses, counts, timings).
    fn all_reduce_sum_f64(&self, values: &mut [f64]);
    /// Replaces `bytes` on every rank by those of rank `root`.
    fn broadcast_bytes(&self, bytes: &mut [u8], root: usize);
    /// Returns once every rank has called it. Waits without spinning, so a rank that waits for
    /// another's long stage leaves the cores to it.
    fn barrier(&self);
    /// What carries the job, for the first line of a run: "MPI (Open MPI v4.1.4)".
    fn describe(&self) -> String;
}

/// A process on its own: one rank, and every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn all_reduce_sum_f32(&self, _values: &mut [f32]) {}
    fn all_reduce_sum_f64(&self, _values: &mut [f64]) {}
    fn broadcast_bytes(&self, _bytes: &mut [u8], _root: usize) {}
    fn barrier(&self) {}
    fn describe(&self) -> String {
        "one process".to_string()
    }
}

impl dyn Collective + '_ {
    /// Whether this rank writes results (checkpoints, metrics, artifacts, output).
    pub fn leads(&self) -> bool {
        self.rank() == 0
    }

    /// `value` as rank 0 has it, on every rank: decisions that depend on a clock or on the
    /// file system are taken once, so that every rank takes the same branch.
    pub fn agree_f64(&self, value: f64) -> f64 {
        let mut bytes = value.to_le_bytes();
        self.broadcast_bytes(&mut bytes, 0);
        f64::from_le_bytes(bytes)
    }

    /// `value` as rank 0 has it, on every rank.
    pub fn agree_u64(&self, value: u64) -> u64 {
        let mut bytes = value.to_le_bytes();
        self.broadcast_bytes(&mut bytes, 0);
        u64::from_le_bytes(bytes)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error(
        "{launcher} started this process as one of {size} ranks, but this tinyllm was built \
         without MPI: rebuild it with `cargo build --release --features mpi` (Open MPI or MPICH \
         development files and libclang needed), or run it without {launcher}"
    )]
    NoMpi { launcher: &'static str, size: usize },
    #[error("{launcher} says this job has {size} ranks, but MPI started {found}")]
    SizeMismatch {
        launcher: &'static str,
        size: usize,
        found: usize,
    },
    #[error("MPI could not be started (it was already, or MPI_Init failed)")]
    MpiInit,
}

/// What the launcher that started this process says about the job, read from the environment
/// variables `mpirun` (Open MPI, MPICH, Intel MPI) and `srun` set. Only a hint: MPI's own
/// answer after it starts is the truth, and the two are checked against each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchHint {
    pub launcher: &'static str,
    pub rank: usize,
    pub size: usize,
}

impl LaunchHint {
    /// The launcher's hint, from `var` (the environment, or a test's map); `None` when this
    /// process was started on its own (or as the only rank).
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Option<LaunchHint> {
        // Inside an `sbatch` script SLURM_NTASKS is set for the one batch shell; only `srun`
        // sets the step's task count, so that is the variable that means "one of several".
        const SOURCES: [(&str, &str, &str); 3] = [
            ("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
            ("mpirun", "PMI_RANK", "PMI_SIZE"),
            ("srun", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"),
        ];
        SOURCES.iter().find_map(|&(launcher, rank, size)| {
            let rank = var(rank)?.trim().parse().ok()?;
            let size: usize = var(size)?.trim().parse().ok()?;
            (size > 1).then_some(LaunchHint {
                launcher,
                rank,
                size,
            })
        })
    }
}

static WORLD: OnceLock<Box<dyn Collective>> = OnceLock::new();

/// The job this process belongs to: [`Single`] unless [`init_from_launcher`] found several ranks.
pub fn world() -> &'static dyn Collective {
    WORLD.get().map_or(&Single, |world| world.as_ref())
}

/// Joins the job the launcher started, if any: with `mpirun -np 4` or `srun -n 4`, starts MPI
/// and checks that it agrees with the launcher; started on its own, does nothing (no MPI is
/// touched). Call once, before anything else runs.
pub fn init_from_launcher() -> Result<&'static dyn Collective, CollectiveError> {
    let Some(hint) = LaunchHint::read(|name| std::env::var(name).ok()) else {
        return Ok(world());
    };
    join(hint)
}

#[cfg(feature = "mpi")]
fn join(hint: LaunchHint) -> Result<&'static dyn Collective, CollectiveError> {
    let mpi = mpi::MpiWorld::start()?;
    if mpi.size() != hint.size {
        return Err(CollectiveError::SizeMismatch {
            launcher: hint.launcher,
            size: hint.size,
            found: mpi.size(),
        });
    }
    if WORLD.set(Box::new(mpi)).is_err() {
        return Err(CollectiveError::MpiInit);
    }
    abort_on_panic();
    Ok(world())
}

#[cfg(not(feature = "mpi"))]
fn join(hint: LaunchHint) -> Result<&'static dyn Collective, CollectiveError> {
    Err(CollectiveError::NoMpi {
        launcher: hint.launcher,
        size: hint.size,
    })
}

/// A panic on one rank ends the job: the default message first, then an abort of every rank
/// (unwinding would wait forever in MPI's finalisation for peers stuck in a collective).
#[cfg(feature = "mpi")]
fn abort_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        mpi::abort(101);
    }));
}

/// Ends this process's part in the job. On success, the ranks leave together (MPI's
/// finalisation); on failure of a job of several ranks, every rank is stopped now, with the exit
/// code `code` (this rank has already printed why): a rank that merely exits would leave the
/// others waiting in their next collective.
pub fn finish(success: bool, code: i32) {
    #[cfg(feature = "mpi")]
    if let Some(world) = WORLD.get() {
        if success {
            mpi::finalize();
        } else if world.size() > 1 {
            mpi::abort(code);
        }
    }
    let _ = (success, code);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn hint(vars: &[(&str, &str)]) -> Option<LaunchHint> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LaunchHint::read(|name| map.get(name).cloned())
    }

    #[test]
    fn the_launcher_is_read_from_its_variables() {
        assert_eq!(hint(&[]), None);
        let open_mpi = hint(&[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "4")]);
        assert_eq!(
            open_mpi,
            Some(LaunchHint {
                launcher: "mpirun",
                rank: 1,
                size: 4
            })
        );
        let mpich = hint(&[("PMI_RANK", "0"), ("PMI_SIZE", "2")]).unwrap();
        assert_eq!((mpich.rank, mpich.size), (0, 2));
        let srun = hint(&[("SLURM_PROCID", "3"), ("SLURM_STEP_NUM_TASKS", "8")]).unwrap();
        assert_eq!((srun.launcher, srun.rank, srun.size), ("srun", 3, 8));
        // An sbatch script's own shell is not one of several ranks; one rank is not a job.
        assert_eq!(hint(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "8")]), None);
        assert_eq!(
            hint(&[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "1")]),
            None
        );
        assert_eq!(hint(&[("PMI_RANK", "x"), ("PMI_SIZE", "2")]), None);
    }

    #[test]
    fn a_single_process_is_rank_0_of_1_and_leads() {
        let world: &dyn Collective = &Single;
        assert_eq!((world.rank(), world.size()), (0, 1));
        assert!(world.leads());
        let mut values = [1.5f32, -2.0];
        world.all_reduce_sum_f32(&mut values);
        assert_eq!(values, [1.5, -2.0]);
        assert_eq!(world.agree_f64(3.25), 3.25);
        assert_eq!(world.agree_u64(7), 7);
    }

    #[cfg(not(feature = "mpi"))]
    #[test]
    fn a_launched_rank_without_mpi_is_one_clear_error() {
        let err = join(LaunchHint {
            launcher: "mpirun",
            rank: 1,
            size: 2,
        })
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("--features mpi"), "{err}");
        assert!(!err.contains('\n'));
    }
}
