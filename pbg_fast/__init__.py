"""pbg_fast: graph embeddings in the line of PyTorch-BigGraph, with a C++/CUDA hot loop."""

import os

import torch

__version__ = "0.1.0"

_ISAS = ("blas", "avx2", "avx512")
if os.environ.get("PBG_FAST_ISA", "") not in ("",) + _ISAS:
    raise ImportError(f"PBG_FAST_ISA: unknown {os.environ['PBG_FAST_ISA']!r}; expected one of "
                      f"{', '.join(_ISAS)} (the highest ISA our kernels use; unset: the best "
                      f"this CPU runs)")
if os.environ.get("PBG_FAST_GEMM", "") not in ("", "blas"):
    raise ImportError(f"PBG_FAST_GEMM: unknown {os.environ['PBG_FAST_GEMM']!r}; expected 'blas' "
                      f"(torch's BLAS for the fp32 GEMMs) or unset (our kernels)")

_EXT_ERROR = None
try:
    from . import _C  # noqa: F401  (registers torch.ops.pbg_fast.*)
except ImportError as e:  # pragma: no cover - exercised only on broken installs
    _C = None
    _EXT_ERROR = e
    if os.environ.get("PBG_FAST_REQUIRE_EXT") == "1":
        raise ImportError(
            f"pbg_fast: the native extension pbg_fast._C failed to load ({e}) and "
            "PBG_FAST_REQUIRE_EXT=1 forbids running without it; build it with `make setup`"
        ) from e

from . import ops  # noqa: E402,F401  (autograd and fake-tensor registrations)


def build_info() -> dict:
    """What this installation runs on: printed in the pytest header and every benchmark record."""
    info = {
        "version": __version__,
        "torch": torch.__version__,
        "cpu_ext": _C is not None,
        "cuda_ext": False,
        "isa": None,
        "compiled_isa": None,
        "isa_level": None,
        "gemm_isa": None,
        "bf16_gemm": False,
        "blas": None,
        "openmp": False,
        "threads": torch.get_num_threads(),
    }
    if _C is not None:
        native = _C.native_build_info()
        info.update(
            isa=native["cpu_isa"],
            compiled_isa=native["compiled_isa"],
            isa_level=native["isa_level"],
            gemm_isa=native["gemm_isa"],
            bf16_gemm=bool(native.get("bf16_gemm", False)),
            blas=native["blas"],
            openmp=native["openmp"],
            cuda_ext=bool(native.get("cuda", False)),
        )
    else:
        info["error"] = str(_EXT_ERROR)
    return info
