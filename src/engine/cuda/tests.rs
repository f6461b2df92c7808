//! Without a GPU: every kernel compiles with NVRTC, and a broken one is reported with NVRTC's
//! log; a missing NCCL is a one-line error. With one (`scripts/gpu-check.sh` runs the ignored
//! tests): every op, forward and backward, equals the CPU backend's within 1e-4 on random inputs,
//! and NCCL's all-reduce over one rank is the identity.

use super::*;
use crate::collective::Single;
use crate::engine::{AttentionKept, Cpu, Input, Rng, Saved, Write};

/// NVRTC is optional on a developer's machine, but `.ci/run` installs it and sets this, so CI
/// cannot pass by skipping.
fn nvrtc_required() -> bool {
    std::env::var_os("TINYLLM_REQUIRE_NVRTC").is_some_and(|v| v == "1")
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    let ptx = match compile(KERNELS_CU) {
        Err(CudaError::NoNvrtc) if !nvrtc_required() => {
            eprintln!("skipped: libnvrtc not found (.ci/run installs it)");
            return;
        }
        result => result.unwrap_or_else(|e| panic!("{e}")),
    };
    let ptx = ptx.to_src();
    for name in KERNEL_NAMES {
        assert!(
            ptx.contains(&format!(".entry {name}(")),
            "kernel {name} is not in the PTX"
        );
    }
    // The list is complete: every kernel of the source is loaded.
    let declared = KERNELS_CU.matches("extern \"C\" __global__ void ").count();
    assert_eq!(declared, KERNEL_NAMES.len());
}

/// The comma-separated items of the parenthesised list that starts at `open` in `text` (the
/// top level only), and where the list ends.
fn top_level_items(text: &str, open: usize) -> (Vec<String>, usize) {
    let (mut depth, mut items, mut current) = (0usize, Vec::new(), String::new());
    for (at, c) in text[open..].char_indices() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    if !current.trim().is_empty() {
                        items.push(current.trim().to_string());
                    }
                    return (items, open + at);
                }
            }
            ',' if depth == 1 => {
                items.push(current.trim().to_string());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    panic!("unbalanced list at {open}");
}

/// Every `extern "C" __global__` kernel of `source`: its name and its parameters' (name, C type)
/// in order, the type's words and `*` as written, single-spaced.
fn kernel_signatures(source: &str) -> Vec<(String, Vec<(String, String)>)> {
    let marker = "extern \"C\" __global__ void ";
    let mut kernels = Vec::new();
    for (at, _) in source.match_indices(marker) {
        let mut from = at + marker.len();
        if source[from..].starts_with("__launch_bounds__") {
            from = top_level_items(source, from + "__launch_bounds__".len()).1 + 1;
        }
        let open = from + source[from..].find('(').unwrap();
        let name = source[from..open].trim().to_string();
        let (items, _) = top_level_items(source, open);
        let params = items.iter().map(|param| {
            let split = param.rfind(|c: char| !(c.is_alphanumeric() || c == '_'));
            let split = split.map_or(0, |at| at + 1);
            let c_type = param[..split]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            (param[split..].to_string(), c_type.replace(" *", "*"))
        });
        kernels.push((name, params.collect()));
    }
    kernels
}

/// The launch table declares every kernel of kernels.cu once, in the source's order, with the
/// same parameter names and C types (const included) in the same order; KERNEL_NAMES is the table's.
#[test]
fn the_launch_table_matches_the_kernel_signatures_in_kernels_cu() {
    let declared = kernel_signatures(KERNELS_CU);
    assert_eq!(
        declared.len(),
        KERNELS_CU.matches("__global__").count(),
        "a kernel of kernels.cu is not declared extern \"C\" __global__ void"
    );
    let table: Vec<(String, Vec<(String, String)>)> = launch::KERNELS
        .iter()
        .map(|k| {
            let params = k
                .params
                .iter()
                .map(|&(n, t)| (n.to_string(), t.to_string()));
            (k.name.to_string(), params.collect())
        })
        .collect();
    for (source, launch) in declared.iter().zip(&table) {
        assert_eq!(source, launch, "kernels.cu against the launch table");
    }
    assert_eq!(
        declared.len(),
        table.len(),
        "kernels in kernels.cu and in the table"
    );
    let names: Vec<&str> = launch::KERNELS.iter().map(|k| k.name).collect();
    assert_eq!(KERNEL_NAMES, names.as_slice());
}

/// The cubin of `source` for `sm_{arch}`, or None where NVRTC is missing and not required.
fn cubin_or_skip(source: &str, arch: i32) -> Option<Vec<u8>> {
    match compile_cubin(source, arch) {
        Err(CudaError::NoNvrtc) if !nvrtc_required() => {
            eprintln!("skipped: libnvrtc not found (.ci/run installs it)");
            None
        }
        result => Some(result.unwrap_or_else(|e| panic!("{e}"))),
    }
}

/// Test kernels whose layouts are known, read back from the cubin: the facts `cubin.rs` relies
/// on, checked on every NVRTC that CI gets.
#[test]
fn the_cubin_parser_reads_known_kernels_correctly() {
    let source = r#"
extern "C" __global__ void __launch_bounds__(256) params(float* p, int i, long long l, double d) {
    p[threadIdx.x] = i + l + d;
}
extern "C" __global__ void __launch_bounds__(128) small(const unsigned short* h, char c, float f) {
}
extern "C" __global__ void shared300(float* p) {
    __shared__ float s[300];
    s[threadIdx.x] = p[threadIdx.x];
    __syncthreads();
    p[threadIdx.x] = s[299 - threadIdx.x % 300];
}
extern "C" __global__ void dynamic(float* p) {
    extern __shared__ float s[];
    s[threadIdx.x] = p[threadIdx.x];
    __syncthreads();
    p[threadIdx.x] = s[999 - threadIdx.x % 1000];
}
"#;
    let param = |ordinal, offset, size| cubin::Param {
        ordinal,
        offset,
        size,
    };
    for arch in [90, 80] {
        let Some(elf) = cubin_or_skip(source, arch) else {
            return;
        };
        let kernels = cubin::kernels(&elf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kernels.len(), 4, "sm_{arch}: {kernels:?}");
        let params = &kernels["params"];
        let expected = [
            param(0, 0, 8),
            param(1, 8, 4),
            param(2, 16, 8),
            param(3, 24, 8),
        ];
        assert_eq!(params.params, expected, "sm_{arch}");
        assert_eq!(params.max_threads, Some([256, 1, 1]), "sm_{arch}");
        assert_eq!(params.static_shared, 0, "sm_{arch}");
        let small = &kernels["small"];
        assert_eq!(
            small.params,
            [param(0, 0, 8), param(1, 8, 1), param(2, 12, 4)]
        );
        assert_eq!(small.max_threads, Some([128, 1, 1]), "sm_{arch}");
        assert_eq!(kernels["shared300"].static_shared, 1200, "sm_{arch}");
        assert_eq!(kernels["shared300"].max_threads, None, "sm_{arch}");
        assert_eq!(kernels["dynamic"].static_shared, 0, "sm_{arch}");
        for (name, kernel) in &kernels {
            assert!(
                (1..=255).contains(&kernel.registers),
                "sm_{arch} {name}: {kernel:?}"
            );
            // Where the code section also holds the count (before sm_90), the two agree.
            let text = kernel.text_registers;
            let expected = if arch < 90 { kernel.registers } else { 0 };
            assert_eq!(text, expected, "sm_{arch} {name}: registers in sh_info");
        }
    }
}

