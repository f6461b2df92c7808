//! The MPI collective: the ranks `mpirun` or `srun` started, through the system's MPI (Open MPI
//! or MPICH, via the `mpi` crate). Only the main thread calls MPI (the thread level is
//! "funneled"); rayon's workers never do.

use std::sync::Mutex;
use std::time::Duration;

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::{Collective, CollectiveError};

/// MPI's handle on the process, dropped (MPI_Finalize) by [`finalize`] once a run succeeded.
static UNIVERSE: Mutex<Option<Universe>> = Mutex::new(None);

/// MPI counts elements in an `i32`: longer buffers go in pieces of this many.
const MAX_PIECE: usize = 1 << 30;

pub struct MpiWorld {
    rank: usize,
    size: usize,
    local_rank: usize,
    library: String,
    /// The receive buffer of the float sums (the `mpi` crate has no in-place reduction), kept
    /// between steps so a step allocates nothing.
    scratch: Mutex<Vec<f32>>,
}

impl MpiWorld {
    pub fn start() -> Result<MpiWorld, CollectiveError> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or(CollectiveError::MpiInit)?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let local_rank = [
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "MPI_LOCALRANKID",
            "SLURM_LOCALID",
        ]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
        .unwrap_or(0);
        let library = mpi::environment::library_version()
            .ok()
            .and_then(|text| text.lines().next().map(|l| l.trim().to_string()))
            .map(|line| line.split(',').next().unwrap_or(&line).to_string())
            .unwrap_or_else(|| "MPI".to_string());
        *UNIVERSE.lock().unwrap_or_else(|e| e.into_inner()) = Some(universe);
        Ok(MpiWorld {
            rank,
            size,
            local_rank,
            library,
            scratch: Mutex::new(Vec::new()),
        })
    }
}

fn comm() -> SimpleCommunicator {
    SimpleCommunicator::world()
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn all_reduce_sum_f32(&self, values: &mut [f32]) {
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        for piece in values.chunks_mut(MAX_PIECE) {
            // Overwritten whole by the sum: resized only, never cleared.
            scratch.resize(piece.len(), 0.0);
            comm().all_reduce_into(&piece[..], &mut scratch[..], SystemOperation::sum());
            piece.copy_from_slice(&scratch);
        }
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) {
        for piece in values.chunks_mut(MAX_PIECE) {
            let mut sum = vec![0.0f64; piece.len()];
            comm().all_reduce_into(&piece[..], &mut sum[..], SystemOperation::sum());
            piece.copy_from_slice(&sum);
        }
    }

    fn broadcast_bytes(&self, bytes: &mut [u8], root: usize) {
        let comm = comm();
        let root = comm.process_at_rank(root as i32);
        for piece in bytes.chunks_mut(MAX_PIECE) {
            root.broadcast_into(piece);
        }
    }

    fn barrier(&self) {
        // MPI's blocking barrier spins on a core; a rank waiting out another's long stage
        // polls a non-blocking one and sleeps in between instead.
        let mut request = comm().immediate_barrier();
        let mut pause = Duration::from_micros(50);
        loop {
            match request.test() {
                Ok(_) => return,
                Err(pending) => request = pending,
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    fn describe(&self) -> String {
        format!("MPI ({})", self.library)
    }
}

/// Stops every rank of the job now, with exit code `code`.
pub fn abort(code: i32) -> ! {
    comm().abort(code)
}

/// Leaves MPI together with the other ranks (after a successful run).
pub fn finalize() {
    drop(UNIVERSE.lock().unwrap_or_else(|e| e.into_inner()).take());
}
