#!/usr/bin/env bash
# The section functions run through `--section NAME`, which shellcheck cannot follow.
# shellcheck disable=SC2329

# The CUDA backend on a real GPU, from prebuilt binaries, in under 9 minutes (CI has no GPU).
#
# On the build machine:  scripts/gpu-bundle.sh     (builds, strips and packs gpu-bundle/)
# On the GPU machine, carrying gpu-bundle/, with $OUT set to the folder that comes back:
#
#   bash scripts/gpu-check.sh
#
# It uses gpu-bundle/tinyllm and gpu-bundle/tinyllm-tests (or TINYLLM_BIN and
# TINYLLM_CUDA_TESTS), never cargo: the GPU machine has no toolchain, crates or network.
# Writes $OUT/gpu-check.log (everything printed), $OUT/gpu-check.json (every figure and
# verdict), $OUT/gpu-bench.md (the speed table for BENCHMARKS.md); without $OUT, ./gpu-check-out.
# Exit status 0 only when every check passed (every section but pytorch, whose figures are a
# comparison; memcheck may be skipped only where compute-sanitizer is missing); the last line is
# a one-line summary. PYTHON picks the Python with PyTorch (default python3).
#
# Sections, each in its own time box (one that fails or runs out of time does not stop the
# others; all of them together stay within GPU_CHECK_SECONDS, default 520):
#   ops          every op, forward and backward, on the GPU equals the CPU backend within
#                1e-4·(1 + |x|) (the ignored tests of src/engine/cuda/tests.rs: attention at seq
#                1024, head_dim 64, heads == kv_heads and GQA among them); and NCCL's all-reduce
#                over one rank is the identity (run on its own: without a libnccl.so.2 here,
#                only a warning);
#   cpu_ref      (in the background, while the GPU works) the CPU runs the parity checks compare
#                against;
#   gpu_train    200 steps of the `tutorial` model on the quickstart corpus on the GPU; the same
#                run again: bit-identical final weights (model.safetensors byte for byte) and
#                losses; the same run SIGKILLed after a checkpoint and resumed: bit-identical to
#                the uninterrupted one; and 40 steps of a seq-512, head_dim-64, heads == kv_heads
#                model with grad_accum_steps = 2;
#   parity       both GPU runs against the CPU's, step by step, in f32:
#                  steps 1-10:   |loss_gpu - loss_cpu| <= 1e-4·|loss_cpu|, and the same for the
#                                gradient norm within 1e-3 (the first steps see the same weights);
#                  every step:   within 2e-2·|loss_cpu| (two f32 trajectories drift apart);
#                  last 20 steps: |mean_gpu - mean_cpu| <= 1e-2·mean_cpu;
#   sample_score the GPU-trained model on the GPU and on the CPU: the same greedy f32 sample,
#                and `score --json` losses within 1e-4 relative and logits within 1e-3·(1+|x|);
#   bench        `bench train --json` of `tutorial` at batch 8 and 64 (seq 256) and `stories110M`
#                at batch 8 × 1024, f32 and bf16; `bench generate`;
#   memcheck     compute-sanitizer --tool memcheck on training steps (f32 and bf16) and on the
#                op tests at their small sizes: 0 errors;
#   pytorch      scripts/pytorch_gpu_reference.py on the same configs: eager, torch.compile,
#                bf16 autocast, compile + bf16 autocast (what fits the time left).
#
# GPU_CHECK_DEVICE=cpu is a dry run for a machine without a GPU: the same plumbing end to end
# with the CPU standing in for the GPU and tiny step counts. It checks nothing about CUDA, says
# so in every summary, and refuses to run where nvidia-smi sees a GPU.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
SELF=$PWD/scripts/gpu-check.sh

# ----------------------------------------------------------------------------------------------
# Helpers (the sections run in child processes: `bash gpu-check.sh --section NAME`)

say() { printf '%s\n' "$*"; }

