"""chunk_step (the fused training step): kernel vs the padded, masked autograd reference over
every comparator x operator x loss, negative modes, and ragged shapes; opcheck; bad input."""

import math

import pytest
import torch

import pbg_fast
from pbg_fast import ops
from pbg_fast.model import reference as ref
from tests.conftest import tolerances

COMPARATORS = ["dot", "cos", "l2", "squared_l2"]
OPERATORS = ["none", "translation", "diagonal", "complex_diagonal", "linear", "affine"]
LOSSES = ["ranking", "logistic", "softmax"]


ARGS = ("src_emb", "dst_emb", "src_idx", "dst_idx", "rel", "op_params", "src_uniform",
        "dst_uniform", "weight", "src_global", "dst_global", "chunk_size")


def make_case(b, chunk, us, ud, d, op, dtype, *, rels=1, dynamic=False, weighted=True,
              n_src=40, n_dst=30, seed=0, global_emb=True):
    g = torch.Generator().manual_seed(seed)
    c = math.ceil(b / chunk)
    src_emb = torch.randn(n_src, d, generator=g, dtype=dtype)
    dst_emb = torch.randn(n_dst, d, generator=g, dtype=dtype)
    params = ops.operator_init_params(op, d, rels).to(dtype)
    params += 0.2 * torch.randn(params.shape, generator=g, dtype=dtype)
    if dynamic:
        rel = torch.randint(0, rels, (b,), generator=g)
    else:  # one relation per chunk, as static relations give
        rel = torch.randint(0, rels, (max(c, 1),), generator=g).repeat_interleave(chunk)[:b]
    return dict(
        src_emb=src_emb,
        dst_emb=dst_emb,
        src_idx=torch.randint(0, n_src, (b,), generator=g),
        dst_idx=torch.randint(0, n_dst, (b,), generator=g),
        rel=rel,
        op_params=params,
        src_uniform=torch.randint(0, n_src, (c, us), generator=g),
        dst_uniform=torch.randint(0, n_dst, (c, ud), generator=g),
        weight=(torch.rand(b, generator=g, dtype=dtype) + 0.5) if weighted else None,
        src_global=0.3 * torch.randn(d, generator=g, dtype=dtype) if global_emb else None,
        dst_global=0.3 * torch.randn(d, generator=g, dtype=dtype) if global_emb else None,
        chunk_size=chunk,
    )


def exact_ties(case, src_mode, dst_mode):
    """Per side, the negatives that are the positive's own entity under another name (a
    repeated index): their score equals the positive's in exact arithmetic, so whether rounding
    counts them as violators is arbitrary. Violator counts may differ by at most these."""
    chunk, ties = case["chunk_size"], []
    for idx, uni, mode in [(case["src_idx"], case["src_uniform"], src_mode),
                           (case["dst_idx"], case["dst_uniform"], dst_mode)]:
        n = 0
        for c in range(uni.shape[0]):
            own = idx[c * chunk:(c + 1) * chunk]
            n += int((own.unsqueeze(1) == uni[c].unsqueeze(0)).sum())
            if mode == "batch_uniform":
                n += int((own.unsqueeze(1) == own.unsqueeze(0)).sum()) - len(own)
        ties.append(n if mode != "skip" else 0)
    return torch.tensor(ties)


def check(case, src_mode, dst_mode, comparator, operator, loss, dtype, margin=0.2, reg=0.0,
          device="cpu", precision="fp32", tol=None):
    """The op (on `device`, with `precision` products) against the reference on the CPU."""
    args = [case[k] for k in ARGS]
    on_dev = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    out = ops.chunk_step(*on_dev, src_mode, dst_mode, comparator, operator, loss, margin, reg,
                         precision=precision)
    out = [o.cpu() for o in out]
    exp = ref.chunk_step(*args, src_mode, dst_mode, comparator, operator, loss, margin, reg)
    names = ["loss", "src_grad", "dst_grad", "op_param_grad", "src_global_grad",
             "dst_global_grad", "violators"]
    for name, o, e in zip(names, out, exp):
        assert o.shape == e.shape, name
        if name == "violators":
            if precision == "fp32":  # reduced precision moves near-ties across the positive
                assert ((o - e).abs() <= exact_ties(case, src_mode, dst_mode)).all(), (o, e)
        else:
            t = tol(e) if tol else tolerances(dtype)
            torch.testing.assert_close(o, e, **t, msg=lambda m: f"{name}: {m}")
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("comparator", COMPARATORS)
def test_every_comparator_operator_loss(comparator, operator, loss, dtype):
    # 23 edges in chunks of 5: the last chunk is short (ragged).
    case = make_case(23, 5, 4, 3, 6, operator, dtype, rels=3)
    out = check(case, "batch_uniform", "batch_uniform", comparator, operator, loss, dtype)
    assert out[0].item() > 0


