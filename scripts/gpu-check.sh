#!/usr/bin/env bash
# The CUDA backend on a real GPU, in under 10 minutes (CI has no GPU; see issue 8):
#   1. every op, forward and backward, on the GPU equals the CPU backend within 1e-4 (f32);
#   2. 200 training steps of the `tutorial` model on the quickstart corpus: the GPU's loss curve
#      tracks the CPU's within 1e-3 at every step;
#   3. `bench train --device cuda` for `tutorial` and `stories110M`, and `bench generate`;
#   4. `sample` and `score` with `--device cuda` against the CPU.
#
# Needs an NVIDIA driver and the CUDA 13 libraries cuBLAS and NVRTC (a CUDA toolkit, or
# `pip install nvidia-cublas nvidia-cuda-nvrtc` with their nvidia/cu13/lib on LD_LIBRARY_PATH).
# Builds with cargo, or uses binaries built elsewhere:
#   TINYLLM_BIN=…/tinyllm TINYLLM_CUDA_TESTS=…/tinyllm-<hash> scripts/gpu-check.sh
# where TINYLLM_CUDA_TESTS is the library's test binary from
#   cargo test --release --features cuda --lib --no-run
# (`strip` both to carry them: with line tables they are about 85 MB each).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${TINYLLM_BIN:-}" ]]; then
  cargo build --release --features cuda
  TINYLLM_BIN=target/release/tinyllm
  TINYLLM_CUDA_TESTS=$(cargo test --release --features cuda --lib --no-run --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])')
fi
TINYLLM_BIN=$(realpath "$TINYLLM_BIN")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== the GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

echo "== 1. every op on the GPU against the CPU backend (1e-4)"
"$TINYLLM_CUDA_TESTS" engine::cuda --include-ignored --test-threads 1

echo "== 2. 200 steps of the tutorial model, CPU and GPU"
cat > "$work/check.toml" <<EOF
[pipeline]
name = "gpu-check"

[download]
files = [{ mirrors = ["$PWD/data/quickstart"] }]

[corpus]
train_files = ["*.txt"]
val_files = []
format = "separator"
separator = "<|endoftext|>"

[train_vocab]
vocab_size = 4096

[model]
preset = "tutorial"

[train]
batch_size = 8
seq_len = 256
grad_accum_steps = 1
lr = 5e-4
warmup_iters = 20
max_iters = 200
eval_interval = 200
eval_windows = 8
log_interval = 1
checkpoint_interval = 1000

[sample]
prompts = ["Once upon a time"]
max_new_tokens = 20
EOF
for device in cpu cuda; do
  started=$(date +%s)
  "$TINYLLM_BIN" run "$work/check.toml" --device "$device" --until train -q \
    --cache "$work/cache-$device" --runs "$work/runs-$device" >/dev/null
  echo "  $device: $(( $(date +%s) - started )) s"
done
python3 - "$work/runs-cpu/gpu-check/default/metrics.jsonl" "$work/runs-cuda/gpu-check/default/metrics.jsonl" <<'EOF'
import json, sys
def losses(path):
    return {r["step"]: r["loss"] for r in map(json.loads, open(path)) if r["kind"] == "train"}
cpu, gpu = losses(sys.argv[1]), losses(sys.argv[2])
assert cpu.keys() == gpu.keys() and len(cpu) == 200, (len(cpu), len(gpu))
worst = max(abs(cpu[s] - gpu[s]) for s in cpu)
for s in (1, 50, 100, 150, 200):
    print(f"  step {s:3}: cpu {cpu[s]:.6f}  gpu {gpu[s]:.6f}")
print(f"  largest difference over 200 steps: {worst:.2e}")
sys.exit(0 if worst <= 1e-3 else 1)
EOF

echo "== 3. bench train and bench generate on the GPU"
"$TINYLLM_BIN" bench train --preset tutorial --batch 8 --seq 256 --steps 10 --device cuda
"$TINYLLM_BIN" bench train --preset stories110M --batch 8 --seq 1024 --steps 10 --device cuda
"$TINYLLM_BIN" bench generate --preset tutorial --new-tokens 256 --device cuda

echo "== 4. sampling and scoring on the GPU: the same greedy story as on the CPU"
model="$work/runs-cuda/gpu-check/default/artifacts/train"
for device in cpu cuda; do
  "$TINYLLM_BIN" sample --checkpoint "$model" --prompt "Once upon a time" --temperature 0 \
    --max-new-tokens 40 --device "$device" >"$work/sample-$device.txt" 2>/dev/null
  "$TINYLLM_BIN" score --checkpoint "$model" --text "Once upon a time there was a cat." \
    --device "$device"
done
if cmp -s "$work/sample-cpu.txt" "$work/sample-cuda.txt"; then
  echo "  greedy samples agree"
else
  # f32 rounding differs between the backends; a near-tie can flip one greedy pick.
  echo "  greedy samples differ:"; cat "$work/sample-cpu.txt" "$work/sample-cuda.txt"
fi
echo "gpu-check: all passed"
