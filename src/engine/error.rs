//! What a backend reports when it cannot allocate or move memory.
//!
//! The engine names the device and the size that failed; what the memory was for, and which
//! setting to lower, is added by the model (`ModelError`), which knows the batch, the sequence
//! length and the parameters.

use crate::fsutil::human_bytes;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("out of memory on {device}: could not allocate {}", human_bytes(*bytes))]
    OutOfMemory { device: String, bytes: u64 },
    /// Any other failure of the device or its driver.
    #[error("{device}: {message}")]
    Device { device: String, message: String },
    /// Host data whose length differs from the buffer it is copied into: a caller's bug, reported
    /// rather than left to corrupt memory or panic.
    #[error("{got} values given for a buffer of {expected}")]
    LengthMismatch { expected: usize, got: usize },
    /// A list of host tensors (e.g. an optimizer state) that does not have one per buffer.
    #[error("{got} tensors given for {expected} buffers")]
    TensorCount { expected: usize, got: usize },
}

impl EngineError {
    /// The bytes of `len` values of `T`, saturated at `u64::MAX`; `None` when they do not fit in
    /// a `usize` (no allocation of that size can succeed).
    pub(crate) fn bytes_of<T>(len: usize) -> (u64, Option<usize>) {
        let bytes = len as u128 * std::mem::size_of::<T>() as u128;
        (
            u64::try_from(bytes).unwrap_or(u64::MAX),
            usize::try_from(bytes).ok(),
        )
    }
}

/// `len` copies of `value` in host memory, or [`EngineError::OutOfMemory`] on `device` when the
/// allocator refuses (instead of aborting the process, as `vec!` does).
pub(crate) fn host_vec<T: Clone>(
    len: usize,
    value: T,
    device: &str,
) -> Result<Vec<T>, EngineError> {
    let (bytes, fits) = EngineError::bytes_of::<T>(len);
    let out_of_memory = || EngineError::OutOfMemory {
        device: device.to_string(),
        bytes,
    };
    fits.ok_or_else(out_of_memory)?;
    let mut values = Vec::new();
    values.try_reserve_exact(len).map_err(|_| out_of_memory())?;
    values.resize(len, value);
    Ok(values)
}

/// A copy of `data` in host memory, or [`EngineError::OutOfMemory`] on `device`.
pub(crate) fn host_copy<T: Copy>(data: &[T], device: &str) -> Result<Vec<T>, EngineError> {
    let mut values = Vec::new();
    values
        .try_reserve_exact(data.len())
        .map_err(|_| EngineError::OutOfMemory {
            device: device.to_string(),
            bytes: EngineError::bytes_of::<T>(data.len()).0,
        })?;
    values.extend_from_slice(data);
    Ok(values)
}