/// Registers a block of `threads` takes on sm_90: per warp, rounded up to the allocation unit
/// of 256.
fn block_registers(registers: u32, threads: u32) -> u32 {
    (registers * 32).div_ceil(256) * 256 * threads.div_ceil(32)
}

#[test]
fn block_registers_round_up_per_warp() {
    assert_eq!(block_registers(64, 1024), 65_536);
    // 65 registers are 72 per thread once rounded, too many for 1024 threads.
    assert_eq!(block_registers(65, 1024), 73_728);
    assert_eq!(block_registers(10, 33), 2 * 512);
}

/// Every kernel of kernels.cu, compiled to an sm_90 cubin as a Hopper would get it: its launch
/// bounds are its table's block size, a block of that size fits the SM's 64K registers, its
/// static shared memory fits the 48 KiB a block gets without opting in (no launch asks for
/// dynamic shared memory, nor opts in), and its parameters have the sizes and offsets of the
/// table's types, so a Rust i32 passed for a long long cannot slip through.
#[test]
fn every_kernel_compiles_to_an_sm_90_cubin_that_fits_its_launch() {
    let Some(elf) = cubin_or_skip(KERNELS_CU, 90) else {
        return;
    };
    let kernels = cubin::kernels(&elf).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kernels.len(), launch::KERNELS.len(), "kernels in the cubin");
    for spec in launch::KERNELS {
        let name = spec.name;
        let kernel = kernels
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the cubin"));
        assert_eq!(
            kernel.max_threads,
            Some([spec.block, 1, 1]),
            "{name}: launch bounds"
        );
        assert!(
            kernel.registers <= 255,
            "{name}: {} registers",
            kernel.registers
        );
        let registers = block_registers(kernel.registers, spec.block);
        assert!(
            registers <= 65_536,
            "{name}: a block takes {registers} registers"
        );
        assert!(kernel.static_shared <= 48 * 1024, "{name}: {kernel:?}");
        let mut offset = 0u16;
        let expected: Vec<cubin::Param> = (0..)
            .zip(spec.params)
            .map(|(ordinal, &(param, c_type))| {
                let size = match c_type {
                    "int" | "float" => 4,
                    "long long" | "double" => 8,
                    pointer if pointer.ends_with('*') => 8,
                    other => panic!("{name}: {param} of type {other}"),
                };
                offset = offset.next_multiple_of(size);
                let at = offset;
                offset += size;
                cubin::Param {
                    ordinal,
                    offset: at,
                    size: size.into(),
                }
            })
            .collect();
        assert_eq!(kernel.params, expected, "{name}: parameter layout");
    }
}

