"""train_bucket_ with sampled negatives against the plain-PyTorch bucket reference
(pbg_fast.model.reference.train_bucket_), over several batches.

Both draw the shuffle and every batch's uniform negatives from the same counter-based streams
(csrc/kernels/counter_rng.h), so with one worker the op and the reference train the same
batches with the same negatives, and the tables must agree after every batch (float64: only the
order of sums differs). Covers every comparator, operator and loss, in-chunk + uniform and
uniform-only negatives, ragged last chunks and batches, dynamic relations, a disabled side,
global embeddings, edge weights, N3 and max_norm, one shared table or two."""

import itertools

import numpy as np
import pytest
import torch

from pbg_fast import ops
from pbg_fast.model import reference as ref

COMPARATORS = ["dot", "cos", "l2", "squared_l2"]
OPERATORS = ["none", "translation", "diagonal", "complex_diagonal", "linear", "affine"]
LOSSES = ["ranking", "logistic", "softmax"]


def make_case(n_lhs, n_rhs, d, e, rels, operator, dynamic, glob, weighted, same, seed):
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    lhs_emb = torch.randn(n_lhs, d, generator=g, dtype=dt) * 0.4
    lhs_state = torch.rand(n_lhs, generator=g, dtype=dt) * 0.1
    if same:
        rhs_emb, rhs_state = lhs_emb, lhs_state
        n_rhs = n_lhs
    else:
        rhs_emb = torch.randn(n_rhs, d, generator=g, dtype=dt) * 0.4
        rhs_state = torch.rand(n_rhs, generator=g, dtype=dt) * 0.1
    k = ops.operator_num_params(operator, d)
    rhs_op = ops.operator_init_params(operator, d, rels).to(dt) + 0.1 * torch.randn(rels, k, generator=g, dtype=dt)
    lhs_op = (ops.operator_init_params(operator, d, rels).to(dt) + 0.1 * torch.randn(rels, k, generator=g, dtype=dt)
              if dynamic else torch.zeros(0, k, dtype=dt))
    if glob:
        lg = torch.randn(d, generator=g, dtype=dt) * 0.1
        rg = lg if same else torch.randn(d, generator=g, dtype=dt) * 0.1
        lgs, rgs = torch.rand(d, generator=g, dtype=dt), None
        rgs = lgs if same else torch.rand(d, generator=g, dtype=dt)
    else:
        lg = rg = lgs = rgs = None
    tensors = dict(
        lhs_emb=lhs_emb, lhs_state=lhs_state, rhs_emb=rhs_emb, rhs_state=rhs_state,
        rhs_op_params=rhs_op, rhs_op_state=torch.rand(rhs_op.shape, generator=g, dtype=dt),
        lhs_op_params=lhs_op, lhs_op_state=torch.rand(lhs_op.shape, generator=g, dtype=dt),
        lhs_global=lg, lhs_global_state=lgs, rhs_global=rg, rhs_global_state=rgs)
    edges = dict(lhs=torch.randint(0, n_lhs, (e,), generator=g),
                 rhs=torch.randint(0, n_rhs, (e,), generator=g),
                 rel=torch.randint(0, rels, (e,), generator=g) if rels > 1 or dynamic
                 else torch.zeros(0, dtype=torch.long),
                 weight=torch.rand(e, generator=g, dtype=dt) + 0.5 if weighted else None)
    return tensors, edges


def clone_tables(t):
    """A deep copy that keeps which tensors are one and the same (a shared table)."""
    memo, out = {}, {}
    for k, v in t.items():
        if v is None:
            out[k] = torch.zeros(0, dtype=torch.float64)
            continue
        if id(v) not in memo:
            memo[id(v)] = v.clone()
        out[k] = memo[id(v)]
    return out


ORDER = ["lhs_emb", "lhs_state", "rhs_emb", "rhs_state", "rhs_op_params", "rhs_op_state",
         "lhs_op_params", "lhs_op_state", "lhs_global", "lhs_global_state", "rhs_global",
         "rhs_global_state"]


def run_both(tensors, edges, op=None, **kw):
    """The op (default: torch.ops.pbg_fast.train_bucket_) and the reference on copies of the
    same tables."""
    op = op or torch.ops.pbg_fast.train_bucket_
    args = [kw[k] for k in ("batch_size", "num_batch_negs", "num_uniform_negs",
                            "disable_lhs_negs", "disable_rhs_negs", "dynamic", "comparator",
                            "operator", "loss", "margin", "relation_weight", "lr",
                            "relation_lr")]
    tail = [1, kw["seed"], kw.get("reg_coef", 0.0), False, kw.get("max_norm", 0.0)]
    got, exp = clone_tables(tensors), clone_tables(tensors)
    s_got = op(*[got[k] for k in ORDER], edges["lhs"], edges["rhs"], edges["rel"],
               edges["weight"], *args, *tail)
    s_exp = ref.train_bucket_(*[exp[k] for k in ORDER], edges["lhs"], edges["rhs"], edges["rel"],
                              edges["weight"], *args, *tail)
    return got, exp, s_got, s_exp


