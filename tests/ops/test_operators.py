"""operator_forward / operator_backward: kernel vs reference, gradcheck, opcheck, bad input."""

import pytest
import torch

from pbg_fast import ops
from pbg_fast.model import reference as ref
from tests.conftest import tolerances

OPERATORS = ["none", "translation", "diagonal", "complex_diagonal", "linear", "affine"]


def inputs(op, n, d, r, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    params = ops.operator_init_params(op, d, r).to(dtype)
    params += 0.3 * torch.randn(params.shape, generator=g, dtype=dtype)
    rel = torch.randint(0, r, (n,), generator=g)
    return x, params, rel


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(11, 6, 3), (1, 2, 1), (0, 4, 2), (5, 1, 1)])
@pytest.mark.parametrize("op", OPERATORS)
def test_matches_reference_with_grads(op, shape, dtype):
    n, d, r = shape
    if op == "complex_diagonal" and d % 2:
        pytest.skip("complex_diagonal needs an even dimension")
    x, params, rel = inputs(op, n, d, r, dtype)
    a = [x.clone().requires_grad_(), params.clone().requires_grad_()]
    b = [x.clone().requires_grad_(), params.clone().requires_grad_()]
    out = ops.operator_forward(a[0], a[1], rel, op)
    exp = ref.operator_forward(b[0], b[1], rel, op)
    torch.testing.assert_close(out, exp, **tolerances(dtype))
    w = torch.randn(out.shape, dtype=dtype)
    (out * w).sum().backward()
    (exp * w).sum().backward()
    torch.testing.assert_close(a[0].grad, b[0].grad, **tolerances(dtype))
    if params.numel():
        torch.testing.assert_close(a[1].grad, b[1].grad, **tolerances(dtype))


@pytest.mark.parametrize("op", OPERATORS)
def test_gradcheck(op):
    x, params, rel = inputs(op, 5, 4, 2, torch.float64, seed=1)
    x.requires_grad_()
    params.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, p: ops.operator_forward(a, p, rel, op), (x, params))


@pytest.mark.parametrize("op", OPERATORS)
def test_opcheck(op):
    x, params, rel = inputs(op, 5, 4, 2, torch.float32)
    torch.library.opcheck(torch.ops.pbg_fast.operator_forward.default, (x, params, rel, op))
    torch.library.opcheck(torch.ops.pbg_fast.operator_backward.default, (torch.ones_like(x), x, params, rel, op))


def test_bad_input_names_the_argument():
    x, params, rel = inputs("diagonal", 5, 4, 2, torch.float32)
    with pytest.raises(ValueError, match="operator: unknown 'rotate'"):
        ops.operator_forward(x, params, rel, "rotate")
    with pytest.raises(ValueError, match=r"op_params must be \[R, 16\]"):
        ops.operator_forward(x, params, rel, "linear")
    with pytest.raises(IndexError, match="rel out of range"):
        ops.operator_forward(x, params, rel + 5, "diagonal")
    with pytest.raises(TypeError, match="rel must be int64"):
        ops.operator_forward(x, params, rel.int(), "diagonal")
    with pytest.raises(ValueError, match="complex_diagonal needs an even dim"):
        ops.operator_forward(x[:, :3], params[:, :3], rel, "complex_diagonal")