# jrec SECTION KEY JSON: one result of a section, for gpu-check.json.
jrec() {
  "$PY" -c 'import json, sys; print(json.dumps({"key": sys.argv[1], "value": json.loads(sys.argv[2])}))' \
    "$2" "$3" >>"$RESULTS/$1.jsonl"
}
# jstr TEXT: TEXT as a JSON string.
jstr() { "$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }

# The spec of a run: the quickstart corpus, then MODEL and TRAIN (TOML lines).
write_spec() {
  local path=$1 model=$2 train=$3
  cat >"$path" <<EOF
[pipeline]
name = "gpu-check"

[download]
files = [{ mirrors = ["$CORPUS"] }]

[corpus]
train_files = ["*.txt"]
val_files = []
format = "separator"
separator = "<|endoftext|>"

[pretokenize]
val_fraction = 0.1

[train_vocab]
vocab_size = 4096

[model]
$model

[train]
precision = "f32"
lr = 5e-4
eval_windows = 4
log_interval = 1
seed = 1337
$train

[sample]
prompts = ["Once upon a time"]
max_new_tokens = 20
EOF
}

# run_pipeline NAME SPEC DEVICE [extra args]: one training run with its own copy of the cached
# corpus stages, in $WORK/NAME/{cache,runs}; its output in $WORK/NAME/log.
run_pipeline() {
  local name=$1 spec=$2 device=$3
  shift 3
  mkdir -p "$WORK/$name"
  [[ -d $WORK/$name/cache ]] || cp -a "$WORK/base-cache" "$WORK/$name/cache"
  "$BIN" run "$spec" --device "$device" --until train -q \
    --cache "$WORK/$name/cache" --runs "$WORK/$name/runs" "$@" >>"$WORK/$name/log" 2>&1
}
artifact() { echo "$WORK/$1/runs/gpu-check/default/artifacts/train"; }
metrics() { echo "$WORK/$1/runs/gpu-check/default/metrics.jsonl"; }
fail_tail() {
  say "  $1 failed; the end of its output:"
  tail -n 15 "$WORK/$1/log" | sed 's/^/    /'
}

# The largest step logged so far in a live metrics.jsonl (0 when none).
logged_step() {
  local m
  m=$(metrics "$1")
  [[ -s $m ]] || { echo 0; return; }
  tail -n 1 "$m" | grep -o '"step":[0-9]*' | head -n 1 | cut -d: -f2 || echo 0
}

# ----------------------------------------------------------------------------------------------
# Sections

section_ops() {
  if ((DRY)); then
    # No GPU: list the GPU tests (the new ones among them) and run the ones that need none.
    "$TESTS" engine::cuda --list --ignored 2>&1 | tee "$WORK/ops-list.txt"
    local listed
    listed=$(grep -c ': test$' "$WORK/ops-list.txt")
    jrec ops gpu_tests_listed "$listed"
    grep -q 'gpu_attention_and_layer_ops_match_the_cpu_at_seq_1024: test' "$WORK/ops-list.txt" ||
      { say "  the seq-1024 test is missing from the test binary"; return 1; }
    grep -q "$NCCL_TEST: test" "$WORK/ops-list.txt" ||
      { say "  the NCCL test is missing from the test binary"; return 1; }
    # With NVRTC 13 found, the kernels must compile here too (the test may not skip).
    [[ -n $NVRTC13 ]] && export TINYLLM_REQUIRE_NVRTC=1
    "$TESTS" engine::cuda --test-threads 1 2>&1 | tee "$WORK/ops.txt"
  else
    # TINYLLM_REQUIRE_NVRTC: the kernel compile test may not skip for want of NVRTC. The NCCL
    # test runs on its own below, so that a missing libnccl fails only it.
    TINYLLM_REQUIRE_NVRTC=1 "$TESTS" engine::cuda --include-ignored --test-threads 1 \
      --skip "$NCCL_TEST" 2>&1 | tee "$WORK/ops.txt"
  fi
  local rc=${PIPESTATUS[0]}
  ((DRY)) || run_nccl_test || rc=1
  local passed failed
  passed=$(grep -E '^test .* \.\.\. ok$' "$WORK/ops.txt" | sed 's/^test \(.*\) \.\.\. ok$/\1/' |
    "$PY" -c 'import json, sys; print(json.dumps([l.strip() for l in sys.stdin]))')
  failed=$(grep -E '^test .* \.\.\. FAILED$' "$WORK/ops.txt" | sed 's/^test \(.*\) \.\.\. FAILED$/\1/' |
    "$PY" -c 'import json, sys; print(json.dumps([l.strip() for l in sys.stdin]))')
  jrec ops passed "$passed"
  jrec ops failed "$failed"
  if ((!DRY)); then
    # Every GPU test ran (none filtered or skipped): the ignored ones number at least 8.
    local gpu_ran
    gpu_ran=$(grep -cE '^test engine::cuda::tests::gpu_.* \.\.\. ok$' "$WORK/ops.txt")
    jrec ops gpu_tests_passed "$gpu_ran"
    ((gpu_ran >= 8)) || { say "  only $gpu_ran GPU tests passed"; return 1; }
  fi
  return "$rc"
}

# The NCCL test, which needs a libnccl as well as the GPU: where none can be loaded, a warning.
run_nccl_test() {
  "$TESTS" "engine::cuda::tests::$NCCL_TEST" --exact --include-ignored 2>&1 | tee "$WORK/ops-nccl.txt"
  local rc=${PIPESTATUS[0]}
  if grep -qE "^test engine::cuda::tests::$NCCL_TEST \.\.\. ok$" "$WORK/ops-nccl.txt"; then
    say "  NCCL: a one-rank all-reduce on the GPU is the identity"
    jrec ops nccl '"passed"'
    return 0
  fi
  if grep -q "NCCL could not be loaded" "$WORK/ops-nccl.txt"; then
    say "  WARNING: NCCL could not be loaded here (no libnccl.so.2 found, or a broken one): the NCCL test did not run"
    jrec ops nccl '"no libnccl (warning)"'
    return 0
  fi
  say "  the NCCL test failed (exit $rc)"
  jrec ops nccl '"failed"'
  return 1
}

section_cpu_ref() {
  local ok=0
  for run in parity accum; do
    local started=$SECONDS
    if run_pipeline "cpu-$run" "$WORK/$run.toml" cpu --threads "$CPU_THREADS"; then
      say "  cpu $run: $((SECONDS - started)) s"
      jrec cpu_ref "${run}_secs" $((SECONDS - started))
    else
      fail_tail "cpu-$run"
      ok=1
    fi
  done
  return "$ok"
}

section_gpu_train() {
  local ok=0 started
  # 1. The parity run, uninterrupted.
  started=$SECONDS
  if run_pipeline gpu-a "$WORK/parity.toml" "$DEV" --threads "$RUN_THREADS"; then
    say "  $DEV run: $((SECONDS - started)) s for $PARITY_STEPS steps"
    jrec gpu_train run_secs $((SECONDS - started))
  else
    fail_tail gpu-a
    return 1
  fi
  local reference
  reference=$(artifact gpu-a)/model.safetensors

  # 2. The same run again: the same bits.
  if run_pipeline gpu-b "$WORK/parity.toml" "$DEV" --threads "$RUN_THREADS"; then
    if cmp -s "$reference" "$(artifact gpu-b)/model.safetensors" &&
      "$PY" "$WORK/compare.py" same-losses "$(metrics gpu-a)" "$(metrics gpu-b)"; then
      say "  run twice: bit-identical weights and losses"
      jrec gpu_train twice_bit_identical true
    else
      say "  run twice: the weights or losses differ"
      jrec gpu_train twice_bit_identical false
      ok=1
    fi
  else
    fail_tail gpu-b
    ok=1
  fi

  # 3. SIGKILLed once a checkpoint exists and a few steps went by, then resumed.
  local name=gpu-killed
  mkdir -p "$WORK/$name"
  cp -a "$WORK/base-cache" "$WORK/$name/cache"
  "$BIN" run "$WORK/parity.toml" --device "$DEV" --until train -q --threads "$RUN_THREADS" \
    --cache "$WORK/$name/cache" --runs "$WORK/$name/runs" >>"$WORK/$name/log" 2>&1 &
  local pid=$! killed_at=""
  while kill -0 "$pid" 2>/dev/null; do
    if compgen -G "$WORK/$name/cache/scratch/*/checkpoints/step-*" >/dev/null &&
      (($(logged_step "$name") >= CHECKPOINT + KILL_AFTER)); then
      kill -KILL "$pid"
      killed_at=$(logged_step "$name")
      break
    fi
    sleep 0.02
  done
  wait "$pid" 2>/dev/null
  if [[ -z $killed_at ]]; then
    say "  kill and resume: the run ended (step $(logged_step "$name")) before it could be killed after its step-$CHECKPOINT checkpoint"
    fail_tail "$name"
    jrec gpu_train resumed_bit_identical false
    ok=1
  elif [[ -e $(artifact "$name")/model.safetensors ]]; then
    say "  kill and resume: the killed run left a train artifact"
    ok=1
  else
    say "  killed at step $killed_at (checkpoint every $CHECKPOINT steps)"
    jrec gpu_train killed_at_step "$killed_at"
    if run_pipeline "$name" "$WORK/parity.toml" "$DEV" --threads "$RUN_THREADS"; then
      if ! grep -q "resuming from step" "$WORK/$name/log"; then
        say "  kill and resume: the second run did not resume from a checkpoint"
        jrec gpu_train resumed_bit_identical false
        ok=1
      elif cmp -s "$reference" "$(artifact "$name")/model.safetensors" &&
        "$PY" "$WORK/compare.py" same-losses "$(metrics gpu-a)" "$(metrics "$name")"; then
        say "  killed and resumed: bit-identical to the uninterrupted run ($(grep -o 'resuming from step [0-9]*' "$WORK/$name/log" | head -n 1))"
        jrec gpu_train resumed_bit_identical true
      else
        say "  killed and resumed: the final weights or losses differ from the uninterrupted run"
        jrec gpu_train resumed_bit_identical false
        ok=1
      fi
    else
      fail_tail "$name"
      ok=1
    fi
  fi

  # 4. Gradient accumulation over 2 micro-batches, seq 512, head_dim 64, heads == kv_heads.
  started=$SECONDS
  if run_pipeline gpu-accum "$WORK/accum.toml" "$DEV" --threads "$RUN_THREADS"; then
    say "  $DEV accumulation run: $((SECONDS - started)) s for $ACCUM_STEPS steps"
  else
    fail_tail gpu-accum
    ok=1
  fi
  return "$ok"
}

section_parity() {
  local ok=0
  for run in parity accum; do
    local gpu="gpu-a"
    [[ $run == accum ]] && gpu="gpu-accum"
    say "  $run: $(grep -m1 '^# ' "$WORK/$run.toml" | cut -c3-)"
    if [[ ! -s $(metrics "cpu-$run") || ! -s $(metrics "$gpu") ]]; then
      say "  $run: no metrics to compare (cpu: $(metrics "cpu-$run"), $DEV: $(metrics "$gpu"))"
      ok=1
      continue
    fi
    "$PY" "$WORK/compare.py" parity "$(metrics "cpu-$run")" "$(metrics "$gpu")" "$run" \
      "$RESULTS/parity.jsonl" || ok=1
  done
  return "$ok"
}

section_sample_score() {
  local model ok=0
  model=$(artifact gpu-a)
  [[ -e $model/model.safetensors ]] || { say "  no GPU-trained model (gpu_train failed)"; return 1; }
  local text="Once upon a time there was a little cat. She liked to play in the garden with her friend."
  for device in cpu "$DEV"; do
    "$BIN" sample --checkpoint "$model" --prompt "Once upon a time" --temperature 0 \
      --max-new-tokens 60 --precision f32 --device "$device" \
      >"$WORK/sample-$device.txt" 2>"$WORK/sample-$device.err" ||
      { say "  sample on $device failed:"; tail -n 5 "$WORK/sample-$device.err"; ok=1; }
    "$BIN" score --checkpoint "$model" --text "$text" --json --device "$device" \
      >"$WORK/score-$device.json" 2>"$WORK/score-$device.err" ||
      { say "  score on $device failed:"; tail -n 5 "$WORK/score-$device.err"; ok=1; }
  done
  ((ok == 0)) || return 1
  # The dry run's two files have the same name: it compares the CPU with itself.
  say "  cpu:  $(head -c 300 "$WORK/sample-cpu.txt")"
  say "  $DEV: $(head -c 300 "$WORK/sample-$DEV.txt") $(cat "$WORK/sample-$DEV.err")"
  if cmp -s "$WORK/sample-cpu.txt" "$WORK/sample-$DEV.txt"; then
    say "  greedy samples: the same"
    jrec sample_score same_greedy_sample true
  else
    say "  greedy samples differ"
    jrec sample_score same_greedy_sample false
    ok=1
  fi
  "$PY" "$WORK/compare.py" score "$WORK/score-cpu.json" "$WORK/score-$DEV.json" \
    "$RESULTS/sample_score.jsonl" || ok=1
  # bf16 sampling runs too (its greedy picks may differ from f32's: no comparison).
  if "$BIN" sample --checkpoint "$model" --prompt "Once upon a time" --temperature 0 \
    --max-new-tokens 60 --precision bf16 --device "$DEV" >"$WORK/sample-bf16.txt" 2>"$WORK/sample-bf16.err"; then
    say "  $DEV bf16: $(head -c 300 "$WORK/sample-bf16.txt") $(cat "$WORK/sample-bf16.err")"
  else
    say "  bf16 sampling on $DEV failed:"
    tail -n 5 "$WORK/sample-bf16.err"
    ok=1
  fi
  return "$ok"
}

section_bench() {
  local ok=0 config name preset batch seq steps precision
  mkdir -p "$RESULTS/bench"
  for config in $BENCH_CONFIGS; do
    IFS=: read -r name preset batch seq steps <<<"$config"
    for precision in f32 bf16; do
      local out="$RESULTS/bench/tinyllm-$name-$precision.json"
      if "$BIN" bench train --preset "$preset" --batch "$batch" --seq "$seq" --steps "$steps" \
        --precision "$precision" --device "$DEV" --json >"$out" 2>"$WORK/bench.err"; then
        "$PY" - "$out" "$DEV" <<'EOF' || ok=1
import json, sys
f = json.load(open(sys.argv[1]))
mfu = f"  MFU {100 * f['mfu_bf16']:.1f}%" if f.get("mfu_bf16") is not None else ""
print(f"  {f['model']} {f['batch']}x{f['seq']} {f['precision']}: {f['tokens_per_sec']:,.0f} tokens/s, "
      f"{f['median_ms_per_step']:.1f} ms/step, {f['achieved_gflops']:,.0f} GFLOP/s{mfu} on {f['device']}")
# On the real run the figures must come from the GPU, not a CPU fallback.
if sys.argv[2] != "cpu" and f["device"] == "cpu":
    sys.exit("  the benchmark ran on the CPU")
EOF
      else
        say "  bench train $name $precision failed:"
        tail -n 5 "$WORK/bench.err"
        rm -f "$out"
        ok=1
      fi
    done
  done
  if "$BIN" bench generate --preset tutorial --new-tokens "$GENERATE_TOKENS" --device "$DEV" \
    --precision f32 --json >"$RESULTS/bench/generate.json" 2>"$WORK/bench.err"; then
    say "  bench generate: $("$PY" -c 'import json, sys; f = json.load(open(sys.argv[1])); print({k: v for k, v in f.items() if not isinstance(v, (dict, list))})' "$RESULTS/bench/generate.json")"
  else
    say "  bench generate failed:"
    tail -n 5 "$WORK/bench.err"
    rm -f "$RESULTS/bench/generate.json"
    ok=1
  fi
  return "$ok"
}

section_memcheck() {
  if [[ -z $SANITIZER ]]; then
    say "  compute-sanitizer is neither on PATH nor under /usr/local/cuda/bin: skipped"
    return 3
  fi
  local ok=0 what
  # (name, command): a whole training step in f32 and in bf16 on a tiny model, and the op tests
  # at their small sizes (the seq-1024 one would take minutes under the sanitizer; the
  # out-of-memory one fails allocations on purpose, which the sanitizer reports; NCCL's kernels
  # are not ours, and a missing libnccl is only a warning of the ops section).
  local tiny=(bench train --dim 64 --n-layers 2 --n-heads 4 --n-kv-heads 2 --vocab-size 512
    --batch 2 --seq 64 --steps 1 --device cuda --json)
  for what in step-f32 ops step-bf16; do
    local log="$WORK/memcheck-$what.log" cmd
    case $what in
      step-f32) cmd=("$BIN" "${tiny[@]}" --precision f32) ;;
      step-bf16) cmd=("$BIN" "${tiny[@]}" --precision bf16) ;;
      ops) cmd=("$TESTS" engine::cuda::tests::gpu_ --include-ignored --test-threads 1
        --skip seq_1024 --skip out_of_memory --skip "$NCCL_TEST") ;;
    esac
    "$SANITIZER" --tool memcheck --leak-check no --log-file "$log" "${cmd[@]}" \
      >"$WORK/memcheck-$what.out" 2>&1
    local rc=$? summary
    summary=$(grep -o 'ERROR SUMMARY: [0-9]* error[s]*' "$log" | tail -n 1)
    say "  $what: exit $rc, ${summary:-no ERROR SUMMARY line}"
    jrec memcheck "$what" "$(jstr "exit $rc, ${summary:-no ERROR SUMMARY line}")"
    if [[ $rc -ne 0 || $summary != "ERROR SUMMARY: 0 errors" ]]; then
      ok=1
      say "  the end of its log:"
      tail -n 25 "$log" | sed 's/^/    /'
      tail -n 5 "$WORK/memcheck-$what.out" | sed 's/^/    /'
    fi
  done
  return "$ok"
}

