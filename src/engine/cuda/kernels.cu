// The CUDA backend's kernels: one per op of the CPU backend (src/engine/cpu/), same layouts and
// the same formulas, in f32. Compiled at run time by NVRTC (src/engine/cuda/mod.rs); matmuls go
// to cuBLAS instead. Forward kernels overwrite their outputs, backward kernels accumulate (+=)
// into the gradients, as the Backend trait asks.
//
// Row kernels run one block of BLOCK threads per row and reduce through shared memory, so their
// sums are in a fixed order (the same bits on every run). Every kernel declares the block size
// of its launch (src/engine/cuda/launch.rs) as __launch_bounds__, so that the compiler keeps to
// the registers that size allows; tests.rs checks both against the compiled cubin.

#define BLOCK 256
// One thread per element.
#define ELEMENTWISE 256
// 32 columns by TILE_BLOCK / 32 row lanes: column reductions over many rows.
#define TILE_BLOCK 1024
// NVRTC has no <math.h>: negative infinity and a quiet NaN from their bits.
#define NEG_INF __int_as_float(0xff800000)
#define QUIET_NAN __int_as_float(0x7fc00000)

// Sum of `value` over the block; every thread gets the result. `shared` holds BLOCK floats.
__device__ float block_sum(float value, float* shared) {
    shared[threadIdx.x] = value;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) {
            shared[threadIdx.x] += shared[threadIdx.x + stride];
        }
        __syncthreads();
    }
    float total = shared[0];
    __syncthreads();
    return total;
}

__device__ float block_max(float value, float* shared) {
    shared[threadIdx.x] = value;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) {
            shared[threadIdx.x] = fmaxf(shared[threadIdx.x], shared[threadIdx.x + stride]);
        }
        __syncthreads();
    }
    float total = shared[0];
    __syncthreads();
    return total;
}

// ---------------------------------------------------------------------------------------------
// Elementwise

extern "C" __global__ void __launch_bounds__(ELEMENTWISE)
add(float* out, const float* a, const float* b, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

extern "C" __global__ void __launch_bounds__(ELEMENTWISE)
add_assign(float* acc, const float* x, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) acc[i] += x[i];
}

// out = silu(gate) * up
extern "C" __global__ void __launch_bounds__(ELEMENTWISE)
swiglu_forward(float* out, const float* gate, const float* up, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = gate[i];
        float sig = 1.0f / (1.0f + expf(-g));
        out[i] = g * sig * up[i];
    }
}

extern "C" __global__ void __launch_bounds__(ELEMENTWISE)
swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = gate[i];
        float sig = 1.0f / (1.0f + expf(-g));
        float silu = g * sig;
        dup[i] = dout[i] * silu;
        dgate[i] = dout[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
    }
}

// One AdamW step (decoupled weight decay); corrections are 1 - beta^step; the gradient is read
// times grad_scale (gradient clipping's factor, 1 for none).
extern "C" __global__ void __launch_bounds__(ELEMENTWISE)
adamw(float* param, const float* grad, float* m, float* v, float lr, float beta1, float beta2,
      float eps, float decay, float correction1, float correction2, float grad_scale, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = grad[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float m_hat = mi / correction1;
        float v_hat = vi / correction2;
        param[i] = param[i] * decay - lr * m_hat / (sqrtf(v_hat) + eps);
    }
}

// Muon's momentum: buf = momentum * buf + g with g = grad * grad_scale (clipping's factor); the
// update is g + momentum * buf (Nesterov) or buf.
extern "C" __global__ void __launch_bounds__(ELEMENTWISE)
muon_momentum(float* buf, const float* grad, float* update, float momentum, int nesterov,
              float grad_scale, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = grad[i] * grad_scale;
        float b = momentum * buf[i] + g;
        buf[i] = b;
        update[i] = nesterov ? g + momentum * b : b;
    }
}

// x /= (sqrt(sum_squares[0]) + 1e-7), the norm computed on the device (no round trip).
extern "C" __global__ void __launch_bounds__(ELEMENTWISE)
muon_normalize(float* x, const double* sum_squares, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= (float)(1.0 / (sqrt(sum_squares[0]) + 1e-7));
}

