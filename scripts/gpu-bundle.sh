#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine that has no Rust toolchain, no crates
# and no network: the `tinyllm` binary and the library's test binary (whose ignored tests check
# every CUDA op against the CPU), both built here in release with `--features cuda` and
# stripped, plus the quickstart corpus, into gpu-bundle/ (ignored by git). Run it here:
#
#   scripts/gpu-bundle.sh            # then carry gpu-bundle/ to the GPU machine
#
# The build drops debug line tables and symbols for this bundle only (through cargo's
# CARGO_PROFILE_RELEASE_* variables, so Cargo.toml's profile is untouched): with line tables
# each binary is about 85 MB, which does not fit the 64 MiB a device run carries. The bundle
# must stay within GPU_BUNDLE_MAX_MIB (default 60) so that it fits beside the tracked files.
set -euo pipefail
cd "$(dirname "$0")/.."

max_mib=${GPU_BUNDLE_MAX_MIB:-60}
bundle=gpu-bundle
export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols

# The path of the executable a cargo build made, from its JSON messages on stdin: the one
# whose target kind is $1 (bin or lib).
executable_of() {
  python3 -c '
import json, sys
kind = sys.argv[1]
found = [m["executable"] for m in map(json.loads, sys.stdin)
         if m.get("reason") == "compiler-artifact" and m.get("executable")
         and kind in m["target"]["kind"]]
if len(found) != 1:
    sys.exit(f"expected one {kind} executable from cargo, got {found}")
print(found[0])' "$1"
}

echo "== cargo build --release --features cuda (no debug info, symbols stripped)"
bin=$(cargo build --release --locked --features cuda --bin tinyllm --message-format=json-render-diagnostics |
  executable_of bin)
echo "== cargo test --release --features cuda --lib --no-run"
tests=$(cargo test --release --locked --features cuda --lib --no-run --message-format=json-render-diagnostics |
  executable_of lib)

rm -rf "$bundle"
mkdir -p "$bundle"
cp "$bin" "$bundle/tinyllm"
cp "$tests" "$bundle/tinyllm-tests"
# cargo already stripped the symbols; strip what is left (section names, notes) if binutils is here.
if command -v strip >/dev/null; then
  strip --strip-all "$bundle/tinyllm" "$bundle/tinyllm-tests"
fi
cp -r data/quickstart "$bundle/quickstart"

# The newest glibc symbol version each binary needs: the GPU machine's glibc must be at least
# that (`ldd --version` there); gpu-check.sh prints both.
glibc_needed() {
  if command -v objdump >/dev/null; then
    objdump -T "$1" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1
  else
    echo unknown
  fi
}

commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
{
  echo "commit: $commit$dirty"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(ldd --version 2>/dev/null | head -1)"
  echo "features: cuda (cudarc cuda-13000: loads libcublas.so.13 and libnvrtc.so.13; libnccl.so only for several GPUs)"
  echo "tinyllm needs: $(glibc_needed "$bundle/tinyllm")"
  echo "tinyllm-tests needs: $(glibc_needed "$bundle/tinyllm-tests")"
  (cd "$bundle" && sha256sum tinyllm tinyllm-tests)
} >"$bundle/MANIFEST"
cat "$bundle/MANIFEST"

size_of() { du -b "$@" | awk '{ n += $1 } END { print n }'; }
total=$(size_of -s "$bundle")
tracked=$(git ls-files -z | xargs -0 du -b -- 2>/dev/null | awk '{ n += $1 } END { print n + 0 }')
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "== sizes"
echo "  tinyllm        $(mib "$(size_of "$bundle/tinyllm")")"
echo "  tinyllm-tests  $(mib "$(size_of "$bundle/tinyllm-tests")")"
echo "  $bundle/     $(mib "$total") in all (limit $max_mib MiB); tracked files $(mib "$tracked")"
if ((total > max_mib * 1048576)); then
  echo "gpu-bundle: $(mib "$total") is over the $max_mib MiB limit" >&2
  exit 1
fi
if ((total + tracked > 64 * 1048576)); then
  echo "gpu-bundle: the bundle and the tracked files make $(mib $((total + tracked))), over the 64 MiB a device run carries" >&2
  exit 1
fi
echo "gpu-bundle: ready; on the GPU machine: bash scripts/gpu-check.sh (carrying $bundle/)"
