"""The CUDA backend without a GPU: csrc/cuda's launchers and its torch glue (ops_binding.cpp),
compiled as plain C++ with PBG_CUDA_HOST_EMULATION (every kernel's for_each_index() runs as a
host loop over the same functor), registered as the ops of pbg_fast_cuda_emu and run on CPU
tensors. Each op is checked against the CPU kernel (itself checked against the reference) over
every comparator, operator and loss and ragged shapes: the CUDA path's index logic, workspace
sizes and glue are tested here, not only compiled. What emulation cannot show: races between
threads (atomics become plain adds), launch limits, and speed; those need a GPU.

The emulated library is built on first use into build-cuda-emu/ (ninja: only what changed is
rebuilt). It needs the CUDA toolkit's headers (for the runtime's types), found from CUDA_HOME or
the nvcc on PATH; without them the module skips, unless PBG_FAST_REQUIRE_CUDA_EMU=1 (CI)."""

import math
import os
from pathlib import Path

import pytest
import torch

import pbg_fast
from pbg_fast import ops
from tests.conftest import tolerances
from tests.ops import test_train_bucket_reference as bucket
from tests.ops.test_chunk_step import ALL_CASES, ARGS, exact_ties, make_case
from tools.cuda_toolkit import toolkit_home

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["csrc/cuda/chunk_step.cu", "csrc/cuda/chunked_neg_scores.cu", "csrc/cuda/losses.cu",
           "csrc/cuda/operators.cu", "csrc/cuda/row_adagrad.cu", "csrc/cuda/train_bucket.cu",
           "csrc/cuda/ops_binding.cpp"]
PLAIN = ["csrc/cpu/dispatch.cpp", "csrc/cpu/train_bucket_args.cpp", "csrc/cpu/op_args.cpp",
         "csrc/cpu/chunk_step_args.cpp"]
COMPARATORS = ["dot", "cos", "l2", "squared_l2"]
OPERATORS = ["none", "translation", "diagonal", "complex_diagonal", "linear", "affine"]
LOSSES = ["ranking", "logistic", "softmax"]


def cuda_include():
    home = toolkit_home()  # the same toolkit setup.py builds with
    inc = Path(home) / "include" if home else None
    return inc if inc and (inc / "cuda_runtime.h").exists() else None


@pytest.fixture(scope="module")
def emu():
    if pbg_fast.build_info()["cuda_ext"]:
        pytest.skip("a CUDA build: its real kernels are tested on the device instead")
    inc = cuda_include()
    if inc is None:
        if os.environ.get("PBG_FAST_REQUIRE_CUDA_EMU") == "1":
            pytest.fail("PBG_FAST_REQUIRE_CUDA_EMU=1 but no CUDA toolkit headers were found "
                        "(set CUDA_HOME or put nvcc on PATH)")
        pytest.skip("no CUDA toolkit headers (CUDA_HOME or nvcc) for the host emulation")
    from torch.utils import cpp_extension
    build = ROOT / "build-cuda-emu"
    build.mkdir(exist_ok=True)
    wrappers = []
    for src in SOURCES:  # each source compiled as C++ with the emulation switch
        w = build / (Path(src).stem + "_emu.cpp")
        text = f'#define PBG_CUDA_HOST_EMULATION\n#include "{ROOT / src}"\n'
        if not w.exists() or w.read_text() != text:
            w.write_text(text)
        wrappers.append(str(w))
    cpp_extension.load(
        name="pbg_fast_cuda_emu", sources=wrappers + [str(ROOT / p) for p in PLAIN],
        extra_cflags=["-O1", "-std=c++20", f"-I{inc}"], build_directory=str(build),
        is_python_module=False, verbose=False)
    return torch.ops.pbg_fast_cuda_emu


def assert_close(got, exp, dtype, what):
    """The project's kernel tolerance, except that float32 allows 5e-5: the CUDA kernels sum a
    parameter's gradient over all rows of a batch in another order than the CPU's per-chunk
    sums (float64 keeps 1e-10)."""
    assert got.shape == exp.shape, (what, got.shape, exp.shape)
    tol = dict(rtol=5e-5, atol=5e-5) if dtype == torch.float32 else tolerances(dtype)
    torch.testing.assert_close(got, exp, **tol, msg=lambda m: f"{what}: {m}")


