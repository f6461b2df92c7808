//! The CUDA backend (cargo feature `cuda`): the same [`Backend`] ops as the CPU's, on an NVIDIA
//! GPU through `cudarc`. Matmuls go to cuBLAS; every other op is a kernel of `kernels.cu`, which
//! is embedded in the binary and compiled by NVRTC once per process and GPU architecture.
//!
//! The CUDA libraries are loaded when a [`Cuda`] is made, not linked: a binary built with the
//! feature still runs its CPU path on a machine without a driver, and asking it for CUDA there is
//! a one-line error. NCCL is loaded only when a job of several GPUs joins it (`nccl.rs`), for the
//! gradient all-reduce. Buffers are `f32`; shapes follow the CPU backend (`src/engine/cpu/`), and
//! `tests.rs` checks each op against it. bf16 buffers ([`Backend::Half`]) are `u16`s holding
//! the bits, rounded by a kernel exactly as the CPU's `half` crate rounds.
//!
//! Longer than most files on purpose: it is one `impl Backend`, each op a short kernel launch
//! through the typed methods of `launch.rs`, whose table `tests.rs` checks against the kernels.
//! The kernels are compiled to a cubin for the device's own architecture, so the driver loads
//! them without a PTX JIT.

#[cfg(test)]
mod cubin;
mod gemm;
mod launch;
mod nccl;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex, PoisonError};

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::sys::{CUdevice_attribute_enum, CUresult};
use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, DriverError,
};
use cudarc::nvrtc::result::NvrtcError;
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

pub use launch::KERNEL_NAMES;
use launch::{Kernels, column_tiles, elementwise, embedding_backward_blocks, partial_blocks};

use super::{
    AdamW, AttentionKeptOf, AttentionShape, Backend, EngineError, Input, InputOf, Muon,
    NEWTON_SCHULZ, Saved, SavedOf, Write, all_reduce_sum_through_host, host_vec,
};
use crate::collective::Collective;
use nccl::NcclComm;

/// The kernels' CUDA C source.
pub const KERNELS_CU: &str = include_str!("kernels.cu");

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error(
        "CUDA was asked for, but no NVIDIA driver was found (libcuda.so); use --device cpu, or install the driver"
    )]
    NoDriver,
    #[error(
        "NVRTC (libnvrtc.so) was not found: install the CUDA toolkit, or `pip install nvidia-cuda-nvrtc` and add its nvidia/cu13/lib folder to LD_LIBRARY_PATH"
    )]
    NoNvrtc,
    #[error("cuBLAS (libcublas.so) was not found: install the CUDA toolkit's cuBLAS")]
    NoCublas,
    #[error("there is no CUDA device {ordinal}: this machine has {count}")]
    NoDevice { ordinal: usize, count: i32 },
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("cuBLAS: {0}")]
    Blas(#[from] cudarc::cublas::result::CublasError),
    #[error("NVRTC could not compile the kernels:\n{0}")]
    Compile(String),
    #[error("NVRTC: {0}")]
    Nvrtc(#[from] NvrtcError),
    #[error(
        "NVRTC {nvrtc} cannot compile for this GPU's architecture, sm_{arch}; it compiles for {supported}"
    )]
    UnsupportedArch {
        arch: i32,
        nvrtc: String,
        supported: String,
    },
    #[error(
        "the CUDA driver (for CUDA {driver}) could not load the kernels NVRTC {nvrtc} compiled ({error:?}): they need a driver supporting CUDA 13, R580 or newer"
    )]
    DriverTooOld {
        nvrtc: String,
        driver: String,
        error: CUresult,
    },
    #[error(
        "NCCL could not be loaded (cudarc looks for libnccl.so, libnccl.so.13, libnccl.so.12…, not libnccl.so.2): install libnccl-dev, or put a link libnccl.so → libnccl.so.2 in a folder on LD_LIBRARY_PATH"
    )]
    NoNccl,
    #[error("the NCCL library found has no function {0}: install NCCL 2.13 or newer")]
    NcclFunction(&'static str),
    #[error("NCCL {call} failed ({name}): {detail}")]
    Nccl {
        call: &'static str,
        name: String,
        detail: String,
    },
    #[error("the NCCL communicator joins {communicator} ranks, but the job has {world}")]
    NcclRanks { communicator: usize, world: usize },
}

/// Compiles CUDA C `source` with NVRTC into PTX; a failure carries NVRTC's log.
pub fn compile(source: &str) -> Result<Ptx, CudaError> {
    // SAFETY: only probes for the shared library; nothing from it is called.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NoNvrtc);
    }
    let options = CompileOptions {
        name: Some("kernels.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source, options).map_err(|e| match e {
        CompileError::CompileError { log, .. } => {
            CudaError::Compile(log.to_string_lossy().trim_end().to_string())
        }
        other => CudaError::Compile(other.to_string()),
    })
}

/// NVRTC's version, as `major.minor`.
fn nvrtc_version() -> Result<String, CudaError> {
    // SAFETY: only probes for the shared library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NoNvrtc);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: writes the two ints.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }.result()?;
    Ok(format!("{major}.{minor}"))
}

/// The architectures NVRTC compiles for, as compute capabilities like 90.
fn nvrtc_archs() -> Result<Vec<i32>, CudaError> {
    let mut count = 0;
    // SAFETY: writes one int, then `count` ints into a buffer of that many.
    unsafe { cudarc::nvrtc::sys::nvrtcGetNumSupportedArchs(&mut count) }.result()?;
    let mut archs = vec![0; usize::try_from(count).unwrap_or(0)];
    unsafe { cudarc::nvrtc::sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }.result()?;
    Ok(archs)
}

