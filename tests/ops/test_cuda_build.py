"""The CUDA build's contract with the dispatcher: every device op of the pbg_fast library has a
CUDA kernel next to its CPU one. Runs in the build that has the CUDA extension (make check-cuda
builds it against a CUDA torch, GPU or not; a GPU machine builds it with its own torch) and
skips in a CPU-only build. Kernel-vs-reference checks on the device live with each op's tests."""

import pytest
import torch

import pbg_fast

# CPU-only by design: the CPU backend's per-ISA micro-kernels as ops (the GEMM, the loss pass)
# and the CPU's FMA peak (no tensors).
CPU_ONLY = {"pbg_fast::gemm_", "pbg_fast::loss_rows_", "pbg_fast::fma_peak"}
# Device ops without a CUDA kernel yet. A strict xfail: once the kernel is registered the test
# fails until the name leaves this set.
CUDA_MISSING = set()


def _ops():
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("pbg_fast::"))


@pytest.mark.skipif(not pbg_fast.build_info()["cpu_ext"], reason="built without the extension")
def test_library_lists_ops():
    names = _ops()
    assert "pbg_fast::chunk_step" in names and "pbg_fast::train_bucket_" in names, names


needs_cuda_ext = pytest.mark.skipif(not pbg_fast.build_info()["cuda_ext"],
                                    reason="built without the CUDA extension")


@needs_cuda_ext
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(
    strict=True, reason="no CUDA kernel yet (issue #11)")) if n in CUDA_MISSING else n
    for n in _ops() if n not in CPU_ONLY])
def test_every_device_op_has_a_cuda_kernel(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), name
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), name


@needs_cuda_ext
def test_cuda_build_reports_its_torch():
    info = pbg_fast.build_info()
    assert torch.version.cuda is not None, "a CUDA extension loaded by a CPU-only torch"
    assert info["torch"] == torch.__version__
