"""chunked_neg_scores: kernel vs reference, gradients, gradcheck, opcheck, bad input."""

import pytest
import torch

from pbg_fast import ops
from pbg_fast.model import reference as ref
from tests.conftest import tolerances

COMPARATORS = ["dot", "cos", "l2", "squared_l2"]
# (C, P, L, R, D): ragged negatives, C=1, D=1, L=0, R=0, empty chunks.
SHAPES = [(4, 7, 5, 9, 16), (1, 3, 4, 2, 1), (3, 5, 0, 6, 8), (2, 4, 3, 0, 8), (0, 5, 3, 3, 4),
          (2, 0, 3, 3, 4)]


def inputs(shape, dtype, device, seed=0):
    c, p, l, r, d = shape
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(c, n, d, generator=g, dtype=dtype).to(device) for n in (p, p, l, r)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("comparator", COMPARATORS)
def test_matches_reference_with_grads(comparator, shape, dtype, device):
    xs = [x.requires_grad_() for x in inputs(shape, dtype, device)]
    ys = [x.detach().clone().requires_grad_() for x in xs]
    out = ops.chunked_neg_scores(*xs, comparator)
    exp = ref.chunked_neg_scores(*ys, comparator)
    for o, e in zip(out, exp):
        torch.testing.assert_close(o, e, **tolerances(dtype))
    # A random linear functional of all outputs exercises every gradient path.
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(o.shape, generator=g, dtype=dtype).to(device) for o in out]
    sum((o * w).sum() for o, w in zip(out, ws)).backward()
    sum((e * w).sum() for e, w in zip(exp, ws)).backward()
    for x, y in zip(xs, ys):
        torch.testing.assert_close(x.grad, y.grad, **tolerances(dtype))


@pytest.mark.parametrize("comparator", COMPARATORS)
def test_gradcheck(comparator):
    xs = [x.requires_grad_() for x in inputs((2, 3, 4, 2, 5), torch.float64, "cpu", seed=3)]
    assert torch.autograd.gradcheck(lambda *a: ops.chunked_neg_scores(*a, comparator), xs)


@pytest.mark.parametrize("comparator", COMPARATORS)
def test_opcheck(comparator):
    xs = inputs((2, 3, 4, 2, 5), torch.float32, "cpu")
    torch.library.opcheck(torch.ops.pbg_fast.chunked_neg_scores.default, (*xs, comparator))
    out = ops.chunked_neg_scores(*xs, comparator)
    torch.library.opcheck(
        torch.ops.pbg_fast.chunked_neg_scores_backward.default, (*[torch.ones_like(o) for o in out], *xs, comparator)
    )


def test_bad_input_names_the_argument():
    lp, rp, ln, rn = inputs((2, 3, 4, 2, 5), torch.float32, "cpu")
    with pytest.raises(ValueError, match="comparator: unknown 'foo'"):
        ops.chunked_neg_scores(lp, rp, ln, rn, "foo")
    with pytest.raises(TypeError, match="rhs_pos must have the dtype of lhs_pos"):
        ops.chunked_neg_scores(lp, rp.double(), ln, rn, "dot")
    with pytest.raises(TypeError, match="lhs_pos must be float32 or float64"):
        ops.chunked_neg_scores(lp.long(), rp, ln, rn, "dot")
    with pytest.raises(ValueError, match="rhs_neg must be"):
        ops.chunked_neg_scores(lp, rp, ln, rn[:, :, :3], "dot")
    with pytest.raises(ValueError, match="rhs_pos must match lhs_pos"):
        ops.chunked_neg_scores(lp, rp[:, :2], ln, rn, "dot")