section_pytorch() {
  if ! "$PY" -c 'import torch' 2>/dev/null; then
    say "  $PY cannot import torch"
    ((DRY)) && return 3
    return 1
  fi
  local configs="" config name preset batch seq steps
  for config in $BENCH_CONFIGS; do
    IFS=: read -r name preset batch seq steps <<<"$config"
    configs+="${configs:+,}$preset:$batch:$seq"
  done
  # Eager first, then PyTorch's fastest path (compile + bf16), then compile f32; no new
  # measurement in the last 60 s of the time box (compiling a model can take that long).
  "$PY" scripts/pytorch_gpu_reference.py --device "$DEV" --configs "$configs" \
    --modes eager,eager-bf16,compile-bf16,compile \
    --steps "$TORCH_STEPS" --warmup 3 --seconds $((SECTION_LIMIT - 60)) \
    --out "$RESULTS/pytorch.jsonl"
  local rc=$?
  ((rc == 0)) || return 1
  grep -q '"skipped"' "$RESULTS/pytorch.jsonl" && return 4
  return 0
}

# ----------------------------------------------------------------------------------------------
# The comparisons, in Python (written to $WORK by main)

write_compare_py() {
  cat >"$WORK/compare.py" <<'EOF'
import json, math, sys

def train_records(path):
    return {r["step"]: r for r in map(json.loads, open(path)) if r.get("kind") == "train"}

def record(out, key, value):
    with open(out, "a") as f:
        f.write(json.dumps({"key": key, "value": value}) + "\n")

def rel(a, b):
    return abs(a - b) / max(abs(a), 1e-12)

mode = sys.argv[1]
if mode == "same-losses":
    a, b = train_records(sys.argv[2]), train_records(sys.argv[3])
    same = sorted(a) == sorted(b) and all(a[s]["loss"] == b[s]["loss"] and
                                          a[s]["grad_norm"] == b[s]["grad_norm"] for s in a)
    if not same:
        diff = [s for s in sorted(set(a) | set(b)) if s not in a or s not in b or a[s]["loss"] != b[s]["loss"]]
        print(f"  losses differ at steps {diff[:10]}{' …' if len(diff) > 10 else ''} "
              f"({len(a)} and {len(b)} steps logged)")
    sys.exit(0 if same else 1)

if mode == "parity":
    cpu, gpu = train_records(sys.argv[2]), train_records(sys.argv[3])
    name, out = sys.argv[4], sys.argv[5]
    steps = sorted(cpu)
    if steps != sorted(gpu) or not steps or steps != list(range(1, len(steps) + 1)):
        print(f"  {name}: the logs hold different steps: cpu {len(cpu)}, gpu {len(gpu)}")
        record(out, name, {"passed": False, "why": "different steps"})
        sys.exit(1)
    early = [s for s in steps if s <= 10]
    late = [s for s in steps if s > 10]
    early_loss = max(rel(cpu[s]["loss"], gpu[s]["loss"]) for s in early)
    early_norm = max(rel(cpu[s]["grad_norm"], gpu[s]["grad_norm"]) for s in early)
    every = max(rel(cpu[s]["loss"], gpu[s]["loss"]) for s in steps)
    tail = steps[-20:]
    mean_cpu = sum(cpu[s]["loss"] for s in tail) / len(tail)
    mean_gpu = sum(gpu[s]["loss"] for s in tail) / len(tail)
    tail_rel = rel(mean_cpu, mean_gpu)
    finite = all(math.isfinite(gpu[s]["loss"]) for s in steps)
    checks = {
        "steps 1-10 loss within 1e-4 relative": early_loss <= 1e-4,
        "steps 1-10 grad norm within 1e-3 relative": early_norm <= 1e-3,
        "every step's loss within 2e-2 relative": every <= 2e-2,
        "mean loss of the last 20 steps within 1e-2 relative": tail_rel <= 1e-2,
        "finite": finite,
    }
    shown = sorted({1, 2, 10, *(s for s in steps if s % 50 == 0), steps[-1]} & set(steps))
    for s in shown:
        print(f"  {name} step {s:4}: cpu {cpu[s]['loss']:.6f}  gpu {gpu[s]['loss']:.6f}  "
              f"grad norm cpu {cpu[s]['grad_norm']:.5f} gpu {gpu[s]['grad_norm']:.5f}")
    print(f"  {name}: steps 1-10 loss {early_loss:.2e}, grad norm {early_norm:.2e}; every step {every:.2e}; "
          f"last-20 mean {mean_cpu:.5f} vs {mean_gpu:.5f} ({tail_rel:.2e}) relative")
    for what, good in checks.items():
        if not good:
            print(f"  {name}: FAILED {what}")
    record(out, name, {"steps": len(steps), "early_loss_rel": early_loss, "early_grad_norm_rel": early_norm,
                       "max_loss_rel": every, "last20_mean_cpu": mean_cpu, "last20_mean_gpu": mean_gpu,
                       "last20_rel": tail_rel, "checks": checks, "passed": all(checks.values())})
    sys.exit(0 if all(checks.values()) else 1)

if mode == "score":
    cpu, gpu = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
    out = sys.argv[4]
    same_ids = cpu["ids"] == gpu["ids"]
    loss_rel = max((rel(a, b) for a, b in zip(cpu["losses"], gpu["losses"])), default=0.0)
    logit_err = max((abs(a - b) / (1 + abs(a)) for ra, rb in zip(cpu["logits"], gpu["logits"])
                     for a, b in zip(ra, rb)), default=0.0)
    good = same_ids and len(cpu["losses"]) == len(gpu["losses"]) and loss_rel <= 1e-4 and logit_err <= 1e-3
    print(f"  score: cpu {cpu['loss']:.6f} gpu {gpu['loss']:.6f} nats/token; per-token losses within "
          f"{loss_rel:.2e} relative, logits within {logit_err:.2e}·(1+|x|): {'ok' if good else 'FAILED'}")
    record(out, "score", {"cpu_loss": cpu["loss"], "gpu_loss": gpu["loss"], "max_token_loss_rel": loss_rel,
                          "max_logit_err": logit_err, "passed": good})
    sys.exit(0 if good else 1)
sys.exit(f"compare.py: unknown mode {mode}")
EOF
}

