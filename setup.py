"""Builds pbg_fast._C through torch's cpp_extension.

CPU kernels are always built. CUDA kernels are built when torch has CUDA and nvcc is found
(PBG_FAST_CUDA=1 forces them and fails loudly without CUDA; PBG_FAST_CUDA=0 skips them).
The CPU code targets a portable x86-64 baseline: the GEMMs go to torch's BLAS, which picks the
best ISA at run time. PBG_FAST_NATIVE=1 adds -march=native for a machine-specific build.
"""

import glob
import os
import sys

from setuptools import setup

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from cuda_toolkit import cublas_library, toolkit_home  # noqa: E402


def _cuda_environment():
    """Points torch's cpp_extension at a real CUDA toolkit before it looks for one (it reads
    CUDA_HOME once, at import; without it torch takes the folder above the `nvcc` on PATH, wrong
    when that is a wrapper script): tools/cuda_toolkit.py finds it. The cuBLAS/cuSPARSE headers
    that torch's CUDA headers include may be missing from that toolkit but ship with torch's
    CUDA wheels (site-packages/nvidia/cu*/include): passed on as CUDA_INC_PATH."""
    if torch.version.cuda is None:
        return
    home = toolkit_home()
    if home is None:
        return
    os.environ.setdefault("CUDA_HOME", home)
    if (not os.environ.get("CUDA_INC_PATH")
            and not os.path.exists(os.path.join(home, "include", "cublas_v2.h"))):
        import importlib.util
        spec = importlib.util.find_spec("nvidia")
        for root in (spec.submodule_search_locations or []) if spec else []:
            found = sorted(glob.glob(os.path.join(root, "*", "include", "cublas_v2.h")))
            if found:
                os.environ["CUDA_INC_PATH"] = os.path.dirname(found[-1])
                break


_cuda_environment()
from torch.utils import cpp_extension  # noqa: E402  (after CUDA_HOME is settled)


def _flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value not in ("0", "1"):
        raise SystemExit(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


def _want_cuda():
    forced = _flag("PBG_FAST_CUDA")
    available = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if forced is True and not available:
        raise SystemExit("PBG_FAST_CUDA=1 but torch has no CUDA or nvcc was not found")
    return available if forced is None else forced


def build_list():
    """csrc/BUILD.txt: the sources and flags shared with CMakeLists.txt."""
    entries = {}
    with open(os.path.join(ROOT, "csrc", "BUILD.txt")) as f:
        for line in f:
            if line.strip() and not line.lstrip().startswith("#"):
                key, *values = line.split()
                entries[key] = values
    return entries


def _sources(patterns):
    out = []
    for pattern in patterns:
        out += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    return out


def extensions():
    b = build_list()
    cxx = b["cxx_flags"] + [f"-D{d}" for d in b["cxx_defines"]]
    if _flag("PBG_FAST_NATIVE"):
        cxx += b["native_flags"]
    sources = _sources(b["cpu_sources"] + b["python_module_sources"])
    if _want_cuda():
        cublas = cublas_library(cpp_extension.CUDA_HOME)
        if cublas is None:
            raise SystemExit("the CUDA build needs cuBLAS (libcublas.so): not in the toolkit at "
                             f"{cpp_extension.CUDA_HOME} nor in torch's nvidia wheels")
        return [
            cpp_extension.CUDAExtension(
                "pbg_fast._C",
                sources + _sources(b["cuda_sources"]),
                extra_compile_args={"cxx": cxx + [f"-D{d}" for d in b["cuda_defines"]],
                                    "nvcc": b["nvcc_flags"]},
                extra_link_args=b["link_flags"] + [cublas],
            )
        ]
    return [
        cpp_extension.CppExtension(
            "pbg_fast._C", sources, extra_compile_args={"cxx": cxx},
            extra_link_args=b["link_flags"]
        )
    ]


# The Makefile installs the package (editable) with PBG_FAST_NO_EXT=1 and builds the extension
# once, with `build_ext --inplace`, which rebuilds only what changed (a plain `pip install .`
# builds it as usual).
setup(
    ext_modules=[] if _flag("PBG_FAST_NO_EXT") else extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
