//! NCCL for the gradient all-reduce of a job of several GPUs: one communicator per rank, on the
//! backend's own stream, so the sum is queued between the kernels around it and the gradients
//! never leave the device.
//!
//! NCCL is loaded at run time like the rest of CUDA, so a binary built with the `cuda` feature
//! still runs on one GPU without it. cudarc panics when it cannot load the library, and looks for
//! names that runtime-only packages do not ship (`libnccl.so.2` is not among them): every way in
//! here first checks the library ([`check_library`]) and returns a one-line error instead.

use std::ffi::{CStr, c_char};
use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::{CudaSlice, CudaStream};
use cudarc::nccl::result::NcclError;
use cudarc::nccl::{Comm, Id, ReduceOp, sys};

use super::CudaError;
use crate::collective::Collective;

/// The bytes of an NCCL unique id, which rank 0 makes and every other rank receives.
pub(crate) const ID_BYTES: usize = 128;

/// Every NCCL function this module reaches, cudarc's own calls included (dropping a `Comm`
/// aborts it). cudarc resolves each on its first call and panics when one is missing, so all of
/// them are looked up before any is called.
const FUNCTIONS: [&str; 6] = [
    "ncclGetUniqueId",
    "ncclCommInitRank",
    "ncclAllReduce",
    "ncclCommAbort",
    "ncclGetErrorString",
    "ncclGetLastError",
];

/// Whether NCCL can be loaded and has every function we call: [`CudaError::NoNccl`] or
/// [`CudaError::NcclFunction`] otherwise, where cudarc would panic.
pub(crate) fn check_library() -> Result<(), CudaError> {
    // SAFETY: only probes for the shared library; nothing from it is called.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaError::NoNccl);
    }
    // SAFETY: the probe above opened a library under one of the names this loads from, so it
    // loads one rather than panicking; nothing from it is called.
    let library = unsafe { sys::culib() };
    for function in FUNCTIONS {
        // SAFETY: only looks the symbol up; the pointer is dropped without being called.
        if unsafe { library.get::<unsafe extern "C" fn()>(function.as_bytes()) }.is_err() {
            return Err(CudaError::NcclFunction(function));
        }
    }
    Ok(())
}

/// A failed NCCL call as one line: the error's name, then NCCL's account of the last error (or
/// its generic text for the name when it has none).
fn nccl_error(call: &'static str, error: NcclError) -> CudaError {
    // SAFETY: NCCL returns null or a static NUL-terminated string; `comm` is unused (NULL).
    let last = unsafe { text_of(sys::ncclGetLastError(std::ptr::null_mut())) };
    // SAFETY: as above, for any result code.
    let generic = unsafe { text_of(sys::ncclGetErrorString(error.0)) };
    CudaError::Nccl {
        call,
        name: format!("{:?}", error.0),
        detail: if last.is_empty() { generic } else { last },
    }
}

/// A C string of NCCL's on one line, trimmed; empty for a null pointer.
///
/// # Safety
/// `text` is null or points to a NUL-terminated string that outlives the call.
unsafe fn text_of(text: *const c_char) -> String {
    if text.is_null() {
        return String::new();
    }
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The bytes of `id`, to send to the other ranks.
pub(crate) fn id_bytes(id: &Id) -> [u8; ID_BYTES] {
    // `c_char` is `i8` on x86-64 and `u8` on ARM: the cast keeps the bits either way.
    id.internal().map(|byte| byte as u8)
}

/// The id whose bytes another rank sent.
pub(crate) fn id_from_bytes(bytes: [u8; ID_BYTES]) -> Id {
    Id::uninit(bytes.map(|byte| byte as c_char))
}

/// The unique id of the job's communicator: made by rank 0 (NCCL opens a socket for the others
/// to find it), then sent to every rank through `world`. Collective.
pub(crate) fn shared_id(world: &dyn Collective) -> Result<Id, CudaError> {
    let mut bytes = [0u8; ID_BYTES];
    if world.rank() == 0 {
        let id = Id::new().map_err(|e| nccl_error("ncclGetUniqueId", e))?;
        bytes = id_bytes(&id);
    }
    world.broadcast_bytes(&mut bytes, 0);
    Ok(id_from_bytes(bytes))
}

/// cudarc's communicator, which holds NCCL's handle as a raw pointer (so is not `Send`).
struct Handle(Comm);

// SAFETY: an NCCL communicator is not tied to the thread that made it; it must only not be used
// by two threads at once, which the mutex around it rules out.
unsafe impl Send for Handle {}

/// This rank's member of the job's NCCL communicator, on the backend's stream.
pub(crate) struct NcclComm {
    handle: Mutex<Handle>,
    ranks: usize,
}

impl NcclComm {
    /// Joins the communicator of the ranks of `world`, on `stream`'s device. Collective: every
    /// rank calls it, in the same order among its other collectives, and it returns once all have.
    pub(crate) fn join(
        stream: &Arc<CudaStream>,
        world: &dyn Collective,
    ) -> Result<NcclComm, CudaError> {
        check_library()?;
        let id = shared_id(world)?;
        // NCCL takes the device that is current on the calling thread.
        stream.context().bind_to_thread()?;
        let comm = Comm::from_rank(stream.clone(), world.rank(), world.size(), id)
            .map_err(|e| nccl_error("ncclCommInitRank", e))?;
        Ok(NcclComm {
            handle: Mutex::new(Handle(comm)),
            ranks: world.size(),
        })
    }

    /// How many ranks the communicator joins.
    pub(crate) fn ranks(&self) -> usize {
        self.ranks
    }

    /// Replaces `buf` on every rank by its element-wise sum over the ranks, queued on the
    /// stream. Collective.
    pub(crate) fn all_reduce_sum(&self, buf: &mut CudaSlice<f32>) -> Result<(), CudaError> {
        if buf.is_empty() {
            return Ok(());
        }
        let handle = self.handle.lock().unwrap_or_else(PoisonError::into_inner);
        handle.0.context().bind_to_thread()?;
        handle
            .0
            .all_reduce_in_place(buf, &ReduceOp::Sum)
            .map_err(|e| nccl_error("ncclAllReduce", e))?;
        Ok(())
    }
}