# Merges the sections' results into gpu-check.json and the speed table into gpu-bench.md.
write_report() {
  "$PY" - "$WORK/status.tsv" "$RESULTS" "$OUT" <<'EOF'
import glob, json, os, sys
status_path, results, out = sys.argv[1:4]

def load(path):
    """A result file, or None when a failed command left it empty or cut short."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
sections = {}
for line in open(status_path):
    name, status, secs, note = line.rstrip("\n").split("\t")
    sections[name] = {"status": status, "secs": int(secs), "note": note}
for path in glob.glob(os.path.join(results, "*.jsonl")):
    name = os.path.basename(path)[:-6]
    if name == "pytorch":
        continue
    values = {}
    for line in open(path):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        values[r["key"]] = r["value"]
    sections.setdefault(name, {})["results"] = values
ours = {}
for path in sorted(glob.glob(os.path.join(results, "bench", "tinyllm-*.json"))):
    figures = load(path)
    if figures is not None:
        ours[os.path.basename(path)[8:-5]] = figures
generate = load(os.path.join(results, "bench", "generate.json"))
torch_lines = []
if os.path.exists(os.path.join(results, "pytorch.jsonl")):
    for l in open(os.path.join(results, "pytorch.jsonl")):
        try:
            torch_lines.append(json.loads(l))
        except ValueError:
            pass
env = sections.get("env", {}).get("results", {})
report = {
    "dry_run": os.environ["DRY"] == "1",
    "device": os.environ["DEV"],
    "gpu": env.get("gpu"),
    # As the summary line says it: pytorch's figures are no check; memcheck may be skipped.
    "passed": all(s.get("status") == "passed" or n == "pytorch" or (n, s.get("status")) == ("memcheck", "skipped")
                  for n, s in sections.items()),
    "sections": sections,
    "bench": {"tinyllm_train": ours, "tinyllm_generate": generate, "pytorch_train": torch_lines},
}
with open(os.path.join(out, "gpu-check.json"), "w") as f:
    json.dump(report, f, indent=2)

# The table, config by config: tinyllm's two precisions, then PyTorch's four modes.
labels = {"eager": "PyTorch eager, f32", "compile": "PyTorch torch.compile, f32",
          "eager-bf16": "PyTorch eager, bf16 autocast", "compile-bf16": "PyTorch torch.compile + bf16 autocast"}
configs = []
for c in os.environ["BENCH_CONFIGS"].split():
    name, preset, batch, seq, _ = c.split(":")
    configs.append((name, preset, int(batch), int(seq)))
gpu_name = next((f["device"] for f in ours.values()), None) or env.get("gpu") or os.environ["DEV"]
lines = []
if report["dry_run"]:
    lines.append("**Dry run on the CPU (GPU_CHECK_DEVICE=cpu): not GPU figures; do not paste.**\n")
torch_version = next((t.get("torch") for t in torch_lines), None)
lines.append(f"Training step on one {gpu_name} (`scripts/gpu-check.sh`): median of the timed steps after warm-up, "
             f"the same model and batch back to back; tinyllm `bench train --device cuda`"
             f"{f', PyTorch {torch_version} (`scripts/pytorch_gpu_reference.py`)' if torch_version else ''}. "
             "MFU: model FLOPs per second (tinyllm's count for both) over the GPU's nominal dense bf16 peak.\n")
lines.append("| model | batch × seq | run | ms/step | tokens/s | MFU | ÷ tinyllm f32 |")
lines.append("|---|---|---|---|---|---|---|")
def fmt(x, digits=0):
    return f"{x:,.{digits}f}" if isinstance(x, (int, float)) else "–"
for name, preset, batch, seq in configs:
    base = ours.get(f"{name}-f32")
    flops = base["gflops_per_step"] if base else None
    peak = base.get("bf16_peak_gflops") if base else None
    rows = []
    for precision in ("f32", "bf16"):
        f = ours.get(f"{name}-{precision}")
        if f is None:
            rows.append((f"tinyllm {precision}", None, None, None, "failed or not run"))
        else:
            rows.append((f"tinyllm {precision}", f["median_ms_per_step"], f["tokens_per_sec"], f.get("mfu_bf16"), None))
    for mode in ("eager", "compile", "eager-bf16", "compile-bf16"):
        t = next((t for t in torch_lines if (t["preset"], t["batch"], t["seq"], t["mode"]) == (preset, batch, seq, mode)), None)
        if t is None or "median_ms_per_step" not in t:
            why = "not run" if t is None else ("out of time" if "skipped" in t else f"error: {t.get('error', '?')[:80]}")
            rows.append((labels[mode], None, None, None, why))
            continue
        mfu = flops / (t["median_ms_per_step"] / 1e3) / peak if flops and peak else None
        rows.append((labels[mode], t["median_ms_per_step"], t["tokens_per_sec"], mfu, None))
    for label, ms, tps, mfu, why in rows:
        ratio = f"{tps / base['tokens_per_sec']:.2f}" if tps and base else "–"
        mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "–"
        if why:
            lines.append(f"| {preset} | {batch} × {seq} | {label} | {why} | | | |")
        else:
            lines.append(f"| {preset} | {batch} × {seq} | {label} | {fmt(ms, 1)} | {fmt(tps)} | {mfu_text} | {ratio} |")
# Parameter counts must agree, or the comparison is of different models.
for name, preset, batch, seq in configs:
    base = ours.get(f"{name}-f32")
    counts = {t["params"] for t in torch_lines if t["preset"] == preset and "params" in t}
    if base and counts and counts != {base["params"]}:
        lines.append(f"\n**{preset}: PyTorch's model has {sorted(counts)} parameters, tinyllm's {base['params']}.**")
impl = next((t["impl"] for t in torch_lines if "impl" in t), None)
if impl:
    lines.append(f"\nPyTorch model: {impl}.")
if generate:
    lines.append(f"\nGeneration (`bench generate --preset tutorial --device cuda`, f32): "
                 f"{fmt(generate.get('median_tokens_per_sec'))} tokens/s, first token "
                 f"{fmt(generate.get('median_first_token_ms'), 1)} ms.")
with open(os.path.join(out, "gpu-bench.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
}

# ----------------------------------------------------------------------------------------------
# Running a section in its time box

SECTION_ORDER=(ops gpu_train parity sample_score bench memcheck pytorch)
# The least time worth giving each section, and the most; later sections keep their least.
declare -A SECTION_MIN=([ops]=30 [gpu_train]=40 [parity]=5 [sample_score]=15 [bench]=45 [memcheck]=30 [pytorch]=75)
declare -A SECTION_CAP=([ops]=150 [gpu_train]=180 [parity]=30 [sample_score]=60 [bench]=150 [memcheck]=150 [pytorch]=240)

record_status() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$WORK/status.tsv"; }

status_of_rc() {
  case $1 in
    0) echo passed ;;
    3) echo skipped ;;
    4) echo partial ;;
    124 | 137) echo "timed out" ;;
    *) echo failed ;;
  esac
}

run_section() {
  local name=$1 reserve=0 later=0 s
  for s in "${SECTION_ORDER[@]}"; do
    ((later)) && reserve=$((reserve + SECTION_MIN[$s]))
    [[ $s == "$name" ]] && later=1
  done
  local left=$((DEADLINE - SECONDS - reserve))
  local limit=$((left < SECTION_CAP[$name] ? left : SECTION_CAP[$name]))
  say ""
  say "== $name (time box $limit s)"
  if ((limit < SECTION_MIN[$name])); then
    say "  skipped: $limit s left for it"
    record_status "$name" "out of time" 0 "$limit s left"
    return
  fi
  local started=$SECONDS
  SECTION_LIMIT=$limit timeout -k 5 "$limit" bash "$SELF" --section "$name"
  local rc=$? status
  status=$(status_of_rc "$rc")
  say "-- $name: $status in $((SECONDS - started)) s"
  record_status "$name" "$status" $((SECONDS - started)) "exit $rc"
}

# ----------------------------------------------------------------------------------------------
# Setup: binaries, libraries, the GPU, the specs and the cached corpus

find_cuda_libs() {
  # pip's CUDA wheels (PyTorch's dependencies): nvidia/cu13/lib (CUDA 13) or nvidia/*/lib
  # (CUDA 12: nvidia/cublas/lib, nvidia/cuda_nvrtc/lib); then the system toolkit.
  local dirs=() d
  while IFS= read -r d; do dirs+=("$d"); done < <("$PY" -c '
import glob, os, site, sys
roots = list(dict.fromkeys(site.getsitepackages() + [site.getusersitepackages()] + sys.path))
for root in roots:
    for d in sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib"))):
        print(d)' 2>/dev/null)
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [[ -d $d ]] && dirs+=("$d")
  done
  local path="" cublas13="" nvrtc13="" cublas12="" nvrtc12=""
  for d in "${dirs[@]}"; do
    compgen -G "$d/libcublas.so*" >/dev/null || compgen -G "$d/libnvrtc.so*" >/dev/null || continue
    path+="${path:+:}$d"
    [[ -z $cublas13 && -e $d/libcublas.so.13 ]] && cublas13=$d/libcublas.so.13
    [[ -z $nvrtc13 && -e $d/libnvrtc.so.13 ]] && nvrtc13=$d/libnvrtc.so.13
    [[ -z $cublas12 && -e $d/libcublas.so.12 ]] && cublas12=$d/libcublas.so.12
    [[ -z $nvrtc12 && -e $d/libnvrtc.so.12 ]] && nvrtc12=$d/libnvrtc.so.12
  done
  # cudarc tries the unversioned name (libcublas.so) first: a CUDA 12 toolkit's would win over
  # pip's libcublas.so.13, so a folder of our own, first on the path, names the CUDA 13 ones.
  local shim="$WORK/cuda13"
  mkdir -p "$shim"
  [[ -n $cublas13 ]] && ln -sf "$cublas13" "$shim/libcublas.so"
  [[ -n $nvrtc13 ]] && ln -sf "$nvrtc13" "$shim/libnvrtc.so"
  # NCCL's runtime packages (pip nvidia-nccl-cu12/cu13, PyTorch's: nvidia/nccl/lib; apt libnccl2)
  # ship only libnccl.so.2, a name cudarc does not try: the same folder names it libnccl.so.
  local nccl2="" d2
  for d2 in "${dirs[@]}" /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/lib; do
    [[ -e $d2/libnccl.so.2 ]] && { nccl2=$d2/libnccl.so.2; break; }
  done
  [[ -n $nccl2 ]] && ln -sf "$nccl2" "$shim/libnccl.so"
  export LD_LIBRARY_PATH="$shim${path:+:$path}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" NVRTC13=$nvrtc13
  say "  libcublas: ${cublas13:-no libcublas.so.13}${cublas12:+ (CUDA 12: $cublas12)}"
  say "  libnvrtc:  ${nvrtc13:-no libnvrtc.so.13}${nvrtc12:+ (CUDA 12: $nvrtc12)}"
  say "  libnccl:   ${nccl2:-no libnccl.so.2 (the NCCL test will only warn)}"
  jrec env libnccl "$(jstr "${nccl2:-none}")"
  say "  LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  jrec env libcublas "$(jstr "${cublas13:-${cublas12:-none}}")"
  jrec env libnvrtc "$(jstr "${nvrtc13:-${nvrtc12:-none}}")"
  if [[ -z $cublas13 || -z $nvrtc13 ]]; then
    local missing=""
    [[ -z $cublas13 ]] && missing+=" libcublas.so.13"
    [[ -z $nvrtc13 ]] && missing+=" libnvrtc.so.13"
    say "  WARNING: not found:$missing, which the binaries load (cudarc's cuda-13000 build)"
    if [[ -n $cublas12 || -n $nvrtc12 ]]; then
      say "  WARNING: only CUDA 12 versions are here: the failures below may come from that alone"
      say "  (a CUDA 13 toolkit, or pip install nvidia-cublas nvidia-cuda-nvrtc for CUDA 13, fixes it)"
    fi
    jrec env cuda13_libraries false
  else
    jrec env cuda13_libraries true
  fi
}

setup() {
  say "== env"
  say "  binaries: $BIN, $TESTS"
  [[ -f $BUNDLE/MANIFEST ]] && sed 's/^/  bundle: /' "$BUNDLE/MANIFEST"
  local head
  head=$(git rev-parse HEAD 2>/dev/null || true)
  [[ -n $head ]] && say "  this tree: $head"
  say "  glibc here: $(ldd --version 2>/dev/null | head -n 1)"
  jrec env started "$(jstr "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
  jrec env host "$(jstr "$(uname -srm); $(nproc) cores")"
  if ((DRY)); then
    jrec env gpu '"none (dry run on the CPU)"'
  else
    local smi
    smi=$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)
    say "  GPU: $smi"
    local driver_cuda
    driver_cuda=$(timeout 30 nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | cut -d' ' -f3)
    say "  the driver's CUDA: ${driver_cuda:-unknown}"
    # NVRTC 13 makes PTX that only a CUDA 13 driver (580 or later) loads.
    if [[ -n $driver_cuda ]] && ((${driver_cuda%%.*} < 13)); then
      say "  WARNING: this driver supports CUDA $driver_cuda only: the kernels NVRTC 13 compiles will not load"
    fi
    jrec env gpu "$(jstr "$(head -n 1 <<<"$smi")")"
    jrec env driver_cuda "$(jstr "${driver_cuda:-unknown}")"
  fi
  find_cuda_libs
  if ! "$BIN" --version >"$WORK/version.txt" 2>&1; then
    say "  $BIN does not run here:"
    sed 's/^/    /' "$WORK/version.txt"
    return 1
  fi
  say "  $(cat "$WORK/version.txt")"
  SANITIZER=$(command -v compute-sanitizer || true)
  [[ -z $SANITIZER && -x /usr/local/cuda/bin/compute-sanitizer ]] && SANITIZER=/usr/local/cuda/bin/compute-sanitizer
  export SANITIZER
  say "  compute-sanitizer: ${SANITIZER:-not found}"
  say "  python: $("$PY" -c 'import sys; print(sys.version.split()[0])') ($("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null || echo no torch))"

  # The runs' specs. The dry run's counts are small enough for two shared cores.
  write_spec "$WORK/parity.toml" 'preset = "tutorial"' "batch_size = 8
seq_len = 256
grad_accum_steps = 1
warmup_iters = 20
max_iters = $PARITY_STEPS
eval_interval = $PARITY_STEPS
checkpoint_interval = $CHECKPOINT"
  sed -i "1i # the tutorial model, batch 8 x 256, $PARITY_STEPS steps" "$WORK/parity.toml"
  write_spec "$WORK/accum.toml" 'dim = 256
n_layers = 4
n_heads = 4
n_kv_heads = 4
max_seq_len = 512' "batch_size = 4
seq_len = 512
grad_accum_steps = 2
warmup_iters = 10
max_iters = $ACCUM_STEPS
eval_interval = $ACCUM_STEPS
checkpoint_interval = 1000"
  sed -i "1i # dim 256, 4 layers, 4 heads = 4 kv heads (head_dim 64), batch 4 x 512, 2 micro-batches, $ACCUM_STEPS steps" "$WORK/accum.toml"
  write_compare_py
  # The corpus stages once (on the CPU: they do not use the device); every run copies them.
  if ! timeout 120 "$BIN" run "$WORK/parity.toml" --until pretokenize -q --cache "$WORK/base-cache" \
    --runs "$WORK/base-runs" >"$WORK/base.log" 2>&1; then
    say "  preparing the corpus failed:"
    tail -n 15 "$WORK/base.log" | sed 's/^/    /'
    return 1
  fi
}

# The runs' own logs, specs and metrics, the test and sanitizer output: only $OUT comes back.
keep_logs() {
  local f rel
  mkdir -p "$OUT/logs"
  (
    cd "$WORK" || exit
    for f in *.toml *.txt *.err *.out memcheck-*.log base.log */log */runs/gpu-check/default/metrics.jsonl; do
      [[ -f $f ]] || continue
      rel=${f//\//_}
      cp "$f" "$OUT/logs/$rel"
    done
  )
}

main() {
  local t0=$SECONDS
  if ((DRY)); then
    say "gpu-check: DRY RUN with GPU_CHECK_DEVICE=cpu: the CPU stands in for the GPU; nothing about CUDA is checked"
  fi
  # A copy that lost its mode bits on the way still runs.
  [[ -f $BIN && ! -x $BIN ]] && chmod +x "$BIN"
  [[ -f $TESTS && ! -x $TESTS ]] && chmod +x "$TESTS"
  if [[ ! -x $BIN || ! -x $TESTS ]]; then
    say "gpu-check: the prebuilt binaries are missing (TINYLLM_BIN=${BIN:-unset}, TINYLLM_CUDA_TESTS=${TESTS:-unset}):"
    say "  run scripts/gpu-bundle.sh on the build machine and carry gpu-bundle/, or set both variables"
    say "gpu-check: FAILED: no binaries"
    return 2
  fi
  local setup_started=$SECONDS
  if ! setup; then
    record_status env failed $((SECONDS - setup_started)) "setup failed"
    write_report >/dev/null 2>&1
    keep_logs
    say "gpu-check: FAILED at setup (see above)"
    return 1
  fi
  record_status env passed $((SECONDS - setup_started)) ""

  # The CPU references run in the background on most cores while the GPU sections go on.
  say ""
  say "== cpu_ref (in the background, $CPU_THREADS threads)"
  # Done by the time the sections after parity need the rest (`timeout 0` would never stop it).
  local ref_cap=$((DEADLINE - SECONDS - 200))
  ((ref_cap > 300)) && ref_cap=300
  ((ref_cap < 30)) && ref_cap=30
  local ref_started=$SECONDS
  timeout -k 5 "$ref_cap" bash "$SELF" --section cpu_ref >"$WORK/cpu_ref.out" 2>&1 &
  local ref_pid=$!

  run_section ops
  run_section gpu_train
  say ""
  say "== cpu_ref (waiting for it)"
  wait "$ref_pid"
  local ref_rc=$?
  sed 's/^/  /' "$WORK/cpu_ref.out"
  say "-- cpu_ref: $(status_of_rc "$ref_rc") in $((SECONDS - ref_started)) s"
  record_status cpu_ref "$(status_of_rc "$ref_rc")" $((SECONDS - ref_started)) "exit $ref_rc"
  run_section parity
  run_section sample_score
  run_section bench
  run_section memcheck
  run_section pytorch

  say ""
  say "== report"
  if timeout 20 bash -c "$(declare -f write_report); write_report"; then
    say "  wrote $OUT/gpu-check.json, $OUT/gpu-bench.md"
  else
    say "  writing gpu-check.json and gpu-bench.md failed"
  fi
  keep_logs
  say "  and $OUT/gpu-check.log, $OUT/logs/"

  local summary="" all=1 name status
  while IFS=$'\t' read -r name status _ _; do
    summary+="${summary:+, }$name $status"
    case $name:$status in
      *:passed | pytorch:* | memcheck:skipped) ;;
      *) all=0 ;;
    esac
  done <"$WORK/status.tsv"
  local verdict=PASSED
  ((all)) || verdict=FAILED
  if ((DRY)); then
    say "gpu-check DRY RUN on the CPU (no GPU checked): $verdict in $((SECONDS - t0)) s: $summary"
  else
    say "gpu-check: $verdict in $((SECONDS - t0)) s: $summary"
  fi
  ((all))
}

# ----------------------------------------------------------------------------------------------

if [[ ${1:-} == --section ]]; then
  "section_$2"
  exit $?
fi

GPU_CHECK_DEVICE=${GPU_CHECK_DEVICE:-cuda}
case $GPU_CHECK_DEVICE in
  cuda) DRY=0 ;;
  cpu)
    DRY=1
    if timeout 30 nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
      say "gpu-check: GPU_CHECK_DEVICE=cpu is the dry run for machines without a GPU, and this one has one: run it without GPU_CHECK_DEVICE"
      exit 2
    fi
    ;;
  *)
    say "gpu-check: GPU_CHECK_DEVICE=$GPU_CHECK_DEVICE: use cuda (the default) or cpu (the dry run)"
    exit 2
    ;;
esac
DEV=$GPU_CHECK_DEVICE
BUNDLE=$PWD/gpu-bundle
# Prebuilt binaries only: gpu-bundle/ when it was carried, else the two variables.
if [[ -d $BUNDLE ]]; then
  : "${TINYLLM_BIN:=$BUNDLE/tinyllm}" "${TINYLLM_CUDA_TESTS:=$BUNDLE/tinyllm-tests}"
fi
BIN=$(realpath -m "${TINYLLM_BIN:-}" 2>/dev/null)
TESTS=$(realpath -m "${TINYLLM_CUDA_TESTS:-}" 2>/dev/null)
[[ -n ${TINYLLM_BIN:-} ]] || BIN=""
[[ -n ${TINYLLM_CUDA_TESTS:-} ]] || TESTS=""
CORPUS=$PWD/data/quickstart
[[ -d $BUNDLE/quickstart ]] && CORPUS=$BUNDLE/quickstart
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
WORK=$(mktemp -d)
RESULTS=$WORK/results
mkdir -p "$RESULTS"
trap 'rm -rf "$WORK"' EXIT
: >"$WORK/status.tsv"
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-520}))
cores=$(nproc)
if ((DRY)); then
  # Tiny counts: the plumbing, not the numbers.
  PARITY_STEPS=12 CHECKPOINT=4 KILL_AFTER=1 ACCUM_STEPS=4 TORCH_STEPS=1 GENERATE_TOKENS=16
  BENCH_CONFIGS="tutorial-b1:tutorial:1:64:1 tutorial-b2:tutorial:2:64:1"
  CPU_THREADS=$cores RUN_THREADS=$cores
else
  PARITY_STEPS=200 CHECKPOINT=50 KILL_AFTER=10 ACCUM_STEPS=40 TORCH_STEPS=10 GENERATE_TOKENS=256
  BENCH_CONFIGS="tutorial-b8:tutorial:8:256:10 tutorial-b64:tutorial:64:256:10 stories110M-b8:stories110M:8:1024:5"
  # Most cores for the CPU reference, the rest for the GPU processes running beside it.
  CPU_THREADS=$((cores > 8 ? cores - 4 : (cores > 1 ? cores - 1 : 1))) RUN_THREADS=4
fi
NCCL_TEST=gpu_nccl_one_rank_all_reduce_is_the_identity
export DRY DEV BIN TESTS BUNDLE CORPUS PY OUT WORK RESULTS PARITY_STEPS CHECKPOINT KILL_AFTER \
  ACCUM_STEPS TORCH_STEPS GENERATE_TOKENS BENCH_CONFIGS CPU_THREADS RUN_THREADS SANITIZER="" NVRTC13="" \
  NCCL_TEST
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

main 2>&1 | tee "$OUT/gpu-check.log"
exit "${PIPESTATUS[0]}"