/// An architecture NVRTC cannot compile for is a one-line error naming it and NVRTC's version.
#[test]
fn a_gpu_nvrtc_cannot_compile_for_is_a_clear_error() {
    match compile_cubin(KERNELS_CU, 35) {
        Err(CudaError::NoNvrtc) if !nvrtc_required() => {}
        Err(e @ CudaError::UnsupportedArch { .. }) => {
            let message = e.to_string();
            assert!(message.contains("sm_35"), "{message}");
            assert!(message.contains("NVRTC 13."), "{message}");
            assert!(message.contains("sm_90"), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
        other => panic!("expected UnsupportedArch, got {:?}", other.map(|c| c.len())),
    }
}

/// A cubin the driver cannot load for lack of support is a one-line error saying what driver
/// it needs; other load errors stay driver errors.
#[test]
fn a_driver_too_old_for_the_cubin_is_a_clear_error() {
    for code in [
        CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
        CUresult::CUDA_ERROR_INVALID_IMAGE,
        CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU,
    ] {
        let error = load_error(DriverError(code));
        assert!(matches!(error, CudaError::DriverTooOld { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("R580"), "{message}");
        assert!(message.contains("NVRTC "), "{message}");
        assert!(message.contains(&format!("{code:?}")), "{message}");
        if nvrtc_required() {
            assert!(message.contains("NVRTC 13."), "{message}");
        }
        assert!(!message.contains('\n'), "{message}");
    }
    let other = load_error(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY));
    assert!(matches!(other, CudaError::Driver(_)), "{other}");
}

#[test]
fn a_broken_kernel_is_reported_with_nvrtcs_log() {
    let source = "extern \"C\" __global__ void broken(float* x) { x[0] = undefined_name; }";
    match compile(source) {
        Err(CudaError::NoNvrtc) if !nvrtc_required() => {}
        Err(CudaError::Compile(log)) => {
            assert!(log.contains("undefined_name"), "{log}");
            assert!(log.contains("error"), "{log}");
        }
        other => panic!(
            "expected a compile error, got {:?}",
            other.map(|p| p.to_src())
        ),
    }
    match compile_cubin(source, 90) {
        Err(CudaError::NoNvrtc) if !nvrtc_required() => {}
        Err(CudaError::Compile(log)) => {
            assert!(log.contains("undefined_name"), "{log}");
            assert!(log.contains("error"), "{log}");
        }
        other => panic!("expected a compile error, got {:?}", other.map(|c| c.len())),
    }
}

#[test]
fn asking_for_a_missing_device_is_an_error_not_a_panic() {
    match Cuda::new(1_000) {
        Err(CudaError::NoDriver | CudaError::NoCublas | CudaError::NoNvrtc) => {}
        Err(CudaError::NoDevice { ordinal, .. }) => assert_eq!(ordinal, 1_000),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("device 1000 exists?"),
    }
}

/// An allocation the GPU cannot hold, and one whose byte count overflows, are out-of-memory
/// errors naming the device; the device still works afterwards.
#[test]
#[ignore = "needs an NVIDIA GPU (scripts/gpu-check.sh)"]
fn gpu_out_of_memory_is_an_error_naming_the_device() {
    let gpu = Cuda::new(0).unwrap_or_else(|e| panic!("{e}"));
    for (len, bytes) in [(1usize << 46, 1u64 << 48), (usize::MAX, u64::MAX)] {
        match gpu.zeros(len) {
            Err(EngineError::OutOfMemory { device, bytes: got }) => {
                assert!(device.starts_with("cuda:0 ("), "{device}");
                assert_eq!(got, bytes);
            }
            Err(other) => panic!("expected out of memory, got {other}"),
            Ok(_) => panic!("{len} floats allocated"),
        }
    }
    let mut buf = gpu.upload(&[1.0, 2.0]).unwrap();
    assert_eq!(gpu.download(&buf).unwrap(), [1.0, 2.0]);
    assert_eq!(
        gpu.upload_into(&mut buf, &[1.0]),
        Err(EngineError::LengthMismatch {
            expected: 2,
            got: 1
        })
    );
}

// ---------------------------------------------------------------------------------------------
// NCCL

/// A world of `size` ranks seen from `rank`: its broadcasts are recorded (the bytes given, the
/// root) and, on a rank other than the root, replaced by `from_root`, as rank 0 would send them.
struct ScriptedWorld {
    rank: usize,
    size: usize,
    from_root: Vec<u8>,
    broadcasts: Mutex<Vec<(Vec<u8>, usize)>>,
}

impl ScriptedWorld {
    fn new(rank: usize, size: usize, from_root: Vec<u8>) -> ScriptedWorld {
        ScriptedWorld {
            rank,
            size,
            from_root,
            broadcasts: Mutex::new(Vec::new()),
        }
    }

    fn broadcasts(&self) -> Vec<(Vec<u8>, usize)> {
        self.broadcasts.lock().unwrap().clone()
    }
}

impl Collective for ScriptedWorld {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.rank
    }
    fn all_reduce_sum_f32(&self, _values: &mut [f32]) {
        panic!("the host all-reduce was taken");
    }
    fn all_reduce_sum_f64(&self, _values: &mut [f64]) {
        panic!("the host all-reduce was taken");
    }
    fn broadcast_bytes(&self, bytes: &mut [u8], root: usize) {
        self.broadcasts.lock().unwrap().push((bytes.to_vec(), root));
        if self.rank != root {
            bytes.copy_from_slice(&self.from_root);
        }
    }
    fn barrier(&self) {}
    fn describe(&self) -> String {
        format!("rank {} of {} (scripted)", self.rank, self.size)
    }
}

/// Without NCCL (as in CI), the check is one line saying what to install, where cudarc would
/// panic; with it, the check passes.
#[test]
fn a_missing_nccl_is_one_line_saying_what_to_install() {
    // SAFETY: only probes for the shared library.
    let present = unsafe { cudarc::nccl::sys::is_culib_present() };
    match nccl::check_library() {
        Err(error @ CudaError::NoNccl) => {
            assert!(!present, "NCCL is present, yet: {error}");
            let text = error.to_string();
            assert!(!text.contains('\n'), "{text}");
            assert!(text.contains("libnccl.so.2"), "{text}");
            assert!(text.contains("LD_LIBRARY_PATH"), "{text}");
        }
        Ok(()) => assert!(present, "NCCL checked out without a library"),
        Err(other) => panic!("NCCL present: {present}; {other}"),
    }
}

/// An NCCL unique id travels as its 128 bytes, all of them kept.
#[test]
fn an_nccl_id_survives_its_bytes() {
    let bytes: [u8; nccl::ID_BYTES] = std::array::from_fn(|i| (i * 37 + 11) as u8);
    assert_eq!(nccl::id_bytes(&nccl::id_from_bytes(bytes)), bytes);
}

/// A rank other than 0 makes no id of its own (so calls no NCCL): it takes rank 0's, through the
/// world's broadcast from root 0.
#[test]
fn a_rank_other_than_0_takes_the_id_rank_0_broadcasts() {
    let sent: Vec<u8> = (0..nccl::ID_BYTES).map(|i| (255 - i) as u8).collect();
    let world = ScriptedWorld::new(1, 2, sent.clone());
    let id = nccl::shared_id(&world).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(nccl::id_bytes(&id).to_vec(), sent);
    assert_eq!(world.broadcasts(), [(vec![0u8; nccl::ID_BYTES], 0)]);
}

/// On one GPU, a communicator of one rank: joining sends rank 0's unique id through the world's
/// broadcast (from root 0, a real id), and the all-reduce through NCCL, a sum over one rank,
/// leaves a random buffer bit for bit. A world of one rank joins no NCCL through
/// `join_collective`; a world whose size differs from the communicator's is an error.
#[test]
#[ignore = "needs an NVIDIA GPU and NCCL (scripts/gpu-check.sh)"]
fn gpu_nccl_one_rank_all_reduce_is_the_identity() {
    let mut gpu = Cuda::new(0).unwrap_or_else(|e| panic!("{e}"));
    gpu.join_collective(&Single)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(gpu.nccl.is_none(), "one rank joined NCCL");

    let world = ScriptedWorld::new(0, 1, Vec::new());
    gpu.join_nccl(&world).unwrap_or_else(|e| panic!("{e}"));
    assert!(gpu.nccl.is_some());
    let broadcasts = world.broadcasts();
    assert_eq!(broadcasts.len(), 1, "one broadcast of the unique id");
    let (id, root) = &broadcasts[0];
    assert_eq!((id.len(), *root), (nccl::ID_BYTES, 0));
    assert!(id.iter().any(|&b| b != 0), "rank 0 sent an empty id");

    let mut rng = Rng::new(11);
    let host: Vec<f32> = (0..1_000_003).map(|_| rng.normal() as f32).collect();
    let mut buf = gpu.upload(&host).unwrap();
    gpu.all_reduce_sum(&mut buf, &world)
        .unwrap_or_else(|e| panic!("{e}"));
    let summed = gpu.download(&buf).unwrap();
    assert!(
        host.iter()
            .zip(&summed)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "a sum over one rank changed the buffer"
    );
    let mut empty = gpu.zeros(0).unwrap();
    gpu.all_reduce_sum(&mut empty, &world)
        .unwrap_or_else(|e| panic!("{e}"));

    // Training through the NCCL path (two micro-batches summed flat, then all-reduced over the
    // one rank) takes the same steps, bit for bit, as training without a collective.
    let losses = |nccl: bool| -> Vec<u64> {
        use crate::model::{Llama, LlamaConfig, ModelDims, RuntimeShape};
        use crate::train::step::{FixedBatch, StepConfig, Stepper};
        let mut gpu = Cuda::new(0).unwrap_or_else(|e| panic!("{e}"));
        if nccl {
            gpu.join_nccl(&ScriptedWorld::new(0, 1, Vec::new()))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let dims = ModelDims {
            dim: 64,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            vocab_size: 128,
            multiple_of: 16,
            max_seq_len: 32,
        };
        let shape = RuntimeShape::new(dims).unwrap();
        let model = Llama::new(gpu, shape, LlamaConfig::default(), 3).unwrap();
        let settings = crate::engine::OptimizerSettings::adamw(0.9, 0.95, 0.1);
        let optimizer = model.optimizer(settings).unwrap();
        let config = StepConfig {
            batch: 4,
            seq: 32,
            accum: 2,
            grad_clip: 1.0,
        };
        let mut stepper = Stepper::new(model, optimizer, config);
        let mut rng = Rng::new(5);
        let mut tokens = |n| (0..n).map(|_| rng.below(128) as u32).collect();
        let mut data = FixedBatch {
            inputs: tokens(128),
            targets: tokens(128),
        };
        (0..5)
            .map(|_| stepper.step(&mut data, 1e-3).unwrap().loss.to_bits())
            .collect()
    };
    assert_eq!(losses(true), losses(false), "NCCL changed the losses");

    let larger = ScriptedWorld::new(0, 2, Vec::new());
    match gpu.all_reduce_sum(&mut buf, &larger) {
        Err(EngineError::Device { message, .. }) => {
            assert!(
                message.contains("joins 1 ranks, but the job has 2"),
                "{message}"
            );
            assert!(!message.contains('\n'), "{message}");
        }
        other => panic!("expected a device error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// GPU against CPU

struct Pair {
    cpu: Cpu<f32>,
    gpu: Cuda,
    rng: Rng,
}

impl Pair {
    fn new() -> Pair {
        let gpu = Cuda::new(0).unwrap_or_else(|e| panic!("{e}"));
        Pair {
            cpu: Cpu::new(),
            gpu,
            rng: Rng::new(7),
        }
    }

    fn random(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.rng.normal() as f32).collect()
    }

    fn both(&mut self, len: usize) -> (Vec<f32>, CudaSlice<f32>) {
        let host = self.random(len);
        let device = self.gpu.upload(&host).unwrap();
        (host, device)
    }

    fn tokens(&mut self, len: usize, below: u64) -> (Vec<u32>, CudaSlice<u32>) {
        let host: Vec<u32> = (0..len).map(|_| self.rng.below(below) as u32).collect();
        let mut device = self.gpu.tokens(len).unwrap();
        self.gpu.upload_tokens(&mut device, &host).unwrap();
        (host, device)
    }

    fn same(&self, what: &str, cpu: &[f32], gpu: &CudaSlice<f32>) {
        let gpu = self.gpu.download(gpu).unwrap();
        assert_eq!(cpu.len(), gpu.len(), "{what}: lengths");
        for (i, (a, b)) in cpu.iter().zip(&gpu).enumerate() {
            let tolerance = 1e-4 * (1.0 + a.abs());
            assert!((a - b).abs() <= tolerance, "{what}[{i}]: cpu {a}, gpu {b}");
        }
    }
}

/// Muon on wide, tall and square matrices, two steps (so the momentum carries over), with and
/// without Nesterov: the same weights and momentum as the CPU's.
#[test]
#[ignore = "needs an NVIDIA GPU (scripts/gpu-check.sh)"]
fn gpu_muon_matches_the_cpu() {
    let mut p = Pair::new();
    for (rows, cols, nesterov) in [(96, 288, true), (768, 288, true), (64, 64, false)] {
        let hp = crate::engine::Muon {
            lr: 0.02,
            momentum: 0.95,
            nesterov,
            ns_steps: 5,
            weight_decay: 0.1,
            grad_scale: 0.75,
        };
        let len = rows * cols;
        let (mut param, mut gparam) = p.both(len);
        let (mut momentum, mut gmomentum) = (vec![0.0; len], p.gpu.zeros(len).unwrap());
        let mut scratch = vec![0.0; p.cpu.muon_scratch_len(rows, cols)];
        let mut gscratch = p.gpu.zeros(p.gpu.muon_scratch_len(rows, cols)).unwrap();
        for _ in 0..2 {
            let (grad, ggrad) = p.both(len);
            p.cpu.muon(
                &mut param,
                &grad,
                &mut momentum,
                &mut scratch,
                rows,
                cols,
                hp,
            );
            p.gpu.muon(
                &mut gparam,
                &ggrad,
                &mut gmomentum,
                &mut gscratch,
                rows,
                cols,
                hp,
            );
        }
        p.same(&format!("muon param {rows}x{cols}"), &param, &gparam);
        p.same(
            &format!("muon momentum {rows}x{cols}"),
            &momentum,
            &gmomentum,
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (scripts/gpu-check.sh)"]
fn gpu_elementwise_ops_and_reductions_match_the_cpu() {
    let mut p = Pair::new();
    let n = 10_000;
    let (a, ga) = p.both(n);
    let (b, gb) = p.both(n);
    let (mut out, mut gout) = (vec![0.0; n], p.gpu.zeros(n).unwrap());
    p.cpu.add(&mut out, &a, &b);
    p.gpu.add(&mut gout, &ga, &gb);
    p.same("add", &out, &gout);
    p.cpu.add_assign(&mut out, &a);
    p.gpu.add_assign(&mut gout, &ga);
    p.same("add_assign", &out, &gout);
    let (s, gs) = (p.cpu.sum(&out), p.gpu.sum(&gout));
    assert!((s - gs).abs() < 1e-6 * (1.0 + s.abs()), "sum {s} vs {gs}");
    let (s, gs) = (p.cpu.sum_squares(&out), p.gpu.sum_squares(&gout));
    assert!((s - gs).abs() < 1e-6 * s, "sum_squares {s} vs {gs}");

    p.cpu
        .swiglu_forward(&mut out, Input::Full(&a), Input::Full(&b));
    p.gpu
        .swiglu_forward(&mut gout, Input::Full(&ga), Input::Full(&gb));
    p.same("swiglu_forward", &out, &gout);
    let (dout, gdout) = p.both(n);
    let (mut dgate, mut dup) = (p.random(n), p.random(n));
    let (mut gdgate, mut gdup) = (p.gpu.upload(&dgate).unwrap(), p.gpu.upload(&dup).unwrap());
    p.cpu.swiglu_backward(
        &mut dgate,
        &mut dup,
        &dout,
        Input::Full(&a),
        Input::Full(&b),
    );
    p.gpu.swiglu_backward(
        &mut gdgate,
        &mut gdup,
        &gdout,
        Input::Full(&ga),
        Input::Full(&gb),
    );
    p.same("swiglu_backward dgate", &dgate, &gdgate);
    p.same("swiglu_backward dup", &dup, &gdup);

    let (correction1, correction2) = AdamW::corrections(0.9, 0.95, 3);
    let hp = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        correction1,
        correction2,
        grad_scale: 0.75,
    };
    let (mut m, mut v) = (
        p.random(n),
        p.random(n).iter().map(|x| x * x).collect::<Vec<_>>(),
    );
    let (mut gm, mut gv) = (p.gpu.upload(&m).unwrap(), p.gpu.upload(&v).unwrap());
    let (mut param, mut gparam) = (a.clone(), ga.clone());
    p.cpu.adamw(&mut param, &b, &mut m, &mut v, hp);
    p.gpu.adamw(&mut gparam, &gb, &mut gm, &mut gv, hp);
    p.same("adamw param", &param, &gparam);
    p.same("adamw m", &m, &gm);
    p.same("adamw v", &v, &gv);

    let mut copy = p.gpu.zeros(n).unwrap();
    p.gpu.copy(&mut copy, &ga);
    p.same("copy", &a, &copy);
    let (row, grow) = p.both(16);
    let mut cache = p.gpu.zeros(64).unwrap();
    p.gpu.write_at(&mut cache, 32, &grow);
    let mut expected = vec![0.0; 64];
    expected[32..48].copy_from_slice(&row);
    p.same("write_at", &expected, &cache);
}

#[test]
#[ignore = "needs an NVIDIA GPU (scripts/gpu-check.sh)"]
fn gpu_embedding_norm_matmul_rope_and_loss_match_the_cpu() {
    let mut p = Pair::new();
    let (rows, c, vocab, oc) = (24, 96, 50, 72);
    let (tokens, gtokens) = p.tokens(rows, vocab as u64);
    let (table, gtable) = p.both(vocab * c);
    let (mut x, mut gx) = (vec![0.0; rows * c], p.gpu.zeros(rows * c).unwrap());
    p.cpu.embedding_forward(&mut x, &tokens, &table, c);
    p.gpu.embedding_forward(&mut gx, &gtokens, &gtable, c);
    p.same("embedding_forward", &x, &gx);
    let (dx, gdx) = p.both(rows * c);
    let (mut dtable, mut gdtable) = (table.clone(), gtable.clone());
    p.cpu.embedding_backward(&mut dtable, &tokens, &dx, c);
    p.gpu.embedding_backward(&mut gdtable, &gtokens, &gdx, c);
    p.same("embedding_backward", &dtable, &gdtable);

    let (w, gw) = p.both(c);
    let (mut out, mut gout) = (vec![0.0; rows * c], p.gpu.zeros(rows * c).unwrap());
    let (mut rstd, mut grstd) = (vec![0.0; rows], p.gpu.zeros(rows).unwrap());
    p.cpu.rmsnorm_forward(&mut out, &mut rstd, &x, &w, c, 1e-5);
    p.gpu
        .rmsnorm_forward(&mut gout, &mut grstd, &gx, &gw, c, 1e-5);
    p.same("rmsnorm_forward", &out, &gout);
    p.same("rmsnorm_forward rstd", &rstd, &grstd);
    let (mut ddx, mut dw) = (p.random(rows * c), p.random(c));
    let (mut gddx, mut gdw) = (p.gpu.upload(&ddx).unwrap(), p.gpu.upload(&dw).unwrap());
    p.cpu
        .rmsnorm_backward(&mut ddx, &mut dw, &dx, &x, &w, &rstd, c);
    p.gpu
        .rmsnorm_backward(&mut gddx, &mut gdw, &gdx, &gx, &gw, &grstd, c);
    p.same("rmsnorm_backward dx", &ddx, &gddx);
    p.same("rmsnorm_backward dw", &dw, &gdw);

    let ((mut y, mut gy), _) =
        matmul_against_the_cpu(&mut p, (&x, &gx), c, oc, Write::Accumulate, "");

    // 24 rows of 4 heads × 24: a batch of 3 sequences of 8.
    let (heads, head_dim, seq) = (4, 24, 8);
    let (mut r, mut gr) = (x.clone(), gx.clone());
    p.cpu.rope_forward(&mut r, seq, heads, head_dim, 10_000.0);
    p.gpu.rope_forward(&mut gr, seq, heads, head_dim, 10_000.0);
    p.same("rope_forward", &r, &gr);
    p.cpu.rope_backward(&mut r, seq, heads, head_dim, 10_000.0);
    p.gpu.rope_backward(&mut gr, seq, heads, head_dim, 10_000.0);
    p.same("rope_backward", &r, &gr);
    let (mut one, mut gone) = (x[..c].to_vec(), p.gpu.upload(&x[..c]).unwrap());
    p.cpu
        .rope_forward_at(&mut one, 37, heads, head_dim, 10_000.0);
    p.gpu
        .rope_forward_at(&mut gone, 37, heads, head_dim, 10_000.0);
    p.same("rope_forward_at", &one, &gone);

    let (targets, gtargets) = p.tokens(rows, oc as u64);
    let (mut losses, mut glosses) = (vec![0.0; rows], p.gpu.zeros(rows).unwrap());
    p.cpu
        .cross_entropy_fused(&mut losses, &mut y, &targets, oc, 1.0 / rows as f64);
    p.gpu
        .cross_entropy_fused(&mut glosses, &mut gy, &gtargets, oc, 1.0 / rows as f64);
    p.same("cross_entropy losses", &losses, &glosses);
    p.same("cross_entropy gradient", &y, &gy);
}

#[test]
#[ignore = "needs an NVIDIA GPU (scripts/gpu-check.sh)"]
fn gpu_attention_matches_the_cpu() {
    let mut p = Pair::new();
    let shape = AttentionShape {
        batch: 2,
        seq: 33,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
    };
    attention_against_the_cpu(&mut p, shape);

    // Decoding within one tile of the kernel's positions and over several (the last partial).
    decode_against_the_cpu(&mut p, shape, 1024, &[20, 700]);
}

/// A target outside the vocabulary (the CPU panics) reads nothing out of bounds: its row's loss
/// is NaN and its gradient the scaled softmax; the other rows are as usual.
#[test]
#[ignore = "needs an NVIDIA GPU (scripts/gpu-check.sh)"]
fn gpu_cross_entropy_of_a_target_outside_the_vocabulary_is_nan() {
    let mut p = Pair::new();
    let (rows, vocab) = (3, 40);
    let (mut logits, mut glogits) = p.both(rows * vocab);
    let targets = [5u32, vocab as u32, u32::MAX];
    let mut gtargets = p.gpu.tokens(rows).unwrap();
    p.gpu.upload_tokens(&mut gtargets, &targets).unwrap();
    let mut glosses = p.gpu.zeros(rows).unwrap();
    p.gpu
        .cross_entropy_fused(&mut glosses, &mut glogits, &gtargets, vocab, 0.5);
    let losses = p.gpu.download(&glosses).unwrap();
    assert!(losses[0].is_finite(), "{losses:?}");
    assert!(losses[1].is_nan() && losses[2].is_nan(), "{losses:?}");
    let (mut loss, mut first) = (vec![0.0], logits[..vocab].to_vec());
    p.cpu
        .cross_entropy_fused(&mut loss, &mut first, &vec![targets[0]], vocab, 0.5);
    let apart = (loss[0] - losses[0]).abs();
    assert!(apart <= 1e-4 * (1.0 + loss[0].abs()), "{loss:?} {losses:?}");
    logits[..vocab].copy_from_slice(&first);
    for row in logits[vocab..].chunks_mut(vocab) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|x| (x - max).exp()).sum();
        for x in row.iter_mut() {
            *x = (*x - max).exp() / sum * 0.5;
        }
    }
    p.same("cross_entropy gradient", &logits, &glogits);
}

/// bf16 rounding gives the CPU's bits exactly: ties to even both ways, NaNs (a signalling one
/// would round to infinity without their own case), infinities, overflow, subnormals.
#[test]
#[ignore = "needs an NVIDIA GPU (scripts/gpu-check.sh)"]
fn gpu_bf16_rounding_matches_the_cpu_bit_for_bit() {
    let mut p = Pair::new();
    let special = [
        0x3f80_8000u32, // 1 + 2⁻⁸: a tie, down to the even 1
        0x3f81_8000,    // a tie, up to the even neighbour
        0x3f80_8001,    // just above a tie
        0x3f80_7fff,    // just below a tie
        0x7f7f_ffff,    // f32::MAX: overflows to infinity
        0x7f80_0000,    // infinity
        0xff80_0000,    // -infinity
        0x7fc0_0000,    // quiet NaN
        0x7f80_0001,    // signalling NaN
        0xffff_ffff,    // NaN with every payload bit
        0x0000_0000,
        0x8000_0000, // -0
        0x0000_8000, // a subnormal tie, down to 0
        0x0001_8000, // a subnormal tie, up
        0x807f_ffff, // the largest negative subnormal: rounds to -MIN_POSITIVE
    ]
    .map(f32::from_bits);
    let mut values = special.to_vec();
    values.extend(p.random(10_000));
    let gvalues = p.gpu.upload(&values).unwrap();
    let mut half = p.cpu.half_zeros(values.len()).unwrap();
    let mut ghalf = p.gpu.half_zeros(values.len()).unwrap();
    p.cpu.round_to_half(&mut half, &values);
    p.gpu.round_to_half(&mut ghalf, &gvalues);
    let gbits = p.gpu.stream.clone_dtoh(&ghalf).unwrap();
    for (i, (h, g)) in half.iter().zip(&gbits).enumerate() {
        assert_eq!(h.to_bits(), *g, "[{i}] = {:#010x}", values[i].to_bits());
    }
    let widened = p.cpu.download_half(&half).unwrap();
    let gwidened = p.gpu.download_half(&ghalf).unwrap();
    for (i, (a, b)) in widened.iter().zip(&gwidened).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "widened [{i}]");
    }
}

/// The bf16 matmuls, forward and backward, equal the CPU's on random data, at a size through
/// `gemm` and at a decoding size; the bf16 results differ from the f32 ones by far more than the
/// tolerance, so skipping a rounding fails.
#[test]
#[ignore = "needs an NVIDIA GPU (scripts/gpu-check.sh)"]
fn gpu_half_matmuls_match_the_cpu() {
    let mut p = Pair::new();
    for (rows, ic, oc) in [(24, 96, 72), (1, 64, 40)] {
        let (x, gx) = p.both(rows * ic);
        let (weight, gweight) = p.both(oc * ic);
        let mut w = p.cpu.half_zeros(oc * ic).unwrap();
        let mut gw = p.gpu.half_zeros(oc * ic).unwrap();
        p.cpu.round_to_half(&mut w, &weight);
        p.gpu.round_to_half(&mut gw, &gweight);

        let (mut y, mut gy) = (vec![0.0; rows * oc], p.gpu.zeros(rows * oc).unwrap());
        p.cpu.matmul_forward_half(&mut y, &x, &w, ic, oc);
        p.gpu.matmul_forward_half(&mut gy, &gx, &gw, ic, oc);
        p.same("matmul_forward_half", &y, &gy);
        let mut y32 = vec![0.0; rows * oc];
        p.cpu.matmul_forward(&mut y32, &x, &weight, ic, oc);
        let apart = y.iter().zip(&y32).map(|(a, b)| (a - b).abs());
        assert!(apart.fold(0.0, f32::max) > 5e-3, "bf16 equals f32?");

        let (dy, gdy) = p.both(rows * oc);
        let (mut dinp, mut dweight) = (p.random(rows * ic), p.random(oc * ic));
        let (mut gdinp, mut gdweight) = (
            p.gpu.upload(&dinp).unwrap(),
            p.gpu.upload(&dweight).unwrap(),
        );
        p.cpu.matmul_backward_half(
            &mut dinp,
            &mut dweight,
            &dy,
            &x,
            &w,
            ic,
            oc,
            Write::Overwrite,
        );
        p.gpu.matmul_backward_half(
            &mut gdinp,
            &mut gdweight,
            &gdy,
            &gx,
            &gw,
            ic,
            oc,
            Write::Overwrite,
        );
        p.same("matmul_backward_half dinp", &dinp, &gdinp);
        p.same("matmul_backward_half dw", &dweight, &gdweight);
    }
}

/// Causal attention, forward and backward, and decoding over a cache nearly as long, GPU
/// against CPU at `shape`.
fn attention_against_the_cpu(p: &mut Pair, shape: AttentionShape) {
    let what = format!(
        "seq {} heads {} kv_heads {} head_dim {}",
        shape.seq, shape.heads, shape.kv_heads, shape.head_dim
    );
    let q_len = shape.batch * shape.seq * shape.heads * shape.head_dim;
    let kv_len = shape.batch * shape.seq * shape.kv_heads * shape.head_dim;
    let p_len = shape.batch * shape.heads * shape.seq * shape.seq;
    let (q, gq) = p.both(q_len);
    let (k, gk) = p.both(kv_len);
    let (v, gv) = p.both(kv_len);
    let (mut out, mut gout) = (vec![0.0; q_len], p.gpu.zeros(q_len).unwrap());
    let mut probs = Saved::Full(vec![0.0; p_len]);
    let mut gprobs = Saved::Full(p.gpu.zeros(p_len).unwrap());
    p.cpu
        .attention_forward(&mut out, &mut probs, &q, &k, &v, shape);
    p.gpu
        .attention_forward(&mut gout, &mut gprobs, &gq, &gk, &gv, shape);
    let (Saved::Full(probs_f), Saved::Full(gprobs_f)) = (&probs, &gprobs) else {
        unreachable!("made as floats above")
    };
    p.same(
        &format!("attention_forward probs, {what}"),
        probs_f,
        gprobs_f,
    );
    p.same(&format!("attention_forward out, {what}"), &out, &gout);

    let (dout, gdout) = p.both(q_len);
    // Random contents: the backward pass must overwrite them.
    let (mut dq, mut dk, mut dv) = (p.random(q_len), p.random(kv_len), p.random(kv_len));
    let (mut gdq, mut gdk, mut gdv) = (
        p.gpu.upload(&dq).unwrap(),
        p.gpu.upload(&dk).unwrap(),
        p.gpu.upload(&dv).unwrap(),
    );
    let mut scratch = vec![0.0; p.cpu.attention_scratch_len(shape)];
    let mut gscratch = p.gpu.zeros(p.gpu.attention_scratch_len(shape)).unwrap();
    p.cpu.attention_backward(
        &mut dq,
        &mut dk,
        &mut dv,
        &dout,
        AttentionKept {
            probs: probs.input(),
            q: Input::Full(&q),
            k: Input::Full(&k),
            v: Input::Full(&v),
        },
        &mut scratch,
        shape,
    );
    p.gpu.attention_backward(
        &mut gdq,
        &mut gdk,
        &mut gdv,
        &gdout,
        AttentionKept {
            probs: gprobs.input(),
            q: Input::Full(&gq),
            k: Input::Full(&gk),
            v: Input::Full(&gv),
        },
        &mut gscratch,
        shape,
    );
    p.same(&format!("attention_backward dq, {what}"), &dq, &gdq);
    p.same(&format!("attention_backward dk, {what}"), &dk, &gdk);
    p.same(&format!("attention_backward dv, {what}"), &dv, &gdv);

    // Decoding the last positions of a cache of `seq`, longer than one tile of the kernel's.
    decode_against_the_cpu(p, shape, shape.seq, &[shape.seq - 1, shape.seq]);
}

/// A linear layer from `ic` to `oc` features on the rows of `x`, forward and backward (`write`
/// for the input's gradient, which starts from random contents), GPU against CPU. Returns the
/// outputs and the gradient fed back, for the ops that follow.
#[allow(clippy::type_complexity)]
fn matmul_against_the_cpu(
    p: &mut Pair,
    (x, gx): (&Vec<f32>, &CudaSlice<f32>),
    ic: usize,
    oc: usize,
    write: Write,
    what: &str,
) -> ((Vec<f32>, CudaSlice<f32>), (Vec<f32>, CudaSlice<f32>)) {
    let rows = x.len() / ic;
    let (weight, gweight) = p.both(oc * ic);
    let (mut y, mut gy) = (vec![0.0; rows * oc], p.gpu.zeros(rows * oc).unwrap());
    p.cpu.matmul_forward(&mut y, x, &weight, ic, oc);
    p.gpu.matmul_forward(&mut gy, gx, &gweight, ic, oc);
    p.same(&format!("matmul_forward{what}"), &y, &gy);
    let (dy, gdy) = p.both(rows * oc);
    let (mut dinp, mut dweight) = (p.random(rows * ic), p.random(oc * ic));
    let (mut gdinp, mut gdweight) = (
        p.gpu.upload(&dinp).unwrap(),
        p.gpu.upload(&dweight).unwrap(),
    );
    p.cpu
        .matmul_backward(&mut dinp, &mut dweight, &dy, x, &weight, ic, oc, write);
    p.gpu
        .matmul_backward(&mut gdinp, &mut gdweight, &gdy, gx, &gweight, ic, oc, write);
    p.same(&format!("matmul_backward dinp{what}"), &dinp, &gdinp);
    p.same(&format!("matmul_backward dw{what}"), &dweight, &gdweight);
    ((y, gy), (dy, gdy))
}

/// Decoding one query over the first `len` positions of a cache of `positions` (for each of
/// `lens`), GPU against CPU, into an output that held garbage.
fn decode_against_the_cpu(p: &mut Pair, shape: AttentionShape, positions: usize, lens: &[usize]) {
    let (h, kvh, hd) = (shape.heads, shape.kv_heads, shape.head_dim);
    let cache_len = positions * kvh * hd;
    let (k_cache, gk_cache) = p.both(cache_len);
    let (v_cache, gv_cache) = p.both(cache_len);
    for &len in lens {
        let (one, gone) = p.both(h * hd);
        let (mut o, mut go) = p.both(h * hd);
        p.cpu
            .attention_decode(&mut o, &one, &k_cache, &v_cache, len, h, kvh, hd);
        p.gpu
            .attention_decode(&mut go, &gone, &gk_cache, &gv_cache, len, h, kvh, hd);
        let what = format!("attention_decode over {len} of {positions}, {h}/{kvh} heads of {hd}");
        p.same(&what, &o, &go);
    }
}

/// The shapes the small tests above do not reach, at training sizes: attention at seq 1024
/// (four times the tutorial's, stories110M's context), head_dim 64, heads == kv_heads
/// (stories110M) and grouped (4 query heads per kv head), two sequences; then the rest of a
/// layer's ops over those 2048 rows: RoPE at positions up to 1023, RMSNorm, the matmuls of a
/// 256-wide layer, SwiGLU, and the loss over a 32000-token vocabulary.
#[test]
#[ignore = "needs an NVIDIA GPU (scripts/gpu-check.sh)"]
fn gpu_attention_and_layer_ops_match_the_cpu_at_seq_1024() {
    let mut p = Pair::new();
    for (heads, kv_heads) in [(4, 4), (8, 2)] {
        let shape = AttentionShape {
            batch: 2,
            seq: 1024,
            heads,
            kv_heads,
            head_dim: 64,
        };
        attention_against_the_cpu(&mut p, shape);
    }

    let (seq, heads, head_dim) = (1024, 4, 64);
    let c = heads * head_dim;
    let rows = 2 * seq;
    let (x, gx) = p.both(rows * c);
    let (mut r, mut gr) = (x.clone(), gx.clone());
    p.cpu.rope_forward(&mut r, seq, heads, head_dim, 10_000.0);
    p.gpu.rope_forward(&mut gr, seq, heads, head_dim, 10_000.0);
    p.same("rope_forward, seq 1024", &r, &gr);
    p.cpu.rope_backward(&mut r, seq, heads, head_dim, 10_000.0);
    p.gpu.rope_backward(&mut gr, seq, heads, head_dim, 10_000.0);
    p.same("rope_backward, seq 1024", &r, &gr);
    let (mut one, mut gone) = (x[..c].to_vec(), p.gpu.upload(&x[..c]).unwrap());
    p.cpu
        .rope_forward_at(&mut one, seq - 1, heads, head_dim, 10_000.0);
    p.gpu
        .rope_forward_at(&mut gone, seq - 1, heads, head_dim, 10_000.0);
    p.same("rope_forward_at 1023", &one, &gone);

    let (w, gw) = p.both(c);
    let (mut normed, mut gnormed) = (vec![0.0; rows * c], p.gpu.zeros(rows * c).unwrap());
    let (mut rstd, mut grstd) = (vec![0.0; rows], p.gpu.zeros(rows).unwrap());
    p.cpu
        .rmsnorm_forward(&mut normed, &mut rstd, &x, &w, c, 1e-5);
    p.gpu
        .rmsnorm_forward(&mut gnormed, &mut grstd, &gx, &gw, c, 1e-5);
    p.same("rmsnorm_forward, 2048 rows", &normed, &gnormed);
    p.same("rmsnorm_forward rstd, 2048 rows", &rstd, &grstd);
    let (dnormed, gdnormed) = p.both(rows * c);
    let (mut dx, mut dw) = (p.random(rows * c), p.random(c));
    let (mut gdx, mut gdw) = (p.gpu.upload(&dx).unwrap(), p.gpu.upload(&dw).unwrap());
    p.cpu
        .rmsnorm_backward(&mut dx, &mut dw, &dnormed, &x, &w, &rstd, c);
    p.gpu
        .rmsnorm_backward(&mut gdx, &mut gdw, &gdnormed, &gx, &gw, &grstd, c);
    p.same("rmsnorm_backward dx, 2048 rows", &dx, &gdx);
    p.same("rmsnorm_backward dw, 2048 rows", &dw, &gdw);

    // The SwiGLU projection of a 256-wide layer (hidden 688), forward and backward.
    let hidden = 688;
    let what = " 256 -> 688, 2048 rows";
    let ((y, gy), (dy, gdy)) = matmul_against_the_cpu(
        &mut p,
        (&normed, &gnormed),
        c,
        hidden,
        Write::Overwrite,
        what,
    );

    let n = rows * hidden;
    let (up, gup) = p.both(n);
    let (mut act, mut gact) = (vec![0.0; n], p.gpu.zeros(n).unwrap());
    p.cpu
        .swiglu_forward(&mut act, Input::Full(&y), Input::Full(&up));
    p.gpu
        .swiglu_forward(&mut gact, Input::Full(&gy), Input::Full(&gup));
    p.same("swiglu_forward, 2048 rows", &act, &gact);
    let (mut dgate, mut dup) = (p.random(n), p.random(n));
    let (mut gdgate, mut gdup) = (p.gpu.upload(&dgate).unwrap(), p.gpu.upload(&dup).unwrap());
    p.cpu
        .swiglu_backward(&mut dgate, &mut dup, &dy, Input::Full(&y), Input::Full(&up));
    p.gpu.swiglu_backward(
        &mut gdgate,
        &mut gdup,
        &gdy,
        Input::Full(&gy),
        Input::Full(&gup),
    );
    p.same("swiglu_backward dgate, 2048 rows", &dgate, &gdgate);
    p.same("swiglu_backward dup, 2048 rows", &dup, &gdup);

    // The loss over stories110M's vocabulary, a row longer than any block.
    let (loss_rows, vocab) = (64, 32_000);
    let (mut logits, mut glogits) = p.both(loss_rows * vocab);
    let (targets, gtargets) = p.tokens(loss_rows, vocab as u64);
    let (mut losses, mut glosses) = (vec![0.0; loss_rows], p.gpu.zeros(loss_rows).unwrap());
    let scale = 1.0 / loss_rows as f64;
    p.cpu
        .cross_entropy_fused(&mut losses, &mut logits, &targets, vocab, scale);
    p.gpu
        .cross_entropy_fused(&mut glosses, &mut glogits, &gtargets, vocab, scale);
    p.same("cross_entropy losses, vocab 32000", &losses, &glosses);
    p.same("cross_entropy gradient, vocab 32000", &logits, &glogits);
}
