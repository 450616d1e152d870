"""Where the CUDA toolkit really is: shared by setup.py (the CUDA build) and the CUDA host
emulation test, so both find the same one. Torch-free, standard library only."""

import os
import shutil
import subprocess
from typing import Optional


def toolkit_home() -> Optional[str]:
    """CUDA_HOME or CUDA_PATH if set; else the toolkit of the `nvcc` on PATH, as nvcc itself
    reports it (`--dryrun` prints `_HERE_`, its real bin folder): the folder above a wrapper
    script that is not in a toolkit (as here) would be wrong. None when neither exists or the
    folder has no CUDA runtime headers."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    here = [line.split("=", 1)[1].strip() for line in (out.stdout + out.stderr).splitlines()
            if line.startswith("#$ _HERE_=")]
    if here and os.path.exists(os.path.join(here[0], "..", "include", "cuda_runtime_api.h")):
        return os.path.realpath(os.path.join(here[0], ".."))
    return None


def cublas_library(home: Optional[str]) -> Optional[str]:
    """The cuBLAS shared library to link the CUDA extension against (its chunk step calls
    cublasGemmStridedBatchedEx): the toolkit's lib64/libcublas.so, else the one torch's CUDA
    wheels ship (site-packages/nvidia/cu*/lib or nvidia/cublas/lib), the newest soname first.
    At run time it is the one torch has already loaded (same soname). None if neither exists."""
    import glob
    import importlib.util
    candidates = []
    if home:
        candidates += [os.path.join(home, d, "libcublas.so") for d in ("lib64", "lib")]
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for pattern in ("*/lib/libcublas.so*", "cublas/lib/libcublas.so*"):
            candidates += sorted(glob.glob(os.path.join(root, pattern)), reverse=True)
    for path in candidates:
        if os.path.exists(path) and "Lt" not in os.path.basename(path):
            return path
    return None
