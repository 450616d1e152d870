"""row_adagrad_: kernel vs reference (repeated indices included), opcheck, bad input."""

import pytest
import torch

from pbg_fast import ops
from pbg_fast.model import reference as ref
from tests.conftest import tolerances


def inputs(n, d, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, d, generator=g, dtype=dtype)
    state = torch.rand(n, generator=g, dtype=dtype)
    idx = torch.randint(0, n, (k,), generator=g)
    grad = torch.randn(k, d, generator=g, dtype=dtype)
    return w, state, idx, grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(50, 8, 200), (3, 1, 7), (10, 4, 0), (1, 5, 3), (1000, 16, 300)])
def test_matches_reference(shape, dtype):
    w, state, idx, grad = inputs(*shape, dtype)
    w2, state2 = w.clone(), state.clone()
    ops.row_adagrad_(w, state, idx, grad, lr=0.1)
    ref.row_adagrad_(w2, state2, idx, grad, lr=0.1)
    torch.testing.assert_close(w, w2, **tolerances(dtype))
    torch.testing.assert_close(state, state2, **tolerances(dtype))


def test_repeated_indices_are_summed_once():
    w = torch.zeros(2, 3)
    state = torch.zeros(2)
    ops.row_adagrad_(w, state, torch.tensor([1, 1]), torch.ones(2, 3), lr=1.0, eps=0.0)
    # One update with g = 2: state = 4, step = 2 / sqrt(4) = 1.
    torch.testing.assert_close(state, torch.tensor([0.0, 4.0]))
    torch.testing.assert_close(w, torch.tensor([[0.0] * 3, [-1.0] * 3]))


def test_opcheck():
    w, state, idx, grad = inputs(20, 4, 30, torch.float32)
    torch.library.opcheck(torch.ops.pbg_fast.row_adagrad_.default, (w, state, idx, grad, 0.1, 1e-10))


def test_bad_input_names_the_argument():
    w, state, idx, grad = inputs(20, 4, 30, torch.float32)
    with pytest.raises(IndexError, match="indices out of range"):
        ops.row_adagrad_(w, state, idx + 20, grad, 0.1)
    with pytest.raises(TypeError, match="indices must be int64"):
        ops.row_adagrad_(w, state, idx.int(), grad, 0.1)
    with pytest.raises(ValueError, match=r"grad must be \[30, 4\]"):
        ops.row_adagrad_(w, state, idx, grad[:, :3], 0.1)
    with pytest.raises(ValueError, match=r"state must be \[20\]"):
        ops.row_adagrad_(w, state[:5], idx, grad, 0.1)
    with pytest.raises(TypeError, match="grad must have the dtype of weight"):
        ops.row_adagrad_(w, state, idx, grad.double(), 0.1)
