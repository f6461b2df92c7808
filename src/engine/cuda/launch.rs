//! One typed launch method per kernel of `kernels.cu`, generated from a single table that also
//! serves the tests: they check it against the kernels' C signatures, and against the parameter
//! layout and launch bounds of the compiled cubin, so an argument of the wrong type, in the wrong
//! order or missing is a failing test rather than garbage on the GPU.

use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut, DriverError,
    LaunchArgs, LaunchConfig, PushKernelArg,
};

/// Threads per block of the row kernels (`BLOCK` in `kernels.cu`).
pub const BLOCK: u32 = 256;
/// Threads per block of the one-thread-per-element kernels (`ELEMENTWISE` in `kernels.cu`).
pub const ELEMENTWISE: u32 = 256;
/// Threads per block of the column reductions: 32 columns by 32 row lanes (`TILE_BLOCK`).
pub const TILE_BLOCK: u32 = 1024;
/// The token residues of `embedding_backward` (`EMBED_PARTS` in `kernels.cu`): a warp of its
/// blocks owns one, so a block of [`BLOCK`] threads covers `BLOCK / 32` of them.
const EMBED_PARTS: usize = 64;
/// Blocks of `sum_partials` for a buffer of `n` floats: one per 16 blocks' worth of elements, at
/// most [`MAX_PARTIALS`], so that a large buffer spreads over the GPU and the grid (which fixes
/// the order of the sum) depends on `n` alone.
pub fn partial_blocks(n: usize) -> usize {
    n.div_ceil(16 * BLOCK as usize).clamp(1, MAX_PARTIALS)
}
/// The most partial sums one buffer leaves.
pub const MAX_PARTIALS: usize = 256;

/// A device buffer of `T`s that a kernel reads (a `const T*`).
pub trait In<T> {
    fn push<'a>(&'a self, args: &mut LaunchArgs<'a>);
}

/// A device buffer of `T`s that a kernel writes (a `T*`).
pub trait Out<T> {
    fn push<'a>(&'a mut self, args: &mut LaunchArgs<'a>);
}

impl<T> In<T> for CudaSlice<T> {
    fn push<'a>(&'a self, args: &mut LaunchArgs<'a>) {
        args.arg(self);
    }
}
impl<T> In<T> for CudaView<'_, T> {
    fn push<'a>(&'a self, args: &mut LaunchArgs<'a>) {
        args.arg(self);
    }
}
impl<T> Out<T> for CudaSlice<T> {
    fn push<'a>(&'a mut self, args: &mut LaunchArgs<'a>) {
        args.arg(self);
    }
}
impl<T> Out<T> for CudaViewMut<'_, T> {
    fn push<'a>(&'a mut self, args: &mut LaunchArgs<'a>) {
        args.arg(self);
    }
}

/// A kernel as the table declares it, for the tests.
#[cfg(test)]
#[derive(Debug)]
pub struct KernelSpec {
    pub name: &'static str,
    /// (name, C type) of each parameter, in order.
    pub params: &'static [(&'static str, &'static str)],
    /// Threads per block of every launch, and the kernel's `__launch_bounds__`.
    pub block: u32,
}

/// The C type of a parameter kind of the table.
#[cfg(test)]
macro_rules! c_type {
    (f32_mut) => {
        "float*"
    };
    (f32_ref) => {
        "const float*"
    };
    (f64_mut) => {
        "double*"
    };
    (f64_ref) => {
        "const double*"
    };
    (u16_mut) => {
        "unsigned short*"
    };
    (u16_ref) => {
        "const unsigned short*"
    };
    (u32_ref) => {
        "const unsigned int*"
    };
    (i32) => {
        "int"
    };
    (i64) => {
        "long long"
    };
    (f32) => {
        "float"
    };
    (f64) => {
        "double"
    };
}

