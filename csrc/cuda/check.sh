#!/usr/bin/env bash
# Compile check of the CUDA kernels, usable where torch has no CUDA: the .cu files include only
# the CUDA runtime and csrc/kernels/*.h, so nvcc alone can build them. Objects go to $1 (created
# if missing) or a temporary directory removed on exit. One line per file; exits non-zero if any
# file fails, 0 with a notice when nvcc is absent. NVCC and NVCC_FLAGS override the defaults.
set -u

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
nvcc="${NVCC:-nvcc}"
if ! command -v "$nvcc" >/dev/null 2>&1; then
  echo "nvcc not found; skipping CUDA compile check"
  exit 0
fi

if [ $# -ge 1 ]; then
  out="$1"
  mkdir -p "$out"
else
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi

# shellcheck disable=SC2206
flags=(${NVCC_FLAGS:--std=c++20 -O2 --expt-relaxed-constexpr
       -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90})

shopt -s nullglob
sources=("$here"/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "no .cu files in $here"
  exit 1
fi

failed=0
for src in "${sources[@]}"; do
  name="$(basename "$src" .cu)"
  log="$out/$name.log"
  start=$SECONDS
  if "$nvcc" -c "${flags[@]}" "$src" -o "$out/$name.o" >"$log" 2>&1; then
    echo "ok    $name.cu ($((SECONDS - start))s)"
  else
    echo "FAIL  $name.cu"
    sed 's/^/      /' "$log"
    failed=1
  fi
done
exit $failed
