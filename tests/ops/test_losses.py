"""loss_forward / loss_backward: kernel vs reference, gradcheck, opcheck, bad input."""

import pytest
import torch

from pbg_fast import ops
from pbg_fast.model import reference as ref
from tests.conftest import tolerances

LOSSES = ["ranking", "logistic", "softmax"]
SHAPES = [(17, 9), (1, 1), (5, 0), (0, 4), (0, 0)]


def inputs(n, m, dtype, weighted, seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, generator=g, dtype=dtype)
    neg = torch.randn(n, m, generator=g, dtype=dtype)
    if m > 1:  # a masked negative, as the chunk step produces them
        neg[0 if n else slice(0, 0), 0] = ref.MASKED_SCORE
    w = torch.rand(n, generator=g, dtype=dtype) + 0.5 if weighted else None
    return pos, neg, w


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_matches_reference_with_grads(loss, shape, weighted, dtype):
    pos, neg, w = inputs(*shape, dtype, weighted)
    a = [pos.clone().requires_grad_(), neg.clone().requires_grad_()]
    b = [pos.clone().requires_grad_(), neg.clone().requires_grad_()]
    out = ops.loss(*a, w, loss, margin=0.3)
    exp = ref.loss(*b, w, loss, margin=0.3)
    torch.testing.assert_close(out, exp, **tolerances(dtype))
    out.backward()
    exp.backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, **tolerances(dtype))


@pytest.mark.parametrize("loss", LOSSES)
def test_gradcheck(loss):
    pos, neg, w = inputs(6, 5, torch.float64, True, seed=2)
    pos.requires_grad_()
    neg.requires_grad_()
    # Keep ranking's hinge away from its kink for the finite differences.
    neg = neg.detach().clone().requires_grad_() if loss != "ranking" else (neg.detach() * 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, n: ops.loss(p, n, w, loss, 0.3), (pos, neg))


@pytest.mark.parametrize("loss", LOSSES)
def test_opcheck(loss):
    pos, neg, w = inputs(6, 5, torch.float32, True)
    torch.library.opcheck(torch.ops.pbg_fast.loss_forward.default, (pos, neg, w, loss, 0.1))
    torch.library.opcheck(torch.ops.pbg_fast.loss_backward.default, (torch.tensor(1.0), pos, neg, w, loss, 0.1))


def test_bad_input_names_the_argument():
    pos, neg, w = inputs(4, 3, torch.float32, True)
    with pytest.raises(ValueError, match="loss: unknown 'hinge'"):
        ops.loss(pos, neg, w, "hinge")
    with pytest.raises(ValueError, match="neg must be"):
        ops.loss(pos, neg[:3], w, "softmax")
    with pytest.raises(ValueError, match="weight must be"):
        ops.loss(pos, neg, w[:2], "softmax")
    with pytest.raises(TypeError, match="weight must have the dtype of pos"):
        ops.loss(pos, neg, w.double(), "softmax")