/// Compiles CUDA C `source` with NVRTC into a cubin for architecture `sm_{arch}` (90 for a
/// Hopper), which a driver loads without a PTX JIT; a failure carries NVRTC's log.
pub fn compile_cubin(source: &str, arch: i32) -> Result<Vec<u8>, CudaError> {
    use cudarc::nvrtc::{result, sys};
    // SAFETY: only probes for the shared library; nothing from it is called.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaError::NoNvrtc);
    }
    let archs = nvrtc_archs()?;
    if !archs.contains(&arch) {
        let supported: Vec<String> = archs.iter().map(|a| format!("sm_{a}")).collect();
        return Err(CudaError::UnsupportedArch {
            arch,
            nvrtc: nvrtc_version()?,
            supported: supported.join(", "),
        });
    }
    let source = CString::new(source)
        .map_err(|_| CudaError::Compile("the source holds a NUL byte".into()))?;
    let program = result::create_program(&source, Some(c"kernels.cu"))?;
    let options = [format!("--gpu-architecture=sm_{arch}")];
    // SAFETY: `program` was created above and is destroyed only at the end.
    let cubin = match unsafe { result::compile_program(program, &options) } {
        Ok(()) => unsafe { cubin_of(program) },
        Err(_) => match unsafe { result::get_program_log(program) } {
            Ok(log) => {
                let log: Vec<u8> = log.iter().map(|&c| c as u8).collect();
                let log = String::from_utf8_lossy(&log);
                let log = log.trim_end_matches('\0').trim_end();
                Err(CudaError::Compile(log.to_string()))
            }
            Err(e) => Err(e.into()),
        },
    };
    // SAFETY: as above; nothing uses `program` after this.
    unsafe { result::destroy_program(program) }?;
    cubin
}

/// The cubin of a compiled NVRTC program.
///
/// # Safety
/// `program` must be a live, successfully compiled NVRTC program.
unsafe fn cubin_of(program: cudarc::nvrtc::sys::nvrtcProgram) -> Result<Vec<u8>, CudaError> {
    use cudarc::nvrtc::sys;
    let mut size = 0;
    unsafe { sys::nvrtcGetCUBINSize(program, &mut size) }.result()?;
    let mut cubin = vec![0u8; size];
    unsafe { sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr().cast()) }.result()?;
    Ok(cubin)
}

/// The cubin of [`KERNELS_CU`] for `sm_{arch}`, compiled once per architecture per process.
fn kernels_cubin(arch: i32) -> Result<Arc<[u8]>, CudaError> {
    static CUBINS: Mutex<BTreeMap<i32, Arc<[u8]>>> = Mutex::new(BTreeMap::new());
    // Held while compiling, so that two devices of one architecture compile once.
    let mut cubins = CUBINS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(cubin) = cubins.get(&arch) {
        return Ok(cubin.clone());
    }
    let cubin: Arc<[u8]> = compile_cubin(KERNELS_CU, arch)?.into();
    cubins.insert(arch, cubin.clone());
    Ok(cubin)
}

/// A failure to load the kernels' cubin: a driver too old for the NVRTC that compiled it says
/// so by one of these errors, which deserve a message saying what to install.
fn load_error(error: DriverError) -> CudaError {
    use CUresult::{
        CUDA_ERROR_INVALID_IMAGE, CUDA_ERROR_NO_BINARY_FOR_GPU, CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
    };
    if !matches!(
        error.0,
        CUDA_ERROR_UNSUPPORTED_PTX_VERSION
            | CUDA_ERROR_INVALID_IMAGE
            | CUDA_ERROR_NO_BINARY_FOR_GPU
    ) {
        return CudaError::Driver(error);
    }
    let mut version = 0;
    // SAFETY: probes for the library, then writes one int.
    let driver = if !unsafe { cudarc::driver::sys::is_culib_present() } {
        "unknown: no driver".to_string()
    } else {
        match unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }.result() {
            Ok(()) => format!("{}.{}", version / 1000, version % 1000 / 10),
            Err(e) => format!("unknown: {e}"),
        }
    };
    let nvrtc = nvrtc_version().unwrap_or_else(|e| format!("unknown: {e}"));
    CudaError::DriverTooOld {
        nvrtc,
        driver,
        error: error.0,
    }
}

/// An NVIDIA GPU as a [`Backend`].
pub struct Cuda {
    /// This rank's NCCL communicator, once [`Cuda::join_nccl`] made it: the gradient all-reduce
    /// then stays on the device. First, so that it is dropped before the stream it runs on.
    nccl: Option<NcclComm>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Kernels,
    name: String,
    /// `cuda:N (name)`, as errors name the device.
    label: String,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda").field("name", &self.name).finish()
    }
}