// param = param * decay - step * update (decoupled weight decay, then Muon's step).
extern "C" __global__ void __launch_bounds__(ELEMENTWISE)
muon_apply(float* param, const float* update, float decay, float step, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) param[i] = param[i] * decay - step * update[i];
}

// Sums in f64 by many blocks, in a fixed order: `sum_partials` leaves one partial sum per block,
// over a grid-strided slice of x whose shape depends only on n and the grid (the host fixes the
// grid from n), and `sum_doubles` adds the partials of one or many buffers in one block. The same
// bits on every run, without atomics, and without serialising a large buffer on one block.

// Block sum of f64 values; thread 0 gets it. `shared` holds BLOCK doubles.
__device__ double block_sum_f64(double value, double* shared) {
    shared[threadIdx.x] = value;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
        __syncthreads();
    }
    return shared[0];
}

// partials[block] = Σ x (squares = 0) or Σ x² (squares = 1) over the block's grid-strided slice.
extern "C" __global__ void __launch_bounds__(BLOCK)
sum_partials(double* partials, const float* x, long long n, int squares) {
    __shared__ double shared[BLOCK];
    double acc = 0.0;
    for (long long i = (long long)blockIdx.x * BLOCK + threadIdx.x; i < n;
         i += (long long)gridDim.x * BLOCK) {
        double value = (double)x[i];
        acc += squares ? value * value : value;
    }
    double total = block_sum_f64(acc, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// out[0] = Σ partials[0..n], by one block.
extern "C" __global__ void __launch_bounds__(BLOCK)
sum_doubles(double* out, const double* partials, int n) {
    __shared__ double shared[BLOCK];
    double acc = 0.0;
    for (int i = threadIdx.x; i < n; i += BLOCK) acc += partials[i];
    double total = block_sum_f64(acc, shared);
    if (threadIdx.x == 0) out[0] = total;
}

// ---------------------------------------------------------------------------------------------
// bf16, as its bits in an unsigned short (NVRTC without the CUDA headers has no __nv_bfloat16).
// The same rounding as the `half` crate's, which the CPU backend uses: to nearest, ties to even;
// a NaN stays a NaN (quiet), which plain rounding could carry into an infinity.

__device__ unsigned short bf16_bits(float x) {
    unsigned int bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((bits >> 16) | 0x0040u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (unsigned short)(bits >> 16);
}

__device__ float bf16_widen(unsigned short h) { return __uint_as_float((unsigned int)h << 16); }

extern "C" __global__ void __launch_bounds__(ELEMENTWISE)
round_to_bf16(unsigned short* dst, const float* src, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = bf16_bits(src[i]);
}

extern "C" __global__ void __launch_bounds__(ELEMENTWISE)
widen_bf16(float* dst, const unsigned short* src, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = bf16_widen(src[i]);
}

// ---------------------------------------------------------------------------------------------
// Embedding

// out[r] = table[tokens[r]]; one block per row. A token outside the table (which the CPU
// backend refuses with a panic) leaves its row untouched rather than reading out of bounds.
extern "C" __global__ void __launch_bounds__(BLOCK)
embedding_forward(float* out, const unsigned int* tokens, const float* table, int c, int vocab) {
    long long r = blockIdx.x;
    unsigned int token = tokens[r];
    if (token >= (unsigned int)vocab) return;
    const float* row = table + (long long)token * c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) out[r * c + j] = row[j];
}

// dtable[tokens[r]] += dout[r], deterministically and without atomics: each (token, column) has
// one owner thread, which walks the rows in order, so rows with the same token add up in a fixed
// order. Warp w of a block owns the tokens of one of EMBED_PARTS residues (token % EMBED_PARTS)
// and lane l the column 32·tile + l; block b is column tile b / (EMBED_PARTS / 8) and residues
// 8·(b % (EMBED_PARTS / 8)) onwards. The block stages BLOCK tokens at a time in shared memory;
// a warp's branch on a token is uniform, so nothing diverges.
#define EMBED_PARTS 64
extern "C" __global__ void __launch_bounds__(BLOCK)
embedding_backward(float* dtable, const unsigned int* tokens, const float* dout, int rows, int c,
                   int vocab) {
    __shared__ unsigned int staged[BLOCK];
    const int warps = BLOCK / 32;
    const int groups = EMBED_PARTS / warps;
    int tile = blockIdx.x / groups;
    unsigned int part = (blockIdx.x % groups) * warps + threadIdx.x / 32;
    int j = tile * 32 + threadIdx.x % 32;
    for (int start = 0; start < rows; start += BLOCK) {
        int r = start + threadIdx.x;
        staged[threadIdx.x] = r < rows ? tokens[r] : 0xffffffffu;
        __syncthreads();
        int count = min(BLOCK, rows - start);
        for (int i = 0; i < count; i++) {
            unsigned int token = staged[i];
            if (token < (unsigned int)vocab && token % EMBED_PARTS == part && j < c) {
                dtable[(long long)token * c + j] += dout[(long long)(start + i) * c + j];
            }
        }
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

extern "C" __global__ void __launch_bounds__(BLOCK)
rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int c, float eps) {
    __shared__ float shared[BLOCK];
    long long r = blockIdx.x;
    const float* xr = x + r * c;
    float acc = 0.0f;
    for (int j = threadIdx.x; j < c; j += BLOCK) acc += xr[j] * xr[j];
    float mean_square = block_sum(acc, shared) / (float)c;
    float inv = 1.0f / sqrtf(mean_square + eps);
    if (threadIdx.x == 0) rstd[r] = inv;
    for (int j = threadIdx.x; j < c; j += BLOCK) out[r * c + j] = xr[j] * inv * w[j];
}

// dx += r·g − r³/c · x · Σ(g·x) with g = dout·w; one block per row.
extern "C" __global__ void __launch_bounds__(BLOCK)
rmsnorm_backward_dx(float* dx, const float* dout, const float* x, const float* w, const float* rstd,
                    int c) {
    __shared__ float shared[BLOCK];
    long long r = blockIdx.x;
    const float* xr = x + r * c;
    const float* dr = dout + r * c;
    float acc = 0.0f;
    for (int j = threadIdx.x; j < c; j += BLOCK) acc += dr[j] * w[j] * xr[j];
    float gx = block_sum(acc, shared);
    float inv = rstd[r];
    float k = inv * inv * inv * gx / (float)c;
    for (int j = threadIdx.x; j < c; j += BLOCK) dx[r * c + j] += inv * dr[j] * w[j] - k * xr[j];
}

// dw += Σ_rows dout·x·r. A block of TILE_BLOCK threads owns 32 columns: lane l is column
// 32·blockIdx + l (coalesced rows), and its TILE_BLOCK / 32 row lanes each sum every
// (TILE_BLOCK / 32)-th row before one thread per column adds the lanes in order.
extern "C" __global__ void __launch_bounds__(TILE_BLOCK)
rmsnorm_backward_dw(float* dw, const float* dout, const float* x, const float* rstd, int rows,
                    int c) {
    const int lanes = TILE_BLOCK / 32;
    __shared__ float partial[TILE_BLOCK / 32][33];
    int column = threadIdx.x % 32;
    int lane = threadIdx.x / 32;
    int j = blockIdx.x * 32 + column;
    float acc = 0.0f;
    if (j < c) {
        for (int r = lane; r < rows; r += lanes) {
            long long at = (long long)r * c + j;
            acc += dout[at] * x[at] * rstd[r];
        }
    }
    partial[lane][column] = acc;
    __syncthreads();
    if (lane == 0 && j < c) {
        float total = 0.0f;
        for (int k = 0; k < lanes; k++) total += partial[k][column];
        dw[j] += total;
    }
}

// ---------------------------------------------------------------------------------------------
// Rotary embeddings, Hugging Face's rotate_half layout: element d pairs with d + head_dim/2,
// rotated by position · theta^(-2d/head_dim). Row r is at position start + r mod seq; sign -1
// rotates back (the backward pass). One thread per (row, head, pair).

extern "C" __global__ void __launch_bounds__(ELEMENTWISE)
rope(float* x, long long rows, int seq, int start, int heads, int head_dim, double theta,
     float sign) {
    int half = head_dim / 2;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = rows * heads * half;
    if (i >= total) return;
    int d = (int)(i % half);
    long long head_row = i / half;
    long long row = head_row / heads;
    long long position = start + row % seq;
    double inv_freq = 1.0 / pow(theta, (double)(2 * d) / (double)head_dim);
    double angle = (double)position * inv_freq;
    float cos_a = (float)cos(angle);
    float sin_a = sign * (float)sin(angle);
    float* head = x + head_row * head_dim;
    float a = head[d];
    float b = head[d + half];
    head[d] = a * cos_a - b * sin_a;
    head[d + half] = b * cos_a + a * sin_a;
}

// ---------------------------------------------------------------------------------------------
// Causal grouped-query attention. q, out: [batch, seq, heads, head_dim]; k, v: [batch, seq,
// kv_heads, head_dim]; probs: [batch, heads, seq, seq] with zeros above the diagonal. The
// products are cuBLAS's (strided-batched GEMMs over every (batch, head), src/engine/cuda/gemm.rs),
// on heads-first copies [batch, heads, seq, head_dim] these kernels make and undo; the softmax
// and its backward pass are row kernels.

// dst[b, h, t, :] = src[b, t, h / (heads / src_heads), :]: a [batch, seq, src_heads, head_dim]
// tensor heads-first, each key/value head repeated for the query heads of its group. One thread
// per element of dst.
extern "C" __global__ void __launch_bounds__(ELEMENTWISE)
split_heads(float* dst, const float* src, int batch, int seq, int heads, int src_heads,
               int head_dim) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)batch * heads * seq * head_dim) return;
    int d = (int)(i % head_dim);
    int t = (int)((i / head_dim) % seq);
    int h = (int)((i / ((long long)head_dim * seq)) % heads);
    long long b = i / ((long long)head_dim * seq * heads);
    int g = h / (heads / src_heads);
    dst[i] = src[((b * seq + t) * src_heads + g) * head_dim + d];
}

