"""The chunk step's fp32 GEMM (csrc/cpu/gemm_kernel.h, compiled per ISA in kernels_avx2.cpp
and kernels_avx512.cpp, chosen at load in blas.cpp) against a float64 torch reference, on every
kernel this CPU runs: both transposes, odd sizes, k = 1, empty shapes, rows that are views of
wider (and unaligned) storage, alpha and beta. Then the chunk step itself, run with each kernel
forced through PBG_FAST_ISA in a fresh process, against this process's result. The fresh
processes start outside the checkout, so they import the pbg_fast this one does (the
installed checkout, or the portable build's copy first on PYTHONPATH: make check-portable)."""

import itertools
import json
import os
import subprocess
import sys

import pytest
import torch

import pbg_fast

ISAS = ["blas", "avx2", "avx512"]


def runnable(isa):
    best = pbg_fast._C.native_build_info()["gemm_isa_best"]
    return ISAS.index(isa) <= ISAS.index(best)


def reference(a, b, ta, tb, alpha, beta, c):
    A = a.double().t() if ta else a.double()
    B = b.double().t() if tb else b.double()
    out = alpha * (A @ B)
    return out + beta * c.double() if beta != 0 else out


def view(rows, cols, g, pad=3, offset=1):
    """A rows x cols matrix inside wider storage, starting off 16-byte alignment."""
    big = torch.randn(rows * (cols + pad) + offset, generator=g)
    return big[offset:].as_strided((rows, cols), (cols + pad, 1))


def operands(m, n, k, ta, tb, strided, beta, g):
    """a, b stored for op(a) [m, k], op(b) [k, n], and c [m, n]: contiguous or views of wider,
    unaligned storage; c is NaN where beta == 0 (the kernel must not read it then)."""
    ashape = (k, m) if ta else (m, k)
    bshape = (n, k) if tb else (k, n)
    if strided:
        a, b, c = view(*ashape, g), view(*bshape, g), view(m, n, g)
    else:
        a, b, c = torch.randn(ashape, generator=g), torch.randn(bshape, generator=g), \
            torch.randn(m, n, generator=g)
    if beta == 0 and c.numel():
        c.fill_(float("nan"))
    return a, b, c