impl Cuda {
    /// Opens device `ordinal`, compiles the kernels for its architecture (once per process) and
    /// loads them.
    pub fn new(ordinal: usize) -> Result<Cuda, CudaError> {
        // SAFETY: these only probe for the shared libraries.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(CudaError::NoCublas);
        }
        let count = CudaContext::device_count()?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        let context = CudaContext::new(ordinal)?;
        keep_freed_memory_pooled(&context)?;
        // A stream of our own: the legacy default stream synchronises with every other stream
        // of the process and cannot be captured into a CUDA graph.
        let stream = context.new_stream()?;
        // SAFETY: every buffer of this backend is allocated, used and freed on this one stream
        // (cuBLAS included), so the stream's order is all the synchronisation they need;
        // cudarc's cross-stream events would only add a record per argument of every launch.
        unsafe { context.disable_event_tracking() };
        let major = context
            .attribute(CUdevice_attribute_enum::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = context
            .attribute(CUdevice_attribute_enum::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let cubin = kernels_cubin(major * 10 + minor)?;
        let module = context
            .load_module(Ptx::from_binary(cubin.to_vec()))
            .map_err(load_error)?;
        // A lazily loaded module reports an image the driver cannot run here, at the first function.
        let kernels = Kernels::load(&module, stream.clone()).map_err(load_error)?;
        let blas = CudaBlas::new(stream.clone())?;
        let name = context.name()?;
        Ok(Cuda {
            nccl: None,
            stream,
            blas,
            kernels,
            label: format!("cuda:{ordinal} ({name})"),
            name,
        })
    }

    /// The device's name, as the driver reports it.
    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// Joins the NCCL communicator of the ranks of `world`, which [`Backend::all_reduce_sum`]
    /// then uses: rank 0 makes NCCL's unique id and `world` sends it to the others. Made even for
    /// a world of one rank (tests: one GPU cannot hold two ranks); [`Backend::join_collective`]
    /// makes it only for several. Collective: every rank calls it, in the same order among its
    /// other collectives, and it returns once all have. A second call replaces the communicator.
    pub fn join_nccl(&mut self, world: &dyn Collective) -> Result<(), CudaError> {
        self.nccl = Some(NcclComm::join(&self.stream, world)?);
        Ok(())
    }

    /// A CUDA error of this device as an [`EngineError`] naming it.
    fn device_error(&self, error: CudaError) -> EngineError {
        EngineError::Device {
            device: self.label.clone(),
            message: error.to_string(),
        }
    }

    /// The nominal dense bf16 tensor-core peak of the device in GFLOP/s, for the GPUs whose
    /// data sheets we know (None otherwise): what MFU is usually measured against.
    pub fn bf16_peak_gflops(&self) -> Option<f64> {
        let name = self.name.to_ascii_uppercase();
        let table: [(&str, f64); 6] = [
            ("H200", 989_000.0),
            ("H100", 989_000.0),
            ("A100", 312_000.0),
            ("L40S", 362_000.0),
            ("A10G", 70_000.0),
            ("RTX 4090", 165_000.0),
        ];
        table
            .iter()
            .find(|(model, _)| name.contains(model))
            .map(|&(_, peak)| peak)
    }

    /// A driver error of an allocation or copy of `bytes` as an [`EngineError`]: out of memory
    /// when the driver says so, a device error otherwise.
    fn engine_error(&self, error: DriverError, bytes: u64) -> EngineError {
        if error.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            EngineError::OutOfMemory {
                device: self.label.clone(),
                bytes,
            }
        } else {
            EngineError::Device {
                device: self.label.clone(),
                message: error.to_string(),
            }
        }
    }

    /// `len` zeros of `V` on the device. A size whose byte count overflows is out of memory
    /// before the driver is asked (cudarc would multiply without a check).
    fn alloc_zeros<V>(&self, len: usize) -> Result<CudaSlice<V>, EngineError>
    where
        V: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits,
    {
        let (bytes, fits) = EngineError::bytes_of::<V>(len);
        if fits.is_none() {
            return Err(EngineError::OutOfMemory {
                device: self.label.clone(),
                bytes,
            });
        }
        self.stream
            .alloc_zeros(len)
            .map_err(|e| self.engine_error(e, bytes))
    }

    /// `len` uninitialised `V`s on the device, for a buffer the very next op overwrites whole
    /// (zeroing it first would be a pass over memory for nothing).
    fn alloc_for_overwrite<V: cudarc::driver::DeviceRepr>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<V>, EngineError> {
        let (bytes, fits) = EngineError::bytes_of::<V>(len);
        if fits.is_none() {
            return Err(EngineError::OutOfMemory {
                device: self.label.clone(),
                bytes,
            });
        }
        // SAFETY: every caller overwrites all `len` elements, on this stream, before any read.
        unsafe { self.stream.alloc(len) }.map_err(|e| self.engine_error(e, bytes))
    }

    /// Copies `data` into `dst`, of the same length.
    fn copy_in<V: cudarc::driver::DeviceRepr>(
        &self,
        dst: &mut CudaSlice<V>,
        data: &[V],
    ) -> Result<(), EngineError> {
        if dst.len() != data.len() {
            return Err(EngineError::LengthMismatch {
                expected: dst.len(),
                got: data.len(),
            });
        }
        self.stream
            .memcpy_htod(data, dst)
            .map_err(|e| self.engine_error(e, EngineError::bytes_of::<V>(data.len()).0))
    }

    fn gemm(
        &self,
        config: GemmConfig<f32>,
        a: &impl DevicePtr<f32>,
        b: &impl DevicePtr<f32>,
        c: &mut impl DevicePtrMut<f32>,
    ) {
        // SAFETY: the callers derive m, n, k and the leading dimensions from the buffers' shapes
        // (the Backend contract), so cuBLAS stays inside them.
        unsafe { self.blas.gemm(config, a, b, c) }.expect("cuBLAS sgemm failed");
    }

    fn gemm_batched(
        &self,
        config: StridedBatchedConfig<f32>,
        a: &impl DevicePtr<f32>,
        b: &impl DevicePtr<f32>,
        c: &mut impl DevicePtrMut<f32>,
    ) {
        // SAFETY: as for `gemm`; the strides and batch count come from the same shapes.
        unsafe { self.blas.gemm_strided_batched(config, a, b, c) }
            .expect("cuBLAS strided-batched sgemm failed");
    }

    /// `gemm` on bf16 operands (their bits) into an f32 `c`, on the tensor cores: cuBLAS GemmEx
    /// with f32 compute, so products are exact and sums are f32, as on the CPU.
    fn gemm_bf16(
        &self,
        config: GemmConfig<f32>,
        a: &CudaSlice<u16>,
        b: &CudaSlice<u16>,
        c: &mut CudaSlice<f32>,
    ) {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
        let (a, _a_in_use) = a.device_ptr(&self.stream);
        let (b, _b_in_use) = b.device_ptr(&self.stream);
        let (c, _c_in_use) = c.device_ptr_mut(&self.stream);
        // SAFETY: as for `gemm`: the shapes come from the buffers'; the pointers stay valid while
        // their guards live, to the end of this call, and the stream orders every use of them.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                config.transa,
                config.transb,
                config.m,
                config.n,
                config.k,
                (&config.alpha) as *const f32 as *const _,
                a as *const _,
                cudaDataType::CUDA_R_16BF,
                config.lda,
                b as *const _,
                cudaDataType::CUDA_R_16BF,
                config.ldb,
                (&config.beta) as *const f32 as *const _,
                c as *mut _,
                cudaDataType::CUDA_R_32F,
                config.ldc,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .expect("cuBLAS bf16 GemmEx failed");
    }
}