/// The Rust argument type of a parameter kind.
macro_rules! arg_type {
    (f32_mut) => { &mut impl Out<f32> };
    (f32_ref) => { &impl In<f32> };
    (f64_mut) => { &mut impl Out<f64> };
    (f64_ref) => { &impl In<f64> };
    (u16_mut) => { &mut impl Out<u16> };
    (u16_ref) => { &impl In<u16> };
    (u32_ref) => { &impl In<u32> };
    (i32) => { i32 };
    (i64) => { i64 };
    (f32) => { f32 };
    (f64) => { f64 };
}

/// Pushes argument `$arg` of kind `$kind` onto the launch `$args`.
macro_rules! push {
    (i32, $args:ident, $arg:ident) => {
        $args.arg(&$arg)
    };
    (i64, $args:ident, $arg:ident) => {
        $args.arg(&$arg)
    };
    (f32, $args:ident, $arg:ident) => {
        $args.arg(&$arg)
    };
    (f64, $args:ident, $arg:ident) => {
        $args.arg(&$arg)
    };
    ($buffer:ident, $args:ident, $arg:ident) => {
        $arg.push(&mut $args)
    };
}

macro_rules! kernels {
    ($($name:ident($($param:ident: $kind:ident),+ $(,)?) block $block:ident;)+) => {
        /// Every kernel of the table, as the tests see it.
        #[cfg(test)]
        pub const KERNELS: &[KernelSpec] = &[$(KernelSpec {
            name: stringify!($name),
            params: &[$((stringify!($param), c_type!($kind))),+],
            block: $block,
        }),+];

        /// Every kernel of `kernels.cu`, loaded when a `Cuda` is made.
        pub const KERNEL_NAMES: &[&str] = &[$(stringify!($name)),+];

        /// The loaded kernels, each launched by the method of its name on `grid` blocks of its
        /// table's block size; arguments in the kernel's order.
        pub struct Kernels {
            stream: Arc<CudaStream>,
            $($name: CudaFunction,)+
        }

        impl Kernels {
            pub fn load(module: &Arc<CudaModule>, stream: Arc<CudaStream>) -> Result<Kernels, DriverError> {
                Ok(Kernels {
                    stream,
                    $($name: module.load_function(stringify!($name))?,)+
                })
            }

            $(
                #[allow(clippy::too_many_arguments)]
                pub fn $name(&self, grid: usize, $($param: arg_type!($kind)),+) {
                    let Some(config) = config(grid, $block) else {
                        return;
                    };
                    let mut args = self.stream.launch_builder(&self.$name);
                    $(push!($kind, args, $param);)+
                    // SAFETY: the argument types are the kernel's in kernels.cu (tests.rs checks
                    // the table against its signatures and the cubin's parameter layout), and the
                    // callers size the grid from the buffers' shapes, as the Backend contract
                    // fixes them, so the kernel stays inside the buffers.
                    unsafe { args.launch(config) }
                        .unwrap_or_else(|e| panic!("CUDA kernel {} failed: {e}", stringify!($name)));
                }
            )+
        }
    };
}