SHAPES = [(50, 100, 100), (1, 1, 1), (13, 37, 5), (12, 32, 7), (25, 33, 64), (7, 1, 9),
          (23, 17, 101), (31, 16, 1), (6, 8, 3), (100, 100, 50), (0, 5, 3), (5, 0, 3), (5, 3, 0),
          # k over one block (gemm_kernel.h's kKBlock): later blocks accumulate into C
          (9, 20, 129), (17, 33, 300), (30, 100, 1000),
          # a narrow last panel of every width the dot-product path has on AVX2 (<= 4 columns)
          # and on AVX-512 (<= 8): 2 (n = 34, 50 on AVX2), 6 (n = 38), 7 (n = 39)
          (11, 50, 100), (3, 34, 130), (7, 38, 21), (5, 39, 17),
          # the last full tile and a short remainder split into two tiles (6 + 2 -> 4 + 4 on
          # AVX2, 12 + 2 -> 7 + 7 in its one-vector panels, 12 + 1 -> 7 + 6 on AVX-512), and
          # full panels of an untransposed B read in place, one-vector ones too (n = 24, 40)
          (26, 24, 40), (61, 40, 33), (13, 8, 20), (25, 56, 9),
          # a two-vector panel of 9-15 columns on AVX2 (a partial second vector, an
          # untransposed B's last panel packed with zero padding)
          (26, 45, 40), (7, 25, 130)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
def test_gemm_matches_reference(isa, ta, tb):
    if not runnable(isa):
        pytest.skip(f"this CPU has no {isa}")
    g = torch.Generator().manual_seed(0)
    for (m, n, k), strided, (alpha, beta) in itertools.product(
            SHAPES, [False, True], [(1.0, 0.0), (0.7, 1.0), (-1.5, 0.25)]):
        a, b, c = operands(m, n, k, ta, tb, strided, beta, g)
        want = reference(a, b, ta, tb, alpha, beta, c)
        torch.ops.pbg_fast.gemm_(c, a, b, ta, tb, alpha, beta, isa)
        assert torch.allclose(c.double(), want, rtol=1e-5, atol=1e-4), \
            (isa, m, n, k, ta, tb, strided, alpha, beta, (c.double() - want).abs().max())


BF16_SHAPES = SHAPES + [(50, 50, 100), (33, 47, 65), (5, 70, 31), (40, 3, 77), (17, 40, 64)]


@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
def test_bf16_gemm_matches_a_bf16_input_reference(ta, tb):
    """isa 'avx512_bf16' (precision 'bf16' on the CPU): the inputs rounded to bfloat16 (torch's
    rounding, nearest even), products accumulated in fp32: against float64 products of the
    same rounded inputs, within fp32 accumulation error (the rounding itself is exact here)."""
    if not pbg_fast.build_info()["bf16_gemm"]:
        pytest.skip("this CPU (or PBG_FAST_ISA) has no AVX512-BF16")
    g = torch.Generator().manual_seed(1)
    for (m, n, k), strided, (alpha, beta) in itertools.product(
            BF16_SHAPES, [False, True], [(1.0, 0.0), (0.7, 1.0)]):
        a, b, c = operands(m, n, k, ta, tb, strided, beta, g)
        want = reference(a.bfloat16().float(), b.bfloat16().float(), ta, tb, alpha, beta, c)
        torch.ops.pbg_fast.gemm_(c, a, b, ta, tb, alpha, beta, "avx512_bf16")
        assert torch.allclose(c.double(), want, rtol=1e-5, atol=1e-4), \
            (m, n, k, ta, tb, strided, alpha, beta, (c.double() - want).abs().max())
    # The inputs really are rounded: bf16 (8-bit mantissa) products differ from fp32 ones.
    a, b = torch.randn(100, 50, generator=g), torch.randn(100, 100, generator=g)
    c = torch.zeros(50, 100)
    torch.ops.pbg_fast.gemm_(c, a, b, True, True, 1.0, 0.0, "avx512_bf16")
    assert (c.double() - reference(a, b, True, True, 1.0, 0.0, c)).abs().max() > 1e-3


def test_gemm_refuses_bad_arguments():
    a = torch.randn(3, 4)
    with pytest.raises(ValueError, match="isa"):
        torch.ops.pbg_fast.gemm_(torch.zeros(3, 3), a, a, False, True, 1.0, 0.0, "sse9")
    if not pbg_fast.build_info()["bf16_gemm"]:
        with pytest.raises(ValueError, match="does not run AVX512-BF16"):
            torch.ops.pbg_fast.gemm_(torch.zeros(3, 3), a, a, False, True, 1.0, 0.0, "avx512_bf16")
    with pytest.raises(ValueError, match="shapes"):
        torch.ops.pbg_fast.gemm_(torch.zeros(3, 3), a, a, False, False, 1.0, 0.0, "avx2")
    with pytest.raises(TypeError, match="float32"):
        torch.ops.pbg_fast.gemm_(torch.zeros(3, 3), a.double(), a, False, True, 1.0, 0.0, "avx2")


def test_the_kernel_chosen_at_load_is_reported_and_can_be_lowered(tmp_path):
    info = pbg_fast.build_info()
    best = pbg_fast._C.native_build_info()["gemm_isa_best"]
    assert info["gemm_isa"] in ISAS
    if "PBG_FAST_ISA" not in os.environ:
        assert info["gemm_isa"] == best
    code = ("import pbg_fast, json; "
            "print(json.dumps(dict(pbg_fast.build_info(), file=pbg_fast.__file__)))")
    me = pbg_fast.__file__
    for want in ISAS:
        env = dict(os.environ, PBG_FAST_ISA=want)
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        info = json.loads(out.stdout.strip().splitlines()[-1])
        assert info["file"] == me
        expect = want if runnable(want) else best  # never above what the CPU has
        assert info["gemm_isa"] == expect and info["isa_level"] == expect
    env = dict(os.environ, PBG_FAST_GEMM="blas")
    env.pop("PBG_FAST_ISA", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["gemm_isa"] == "blas" and info["isa_level"] == best
    env = dict(os.environ, PBG_FAST_ISA="avx1024")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and "PBG_FAST_ISA" in out.stderr


CHUNK_STEP = """
import sys, torch, pbg_fast
from pbg_fast import ops
g = torch.Generator().manual_seed(5)
n, d, batch, chunk, uni = 300, 38, 130, 50, 23
outs = []
for comparator, operator, loss in [("dot", "linear", "softmax"), ("cos", "affine", "ranking"),
                                   ("squared_l2", "complex_diagonal", "logistic")]:
    params = ops.operator_init_params(operator, d)
    src, dst = torch.randn(n, d, generator=g) * 0.3, torch.randn(n, d, generator=g) * 0.3
    params = params + 0.1 * torch.randn(params.shape, generator=g)
    c = -(-batch // chunk)
    # Distinct rows: a negative equal to its positive is an exact tie in the math, which two
    # ISAs may round either way (the violator counts would differ by a tie's flip).
    sp, dp = torch.randperm(n, generator=g), torch.randperm(n, generator=g)
    res = ops.chunk_step(src, dst, sp[:batch], dp[:batch],
                         torch.zeros(batch, dtype=torch.long), params,
                         sp[batch:batch + c * uni].view(c, uni),
                         dp[batch:batch + c * uni].view(c, uni), None, None, None, chunk,
                         "batch_uniform", "batch_uniform", comparator, operator, loss, 0.1)
    outs += [t for t in res if isinstance(t, torch.Tensor)]
torch.save((pbg_fast.__file__, outs), sys.argv[1])
"""


def test_chunk_step_agrees_on_every_kernel(tmp_path):
    """The whole fused step (scores, loss, gradients through the operator) at each ISA level
    (our GEMM kernel and, in a portable build, the element-wise code's version for that ISA:
    isa_dispatch.h), against the baseline (torch's BLAS, x86-64 code) in another process."""
    script = tmp_path / "step.py"
    script.write_text(CHUNK_STEP)
    results = {}
    for isa in ISAS:
        if not runnable(isa):
            continue
        out = tmp_path / f"{isa}.pt"
        p = subprocess.run([sys.executable, str(script), str(out)], cwd=tmp_path, timeout=300,
                           env=dict(os.environ, PBG_FAST_ISA=isa), capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-3000:]
        where, results[isa] = torch.load(out)
        assert where == pbg_fast.__file__  # the same build as this process
    base = results.pop("blas")
    assert len(base) >= 9
    for isa, got in results.items():
        for i, (x, y) in enumerate(zip(base, got)):
            assert x.shape == y.shape
            assert torch.allclose(x, y, rtol=1e-4, atol=1e-5), (isa, i, (x - y).abs().max())