impl Backend for Cuda {
    type Float = f32;
    type Buf = CudaSlice<f32>;
    type Tokens = CudaSlice<u32>;
    /// bf16 bits: `half::bf16` is no `DeviceRepr`, and cudarc's own bf16 needs its `f16` feature.
    type Half = CudaSlice<u16>;

    fn synchronize(&self) {
        self.stream
            .synchronize()
            .expect("CUDA stream synchronize failed");
    }

    fn zeros(&self, len: usize) -> Result<CudaSlice<f32>, EngineError> {
        self.alloc_zeros(len)
    }
    fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>, EngineError> {
        let mut buf = self.alloc_for_overwrite(data.len())?;
        self.copy_in(&mut buf, data)?;
        Ok(buf)
    }
    fn download(&self, buf: &CudaSlice<f32>) -> Result<Vec<f32>, EngineError> {
        // The host copy is allocated fallibly too: a model that fits the GPU may not fit the host.
        let mut host = host_vec(buf.len(), 0.0f32, "cpu")?;
        self.stream
            .memcpy_dtoh(buf, &mut host)
            .map_err(|e| self.engine_error(e, EngineError::bytes_of::<f32>(buf.len()).0))?;
        Ok(host)
    }
    fn upload_into(&self, buf: &mut CudaSlice<f32>, data: &[f32]) -> Result<(), EngineError> {
        self.copy_in(buf, data)
    }
    fn upload_tokens(&self, tokens: &mut CudaSlice<u32>, data: &[u32]) -> Result<(), EngineError> {
        self.copy_in(tokens, data)
    }
    fn tokens(&self, len: usize) -> Result<CudaSlice<u32>, EngineError> {
        self.alloc_zeros(len)
    }
    fn len(&self, buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }
    fn fill_zero(&self, buf: &mut CudaSlice<f32>) {
        self.stream.memset_zeros(buf).expect("CUDA memset failed");
    }
    fn copy(&self, dst: &mut CudaSlice<f32>, src: &CudaSlice<f32>) {
        assert_eq!(dst.len(), src.len());
        self.stream.memcpy_dtod(src, dst).expect("CUDA copy failed");
    }

    fn read_at(&self, dst: &mut CudaSlice<f32>, src: &CudaSlice<f32>, offset: usize) {
        let view = src.slice(offset..offset + dst.len());
        self.stream
            .memcpy_dtod(&view, dst)
            .expect("CUDA copy failed");
    }

    fn add_at(&self, dst: &mut CudaSlice<f32>, offset: usize, src: &CudaSlice<f32>) {
        let n = src.len();
        let mut view = dst.slice_mut(offset..offset + n);
        self.kernels
            .add_assign(elementwise(n), &mut view, src, n as i64);
    }

    /// Through NCCL on the device once [`Cuda::join_nccl`] made a communicator (one call over
    /// the whole buffer); through host memory otherwise.
    fn all_reduce_sum(
        &self,
        buf: &mut CudaSlice<f32>,
        world: &dyn Collective,
    ) -> Result<(), EngineError> {
        let Some(nccl) = &self.nccl else {
            return all_reduce_sum_through_host(self, buf, world);
        };
        if nccl.ranks() != world.size() {
            return Err(self.device_error(CudaError::NcclRanks {
                communicator: nccl.ranks(),
                world: world.size(),
            }));
        }
        nccl.all_reduce_sum(buf).map_err(|e| self.device_error(e))
    }

    /// Joins NCCL when `world` has several ranks (see [`Cuda::join_nccl`]). Collective.
    fn join_collective(&mut self, world: &dyn Collective) -> Result<(), EngineError> {
        if world.size() > 1 {
            self.join_nccl(world).map_err(|e| self.device_error(e))?;
        }
        Ok(())
    }

    fn embedding_forward(
        &self,
        out: &mut CudaSlice<f32>,
        tokens: &CudaSlice<u32>,
        table: &CudaSlice<f32>,
        c: usize,
    ) {
        let rows = tokens.len().min(out.len() / c);
        let (vocab, c) = ((table.len() / c) as i32, c as i32);
        self.kernels
            .embedding_forward(rows, out, tokens, table, c, vocab);
    }
    fn embedding_backward(
        &self,
        dtable: &mut CudaSlice<f32>,
        tokens: &CudaSlice<u32>,
        dout: &CudaSlice<f32>,
        c: usize,
    ) {
        let rows = tokens.len().min(dout.len() / c) as i32;
        let (vocab, width) = ((dtable.len() / c) as i32, c as i32);
        self.kernels.embedding_backward(
            embedding_backward_blocks(c),
            dtable,
            tokens,
            dout,
            rows,
            width,
            vocab,
        );
    }

    fn rmsnorm_forward(
        &self,
        out: &mut CudaSlice<f32>,
        rstd: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        c: usize,
        eps: f64,
    ) {
        let rows = x.len() / c;
        let (c, eps) = (c as i32, eps as f32);
        self.kernels.rmsnorm_forward(rows, out, rstd, x, w, c, eps);
    }
    fn rmsnorm_backward(
        &self,
        dx: &mut CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        rstd: &CudaSlice<f32>,
        c: usize,
    ) {
        let rows = x.len() / c;
        let (rows_i, width) = (rows as i32, c as i32);
        self.kernels
            .rmsnorm_backward_dx(rows, dx, dout, x, w, rstd, width);
        self.kernels
            .rmsnorm_backward_dw(column_tiles(c), dw, dout, x, rstd, rows_i, width);
    }

    // The cuBLAS calls and their operands' order: `gemm.rs`.
    fn matmul_forward(
        &self,
        out: &mut CudaSlice<f32>,
        inp: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        ic: usize,
        oc: usize,
    ) {
        let n = inp.len() / ic;
        self.gemm(gemm::matmul_forward(ic, oc, n), w, inp, out);
    }
    fn matmul_backward(
        &self,
        dinp: &mut CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        inp: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        ic: usize,
        oc: usize,
        dinp_write: Write,
    ) {
        let n = inp.len() / ic;
        let accumulate = dinp_write == Write::Accumulate;
        let config = gemm::matmul_backward_input(ic, oc, n, accumulate);
        self.gemm(config, w, dout, dinp);
        self.gemm(gemm::matmul_backward_weight(ic, oc, n), inp, dout, dw);
    }

