"""loss_forward / loss_backward: kernel vs reference, gradcheck, opcheck, bad input."""

import math

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


# The chunk step's fp32 loss pass (csrc/cpu/loss_kernel.h) on each ISA's kernel, by name (blas:
# the generic loss_row); an ISA this CPU lacks is skipped (the op would run the best it has).
# Row lengths around the AVX2 (8) and AVX-512 (16) vector widths: full vectors only, a ragged
# last one, a single lane, none.
KERNEL_ISAS = ["blas", "avx2", "avx512"]
ROW_LENGTHS = [0, 1, 7, 8, 9, 15, 16, 17, 33, 100]
GUARD = 17  # floats after each buffer that no kernel may touch


def runs_here(isa):
    import pbg_fast
    best = pbg_fast._C.native_build_info()["gemm_isa_best"]
    return KERNEL_ISAS.index(isa) <= KERNEL_ISAS.index(best)


def unaligned(n, m):
    """An n x m view starting one float into fresh storage, followed by GUARD sentinels."""
    buf = torch.full((n * m + 1 + GUARD,), 12345.0)
    return buf, buf[1:1 + n * m].view(n, m)


def loss_rows_inputs(n, m, weighted, seed):
    g = torch.Generator().manual_seed(seed)
    # Spreads from small to large (the exp's clamp).
    _, neg = unaligned(n, m)
    neg.copy_(torch.randn(n, m, generator=g) * torch.tensor([0.1, 1.0, 30.0]).repeat(n)[:n, None])
    pos = torch.randn(n, generator=g) * 3
    if m:
        neg[0, 0] = ref.MASKED_SCORE  # a masked negative: no loss, no gradient
        neg[1, :] = ref.MASKED_SCORE  # a row of masked negatives only
        neg[2, m // 2] = pos[2]  # a tie with the positive: not a violator
        pos[3] = -200.0  # every negative above it: exp(pos - hi) underflows
    w = torch.rand(n, generator=g) + 0.5 if weighted else None
    return pos, neg, w


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("m", ROW_LENGTHS)
@pytest.mark.parametrize("isa", KERNEL_ISAS)
@pytest.mark.parametrize("loss", LOSSES)
def test_loss_rows_kernels_match_reference(loss, isa, m, weighted, in_place):
    if not runs_here(isa):
        pytest.skip(f"this CPU (or PBG_FAST_ISA) does not run {isa}")
    n = 7
    pos, neg, w = loss_rows_inputs(n, m, weighted, seed=m)
    p, q = pos.clone().requires_grad_(), neg.clone().requires_grad_()
    expect = ref.loss(p, q, w, loss, margin=0.3)
    expect.backward()
    buf, grad = unaligned(n, m)
    if in_place:  # the gradient written over the scores it is computed from
        grad.copy_(neg)
        scores = grad
    else:
        scores = neg
    gpos = torch.full_like(pos, float("nan"))  # the op zeroes it, the kernel adds to it
    total, violators = torch.ops.pbg_fast.loss_rows_(grad, gpos, scores, pos, w, loss, 0.3, isa)
    torch.testing.assert_close(torch.tensor(total, dtype=torch.float32), expect.detach(),
                               rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, q.grad, **tolerances(torch.float32))
    torch.testing.assert_close(gpos, p.grad, **tolerances(torch.float32))
    assert violators == int((neg > pos[:, None]).sum())
    assert (buf[0] == 12345.0) and (buf[1 + n * m:] == 12345.0).all()  # nothing written outside
    if m:
        assert grad[0, 0] == 0 and (grad[1] == 0).all()  # masked: exactly no gradient


@pytest.mark.parametrize("isa", KERNEL_ISAS)
@pytest.mark.parametrize("loss", ["logistic", "softmax"])
def test_loss_rows_nan_scores_poison_their_row(loss, isa):
    """A NaN score gives its row a NaN loss and NaN gradients, on every kernel (as the generic
    code and the reference do), so the trainer's finiteness check sees it; other rows stay
    finite."""
    if not runs_here(isa):
        pytest.skip(f"this CPU (or PBG_FAST_ISA) does not run {isa}")
    pos, neg, _ = loss_rows_inputs(6, 21, False, seed=3)
    neg[4, 9] = float("nan")
    rows = []
    for i in range(6):  # row by row: the op's total sums them
        grad, gpos = torch.empty(1, 21), torch.empty(1)
        total, _ = torch.ops.pbg_fast.loss_rows_(grad, gpos, neg[i:i + 1].contiguous(),
                                                 pos[i:i + 1], None, loss, 0.1, isa)
        rows.append((total, grad))
    assert math.isnan(rows[4][0]) and rows[4][1].isnan().any()
    assert all(math.isfinite(t) and g.isfinite().all() for j, (t, g) in enumerate(rows) if j != 4)
    assert torch.isnan(ref.loss(pos[4:5], neg[4:5], None, loss))


def test_loss_rows_refuses_bad_arguments():
    pos, neg, _ = loss_rows_inputs(4, 9, False, 0)
    neg = neg.contiguous()
    grad, gpos = torch.empty_like(neg), torch.empty_like(pos)
    with pytest.raises(ValueError, match="isa: unknown 'sse9'"):
        torch.ops.pbg_fast.loss_rows_(grad, gpos, neg, pos, None, "softmax", 0.1, "sse9")
    with pytest.raises(ValueError, match="loss: unknown 'hinge'"):
        torch.ops.pbg_fast.loss_rows_(grad, gpos, neg, pos, None, "hinge", 0.1, "avx2")
    with pytest.raises(ValueError, match="grad must have the shape of scores"):
        torch.ops.pbg_fast.loss_rows_(grad[:2], gpos, neg, pos, None, "softmax", 0.1, "avx2")
    with pytest.raises(TypeError, match="float32"):
        torch.ops.pbg_fast.loss_rows_(grad.double(), gpos.double(), neg.double(), pos.double(),
                                      None, "ranking", 0.1, "avx2")
    with pytest.raises(ValueError, match="reps > 1 with grad in place"):
        torch.ops.pbg_fast.loss_rows_(neg, gpos, neg, pos, None, "softmax", 0.1, "avx2", 2)