// dst[b, t, g, :] = Σ_j src[b, g·group + j, t, :] over the group's heads j in order (group =
// heads / dst_heads): a heads-first gradient back in [batch, seq, dst_heads, head_dim], the
// repeated key/value heads summed. Overwrites dst. One thread per element of dst.
extern "C" __global__ void __launch_bounds__(ELEMENTWISE)
merge_heads(float* dst, const float* src, int batch, int seq, int heads, int dst_heads,
                 int head_dim) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)batch * seq * dst_heads * head_dim) return;
    int d = (int)(i % head_dim);
    int g = (int)((i / head_dim) % dst_heads);
    int t = (int)((i / ((long long)head_dim * dst_heads)) % seq);
    long long b = i / ((long long)head_dim * dst_heads * seq);
    int group = heads / dst_heads;
    float acc = 0.0f;
    for (int j = 0; j < group; j++) {
        acc += src[((b * heads + g * group + j) * seq + t) * head_dim + d];
    }
    dst[i] = acc;
}

// In place, row t of each [seq, seq] matrix of already scaled scores becomes its softmax over
// the positions t2 <= t, and zeros above the diagonal. One block per (batch, head, t) row.
extern "C" __global__ void __launch_bounds__(BLOCK)
causal_softmax(float* probs, int seq) {
    __shared__ float shared[BLOCK];
    int t = blockIdx.x % seq;
    float* row = probs + (long long)blockIdx.x * seq;
    float local_max = NEG_INF;
    for (int t2 = threadIdx.x; t2 <= t; t2 += BLOCK) local_max = fmaxf(local_max, row[t2]);
    float max = block_max(local_max, shared);
    float local_sum = 0.0f;
    for (int t2 = threadIdx.x; t2 <= t; t2 += BLOCK) {
        float e = expf(row[t2] - max);
        row[t2] = e;
        local_sum += e;
    }
    float inv = 1.0f / block_sum(local_sum, shared);
    for (int t2 = threadIdx.x; t2 < seq; t2 += BLOCK) {
        row[t2] = t2 <= t ? row[t2] * inv : 0.0f;
    }
}