def exact_ties(tensors, edges, kw):
    """Negatives that are an edge's own entity under another name (a repeated index, in its
    chunk or among the chunk's uniform draws), over every batch and scored side: their score
    equals the positive's in exact arithmetic, so whether rounding counts them as violators is
    arbitrary. The op's and the reference's violator counts may differ by at most these."""
    n_edges, bs = edges["lhs"].numel(), kw["batch_size"]
    chunk = kw["num_batch_negs"] or kw["num_uniform_negs"]
    order = torch.from_numpy(ref.rng_shuffle(kw["seed"], n_edges))
    sides = [(edges["lhs"], ref.LHS_NEGATIVES, tensors["lhs_emb"].shape[0], kw["disable_lhs_negs"]),
             (edges["rhs"], ref.RHS_NEGATIVES, tensors["rhs_emb"].shape[0], kw["disable_rhs_negs"])]
    ties = 0
    for b in range((n_edges + bs - 1) // bs):
        e = order[b * bs:(b + 1) * bs]
        c = (len(e) + chunk - 1) // chunk
        for idx, purpose, n, disabled in sides:
            if disabled:
                continue
            u = kw["num_uniform_negs"]
            uni = ref.rng_uniform(kw["seed"], purpose, b, c * u, n).view(c, u)
            for j in range(c):
                own = idx[e[j * chunk:(j + 1) * chunk]]
                ties += int((own.unsqueeze(1) == uni[j].unsqueeze(0)).sum())
                if kw["num_batch_negs"]:
                    ties += int((own.unsqueeze(1) == own.unsqueeze(0)).sum()) - len(own)
    return ties


def assert_same(got, exp, s_got, s_exp, ties):
    for k in ORDER:
        torch.testing.assert_close(got[k], exp[k], rtol=1e-9, atol=1e-11, msg=lambda m: f"{k}: {m}")
    torch.testing.assert_close(s_got[0].item(), s_exp[0].item(), rtol=1e-9, atol=1e-9)
    assert s_got[3].item() == s_exp[3].item()
    off = abs(s_got[1].item() - s_exp[1].item()) + abs(s_got[2].item() - s_exp[2].item())
    assert off <= ties, (s_got[1:3], s_exp[1:3], ties)


BASE = dict(batch_size=23, num_batch_negs=5, num_uniform_negs=4, disable_lhs_negs=False,
            disable_rhs_negs=False, dynamic=False, margin=0.2, relation_weight=1.0, lr=0.1,
            relation_lr=0.05, seed=11)


@pytest.mark.parametrize("comparator,operator,loss",
                         list(itertools.product(COMPARATORS, OPERATORS, LOSSES)))
def test_every_comparator_operator_loss_matches_reference(comparator, operator, loss):
    """72 edges in batches of 23 (a ragged last batch), chunks of 5 (ragged last chunks), 5
    in-chunk + 4 uniform negatives; dynamic relations (both directions) with 3 relations."""
    tensors, edges = make_case(17, 17, 6, 72, 3, operator, True, False, False, False, 3)
    kw = dict(BASE, dynamic=True, comparator=comparator, operator=operator, loss=loss)
    got, exp, s_got, s_exp = run_both(tensors, edges, **kw)
    assert_same(got, exp, s_got, s_exp, exact_ties(tensors, edges, kw))
    assert not torch.equal(got["lhs_emb"], tensors["lhs_emb"])  # it trained


OPTION_CASES = [
    dict(name="static, one shared table, global embedding, weights, N3, max_norm",
         dynamic=False, same=True, glob=True, weighted=True, reg_coef=0.01, max_norm=1.0,
         operator="complex_diagonal", rels=1),
    dict(name="static, two tables, global embeddings, weights", dynamic=False, same=False,
         glob=True, weighted=True, operator="diagonal", rels=1),
    dict(name="uniform negatives only (num_batch_negs=0)", dynamic=True, same=True, glob=False,
         weighted=False, operator="translation", rels=4, num_batch_negs=0, num_uniform_negs=7),
    dict(name="lhs negatives disabled", dynamic=False, same=False, glob=False, weighted=True,
         operator="linear", rels=1, disable_lhs_negs=True),
    dict(name="rhs negatives disabled, dynamic, relation weight", dynamic=True, same=True,
         glob=True, weighted=False, operator="affine", rels=2, disable_rhs_negs=True,
         relation_weight=0.5),
    dict(name="a batch bigger than the bucket", dynamic=False, same=False, glob=False,
         weighted=False, operator="none", rels=1, batch_size=500),
]


def check_options(case, comparator, loss, op=None):
    case = dict(case)
    case.pop("name")
    build = {k: case.pop(k) for k in ("dynamic", "same", "glob", "weighted", "operator", "rels")}
    tensors, edges = make_case(23, 19, 8, 61, build["rels"], build["operator"], build["dynamic"],
                               build["glob"], build["weighted"], build["same"], 5)
    kw = dict(BASE, dynamic=build["dynamic"], comparator=comparator, operator=build["operator"],
              loss=loss)
    kw.update(case)
    got, exp, s_got, s_exp = run_both(tensors, edges, op=op, **kw)
    assert_same(got, exp, s_got, s_exp, exact_ties(tensors, edges, kw))


@pytest.mark.parametrize("case", OPTION_CASES, ids=[c["name"] for c in OPTION_CASES])
@pytest.mark.parametrize("comparator,loss", [("dot", "softmax"), ("cos", "ranking"),
                                             ("l2", "logistic")])
def test_options_match_reference(case, comparator, loss):
    check_options(case, comparator, loss)


def test_reference_is_batch_by_batch():
    """The reference's per-batch hook sees every batch; its state after the last one is the
    op's (the op has no hook: batch-by-batch comparisons against the op run on prefixes of the
    shuffled order, which the counter-based streams keep identical)."""
    tensors, edges = make_case(11, 11, 4, 40, 1, "none", False, False, False, True, 9)
    seen = []
    kw = dict(BASE, comparator="dot", operator="none", loss="softmax", batch_size=7)
    args = [kw[k] for k in ("batch_size", "num_batch_negs", "num_uniform_negs",
                            "disable_lhs_negs", "disable_rhs_negs", "dynamic", "comparator",
                            "operator", "loss", "margin", "relation_weight", "lr", "relation_lr")]
    t = clone_tables(tensors)
    ref.train_bucket_(*[t[k] for k in ORDER], edges["lhs"], edges["rhs"], edges["rel"], None, *args,
                      1, kw["seed"], on_batch=seen.append)
    assert seen == list(range(6))


def test_shuffle_is_a_permutation_and_depends_on_the_seed():
    for n in [1, 2, 3, 5, 64, 1000, 4097]:
        p = ref.rng_shuffle(3, n)
        assert sorted(p.tolist()) == list(range(n))
    a, b = ref.rng_shuffle(3, 1000), ref.rng_shuffle(4, 1000)
    assert (a != b).mean() > 0.9
    assert abs(np.corrcoef(np.arange(1000), a)[0, 1]) < 0.1  # no trace of the identity


def test_uniform_draws_cover_the_range_evenly():
    n, count = 10, 100_000
    u = ref.rng_uniform(7, ref.LHS_NEGATIVES, 0, count, n)
    assert u.min() >= 0 and u.max() < n
    freq = torch.bincount(u, minlength=n).double() / count
    assert (freq - 1 / n).abs().max() < 0.01
    assert not torch.equal(u[:100], ref.rng_uniform(7, ref.LHS_NEGATIVES, 1, 100, n))
    assert not torch.equal(u[:100], ref.rng_uniform(7, ref.RHS_NEGATIVES, 0, 100, n))
    # below() exactly: the high half of u * n, against Python's big integers.
    raw = ref.rng_draw(ref.rng_stream_key(7, 2, 0), np.arange(50, dtype=np.uint64))
    for m in [1, 3, 10, 2**31 + 7, 2**40 + 3]:
        assert ref.rng_below(raw, m).tolist() == [(int(x) * m) >> 64 for x in raw]


def test_negative_seed_is_the_unsigned_cast():
    assert ref.rng_stream_key(-1, 1, 0) == ref.rng_stream_key(2**64 - 1, 1, 0)


def on_device(device):
    """train_bucket_ run on `device`: the tables copied there, trained, and copied back into
    the caller's (CPU) tensors, so run_both compares them with the reference as usual."""
    def op(*args):
        tables, rest = list(args[:12]), list(args[12:])
        moved, seen = [], {}
        for t in tables:  # keep shared tables shared
            if id(t) not in seen:
                seen[id(t)] = t.to(device)
            moved.append(seen[id(t)])
        rest[:4] = [None if t is None else t.to(device) for t in rest[:4]]
        stats = torch.ops.pbg_fast.train_bucket_(*moved, *rest)
        for t, m in zip(tables, moved):
            t.copy_(m.cpu())
        return stats.cpu()
    return op


@pytest.mark.parametrize("comparator,operator,loss", [
    ("dot", "complex_diagonal", "softmax"), ("cos", "linear", "ranking"),
    ("l2", "affine", "logistic"), ("squared_l2", "translation", "softmax"),
    ("dot", "none", "ranking"), ("cos", "diagonal", "logistic")])
def test_device_matches_reference(device, comparator, operator, loss):
    """The op on each device (CUDA skips without a GPU) against the same reference."""
    tensors, edges = make_case(17, 17, 6, 72, 3, operator, True, False, False, False, 3)
    kw = dict(BASE, dynamic=True, comparator=comparator, operator=operator, loss=loss)
    got, exp, s_got, s_exp = run_both(tensors, edges, op=on_device(device), **kw)
    assert_same(got, exp, s_got, s_exp, exact_ties(tensors, edges, kw))


@pytest.mark.parametrize("case", OPTION_CASES, ids=[c["name"] for c in OPTION_CASES])
def test_device_options_match_reference(device, case):
    check_options(case, "dot", "softmax", op=on_device(device))
