"""train_bucket_ with all_negs against the plain-PyTorch reference, step for step.

With all_negs every table row is a negative of every edge, so the math of one batch does not
depend on how the shuffle splits it into chunks: one batch holding every edge (workers=1) must
equal the reference chunk step over all edges, followed by one row-Adagrad step on every row
and element-wise Adagrad on the relation parameters and the global embedding."""

import pytest
import torch

import pbg_fast
from pbg_fast import ops
from pbg_fast.model import reference as ref

EPS = 1e-10


def row_adagrad(emb, state, g, lr):
    state = state + g.pow(2).mean(1)
    return emb - lr * g / (state.sqrt() + EPS).unsqueeze(1), state


def dense_adagrad(p, state, g, lr):
    state = state + g * g
    return p - lr * g / (state.sqrt() + EPS), state


def setup(n, d, e, operator, rels, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g, dtype=dtype) * 0.3
    state = torch.rand(n, generator=g, dtype=dtype) * 0.1
    lhs = torch.randint(0, n, (e,), generator=g)
    rhs = torch.randint(0, n, (e,), generator=g)
    rel = torch.randint(0, rels, (e,), generator=g)
    params = [ops.operator_init_params(operator, d, rels).to(dtype)
              + 0.2 * torch.randn(rels, ops.operator_num_params(operator, d), generator=g, dtype=dtype)
              for _ in range(2)]
    return emb, state, lhs, rhs, rel, params


@pytest.mark.parametrize("comparator,loss", [("dot", "softmax"), ("cos", "ranking"),
                                             ("l2", "logistic")])
def test_all_negs_dynamic_relations_match_reference(comparator, loss):
    dtype, n, d, e, rels, lr, rlr, reg = torch.float64, 19, 6, 14, 3, 0.1, 0.05, 0.03
    emb, state, lhs, rhs, rel, (rhs_op, lhs_op) = setup(n, d, e, "complex_diagonal", rels, dtype)
    # Reference: both directions (negatives on the side without the operator), summed.
    none = torch.zeros(1, 0, dtype=torch.long)
    fwd = ref.chunk_step(emb, emb, lhs, rhs, rel, rhs_op, none, none, None, None, None, e,
                         "all", "skip", comparator, "complex_diagonal", loss, 0.2, reg)
    bwd = ref.chunk_step(emb, emb, rhs, lhs, rel, lhs_op, none, none, None, None, None, e,
                         "all", "skip", comparator, "complex_diagonal", loss, 0.2, reg)
    rows = torch.arange(n)
    g_tab = torch.zeros_like(emb)
    g_tab.index_add_(0, torch.cat([lhs, rows]), fwd[1]).index_add_(0, rhs, fwd[2])
    g_tab.index_add_(0, torch.cat([rhs, rows]), bwd[1]).index_add_(0, lhs, bwd[2])
    exp_emb, exp_state = row_adagrad(emb, state, g_tab, lr)
    exp_rhs_op, _ = dense_adagrad(rhs_op, torch.zeros_like(rhs_op), fwd[3], rlr)
    exp_lhs_op, _ = dense_adagrad(lhs_op, torch.zeros_like(lhs_op), bwd[3], rlr)

    got = [t.clone() for t in (emb, state, rhs_op, lhs_op)]
    z0, z1 = torch.zeros_like(rhs_op), torch.zeros_like(lhs_op)
    zd = torch.zeros(0, dtype=dtype)
    stats = torch.ops.pbg_fast.train_bucket_(
        got[0], got[1], got[0], got[1], got[2], z0, got[3], z1, zd, zd.clone(), zd.clone(),
        zd.clone(), lhs, rhs, rel, None, e, 50, 0, False, False, True, comparator,
        "complex_diagonal", loss, 0.2, 1.0, lr, rlr, 1, 7, reg, True)
    torch.testing.assert_close(stats[0].item(), (fwd[0] + bwd[0]).item(), rtol=1e-9, atol=1e-9)
    assert stats[3].item() == e
    torch.testing.assert_close(got[0], exp_emb, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got[1], exp_state, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got[2], exp_rhs_op, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got[3], exp_lhs_op, rtol=1e-9, atol=1e-12)


def renorm(emb, max_norm):
    """PBG's max_norm on lookup (torch.embedding_renorm_)."""
    norm = emb.norm(dim=1, keepdim=True)
    return torch.where(norm > max_norm, emb * (max_norm / (norm + 1e-7)), emb)