// In place over the gradient of the probabilities dP, the gradient of the scores:
// dS = P ⊙ (dP − Σ P ⊙ dP), row by row, zeros above the diagonal. One block per row.
extern "C" __global__ void __launch_bounds__(BLOCK)
causal_softmax_backward(float* dscores, const float* probs, int seq) {
    __shared__ float shared[BLOCK];
    int t = blockIdx.x % seq;
    long long row_at = (long long)blockIdx.x * seq;
    float* ds = dscores + row_at;
    const float* p = probs + row_at;
    float local = 0.0f;
    for (int t2 = threadIdx.x; t2 <= t; t2 += BLOCK) local += p[t2] * ds[t2];
    float weighted = block_sum(local, shared);
    for (int t2 = threadIdx.x; t2 < seq; t2 += BLOCK) {
        ds[t2] = t2 <= t ? p[t2] * (ds[t2] - weighted) : 0.0f;
    }
}

// One token's query heads over the first `len` positions of a [positions, kv_heads, head_dim]
// cache (decoding). One block per head. The positions go by in tiles of BLOCK, with a running
// max and sum (online softmax): shared memory holds one tile's weights, not `len` scores, so a
// context of any length fits the 48 KiB a block gets without opting in. The running weighted
// sum of values lives in the head's row of `out`, each thread owning its dimensions.
extern "C" __global__ void __launch_bounds__(BLOCK)
attention_decode(float* out, const float* q, const float* k_cache, const float* v_cache, int len,
                 int heads, int kv_heads, int head_dim, float scale) {
    __shared__ float weights[BLOCK];
    __shared__ float shared[BLOCK];
    int h = blockIdx.x;
    int g = h / (heads / kv_heads);
    const float* qh = q + (long long)h * head_dim;
    float* oh = out + (long long)h * head_dim;
    float max = NEG_INF;
    float sum = 0.0f;
    for (int tile = 0; tile < len; tile += BLOCK) {
        int t = tile + threadIdx.x;
        float dot = NEG_INF;
        if (t < len) {
            const float* kr = k_cache + ((long long)t * kv_heads + g) * head_dim;
            dot = 0.0f;
            for (int d = 0; d < head_dim; d++) dot += qh[d] * kr[d];
            dot *= scale;
        }
        float new_max = fmaxf(max, block_max(dot, shared));
        float e = t < len ? expf(dot - new_max) : 0.0f;
        weights[threadIdx.x] = e;
        // block_sum's barriers also make every weight of the tile visible.
        float tile_sum = block_sum(e, shared);
        float rescale = expf(max - new_max);
        int count = min(BLOCK, len - tile);
        for (int d = threadIdx.x; d < head_dim; d += BLOCK) {
            float acc = 0.0f;
            for (int i = 0; i < count; i++) {
                acc += weights[i] * v_cache[((long long)(tile + i) * kv_heads + g) * head_dim + d];
            }
            // On the first tile the row holds whatever was there: overwrite, don't rescale.
            oh[d] = tile == 0 ? acc : oh[d] * rescale + acc;
        }
        sum = sum * rescale + tile_sum;
        max = new_max;
        __syncthreads();
    }
    float inv = 1.0f / sum;
    for (int d = threadIdx.x; d < head_dim; d += BLOCK) oh[d] *= inv;
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy fused with softmax: losses[r] = logsumexp(row) − row[target]; the row becomes
// (softmax − onehot(target)) · grad_scale. One block per row. A target outside the vocabulary
// (which the CPU backend refuses with a panic) is not read: its row's loss is NaN, so that it
// shows in the mean, and its gradient is the softmax alone.

extern "C" __global__ void __launch_bounds__(BLOCK)
cross_entropy_fused(float* losses, float* logits, const unsigned int* targets, int vocab,
                    float grad_scale) {
    __shared__ float shared[BLOCK];
    long long r = blockIdx.x;
    float* row = logits + r * vocab;
    unsigned int target = targets[r];
    float target_logit = target < (unsigned int)vocab ? row[target] : QUIET_NAN;
    float local_max = NEG_INF;
    for (int j = threadIdx.x; j < vocab; j += BLOCK) local_max = fmaxf(local_max, row[j]);
    float max = block_max(local_max, shared);
    float local_sum = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += BLOCK) {
        float e = expf(row[j] - max);
        row[j] = e;
        local_sum += e;
    }
    float sum = block_sum(local_sum, shared);
    if (threadIdx.x == 0) losses[r] = max + logf(sum) - target_logit;
    float inv = grad_scale / sum;
    for (int j = threadIdx.x; j < vocab; j += BLOCK) {
        float g = row[j] * inv;
        row[j] = (unsigned int)j == target ? g - grad_scale : g;
    }
}