/// `grid` blocks of `block` threads; None for an empty grid, which is a launch error in CUDA:
/// with nothing to do, nothing is launched.
fn config(grid: usize, block: u32) -> Option<LaunchConfig> {
    if grid == 0 {
        return None;
    }
    let grid = u32::try_from(grid).unwrap_or_else(|_| panic!("{grid} CUDA blocks are too many"));
    Some(LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Blocks of [`ELEMENTWISE`] threads for one thread per element of `n`.
pub fn elementwise(n: usize) -> usize {
    n.div_ceil(ELEMENTWISE as usize)
}

/// Blocks of [`TILE_BLOCK`] threads for `rmsnorm_backward_dw` over `c` columns.
pub fn column_tiles(c: usize) -> usize {
    c.div_ceil(32)
}

/// Blocks of `embedding_backward` over `c` columns: every column tile for every group of
/// `BLOCK / 32` token residues.
pub fn embedding_backward_blocks(c: usize) -> usize {
    c.div_ceil(32) * (EMBED_PARTS / (BLOCK as usize / 32))
}

// In the order of kernels.cu, which the tests check.
kernels! {
    add(out: f32_mut, a: f32_ref, b: f32_ref, n: i64) block ELEMENTWISE;
    add_assign(acc: f32_mut, x: f32_ref, n: i64) block ELEMENTWISE;
    swiglu_forward(out: f32_mut, gate: f32_ref, up: f32_ref, n: i64) block ELEMENTWISE;
    swiglu_backward(
        dgate: f32_mut, dup: f32_mut, dout: f32_ref, gate: f32_ref, up: f32_ref, n: i64,
    ) block ELEMENTWISE;
    adamw(
        param: f32_mut, grad: f32_ref, m: f32_mut, v: f32_mut, lr: f32, beta1: f32, beta2: f32,
        eps: f32, decay: f32, correction1: f32, correction2: f32, grad_scale: f32, n: i64,
    ) block ELEMENTWISE;
    muon_momentum(
        buf: f32_mut, grad: f32_ref, update: f32_mut, momentum: f32, nesterov: i32,
        grad_scale: f32, n: i64,
    ) block ELEMENTWISE;
    muon_normalize(x: f32_mut, sum_squares: f64_ref, n: i64) block ELEMENTWISE;
    muon_apply(param: f32_mut, update: f32_ref, decay: f32, step: f32, n: i64) block ELEMENTWISE;
    sum_partials(partials: f64_mut, x: f32_ref, n: i64, squares: i32) block BLOCK;
    sum_doubles(out: f64_mut, partials: f64_ref, n: i32) block BLOCK;
    round_to_bf16(dst: u16_mut, src: f32_ref, n: i64) block ELEMENTWISE;
    widen_bf16(dst: f32_mut, src: u16_ref, n: i64) block ELEMENTWISE;
    embedding_forward(
        out: f32_mut, tokens: u32_ref, table: f32_ref, c: i32, vocab: i32,
    ) block BLOCK;
    embedding_backward(
        dtable: f32_mut, tokens: u32_ref, dout: f32_ref, rows: i32, c: i32, vocab: i32,
    ) block BLOCK;
    rmsnorm_forward(
        out: f32_mut, rstd: f32_mut, x: f32_ref, w: f32_ref, c: i32, eps: f32,
    ) block BLOCK;
    rmsnorm_backward_dx(
        dx: f32_mut, dout: f32_ref, x: f32_ref, w: f32_ref, rstd: f32_ref, c: i32,
    ) block BLOCK;
    rmsnorm_backward_dw(
        dw: f32_mut, dout: f32_ref, x: f32_ref, rstd: f32_ref, rows: i32, c: i32,
    ) block TILE_BLOCK;
    rope(
        x: f32_mut, rows: i64, seq: i32, start: i32, heads: i32, head_dim: i32, theta: f64,
        sign: f32,
    ) block ELEMENTWISE;
    split_heads(
        dst: f32_mut, src: f32_ref, batch: i32, seq: i32, heads: i32, src_heads: i32,
        head_dim: i32,
    ) block ELEMENTWISE;
    merge_heads(
        dst: f32_mut, src: f32_ref, batch: i32, seq: i32, heads: i32, dst_heads: i32,
        head_dim: i32,
    ) block ELEMENTWISE;
    causal_softmax(probs: f32_mut, seq: i32) block BLOCK;
    causal_softmax_backward(dscores: f32_mut, probs: f32_ref, seq: i32) block BLOCK;
    attention_decode(
        out: f32_mut, q: f32_ref, k_cache: f32_ref, v_cache: f32_ref, len: i32, heads: i32,
        kv_heads: i32, head_dim: i32, scale: f32,
    ) block BLOCK;
    cross_entropy_fused(
        losses: f32_mut, logits: f32_mut, targets: u32_ref, vocab: i32, grad_scale: f32,
    ) block BLOCK;
}