    fn half_zeros(&self, len: usize) -> Result<CudaSlice<u16>, EngineError> {
        self.alloc_zeros(len)
    }
    fn half_len(&self, buf: &CudaSlice<u16>) -> usize {
        buf.len()
    }
    fn round_to_half(&self, dst: &mut CudaSlice<u16>, src: &CudaSlice<f32>) {
        assert_eq!(dst.len(), src.len());
        let n = src.len() as i64;
        self.kernels
            .round_to_bf16(elementwise(src.len()), &mut *dst, src, n);
    }
    fn download_half(&self, buf: &CudaSlice<u16>) -> Result<Vec<f32>, EngineError> {
        let mut bits = host_vec(buf.len(), 0u16, "cpu")?;
        self.stream
            .memcpy_dtoh(buf, &mut bits)
            .map_err(|e| self.engine_error(e, EngineError::bytes_of::<u16>(buf.len()).0))?;
        let mut host = host_vec(buf.len(), 0.0f32, "cpu")?;
        for (h, &b) in host.iter_mut().zip(&bits) {
            *h = half::bf16::from_bits(b).to_f32();
        }
        Ok(host)
    }
    // bf16 operands on the tensor cores (cuBLAS GemmEx, f32 accumulation and output): the
    // weight is the bf16 copy the optimizer refreshes, the activation operand is rounded to bf16
    // here, as the CPU rounds it while packing. A product of two bf16 values is exact in f32, so
    // this is the CPU's bf16 product summed in f32, in another order.
    fn matmul_forward_half(
        &self,
        out: &mut CudaSlice<f32>,
        inp: &CudaSlice<f32>,
        w: &CudaSlice<u16>,
        ic: usize,
        oc: usize,
    ) {
        let n = inp.len() / ic;
        let inp = self.rounded_to_bf16(inp);
        self.gemm_bf16(gemm::matmul_forward(ic, oc, n), w, &inp, out);
    }
    fn matmul_backward_half(
        &self,
        dinp: &mut CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        inp: &CudaSlice<f32>,
        w: &CudaSlice<u16>,
        ic: usize,
        oc: usize,
        dinp_write: Write,
    ) {
        let n = inp.len() / ic;
        let dout = self.rounded_to_bf16(dout);
        let inp = self.rounded_to_bf16(inp);
        let accumulate = dinp_write == Write::Accumulate;
        let config = gemm::matmul_backward_input(ic, oc, n, accumulate);
        self.gemm_bf16(config, w, &dout, dinp);
        self.gemm_bf16(gemm::matmul_backward_weight(ic, oc, n), &inp, &dout, dw);
    }

    fn rope_forward(
        &self,
        x: &mut CudaSlice<f32>,
        seq: usize,
        heads: usize,
        head_dim: usize,
        theta: f64,
    ) {
        self.rope(x, seq, 0, heads, head_dim, theta, 1.0);
    }
    fn rope_backward(
        &self,
        dx: &mut CudaSlice<f32>,
        seq: usize,
        heads: usize,
        head_dim: usize,
        theta: f64,
    ) {
        self.rope(dx, seq, 0, heads, head_dim, theta, -1.0);
    }
    fn rope_forward_at(
        &self,
        x: &mut CudaSlice<f32>,
        position: usize,
        heads: usize,
        head_dim: usize,
        theta: f64,
    ) {
        self.rope(x, 1, position, heads, head_dim, theta, 1.0);
    }

    fn attention_decode(
        &self,
        out: &mut CudaSlice<f32>,
        q: &CudaSlice<f32>,
        k_cache: &CudaSlice<f32>,
        v_cache: &CudaSlice<f32>,
        len: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) {
        assert!(
            out.len() >= heads * head_dim && q.len() >= heads * head_dim,
            "attention_decode: {heads} heads of {head_dim}"
        );
        let cache_len = len * kv_heads * head_dim;
        assert!(k_cache.len() >= cache_len && v_cache.len() >= cache_len);
        if len == 0 {
            // Attention over nothing is zeros, as on the CPU (the kernel would divide by zero).
            let mut head_rows = out.slice_mut(..heads * head_dim);
            self.stream
                .memset_zeros(&mut head_rows)
                .expect("CUDA memset failed");
            return;
        }
        let scale = 1.0 / (head_dim as f32).sqrt();
        let blocks = heads;
        let (len, heads, kv_heads, head_dim) =
            (len as i32, heads as i32, kv_heads as i32, head_dim as i32);
        self.kernels.attention_decode(
            blocks, out, q, k_cache, v_cache, len, heads, kv_heads, head_dim, scale,
        );
    }

    fn write_at(&self, dst: &mut CudaSlice<f32>, offset: usize, src: &CudaSlice<f32>) {
        let mut view = dst.slice_mut(offset..offset + src.len());
        self.stream
            .memcpy_dtod(src, &mut view)
            .expect("CUDA copy failed");
    }

    fn attention_forward(
        &self,
        out: &mut CudaSlice<f32>,
        probs: &mut SavedOf<Self>,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        shape: AttentionShape,
    ) {
        match probs {
            Saved::Full(probs) => self.attention_forward_floats(out, probs, q, k, v, shape),
            Saved::Half(kept) => {
                let mut probs = self.working_floats(kept.len(), "the attention probabilities");
                self.attention_forward_floats(out, &mut probs, q, k, v, shape);
                self.round_to_half(kept, &probs);
            }
        }
    }

    /// The scores' gradient, and the heads-first q, k, v, dout and gradients of q, k, v.
    fn attention_scratch_len(&self, shape: AttentionShape) -> usize {
        let square = shape.batch * shape.heads * shape.seq * shape.seq;
        square.saturating_add(heads_first_len(shape).saturating_mul(7))
    }

