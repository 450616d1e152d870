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