# (b, chunk, us, ud, d, src_mode, dst_mode)
SHAPES = [
    (1, 5, 2, 2, 4, "batch_uniform", "batch_uniform"),  # one edge: C=1, P=1
    (7, 50, 3, 3, 4, "batch_uniform", "batch_uniform"),  # one short chunk
    # chunks of 17 and 9: the in-chunk blocks transposed in 8 x 8 register blocks and ragged edges
    (26, 17, 2, 2, 4, "batch_uniform", "batch_uniform"),
    (12, 4, 0, 0, 4, "batch_uniform", "batch_uniform"),  # in-chunk negatives only
    (12, 4, 5, 5, 2, "uniform", "uniform"),  # uniform only (PBG: num_batch_negs = 0)
    (12, 4, 0, 0, 2, "uniform", "uniform"),  # no negatives at all (PBG: NONE)
    (12, 4, 3, 0, 4, "batch_uniform", "skip"),  # dynamic-relation direction
    (12, 4, 0, 3, 4, "skip", "batch_uniform"),
    (10, 3, 2, 2, 1, "batch_uniform", "batch_uniform"),  # D = 1
    (0, 4, 3, 3, 4, "batch_uniform", "batch_uniform"),  # empty batch
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("comparator", COMPARATORS)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{s[0]}x{s[1]}-{s[5]}-{s[6]}-d{s[4]}" for s in SHAPES])
def test_shapes_and_modes(shape, comparator, loss, dtype):
    b, chunk, us, ud, d, sm, dm = shape
    if d == 1 and comparator == "cos":
        pytest.skip("cos is constantly +-1 at D=1: its gradient is 0 up to the reference's rounding")
    operator = "translation" if d % 2 else "complex_diagonal"
    case = make_case(b, chunk, us, ud, d, operator, dtype)
    check(case, sm, dm, comparator, operator, loss, dtype)


@pytest.mark.parametrize("operator", ["diagonal", "linear", "affine"])
def test_dynamic_relations_mixed_within_a_chunk(operator):
    # Dynamic relations: each edge has its own relation; the dst side has no uniform negatives.
    case = make_case(20, 6, 4, 0, 4, operator, torch.float64, rels=5, dynamic=True)
    check(case, "batch_uniform", "skip", "dot", operator, "softmax", torch.float64)


@pytest.mark.parametrize("operator", ["complex_diagonal", "diagonal", "linear", "none"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_n3_regularisation(operator, dynamic):
    case = make_case(17, 5, 3, 0 if dynamic else 3, 6, operator, torch.float64, rels=3,
                     dynamic=dynamic)
    out = check(case, "batch_uniform", "skip" if dynamic else "batch_uniform", "dot", operator,
                "softmax", torch.float64, reg=0.05)
    plain = ops.chunk_step(*[case[k] for k in ARGS], "batch_uniform",
                           "skip" if dynamic else "batch_uniform", "dot", operator, "softmax", 0.2)
    assert out[0] > plain[0]  # the penalty is really added


def test_repeated_entities_and_unweighted():
    # Tiny tables: rows repeat within and across chunks, on both sides.
    case = make_case(30, 7, 6, 6, 4, "diagonal", torch.float64, n_src=3, n_dst=2, weighted=False,
                     global_emb=False)
    check(case, "batch_uniform", "batch_uniform", "cos", "diagonal", "logistic", torch.float64)


def test_grads_feed_row_adagrad():
    case = make_case(23, 5, 4, 3, 6, "none", torch.float32)
    loss, src_grad, dst_grad, *_ = ops.chunk_step(
        *[case[k] for k in ARGS],
        "batch_uniform", "batch_uniform", "dot", "none", "softmax", 0.1)
    rows = torch.cat([case["src_idx"], case["src_uniform"].flatten()])
    w, state = case["src_emb"].clone(), torch.zeros(len(case["src_emb"]))
    ops.row_adagrad_(w, state, rows, src_grad, lr=0.1)
    touched = torch.zeros(len(w), dtype=torch.bool)
    touched[rows] = True
    assert torch.equal(w[~touched], case["src_emb"][~touched])
    assert not torch.equal(w[touched], case["src_emb"][touched])


def test_thread_count_does_not_change_results():
    case = make_case(200, 10, 5, 5, 8, "affine", torch.float64, rels=1)
    args = [case[k] for k in ARGS]
    run = lambda: ops.chunk_step(*args, "batch_uniform", "batch_uniform", "l2", "affine", "ranking")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1]) and torch.equal(one[2], two[2])
    for k in (3, 4, 5):  # summed per thread, so only equal up to rounding
        torch.testing.assert_close(one[k], two[k], rtol=1e-12, atol=1e-12)


def test_opcheck():
    case = make_case(23, 5, 4, 3, 6, "diagonal", torch.float32)
    args = [case[k] for k in ARGS]
    torch.library.opcheck(
        torch.ops.pbg_fast.chunk_step.default,
        (*args, "batch_uniform", "uniform", "cos", "diagonal", "softmax", 0.1),
    )


def test_bad_input_names_the_argument():
    case = make_case(23, 5, 4, 3, 6, "diagonal", torch.float32, rels=2)
    base = dict(case)

    def call(**over):
        a = dict(base, **over)
        modes = (a.pop("src_mode", "batch_uniform"), a.pop("dst_mode", "batch_uniform"))
        return ops.chunk_step(
            *[a[k] for k in ARGS],
            *modes, a.get("comparator", "dot"), a.get("operator", "diagonal"), "softmax", 0.1)

    with pytest.raises(ValueError, match="comparator: unknown 'foo'"):
        call(comparator="foo")
    with pytest.raises(ValueError, match="src_mode: unknown 'every'"):
        call(src_mode="every")
    with pytest.raises(IndexError, match="dst_idx out of range"):
        call(dst_idx=case["dst_idx"] + 100)
    with pytest.raises(TypeError, match="src_idx must be int64"):
        call(src_idx=case["src_idx"].int())
    with pytest.raises(ValueError, match=r"src_uniform must be \[num_chunks=5"):
        call(src_uniform=case["src_uniform"][:2])
    with pytest.raises(ValueError, match=r"op_params must be \[R, 36\]"):
        call(operator="linear")
    with pytest.raises(TypeError, match="dst_emb must have the dtype of src_emb"):
        call(dst_emb=case["dst_emb"].double())
    with pytest.raises(ValueError, match="a chunk mixes relations"):
        call(rel=torch.arange(23) % 2)
    with pytest.raises(ValueError, match="dst_uniform must be empty when dst_mode is 'skip'"):
        call(dst_mode="skip")
    with pytest.raises(ValueError, match=r"src_global must be \[6\]"):
        call(src_global=torch.zeros(5))

    with pytest.raises(ValueError, match="precision 'tf32' runs on CUDA only"):
        ops.chunk_step(*[case[k] for k in ARGS], "batch_uniform", "batch_uniform", "dot",
                       "diagonal", "softmax", 0.1, precision="tf32")
    if not pbg_fast.build_info()["bf16_gemm"]:
        with pytest.raises(ValueError, match="precision 'bf16' needs a CPU with AVX512-BF16"):
            ops.chunk_step(*[case[k] for k in ARGS], "batch_uniform", "batch_uniform", "dot",
                           "diagonal", "softmax", 0.1, precision="bf16")
    with pytest.raises(ValueError, match="precision: unknown 'fp16'"):
        ops.chunk_step(*[case[k] for k in ARGS], "batch_uniform", "batch_uniform", "dot",
                       "diagonal", "softmax", 0.1, precision="fp16")


# 'all' (PBG's all_negs): every row of the side's table is a negative. (b, chunk, d, src, dst)
ALL_CASES = [
    (23, 5, 6, "all", "all"),  # static relation: both sides, ragged last chunk
    (12, 4, 6, "all", "skip"),  # a dynamic-relation direction
    (12, 4, 6, "skip", "all"),
    (9, 4, 6, "all", "batch_uniform"),  # mixed with in-chunk + uniform on the other side
    (1, 5, 2, "all", "all"),  # one edge
    (0, 4, 4, "all", "all"),  # empty batch
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("comparator", COMPARATORS)
@pytest.mark.parametrize("case_", ALL_CASES, ids=[f"{c[0]}x{c[1]}-{c[3]}-{c[4]}" for c in ALL_CASES])
def test_all_negatives(case_, comparator, loss, dtype):
    b, chunk, d, sm, dm = case_
    # The operator acts on the dst side: with dst 'all' only 'none' is defined.
    operator = "none" if dm == "all" else "complex_diagonal"
    us, ud = (0 if m in ("all", "skip") else 3 for m in (sm, dm))
    case = make_case(b, chunk, us, ud, d, operator,
                     dtype, rels=2, dynamic=dm == "skip", n_src=17, n_dst=13)
    out = check(case, sm, dm, comparator, operator, loss, dtype, reg=0.05 if dm == "skip" else 0.0)
    if sm == "all":  # the rows after the positives': the gradient of every table row
        assert out[1].shape == (b + case["src_emb"].shape[0], d)
    if b > 1 and loss == "softmax":  # softmax spreads gradient over every unmasked negative
        g_all = out[1][b:] if sm == "all" else out[2][b:]
        assert out[0].item() > 0 and (g_all.abs().sum(1) > 0).all()


def test_all_negatives_refuses_operator_on_dst_and_uniform_rows():
    case = make_case(6, 3, 0, 0, 4, "diagonal", torch.float32)
    args = [case[k] for k in ARGS]
    with pytest.raises(ValueError, match="dst_mode 'all' needs operator 'none'"):
        ops.chunk_step(*args, "all", "all", "dot", "diagonal", "softmax")
    case = make_case(6, 3, 2, 0, 4, "none", torch.float32)
    args = [case[k] for k in ARGS]
    with pytest.raises(ValueError, match="src_uniform must be empty when src_mode is 'all'"):
        ops.chunk_step(*args, "all", "all", "dot", "none", "softmax")


# ---- on each device (the CUDA cases skip without a GPU) ---------------------------------------


def device_tol(dtype):
    """CUDA sums a parameter's gradient over the whole batch in another order than the CPU's
    per-chunk sums: float32 allows 5e-5 there (float64 keeps the project's tolerance)."""
    return lambda e: dict(rtol=5e-5, atol=5e-5) if dtype == torch.float32 else tolerances(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("comparator", COMPARATORS)
def test_device_every_comparator_operator_loss(device, comparator, operator, loss, dtype):
    case = make_case(23, 5, 4, 3, 6, operator, dtype, rels=3)
    check(case, "batch_uniform", "batch_uniform", comparator, operator, loss, dtype,
          device=device, tol=device_tol(dtype))


@pytest.mark.parametrize("shape", [
    (1, 5, 2, 2, 4, "batch_uniform", "batch_uniform"), (12, 4, 5, 5, 2, "uniform", "uniform"),
    (12, 4, 3, 0, 4, "batch_uniform", "skip"), (0, 4, 3, 3, 4, "batch_uniform", "batch_uniform"),
    (7, 50, 3, 3, 4, "batch_uniform", "batch_uniform")])
@pytest.mark.parametrize("comparator", COMPARATORS)
def test_device_shapes_and_modes(device, shape, comparator):
    b, chunk, us, ud, d, sm, dm = shape
    case = make_case(b, chunk, us, ud, d, "translation", torch.float64, dynamic=dm == "skip",
                     rels=2)
    check(case, sm, dm, comparator, "translation", "softmax", torch.float64, device=device,
          reg=0.05 if dm == "skip" else 0.0)


@pytest.mark.parametrize("comparator", COMPARATORS)
@pytest.mark.parametrize("case_", ALL_CASES, ids=[f"{c[0]}x{c[1]}-{c[3]}-{c[4]}" for c in ALL_CASES])
def test_device_all_negatives(device, case_, comparator):
    b, chunk, d, sm, dm = case_
    operator = "none" if dm == "all" else "complex_diagonal"
    us, ud = (0 if m in ("all", "skip") else 3 for m in (sm, dm))
    case = make_case(b, chunk, us, ud, d, operator, torch.float32, rels=2, dynamic=dm == "skip",
                     n_src=17, n_dst=13)
    check(case, sm, dm, comparator, operator, "logistic", torch.float32, device=device,
          tol=device_tol(torch.float32))


@pytest.mark.parametrize("precision,unit", [("tf32", 2.0 ** -11), ("bf16", 2.0 ** -8)])
@pytest.mark.parametrize("comparator", COMPARATORS)
def test_device_reduced_precision_products(device, comparator, precision, unit):
    """TF32 / BF16 inputs, fp32 accumulation (TF32 on CUDA only; BF16 on CUDA and on CPUs with
    AVX512-BF16): within a few units of the inputs' rounding of the reference, relative to each
    output's scale, and not the fp32 result (the inputs really were rounded)."""
    if device.type != "cuda" and (precision == "tf32" or not pbg_fast.build_info()["bf16_gemm"]):
        pytest.skip(f"{precision} products do not run on this {device.type}")
    case = make_case(64, 16, 16, 16, 32, "diagonal", torch.float32, rels=2)
    out = check(case, "batch_uniform", "batch_uniform", comparator, "diagonal", "softmax",
                torch.float32, device=device, precision=precision,
                tol=lambda e: dict(rtol=8 * unit, atol=8 * unit * max(e.abs().max().item(), 1e-6)))
    fp32 = check(case, "batch_uniform", "batch_uniform", comparator, "diagonal", "softmax",
                 torch.float32, device=device, tol=device_tol(torch.float32))
    assert not torch.equal(out[1], fp32[1])
