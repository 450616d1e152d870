import pytest
import torch

import pbg_fast


def pytest_report_header(config):
    return f"pbg_fast build_info: {pbg_fast.build_info()}"


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """Runs a test on each backend; CUDA cases skip without a GPU or a CUDA build."""
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        if not pbg_fast.build_info()["cuda_ext"]:
            pytest.skip("pbg_fast built without CUDA kernels")
    return torch.device(request.param)


def tolerances(dtype):
    """The project's kernel-vs-reference tolerance: 1e-5 in float32, 1e-10 in float64."""
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