@pytest.mark.parametrize("max_norm", [0.0, 0.6])
def test_all_negs_static_relation_with_global_embedding_matches_reference(max_norm):
    dtype, n, d, e, lr, rlr = torch.float64, 15, 5, 11, 0.1, 0.07
    emb, state, lhs, rhs, _, _ = setup(n, d, e, "none", 1, dtype, seed=2)
    if max_norm:  # all_negs looks up every row: all are renormalised before the step
        emb_used = renorm(emb, max_norm)
        assert not torch.equal(emb_used, emb)
    glob = torch.randn(d, dtype=dtype) * 0.2
    params = torch.zeros(1, 0, dtype=dtype)
    none = torch.zeros(1, 0, dtype=torch.long)
    rel0 = torch.zeros(e, dtype=torch.long)
    src = emb_used if max_norm else emb
    out = ref.chunk_step(src, src, lhs, rhs, rel0, params, none, none, None, glob, glob, e,
                         "all", "all", "cos", "none", "softmax", 0.1, 0.0)
    rows = torch.arange(n)
    g_tab = torch.zeros_like(emb)
    g_tab.index_add_(0, torch.cat([lhs, rows]), out[1]).index_add_(0, torch.cat([rhs, rows]), out[2])
    exp_emb, exp_state = row_adagrad(src, state, g_tab, lr)
    exp_glob, _ = dense_adagrad(glob, torch.zeros_like(glob), out[4] + out[5], rlr)

    got_emb, got_state, got_glob = emb.clone(), state.clone(), glob.clone()
    glob_state = torch.zeros_like(glob)
    stats = torch.ops.pbg_fast.train_bucket_(
        got_emb, got_state, got_emb, got_state, params.clone(), params.clone(),
        torch.zeros(0, 0, dtype=dtype), torch.zeros(0, 0, dtype=dtype), got_glob, glob_state,
        got_glob, glob_state, lhs, rhs, torch.zeros(0, dtype=torch.long), None, e, 50, 0, False,
        False, False, "cos", "none", "softmax", 0.1, 1.0, lr, rlr, 1, 3, 0.0, True, max_norm)
    torch.testing.assert_close(stats[0].item(), out[0].item(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_emb, exp_emb, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_state, exp_state, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_glob, exp_glob, rtol=1e-9, atol=1e-12)


def train_diagonal_bucket(all_negs, precision="fp32"):
    """A small static-relation bucket with the diagonal operator (for the refusals below)."""
    emb, state, lhs, rhs, _, (p, _) = setup(10, 4, 6, "diagonal", 1, torch.float32)
    z = torch.zeros(0)
    return torch.ops.pbg_fast.train_bucket_(
        emb, state, emb, state, p, torch.zeros_like(p), torch.zeros(0, 4), torch.zeros(0, 4),
        z, z.clone(), z.clone(), z.clone(), lhs, rhs, torch.zeros(0, dtype=torch.long), None,
        10, 5, 0, False, False, False, "dot", "diagonal", "softmax", 0.1, 1.0, 0.1, 0.1, 1, 0,
        0.0, all_negs, 0.0, precision)


def test_all_negs_static_relation_refuses_an_operator():
    with pytest.raises(ValueError, match="all_negs with static relations needs operator 'none'"):
        train_diagonal_bucket(all_negs=True)


def test_max_norm_renormalises_every_looked_up_row_in_place():
    """Sampled negatives, lr = 0: training only renormalises the rows it looks up (the edges'
    rows at least), keeping their direction; rows within max_norm are untouched."""
    n, d, e, max_norm = 300, 8, 200, 1.0
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g) * 0.8
    before = emb.clone()
    state = torch.zeros(n)
    lhs = torch.randint(0, n, (e,), generator=g)
    rhs = torch.randint(0, n, (e,), generator=g)
    none, z = torch.zeros(1, 0), torch.zeros(0)
    torch.ops.pbg_fast.train_bucket_(
        emb, state, emb, state, none, none.clone(), torch.zeros(0, 0), torch.zeros(0, 0), z,
        z.clone(), z.clone(), z.clone(), lhs, rhs, torch.zeros(0, dtype=torch.long), None, 50, 10,
        10, False, False, False, "dot", "none", "softmax", 0.1, 1.0, 0.0, 0.0, 2, 0, 0.0, False,
        max_norm)
    norms, old = emb.norm(dim=1), before.norm(dim=1)
    looked_up = torch.unique(torch.cat([lhs, rhs]))
    assert (old[looked_up] > max_norm).sum() > 20  # the test exercises the renorm
    assert (norms[looked_up] <= max_norm + 1e-5).all()
    short = old <= max_norm
    assert torch.equal(emb[short], before[short])
    cos = torch.nn.functional.cosine_similarity(emb, before, dim=1)
    assert (cos > 1 - 1e-6).all()


def test_tf32_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match="train_bucket_: precision 'tf32' runs on CUDA only"):
        train_diagonal_bucket(all_negs=False, precision="tf32")


def test_bf16_products_on_the_cpu():
    """precision 'bf16' where the CPU has AVX512-BF16 (refused by name elsewhere): trains like
    fp32 within bf16's rounding, without being fp32."""
    if not pbg_fast.build_info()["bf16_gemm"]:
        with pytest.raises(ValueError, match="precision 'bf16' needs a CPU with AVX512-BF16"):
            train_diagonal_bucket(all_negs=False, precision="bf16")
        return
    out = {}
    for precision in ("fp32", "bf16"):
        emb, state, lhs, rhs, _, (p, _) = setup(200, 16, 2000, "diagonal", 1, torch.float32)
        z = torch.zeros(0)
        stats = torch.ops.pbg_fast.train_bucket_(
            emb, state, emb, state, p, torch.zeros_like(p), torch.zeros(0, 16),
            torch.zeros(0, 16), z, z.clone(), z.clone(), z.clone(), lhs, rhs,
            torch.zeros(0, dtype=torch.long), None, 100, 20, 20, False, False, False, "cos",
            "diagonal", "softmax", 0.1, 1.0, 0.1, 0.1, 1, 7, 0.0, False, 0.0, precision)
        out[precision] = (stats, emb)
    (s32, e32), (s16, e16) = out["fp32"], out["bf16"]
    torch.testing.assert_close(s16[0], s32[0], rtol=1e-2, atol=0)
    torch.testing.assert_close(e16, e32, rtol=0, atol=2e-2)
    assert not torch.equal(e16, e32)
