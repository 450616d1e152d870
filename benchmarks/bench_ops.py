"""Each native op against its plain-PyTorch reference, timed in the same run.

    python benchmarks/bench_ops.py [--quick]

Prints one JSON line per op (what, config, kernel and reference seconds per call, speedup,
build_info, git sha). The headline is the fused chunk step at D=100, chunks of 50, 50 in-chunk +
50 uniform negatives per side: edges/s of both and the kernel's GEMM FLOP rate as a fraction of
an fp32 torch.mm measured in the same run.
"""

import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import emit, gemm_peak_gflops, quick_flag, time_pair  # noqa: E402
from pbg_fast import ops  # noqa: E402
from pbg_fast.model import reference as ref  # noqa: E402


def bench(what, config, kernel, reference, seconds, extra=None):
    t_k, t_r = time_pair(kernel, reference, seconds)
    rec = dict(what=what, config=config, kernel_s=t_k, reference_s=t_r, speedup=t_r / t_k)
    rec.update(extra(t_k, t_r) if extra else {})
    emit(rec)
    return rec


def chunk_step_case(n, d, batch, chunk, uniform, comparator, operator, loss, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = math.ceil(batch / chunk)
    params = ops.operator_init_params(operator, d)
    return (
        torch.randn(n, d, generator=g) * 0.1,
        torch.randn(n, d, generator=g) * 0.1,
        torch.randint(0, n, (batch,), generator=g),
        torch.randint(0, n, (batch,), generator=g),
        torch.zeros(batch, dtype=torch.long),
        params,
        torch.randint(0, n, (c, uniform), generator=g),
        torch.randint(0, n, (c, uniform), generator=g),
        None,
        None,
        None,
        chunk,
        "batch_uniform",
        "batch_uniform",
        comparator,
        operator,
        loss,
        0.1,
    )


# The chunk step's products at D=100, chunks of 50, 50 in-chunk + 50 uniform negatives:
# (name, m, n, k, trans_a, trans_b), row-major C[m,n] = op(A) op(B).
GEMM_SHAPES = [
    ("scores  S = Q N^T", 50, 100, 100, False, True),
    ("grad_q  gQ = G N", 50, 100, 100, False, False),
    ("grad_n  gN = G^T Q", 100, 100, 50, True, False),
    ("uniform S = Q U^T", 50, 50, 100, False, True),
    ("linear  Y = X M^T", 1000, 100, 100, False, True),
    ("linear  gM = gY^T X", 100, 100, 1000, True, False),
]


def gemm_kernels(quick):
    """Our per-ISA GEMM micro-kernels against torch's BLAS (the same op, `isa` 'blas') on the
    chunk step's shapes, one core, the product repeated inside the op (no per-call dispatch
    cost), interleaved rounds; and each as a fraction of the single-core fp32 FMA peak measured
    by a register-only loop of the best ISA in the same run. Where the CPU has AVX512-BF16, the
    bf16-input kernel too (its "fraction of peak" is of the fp32 peak: it can exceed 1)."""
    import pbg_fast
    torch.set_num_threads(1)
    best = pbg_fast._C.native_build_info()["gemm_isa_best"]
    isas = ["blas"] + [i for i in ("avx2", "avx512") if i == best or (i, best) == ("avx2", "avx512")]
    if pbg_fast.build_info()["bf16_gemm"]:  # precision 'bf16': bfloat16 inputs, fp32 sums
        isas.append("avx512_bf16")
    peak_isa = best if best != "blas" else None
    peak = 0.0
    if peak_isa:
        torch.ops.pbg_fast.fma_peak(peak_isa, 1_000_000)
        peak = max(torch.ops.pbg_fast.fma_peak(peak_isa, 20_000_000) for _ in range(3)) / 1e9
    emit(dict(what="fp32_single_core_peak", isa=peak_isa, gflops=peak))
    g = torch.Generator().manual_seed(0)
    for name, m, n, k, ta, tb in GEMM_SHAPES:
        a = torch.randn((k, m) if ta else (m, k), generator=g)
        b = torch.randn((n, k) if tb else (k, n), generator=g)
        c = torch.zeros(m, n)
        flops = 2 * m * n * k
        reps = max(int(2e8 / flops), 1) // (4 if quick else 1)
        best_s = {i: float("inf") for i in isas}
        for _ in range(3 if quick else 7):
            for isa in isas:
                t0 = time.perf_counter()
                torch.ops.pbg_fast.gemm_(c, a, b, ta, tb, 1.0, 0.0, isa, reps)
                best_s[isa] = min(best_s[isa], (time.perf_counter() - t0) / reps)
        rec = dict(what="gemm_kernel", shape=name, m=m, n=n, k=k, trans_a=ta, trans_b=tb)
        for isa in isas:
            gf = flops / best_s[isa] / 1e9
            rec[f"{isa}_gflops"] = gf
            rec[f"{isa}_fraction_of_peak"] = gf / peak if peak else None
            if isa != "blas":
                rec[f"{isa}_vs_blas"] = best_s["blas"] / best_s[isa]
        emit(rec)
    torch.set_num_threads(os.cpu_count() or 1)


def loss_kernels(quick):
    """The chunk step's fp32 loss pass (loss_kernel.h: the loss and its gradient, the violator
    count fused) on our per-ISA kernels against the generic loss_row (the same op, `isa`
    'blas': portable C++ compiled for this build), one core, on the chunk step's score blocks
    (50 rows of 100 negatives: 50 in-chunk + 50 uniform; 50 x 50), every loss, the block
    repeated inside the op, interleaved rounds; nanoseconds per row."""
    import pbg_fast
    torch.set_num_threads(1)
    best = pbg_fast._C.native_build_info()["gemm_isa_best"]
    isas = ["blas"] + [i for i in ("avx2", "avx512") if i == best or (i, best) == ("avx2", "avx512")]
    g = torch.Generator().manual_seed(0)
    for loss in ("ranking", "logistic", "softmax"):
        for rows, m in [(50, 100), (50, 50)]:
            scores, pos = torch.randn(rows, m, generator=g) * 3, torch.randn(rows, generator=g) * 3
            grad, gpos = torch.empty_like(scores), torch.empty_like(pos)
            reps = 20_000 // (4 if quick else 1)
            best_s = {i: float("inf") for i in isas}
            for _ in range(3 if quick else 7):
                for isa in isas:
                    t0 = time.perf_counter()
                    torch.ops.pbg_fast.loss_rows_(grad, gpos, scores, pos, None, loss, 0.1, isa,
                                                  reps)
                    best_s[isa] = min(best_s[isa], (time.perf_counter() - t0) / reps)
            rec = dict(what="loss_kernel", loss=loss, rows=rows, negatives=m)
            for isa in isas:
                rec[f"{isa}_ns_per_row"] = best_s[isa] / rows * 1e9
                if isa != "blas":
                    rec[f"{isa}_vs_generic"] = best_s["blas"] / best_s[isa]
            emit(rec)
    torch.set_num_threads(os.cpu_count() or 1)


def main():
    quick = quick_flag()
    secs = 1.0 if quick else 6.0
    peak = gemm_peak_gflops(0.5 if quick else 2.0)
    emit(dict(what="fp32_gemm_peak", gflops=peak, threads=torch.get_num_threads()))

    gemm_kernels(quick)
    loss_kernels(quick)

    # The headline: the fused chunk step.
    n, d, batch, chunk, uni = 100_000, 100, 1000, 50, 50
    cases = [("dot", "none", "softmax")]
    if not quick:
        cases += [("dot", "none", "ranking"), ("dot", "none", "logistic"), ("cos", "none", "softmax"),
                  ("dot", "complex_diagonal", "softmax"), ("l2", "translation", "ranking")]
    for comparator, operator, loss in cases:
        args = chunk_step_case(n, d, batch, chunk, uni, comparator, operator, loss)
        negs = chunk + uni
        flops = 6 * 2 * batch * negs * d  # 2 score GEMMs + 4 backward GEMMs per chunk

        def extra(t_k, t_r):
            return dict(
                kernel_edges_per_s=batch / t_k,
                reference_edges_per_s=batch / t_r,
                kernel_gemm_gflops=flops / t_k / 1e9,
                fraction_of_measured_fp32_peak=flops / t_k / 1e9 / peak,
            )

        bench("chunk_step",
              dict(dim=d, batch=batch, chunk=chunk, batch_negs=chunk, uniform_negs=uni,
                   comparator=comparator, operator=operator, loss=loss, dtype="float32"),
              lambda: ops.chunk_step(*args), lambda: ref.chunk_step(*args), secs, extra)

    # The small ops, each forward + backward where it has one.
    g = torch.Generator().manual_seed(1)
    c, p, negs = 20, 50, 100
    xs = [torch.randn(c, k, d, generator=g).requires_grad_() for k in (p, p, negs, negs)]

    def scores_step(fn):
        def run():
            out = fn(*xs, "dot")
            sum(o.sum() for o in out).backward()
        return run

    bench("chunked_neg_scores", dict(C=c, P=p, L=negs, R=negs, D=d, comparator="dot"),
          scores_step(ops.chunked_neg_scores), scores_step(ref.chunked_neg_scores), secs / 2)

    pos = torch.randn(1000, generator=g).requires_grad_()
    neg = torch.randn(1000, 100, generator=g).requires_grad_()
    for loss in ("ranking", "logistic", "softmax"):
        bench("loss", dict(N=1000, M=100, loss=loss),
              lambda: ops.loss(pos, neg, None, loss, 0.1).backward(),
              lambda: ref.loss(pos, neg, None, loss, 0.1).backward(), secs / 4)

    x = torch.randn(5000, d, generator=g).requires_grad_()
    rel = torch.randint(0, 10, (5000,), generator=g)
    for operator in ("diagonal", "complex_diagonal", "linear"):
        params = ops.operator_init_params(operator, d, 10).requires_grad_()
        bench("operator", dict(N=5000, D=d, R=10, operator=operator),
              lambda: ops.operator_forward(x, params, rel, operator).sum().backward(),
              lambda: ref.operator_forward(x, params, rel, operator).sum().backward(), secs / 4)

    w, state = torch.randn(100_000, d), torch.zeros(100_000)
    idx = torch.randint(0, 100_000, (10_000,), generator=g)
    grad = torch.randn(10_000, d, generator=g)
    bench("row_adagrad_", dict(N=100_000, K=10_000, D=d),
          lambda: ops.row_adagrad_(w, state, idx, grad, 0.01),
          lambda: ref.row_adagrad_(w, state, idx, grad, 0.01), secs / 4)


if __name__ == "__main__":
    main()