def test_the_emulated_library_has_every_cuda_op(emu):
    names = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names()
             if n.startswith("pbg_fast_cuda_emu::")
             and torch._C._dispatch_has_kernel_for_dispatch_key(n, "CPU")}
    real = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names()
            if n.startswith("pbg_fast::")}
    assert names and names <= real
    assert "chunk_step" in names and "row_adagrad_" in names


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(4, 7, 5, 9, 16), (1, 3, 4, 2, 1), (3, 5, 0, 6, 8),
                                   (2, 4, 3, 0, 8), (0, 5, 3, 3, 4), (2, 0, 3, 3, 4)])
@pytest.mark.parametrize("comparator", COMPARATORS)
def test_chunked_neg_scores(emu, comparator, shape, dtype):
    c, p, l, r, d = shape
    g = torch.Generator().manual_seed(1)
    x = [torch.randn(c, n, d, generator=g, dtype=dtype) for n in (p, p, l, r)]
    cpu = torch.ops.pbg_fast
    for got, exp in zip(emu.chunked_neg_scores(*x, comparator), cpu.chunked_neg_scores(*x, comparator)):
        assert_close(got, exp, dtype, "forward")
    grads = [torch.randn(c, p, generator=g, dtype=dtype), torch.randn(c, p, l, generator=g, dtype=dtype),
             torch.randn(c, p, r, generator=g, dtype=dtype)]
    for k, (got, exp) in enumerate(zip(emu.chunked_neg_scores_backward(*grads, *x, comparator),
                                       cpu.chunked_neg_scores_backward(*grads, *x, comparator))):
        assert_close(got, exp, dtype, f"backward {k}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", [(17, 9), (1, 1), (5, 0), (0, 4)])