    fn attention_backward(
        &self,
        dq: &mut CudaSlice<f32>,
        dk: &mut CudaSlice<f32>,
        dv: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        kept: AttentionKeptOf<'_, Self>,
        scratch: &mut CudaSlice<f32>,
        shape: AttentionShape,
    ) {
        let mut widened = [None, None, None, None];
        let [probs, q, k, v] = self.floats_of([kept.probs, kept.q, kept.k, kept.v], &mut widened);
        self.attention_backward_floats(dq, dk, dv, dout, probs, q, k, v, scratch, shape);
    }

    fn swiglu_forward(
        &self,
        out: &mut CudaSlice<f32>,
        gate: InputOf<'_, Self>,
        up: InputOf<'_, Self>,
    ) {
        let mut widened = [None, None];
        let [gate, up] = self.floats_of([gate, up], &mut widened);
        let n = out.len() as i64;
        self.kernels
            .swiglu_forward(elementwise(out.len()), &mut *out, gate, up, n);
    }
    fn swiglu_backward(
        &self,
        dgate: &mut CudaSlice<f32>,
        dup: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        gate: InputOf<'_, Self>,
        up: InputOf<'_, Self>,
    ) {
        let mut widened = [None, None];
        let [gate, up] = self.floats_of([gate, up], &mut widened);
        let n = dout.len() as i64;
        self.kernels
            .swiglu_backward(elementwise(dout.len()), dgate, dup, dout, gate, up, n);
    }

    fn add(&self, out: &mut CudaSlice<f32>, a: &CudaSlice<f32>, b: &CudaSlice<f32>) {
        let n = out.len() as i64;
        self.kernels.add(elementwise(out.len()), &mut *out, a, b, n);
    }
    fn add_assign(&self, acc: &mut CudaSlice<f32>, x: &CudaSlice<f32>) {
        let n = acc.len() as i64;
        self.kernels
            .add_assign(elementwise(acc.len()), &mut *acc, x, n);
    }

    fn cross_entropy_fused(
        &self,
        losses: &mut CudaSlice<f32>,
        logits: &mut CudaSlice<f32>,
        targets: &CudaSlice<u32>,
        vocab: usize,
        grad_scale: f64,
    ) {
        let rows = targets.len().min(losses.len());
        let (vocab, grad_scale) = (vocab as i32, grad_scale as f32);
        self.kernels
            .cross_entropy_fused(rows, losses, logits, targets, vocab, grad_scale);
    }

    fn sum(&self, buf: &CudaSlice<f32>) -> f64 {
        self.reduce(&[buf.as_view()], false)
    }
    fn sum_squares(&self, buf: &CudaSlice<f32>) -> f64 {
        self.reduce(&[buf.as_view()], true)
    }
    fn sum_squares_all(&self, bufs: &[CudaSlice<f32>]) -> f64 {
        let views: Vec<CudaView<'_, f32>> = bufs.iter().map(|b| b.as_view()).collect();
        self.reduce(&views, true)
    }
    fn adamw(
        &self,
        param: &mut CudaSlice<f32>,
        grad: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        hp: AdamW,
    ) {
        let n = param.len() as i64;
        let lr = hp.lr as f32;
        let (beta1, beta2, eps) = (hp.beta1 as f32, hp.beta2 as f32, hp.eps as f32);
        let decay = (1.0 - hp.lr * hp.weight_decay) as f32;
        let (correction1, correction2) = (hp.correction1 as f32, hp.correction2 as f32);
        self.kernels.adamw(
            elementwise(param.len()),
            &mut *param,
            grad,
            m,
            v,
            lr,
            beta1,
            beta2,
            eps,
            decay,
            correction1,
            correction2,
            hp.grad_scale as f32,
            n,
        );
    }

    // Newton–Schulz over the smaller Gram matrix, three cuBLAS products per iteration: see
    // `gemm::newton_schulz`.
    fn muon(
        &self,
        param: &mut CudaSlice<f32>,
        grad: &CudaSlice<f32>,
        momentum: &mut CudaSlice<f32>,
        scratch: &mut CudaSlice<f32>,
        rows: usize,
        cols: usize,
        hp: Muon,
    ) {
        let len = rows * cols;
        let side = rows.min(cols);
        assert_eq!(param.len(), len);
        assert_eq!(grad.len(), len);
        assert_eq!(momentum.len(), len);
        assert!(scratch.len() >= self.muon_scratch_len(rows, cols));
        let (mut update, mut rest) = scratch.split_at_mut(len);
        let (mut next, mut rest) = rest.split_at_mut(len);
        let (mut gram, mut rest) = rest.split_at_mut(side * side);
        let mut poly = rest.slice_mut(..side * side);

        let n = len as i64;
        let (mu, nesterov) = (hp.momentum as f32, i32::from(hp.nesterov));
        self.kernels.muon_momentum(
            elementwise(len),
            &mut *momentum,
            grad,
            &mut update,
            mu,
            nesterov,
            hp.grad_scale as f32,
            n,
        );
        let mut sum_squares = self
            .alloc_for_overwrite::<f64>(1)
            .unwrap_or_else(|e| panic!("Muon's norm: {e}"));
        self.sum_on_device(&mut sum_squares, &[update.as_view()], true);
        self.kernels
            .muon_normalize(elementwise(len), &mut update, &sum_squares, n);

        let (a, b, c) = NEWTON_SCHULZ;
        let ns = gemm::newton_schulz(rows, cols, (a as f32, b as f32, c as f32));
        let mut current = update;
        for _ in 0..hp.ns_steps {
            self.gemm(ns.gram, &current, &current, &mut gram);
            self.stream
                .memcpy_dtod(&gram, &mut poly)
                .expect("CUDA copy failed");
            self.gemm(ns.poly, &gram, &gram, &mut poly);
            self.stream
                .memcpy_dtod(&current, &mut next)
                .expect("CUDA copy failed");
            if ns.poly_first {
                self.gemm(ns.apply, &poly, &current, &mut next);
            } else {
                self.gemm(ns.apply, &current, &poly, &mut next);
            }
            std::mem::swap(&mut current, &mut next);
        }

        let decay = (1.0 - hp.lr * hp.weight_decay) as f32;
        let step = (hp.lr * (rows as f64 / cols as f64).max(1.0).sqrt()) as f32;
        self.kernels.muon_apply(
            elementwise(len),
            &mut *param,
            &current.as_view(),
            decay,
            step,
            n,
        );
    }
}

