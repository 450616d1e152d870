#!/usr/bin/env bash
# Compile check of the CUDA kernels, usable where torch has no CUDA: the .cu files include only
# the CUDA runtime and csrc/kernels/*.h, so nvcc alone can build them. Objects go to $1 (created
# if missing; there a file is recompiled only when it, a header it includes (nvcc -MD) or the
# flags changed) or a temporary directory removed on exit. One line per file; exits non-zero if
# any file fails, 0 with a notice when nvcc is absent. NVCC and NVCC_FLAGS override the defaults.
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

# Objects built with other flags (or another nvcc) are stale.
stamp="$("$nvcc" --version | tail -n 1) ${flags[*]}"
if [ "$(cat "$out/flags.txt" 2>/dev/null)" != "$stamp" ]; then
  rm -f "$out"/*.o "$out"/*.d
  printf '%s' "$stamp" > "$out/flags.txt"
fi

# Up to date: the object exists and is newer than every file its dependency list names.
up_to_date() {
  local obj="$1" dep="$2" f
  [ -f "$obj" ] && [ -f "$dep" ] || return 1
  for f in $(sed -e 's/\\$//' -e 's/^[^:]*://' "$dep"); do
    [ "$f" -nt "$obj" ] && return 1
  done
  return 0
}

failed=0
for src in "${sources[@]}"; do
  name="$(basename "$src" .cu)"
  log="$out/$name.log"
  start=$SECONDS
  if up_to_date "$out/$name.o" "$out/$name.d"; then
    echo "ok    $name.cu (up to date)"
  elif "$nvcc" -c "${flags[@]}" -MD -MF "$out/$name.d" "$src" -o "$out/$name.o" >"$log" 2>&1; then
    echo "ok    $name.cu ($((SECONDS - start))s)"
  else
    echo "FAIL  $name.cu"
    sed 's/^/      /' "$log"
    failed=1
  fi
done
exit $failed