@pytest.mark.parametrize("loss", LOSSES)
def test_losses(emu, loss, shape, weighted, dtype):
    n, m = shape
    g = torch.Generator().manual_seed(2)
    pos, neg = torch.randn(n, generator=g, dtype=dtype), torch.randn(n, m, generator=g, dtype=dtype)
    if n and m > 1:
        neg[0, 0] = -1e9  # a masked negative, as the chunk step makes them
    w = torch.rand(n, generator=g, dtype=dtype) + 0.5 if weighted else None
    cpu = torch.ops.pbg_fast
    assert_close(emu.loss_forward(pos, neg, w, loss, 0.3), cpu.loss_forward(pos, neg, w, loss, 0.3),
                 dtype, "loss")
    grad = torch.tensor(0.7, dtype=dtype)
    for got, exp in zip(emu.loss_backward(grad, pos, neg, w, loss, 0.3),
                        cpu.loss_backward(grad, pos, neg, w, loss, 0.3)):
        assert_close(got, exp, dtype, "loss grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(11, 6, 3), (1, 2, 1), (0, 4, 2), (5, 2, 1)])
@pytest.mark.parametrize("op", OPERATORS)
def test_operators(emu, op, shape, dtype):
    n, d, r = shape
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    params = ops.operator_init_params(op, d, r).to(dtype)
    params += 0.3 * torch.randn(params.shape, generator=g, dtype=dtype)
    rel = torch.randint(0, r, (n,), generator=g)
    cpu = torch.ops.pbg_fast
    assert_close(emu.operator_forward(x, params, rel, op), cpu.operator_forward(x, params, rel, op),
                 dtype, "forward")
    go = torch.randn(n, d, generator=g, dtype=dtype)
    for got, exp in zip(emu.operator_backward(go, x, params, rel, op),
                        cpu.operator_backward(go, x, params, rel, op)):
        assert_close(got, exp, dtype, "backward")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_adagrad_with_repeated_rows(emu, dtype):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(9, 5, generator=g, dtype=dtype)
    st = torch.rand(9, generator=g, dtype=dtype)
    idx = torch.tensor([3, 1, 3, 8, 0, 3, 1])  # repeats: summed before the step
    grad = torch.randn(7, 5, generator=g, dtype=dtype)
    w2, st2 = w.clone(), st.clone()
    emu.row_adagrad_(w, st, idx, grad, 0.1, 1e-10)
    torch.ops.pbg_fast.row_adagrad_(w2, st2, idx, grad, 0.1, 1e-10)
    assert_close(w, w2, dtype, "weight")
    assert_close(st, st2, dtype, "state")
    assert not torch.equal(w, torch.randn(9, 5, generator=torch.Generator().manual_seed(4), dtype=dtype))


def check_chunk_step(emu, case, sm, dm, comparator, operator, loss, dtype, reg=0.0):
    args = [case[k] for k in ARGS]
    got = emu.chunk_step(*args, sm, dm, comparator, operator, loss, 0.2, reg)
    exp = ops.chunk_step(*args, sm, dm, comparator, operator, loss, 0.2, reg)
    names = ["loss", "src_grad", "dst_grad", "op_param_grad", "src_global_grad",
             "dst_global_grad"]
    for name, o, e in zip(names, got[:6], exp[:6]):
        assert_close(o, e, dtype, name)
    assert ((got[6] - exp[6]).abs() <= exact_ties(case, sm, dm)).all(), (got[6], exp[6])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("comparator", COMPARATORS)
def test_chunk_step_every_comparator_operator_loss(emu, comparator, operator, loss, dtype):
    case = make_case(23, 5, 4, 3, 6, operator, dtype, rels=3)
    check_chunk_step(emu, case, "batch_uniform", "batch_uniform", comparator, operator, loss, dtype)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("comparator", COMPARATORS)
@pytest.mark.parametrize("shape", [
    (1, 5, 2, 2, 4, "batch_uniform", "batch_uniform"), (7, 50, 3, 3, 4, "batch_uniform", "batch_uniform"),
    (12, 4, 0, 0, 4, "batch_uniform", "batch_uniform"), (12, 4, 5, 5, 2, "uniform", "uniform"),
    (12, 4, 0, 0, 2, "uniform", "uniform"), (12, 4, 3, 0, 4, "batch_uniform", "skip"),
    (12, 4, 0, 3, 4, "skip", "batch_uniform"), (0, 4, 3, 3, 4, "batch_uniform", "batch_uniform")])
def test_chunk_step_shapes_and_modes(emu, shape, comparator, loss):
    b, chunk, us, ud, d, sm, dm = shape
    operator = "translation" if d % 2 else "complex_diagonal"
    case = make_case(b, chunk, us, ud, d, operator, torch.float64)
    check_chunk_step(emu, case, sm, dm, comparator, operator, loss, torch.float64)


@pytest.mark.parametrize("operator", ["diagonal", "linear", "affine"])
def test_chunk_step_dynamic_relations_mixed_within_a_chunk(emu, operator):
    case = make_case(20, 6, 4, 0, 4, operator, torch.float64, rels=5, dynamic=True)
    check_chunk_step(emu, case, "batch_uniform", "skip", "dot", operator, "softmax", torch.float64)


@pytest.mark.parametrize("operator", ["complex_diagonal", "diagonal", "linear", "none"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_chunk_step_n3(emu, operator, dynamic):
    case = make_case(17, 5, 3, 0 if dynamic else 3, 6, operator, torch.float64, rels=3,
                     dynamic=dynamic)
    check_chunk_step(emu, case, "batch_uniform", "skip" if dynamic else "batch_uniform", "dot",
                     operator, "softmax", torch.float64, reg=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("comparator", COMPARATORS)
@pytest.mark.parametrize("case_", ALL_CASES, ids=[f"{c[0]}x{c[1]}-{c[3]}-{c[4]}" for c in ALL_CASES])
def test_chunk_step_all_negatives(emu, case_, comparator, loss, dtype):
    """'all' (all_negs): every table row as every chunk's negative, the edge's own row masked;
    the side's rows after the positives' are the table's."""
    b, chunk, d, sm, dm = case_
    operator = "none" if dm == "all" else "complex_diagonal"
    us, ud = (0 if m in ("all", "skip") else 3 for m in (sm, dm))
    case = make_case(b, chunk, us, ud, d, operator, dtype, rels=2, dynamic=dm == "skip",
                     n_src=17, n_dst=13)
    check_chunk_step(emu, case, sm, dm, comparator, operator, loss, dtype,
                     reg=0.05 if dm == "skip" else 0.0)


def reduced_precision_tol(exp, precision):
    """Inputs rounded to bfloat16 (8-bit mantissa) or TF32 (11 bits) and accumulated in
    float32: a relative error of a few units of the inputs' rounding, scaled by the output's
    magnitude (a gradient element sums many products)."""
    unit = {"bf16": 2.0 ** -8, "tf32": 2.0 ** -11}[precision]
    return dict(rtol=8 * unit, atol=8 * unit * max(exp.abs().max().item(), 1e-6))


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("comparator", COMPARATORS)
@pytest.mark.parametrize("shape", [(23, 5, 4, 3, 6, "batch_uniform", "batch_uniform"),
                                   (12, 4, 5, 5, 3, "uniform", "uniform"),
                                   (12, 4, 3, 0, 4, "batch_uniform", "skip")])
def test_chunk_step_reduced_precision_products(emu, shape, comparator, precision):
    """The products' inputs in TF32 or BF16: close to the fp32 CPU kernel within that
    precision, and not equal to the emulated fp32 run (the inputs really were rounded)."""
    b, chunk, us, ud, d, sm, dm = shape
    case = make_case(b, chunk, us, ud, d, "diagonal", torch.float32, rels=3)
    args = [case[k] for k in ARGS]
    mode = (sm, dm, comparator, "diagonal", "softmax", 0.2, 0.0)
    got = emu.chunk_step(*args, *mode, precision)
    fp32 = emu.chunk_step(*args, *mode, "fp32")
    exp = ops.chunk_step(*args, *mode)
    for name, o, e in zip(["loss", "src_grad", "dst_grad", "op_param_grad"], got[:4], exp[:4]):
        torch.testing.assert_close(o, e, **reduced_precision_tol(e, precision),
                                   msg=lambda m: f"{name}: {m}")
    assert not torch.equal(got[1], fp32[1]), "the reduced precision changed nothing"


def test_precision_is_checked_by_name(emu):
    case = make_case(6, 3, 2, 2, 4, "none", torch.float64)
    args = [case[k] for k in ARGS]
    mode = ("batch_uniform", "batch_uniform", "dot", "none", "softmax", 0.2, 0.0)
    with pytest.raises(ValueError, match="precision: unknown 'fp16'"):
        emu.chunk_step(*args, *mode, "fp16")
    with pytest.raises(ValueError, match="precision 'bf16' needs float32 tables"):
        emu.chunk_step(*args, *mode, "bf16")


def test_train_bucket_bf16_products(emu):
    """train_bucket_ hands its precision to the chunk step: a bf16 bucket trains like the fp32
    one (same stats within bf16's error) without being it."""
    tensors, edges = bucket.make_case(17, 17, 6, 72, 3, "diagonal", False, True, False, False, 3)
    tensors = {k: v.float() for k, v in tensors.items()}
    stats, tables = {}, {}
    for precision in ("fp32", "bf16"):
        t = bucket.clone_tables(tensors)
        stats[precision] = emu.train_bucket_(
            *[t[k] for k in bucket.ORDER], edges["lhs"], edges["rhs"], edges["rel"], None, 23, 5,
            4, False, False, False, "cos", "diagonal", "softmax", 0.2, 1.0, 0.1, 0.05, 1, 11, 0.0,
            False, 0.0, precision)
        tables[precision] = t["lhs_emb"]
    torch.testing.assert_close(stats["bf16"][0], stats["fp32"][0], rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(tables["bf16"], tables["fp32"], rtol=0, atol=2e-2)
    assert not torch.equal(tables["bf16"], tables["fp32"])


# ---- the whole bucket: against the Python bucket reference, batch for batch ----------------


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("comparator", COMPARATORS)
def test_train_bucket_every_comparator_operator_loss(emu, comparator, operator, loss):
    tensors, edges = bucket.make_case(17, 17, 6, 72, 3, operator, True, False, False, False, 3)
    kw = dict(bucket.BASE, dynamic=True, comparator=comparator, operator=operator, loss=loss)
    got, exp, s_got, s_exp = bucket.run_both(tensors, edges, op=emu.train_bucket_, **kw)
    bucket.assert_same(got, exp, s_got, s_exp, bucket.exact_ties(tensors, edges, kw))
    assert not torch.equal(got["lhs_emb"], tensors["lhs_emb"])


@pytest.mark.parametrize("case", bucket.OPTION_CASES, ids=[c["name"] for c in bucket.OPTION_CASES])
@pytest.mark.parametrize("comparator,loss", [("dot", "softmax"), ("cos", "ranking"),
                                             ("l2", "logistic")])
def test_train_bucket_options(emu, case, comparator, loss):
    bucket.check_options(case, comparator, loss, op=emu.train_bucket_)


@pytest.mark.parametrize("comparator", COMPARATORS)
@pytest.mark.parametrize("operator", ["linear", "affine"])
def test_train_bucket_static_matrix_operators(emu, operator, comparator):
    """A static relation's bucket (one relation): the CUDA chunk step runs linear / affine as
    GEMMs (forward, the rows' and the matrix's gradients) instead of per-row loops."""
    case = dict(name="static " + operator, dynamic=False, same=False, glob=True, weighted=True,
                operator=operator, rels=1)
    bucket.check_options(case, comparator, "softmax", op=emu.train_bucket_)


ALL_NEGS_CASES = [  # (operator, dynamic, same table, max_norm, disable_rhs_negs)
    ("none", False, False, 0.0, False),
    ("none", False, True, 0.0, False),
    ("diagonal", True, False, 0.0, False),
    ("translation", True, True, 0.9, False),
    ("diagonal", False, False, 0.9, True),
]


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("comparator,loss", [("dot", "softmax"), ("cos", "ranking"),
                                             ("l2", "logistic")])
@pytest.mark.parametrize("case_", ALL_NEGS_CASES, ids=lambda c: "-".join(map(str, c)))
def test_train_bucket_all_negs(emu, case_, comparator, loss, split, monkeypatch):
    """all_negs on the CUDA path against the CPU op (itself checked against a Python loop in
    tests/ops/test_train_bucket.py), one worker, float64: every table row is every edge's
    negative, and every row of a dense table steps. split: at most 50 score entries per side
    per chunk step (PBG_FAST_CUDA_ALL_SCORES), so each batch of 16 runs as sub-batches of 4-5
    edges whose table-row gradients are summed."""
    if split:
        monkeypatch.setenv("PBG_FAST_CUDA_ALL_SCORES", "50")
    operator, dynamic, same, max_norm, no_rhs = case_
    tensors, edges = bucket.make_case(11, 11 if same else 9, 4, 40, 3 if dynamic else 1,
                                      operator, dynamic, True, True, same, 5)
    out = {}
    for name, op in (("emu", emu.train_bucket_), ("cpu", torch.ops.pbg_fast.train_bucket_)):
        t = bucket.clone_tables(tensors)
        stats = op(*[t[k] for k in bucket.ORDER], edges["lhs"], edges["rhs"], edges["rel"],
                   edges["weight"], 16, 5, 0, False, no_rhs, dynamic, comparator, operator, loss,
                   0.2, 1.0, 0.1, 0.05, 1, 3, 0.0, True, max_norm)
        out[name] = (t, stats)
    (got, s_got), (exp, s_exp) = out["emu"], out["cpu"]
    # l2 on a shared table scores a dst row against itself as a src negative: distance ~0, where
    # the gradient (x - y) / |x - y| is ill-conditioned and the two backends' different
    # summation orders differ by more than float64's rounding.
    tol = dict(rtol=1e-6, atol=1e-9) if comparator == "l2" and same else dict(rtol=1e-9,
                                                                              atol=1e-11)
    for k in bucket.ORDER:
        torch.testing.assert_close(got[k], exp[k], **tol, msg=lambda m: f"{k}: {m}")
    torch.testing.assert_close(s_got[:4], s_exp[:4], rtol=1e-9, atol=1e-9)
    assert not torch.equal(got["lhs_emb"], tensors["lhs_emb"])