impl Cuda {
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &mut CudaSlice<f32>,
        seq: usize,
        start: usize,
        heads: usize,
        head_dim: usize,
        theta: f64,
        sign: f32,
    ) {
        assert!(
            head_dim.is_multiple_of(2),
            "head_dim {head_dim} must be even"
        );
        let rows = x.len() / (heads * head_dim);
        let pairs = rows * heads * head_dim / 2;
        let (rows, seq, start) = (rows as i64, seq as i32, start as i32);
        let (heads, head_dim) = (heads as i32, head_dim as i32);
        self.kernels.rope(
            elementwise(pairs),
            x,
            rows,
            seq,
            start,
            heads,
            head_dim,
            theta,
            sign,
        );
    }

    /// [`Backend::attention_forward`] keeping the probabilities as floats: heads-first copies
    /// of q, k, v, then cuBLAS for the scores and the values around the softmax kernel.
    fn attention_forward_floats(
        &self,
        out: &mut CudaSlice<f32>,
        probs: &mut CudaSlice<f32>,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        shape: AttentionShape,
    ) {
        let len = heads_first_len(shape);
        check_attention_shapes(shape, probs.len(), [&*out, q, k, v]);
        let [mut qh, mut kh, mut vh, mut out_h] =
            [(); 4].map(|()| self.working_floats(len, "attention's heads-first copies"));
        self.split_heads(&mut qh, q, shape, shape.heads);
        self.split_heads(&mut kh, k, shape, shape.kv_heads);
        self.split_heads(&mut vh, v, shape, shape.kv_heads);
        let plan = attention_gemms(shape);
        self.gemm_batched(plan.scores, &kh, &qh, probs);
        let rows = shape.batch * shape.heads * shape.seq;
        self.kernels
            .causal_softmax(rows, &mut *probs, shape.seq as i32);
        self.gemm_batched(plan.values, &vh, &*probs, &mut out_h);
        self.merge_heads(out, &out_h.as_view(), shape, shape.heads);
    }

    /// [`Backend::attention_backward`] on floats, in `scratch`: the scores' gradient, then the
    /// heads-first q, k, v, dout and the gradients of the first three.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward_floats(
        &self,
        dq: &mut CudaSlice<f32>,
        dk: &mut CudaSlice<f32>,
        dv: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        probs: &CudaSlice<f32>,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        scratch: &mut CudaSlice<f32>,
        shape: AttentionShape,
    ) {
        let len = heads_first_len(shape);
        let square = probs.len();
        check_attention_shapes(shape, square, [dout, q, k, v]);
        check_attention_shapes(shape, square, [&*dq, &*dq, &*dk, &*dv]);
        assert!(
            scratch.len() >= self.attention_scratch_len(shape),
            "attention's working space"
        );
        let (mut dscores, mut rest) = scratch.split_at_mut(square);
        let (mut qh, mut rest) = rest.split_at_mut(len);
        let (mut kh, mut rest) = rest.split_at_mut(len);
        let (mut vh, mut rest) = rest.split_at_mut(len);
        let (mut dout_h, mut rest) = rest.split_at_mut(len);
        let (mut dq_h, mut rest) = rest.split_at_mut(len);
        let (mut dk_h, mut rest) = rest.split_at_mut(len);
        let mut dv_h = rest.slice_mut(..len);
        self.split_heads(&mut qh, q, shape, shape.heads);
        self.split_heads(&mut kh, k, shape, shape.kv_heads);
        self.split_heads(&mut vh, v, shape, shape.kv_heads);
        self.split_heads(&mut dout_h, dout, shape, shape.heads);
        let plan = attention_gemms(shape);
        self.gemm_batched(plan.dprobs, &vh, &dout_h, &mut dscores);
        self.gemm_batched(plan.dv, &dout_h, probs, &mut dv_h);
        let rows = shape.batch * shape.heads * shape.seq;
        self.kernels
            .causal_softmax_backward(rows, &mut dscores, probs, shape.seq as i32);
        self.gemm_batched(plan.dq, &kh, &dscores, &mut dq_h);
        self.gemm_batched(plan.dk, &qh, &dscores, &mut dk_h);
        self.merge_heads(dq, &dq_h.as_view(), shape, shape.heads);
        self.merge_heads(dk, &dk_h.as_view(), shape, shape.kv_heads);
        self.merge_heads(dv, &dv_h.as_view(), shape, shape.kv_heads);
    }

    /// `dst` = the `[batch, seq, src_heads, head_dim]` tensor `src` as heads-first
    /// `[batch, heads, seq, head_dim]`, its heads repeated for the query heads of their group.
    fn split_heads(
        &self,
        dst: &mut impl launch::Out<f32>,
        src: &CudaSlice<f32>,
        shape: AttentionShape,
        src_heads: usize,
    ) {
        let [batch, seq, heads, head_dim] =
            [shape.batch, shape.seq, shape.heads, shape.head_dim].map(|n| n as i32);
        self.kernels.split_heads(
            elementwise(heads_first_len(shape)),
            dst,
            src,
            batch,
            seq,
            heads,
            src_heads as i32,
            head_dim,
        );
    }

    /// `dst` (`[batch, seq, dst_heads, head_dim]`) = the heads-first `src`, the heads of each
    /// group summed.
    fn merge_heads(
        &self,
        dst: &mut CudaSlice<f32>,
        src: &CudaView<'_, f32>,
        shape: AttentionShape,
        dst_heads: usize,
    ) {
        let [batch, seq, heads, head_dim] =
            [shape.batch, shape.seq, shape.heads, shape.head_dim].map(|n| n as i32);
        let len = shape.batch * shape.seq * dst_heads * shape.head_dim;
        self.kernels.merge_heads(
            elementwise(len),
            dst,
            src,
            batch,
            seq,
            heads,
            dst_heads as i32,
            head_dim,
        );
    }

    /// The floats of each input: the buffer itself, or its bf16 values widened into a new
    /// buffer held in `widened`.
    fn floats_of<'a, const N: usize>(
        &self,
        inputs: [InputOf<'a, Self>; N],
        widened: &'a mut [Option<CudaSlice<f32>>; N],
    ) -> [&'a CudaSlice<f32>; N] {
        for (input, slot) in inputs.iter().zip(widened.iter_mut()) {
            if let Input::Half(half) = input {
                *slot = Some(self.widened(half));
            }
        }
        let mut slots = widened.iter();
        inputs.map(|input| {
            let slot = slots.next().expect("one slot per input");
            match input {
                Input::Full(floats) => floats,
                Input::Half(_) => slot.as_ref().expect("widened above"),
            }
        })
    }

    /// `len` floats of working space for `what`. The ops that need it have no error to return,
    /// so running out of memory here is a panic that says what for.
    fn working_floats(&self, len: usize, what: &str) -> CudaSlice<f32> {
        self.alloc_for_overwrite(len)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// `src` rounded to bf16 (its bits), in a new buffer: a matmul's activation operand.
    fn rounded_to_bf16(&self, src: &CudaSlice<f32>) -> CudaSlice<u16> {
        let mut dst = self
            .alloc_for_overwrite::<u16>(src.len())
            .unwrap_or_else(|e| panic!("the bf16 matmul's working copy: {e}"));
        self.round_to_half(&mut dst, src);
        dst
    }

    /// The bf16 values of `src` as floats, in a new buffer.
    fn widened(&self, src: &CudaSlice<u16>) -> CudaSlice<f32> {
        let mut dst = self.working_floats(src.len(), "a bf16 tensor's floats");
        let n = src.len() as i64;
        self.kernels
            .widen_bf16(elementwise(src.len()), &mut dst, src, n);
        dst
    }

    /// Σ x (or Σ x²) over every buffer of `views`, read back: one synchronisation however many
    /// buffers there are.
    fn reduce(&self, views: &[CudaView<'_, f32>], squares: bool) -> f64 {
        let mut out = self
            .alloc_for_overwrite::<f64>(1)
            .unwrap_or_else(|e| panic!("a reduction's result: {e}"));
        self.sum_on_device(&mut out, views, squares);
        self.stream.clone_dtoh(&out).expect("CUDA download failed")[0]
    }

    /// Σ x (or Σ x²) over every buffer of `views` into `out[0]`, on the device, in an order fixed
    /// by the buffers' lengths: each leaves its `sum_partials` (as many as `partial_blocks` says)
    /// in one array, which `sum_doubles` adds up.
    fn sum_on_device(&self, out: &mut CudaSlice<f64>, views: &[CudaView<'_, f32>], squares: bool) {
        let counts: Vec<usize> = views.iter().map(|v| partial_blocks(v.len())).collect();
        let total: usize = counts.iter().sum();
        if total == 0 {
            self.stream.memset_zeros(out).expect("CUDA memset failed");
            return;
        }
        let mut partials = self
            .alloc_zeros::<f64>(total)
            .unwrap_or_else(|e| panic!("a reduction's partial sums: {e}"));
        let mut at = 0;
        for (view, &count) in views.iter().zip(&counts) {
            let mut slot = partials.slice_mut(at..at + count);
            let n = view.len() as i64;
            self.kernels
                .sum_partials(count, &mut slot, view, n, i32::from(squares));
            at += count;
        }
        self.kernels.sum_doubles(1, out, &partials, total as i32);
    }
}

/// Keeps the memory of freed working buffers in the device's stream-ordered pool: by default the
/// pool returns it to the driver at every synchronisation (each step reads its loss back), and
/// the next step's buffers would be mapped afresh.
fn keep_freed_memory_pooled(context: &CudaContext) -> Result<(), CudaError> {
    use cudarc::driver::sys::{
        CUmemPool_attribute, cuDeviceGetDefaultMemPool, cuMemPoolSetAttribute,
    };
    if !context.has_async_alloc() {
        return Ok(());
    }
    let mut pool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: the device handle is the context's; the driver writes the pool handle, then reads
    // one u64 for the attribute, as the driver API documents.
    unsafe {
        cuDeviceGetDefaultMemPool(&mut pool, context.cu_device()).result()?;
        cuMemPoolSetAttribute(
            pool,
            CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .result()?;
    }
    Ok(())
}

/// Panics unless `probs` and the `[out or q, q, k, v]` buffers have the lengths `shape` gives
/// them: cuBLAS and the kernels would otherwise reach past a buffer.
fn check_attention_shapes(
    shape: AttentionShape,
    probs: usize,
    [out, q, k, v]: [&CudaSlice<f32>; 4],
) {
    let rows = shape.batch * shape.seq;
    let (query, kv) = (
        rows * shape.heads * shape.head_dim,
        rows * shape.kv_heads * shape.head_dim,
    );
    assert!(
        shape.kv_heads > 0 && shape.heads.is_multiple_of(shape.kv_heads),
        "{} heads in groups of {} key/value heads",
        shape.heads,
        shape.kv_heads
    );
    assert_eq!(
        probs,
        shape.batch * shape.heads * shape.seq * shape.seq,
        "probs"
    );
    assert_eq!([out.len(), q.len()], [query; 2], "the output and q");
    assert_eq!([k.len(), v.len()], [kv; 2], "k and v");
}

/// Floats of one heads-first copy of q (or of k or v repeated per query head).
fn heads_first_len(shape: AttentionShape) -> usize {
    shape.batch * shape.heads * shape.seq * shape.head_dim
}

/// The cuBLAS products of attention at `shape`, scores scaled by 1/√head_dim.
fn attention_gemms(shape: AttentionShape) -> gemm::AttentionGemms {
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    gemm::attention(shape.batch * shape.heads, shape.seq, shape.head_dim, scale)
}
