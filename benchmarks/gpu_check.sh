#!/usr/bin/env bash
# The GPU checks of issue #11 in one run, for a machine with an NVIDIA GPU and a CUDA build of
# torch (the device tool's machine: nothing to download, its own torch). Steps, each logged:
#   1. env.txt      nvidia-smi, torch and nvcc versions, the GPU's compute capability
#   2. build.log    pip install --no-build-isolation --no-deps -e . with the CUDA kernels for
#                   this GPU's architecture only (PBG_FAST_CUDA=1 fails loudly without them)
#   3. tests.log    tests/ops on cpu and cuda (the `device` fixture runs every kernel-vs-reference
#                   test on both; test_cuda_build checks the dispatcher) and the GPU trainer's
#                   end-to-end test (MRR against the CPU trainer); tests.xml (JUnit)
#   4. bench.jsonl  bench_train.py --device cuda --quick: train_bucket_ on the GPU against a
#                   plain-PyTorch trainer on the same GPU, edges/s and peak memory, with fp32,
#                   tf32 and bf16 products (cuBLAS); then the
#                   GPU trainer at P=4 swapping partitions (edges/s, seconds per copy)
#   5. summary.txt  what passed, how many CUDA cases ran, the benchmark's headline
# Usage: bash benchmarks/gpu_check.sh OUTDIR [--cpu-dry-run]
#   --cpu-dry-run: the same plumbing without a GPU (CPU build, tests, bench on cpu), to check
#   this script itself on a machine without one.
# Exit status: 0 all passed; 2 no usable GPU; 3 build failed; 4 tests failed; 5 bench failed.
# About 5 minutes on an H200 machine (16 cores); every step has its own timeout.
set -uo pipefail
out="${1:?usage: benchmarks/gpu_check.sh OUTDIR [--cpu-dry-run]}"
dry="${2:-}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
dev=cuda
[ "$dry" = "--cpu-dry-run" ] && dev=cpu
log() { echo "$*" | tee -a "$out/summary.txt"; }
: > "$out/summary.txt"

# 1. The machine.
{
  date -u
  git rev-parse --short HEAD 2>/dev/null
  nvidia-smi 2>&1
  nvcc --version 2>&1 | tail -2
  "$py" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} > "$out/env.txt" 2>&1
if [ "$dev" = cuda ]; then
  arch="$("$py" -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}')" \
          2>>"$out/env.txt")" || { log "FAIL no usable GPU (env.txt)"; exit 2; }
  name="$("$py" -c "import torch; print(torch.cuda.get_device_name())")"
  log "device: $name (sm_${arch/./}), $(grep -o 'torch [^ ]*' "$out/env.txt" | head -1)"
  export TORCH_CUDA_ARCH_LIST="$arch" PBG_FAST_CUDA=1
else
  log "device: none (--cpu-dry-run)"
  export PBG_FAST_CUDA=0
fi

# 2. Build with this machine's torch.
t0=$(date +%s)
MAX_JOBS="${MAX_JOBS:-$(nproc)}" timeout 420 "$py" -m pip install --no-build-isolation --no-deps \
  -e . > "$out/build.log" 2>&1 || { log "FAIL build ($(( $(date +%s) - t0 )) s): build.log"; \
  tail -30 "$out/build.log"; exit 3; }
"$py" -c "import pbg_fast; print(pbg_fast.build_info())" >> "$out/build.log" 2>&1
log "build: ok in $(( $(date +%s) - t0 )) s; $(tail -1 "$out/build.log")"

# 3. The op tests on cpu and cuda.
t0=$(date +%s)
PBG_FAST_REQUIRE_EXT=1 timeout 300 "$py" -m pytest -q -p no:cacheprovider tests/ops \
  tests/test_gpu_trainer.py \
  --junitxml "$out/tests.xml" > "$out/tests.log" 2>&1
trc=$?
"$py" - "$out/tests.xml" <<'PY' | tee -a "$out/summary.txt"
import re, sys, xml.etree.ElementTree as ET
cases = list(ET.parse(sys.argv[1]).getroot().iter("testcase"))
def state(c):
    for k in ("failure", "error", "skipped"):
        if c.find(k) is not None:
            return k
    return "passed"
# The device fixture's CUDA cases (a "cuda" parameter id), and the GPU trainer's test.
cuda = [c for c in cases if re.search(r"[\[-]cuda[\]-]", c.get("name", ""))
        or c.get("name") == "test_gpu_training_reaches_the_cpu_mrr"]
count = lambda cs, s: sum(state(c) == s for c in cs)
print(f"tests: {len(cases)} cases, {count(cases, 'passed')} passed, "
      f"{count(cases, 'failure') + count(cases, 'error')} failed, {count(cases, 'skipped')} skipped; "
      f"cuda cases: {count(cuda, 'passed')} passed, {count(cuda, 'skipped')} skipped, "
      f"{count(cuda, 'failure') + count(cuda, 'error')} failed")
PY
log "tests: exit $trc in $(( $(date +%s) - t0 )) s: $(tail -1 "$out/tests.log")"

# 4. The benchmark.
t0=$(date +%s)
bench_args=(--device "$dev" --quick)
[ "$dev" = cpu ] && bench_args+=(--nodes 20000 --edges 200000)
timeout 240 "$py" benchmarks/bench_train.py "${bench_args[@]}" > "$out/bench.jsonl" \
  2> "$out/bench.err"
brc=$?
"$py" - "$out/bench.jsonl" <<'PY' | tee -a "$out/summary.txt"
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("what") == "train_device_swapping" and "edges_per_s" in r:
        print(f"bench swapping P=4: {r['edges_per_s'] / 1e6:.2f}M edges/s in the op, "
              f"{r['wall_edges_per_s'] / 1e6:.2f}M wall, {r['seconds_per_device_copy']:.3f} s "
              f"per device copy")
    if r.get("what") == "train_device_precision":
        print(f"bench {r['precision']} products: {r['edges_per_s'] / 1e6:.2f}M edges/s "
              f"({r['speedup_vs_first']:.2f}x {r['first']}), loss/edge {r['loss_per_edge']:.4f}")
    if r.get("what") == "train_device" and "edges_per_s" in r:
        print(f"bench: {r['edges'] / 1e6:g}M edges, {r['nodes'] / 1e6:g}M nodes: "
              f"{r['edges_per_s'] / 1e6:.2f}M edges/s, plain PyTorch "
              f"{r['reference_edges_per_s'] / 1e6:.3f}M edges/s ({r['speedup_vs_reference']:.1f}x), "
              f"peak {r['peak_device_mb']} MB")
PY
log "bench: exit $brc in $(( $(date +%s) - t0 )) s"
[ $trc -ne 0 ] && exit 4
[ $brc -ne 0 ] && exit 5
log "all passed"
