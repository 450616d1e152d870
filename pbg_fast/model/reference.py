"""The same math as the native ops, in plain PyTorch: the readable spec and the tests' oracle.

Written after PyTorch-BigGraph 1.0 (torchbiggraph/model.py, losses.py, row_adagrad.py): chunks
are padded to full size and masked with -1e9 exactly as PBG does, so the kernels (which never
pad) are checked against PBG's semantics, not against a re-derivation of them.
"""

import math
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

MASKED_SCORE = -1e9


# --- comparators -----------------------------------------------------------------------------


def prepare(x: Tensor, comparator: str) -> Tensor:
    """PBG's comparator.prepare: cos scales rows to unit norm (a zero row stays zero)."""
    if comparator == "cos":
        norm = x.norm(dim=-1, keepdim=True)
        return x * torch.where(norm > 0, norm.reciprocal(), torch.zeros_like(norm))
    return x


def _pairwise(a: Tensor, b: Tensor, comparator: str) -> Tensor:
    """[C, P, D] x [C, N, D] -> [C, P, N] scores s(a_p, b_n) of prepared vectors."""
    dots = torch.bmm(a, b.transpose(-1, -2))
    if comparator in ("dot", "cos"):
        return dots
    sq = a.pow(2).sum(-1).unsqueeze(-1) + b.pow(2).sum(-1).unsqueeze(-2) - 2 * dots
    if comparator == "squared_l2":
        return -sq.clamp_min(0)
    return -sq.clamp_min(1e-30).sqrt()


def _matched(a: Tensor, b: Tensor, comparator: str) -> Tensor:
    """Scores of matched pairs a[..., i, :] with b[..., i, :]."""
    if comparator in ("dot", "cos"):
        return (a * b).sum(-1)
    sq = (a - b).pow(2).sum(-1)
    if comparator == "squared_l2":
        return -sq
    return -sq.clamp_min(1e-30).sqrt()


def chunked_neg_scores(
    lhs_pos: Tensor, rhs_pos: Tensor, lhs_neg: Tensor, rhs_neg: Tensor, comparator: str
) -> Tuple[Tensor, Tensor, Tensor]:
    lp, rp = prepare(lhs_pos, comparator), prepare(rhs_pos, comparator)
    ln, rn = prepare(lhs_neg, comparator), prepare(rhs_neg, comparator)
    return _matched(lp, rp, comparator), _pairwise(rp, ln, comparator), _pairwise(lp, rn, comparator)


# --- losses ----------------------------------------------------------------------------------


def loss(pos: Tensor, neg: Tensor, weight: Optional[Tensor], loss: str, margin: float = 0.1):
    num_pos, num_neg = neg.shape
    w = torch.ones_like(pos) if weight is None else weight
    if loss == "logistic":
        neg_weight = 1.0 / num_neg if num_neg > 0 else 0.0
        pos_loss = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), weight=w, reduction="sum")
        neg_loss = F.binary_cross_entropy_with_logits(
            neg, torch.zeros_like(neg), weight=w.unsqueeze(-1).expand_as(neg), reduction="sum"
        )
        return pos_loss + neg_weight * neg_loss
    if num_pos == 0 or num_neg == 0:
        return (pos.sum() + neg.sum()) * 0
    if loss == "ranking":
        per = F.margin_ranking_loss(
            neg, pos.unsqueeze(1).expand_as(neg), -torch.ones_like(neg), margin=margin, reduction="none"
        )
        return (per * w.unsqueeze(-1)).sum()
    if loss == "softmax":
        scores = torch.cat([pos.unsqueeze(1), neg.logsumexp(dim=1, keepdim=True)], dim=1)
        target = torch.zeros(num_pos, dtype=torch.long, device=pos.device)
        return (F.cross_entropy(scores, target, reduction="none") * w).sum()
    raise ValueError(f"loss: unknown {loss!r}")


# --- relation operators ----------------------------------------------------------------------


def operator_forward(x: Tensor, op_params: Tensor, rel: Tensor, operator: str) -> Tensor:
    """Row i of x [N, D] through relation rel[i]'s operator (params packed as in pbg_fast.ops)."""
    d = x.shape[-1]
    p = op_params[rel]
    if operator == "none":
        return x
    if operator == "translation":
        return x + p
    if operator == "diagonal":
        return x * p
    if operator == "complex_diagonal":
        h = d // 2
        xr, xi, pr, pi = x[:, :h], x[:, h:], p[:, :h], p[:, h:]
        return torch.cat([xr * pr - xi * pi, xr * pi + xi * pr], dim=-1)
    if operator in ("linear", "affine"):
        m = p[:, : d * d].view(-1, d, d)
        y = torch.matmul(m, x.unsqueeze(-1)).squeeze(-1)
        return y + p[:, d * d :] if operator == "affine" else y
    raise ValueError(f"operator: unknown {operator!r}")


# --- optimizer -------------------------------------------------------------------------------


@torch.no_grad()
def row_adagrad_(weight: Tensor, state: Tensor, indices: Tensor, grad: Tensor, lr: float, eps=1e-10):
    """PBG's RowAdagrad step on a sparse gradient: coalesce, then update the touched rows."""
    if indices.numel() == 0:
        return
    rows, inverse = torch.unique(indices, return_inverse=True)
    summed = torch.zeros(len(rows), weight.shape[1], dtype=grad.dtype,
                         device=grad.device).index_add_(0, inverse, grad)
    state.index_add_(0, rows, summed.pow(2).mean(1))
    std = state[rows].sqrt().add_(eps)
    weight.index_add_(0, rows, -lr * summed / std.unsqueeze(1))


# --- regularisation ---------------------------------------------------------------------------


def n3(src: Tensor, dst: Tensor, rel_params: Tensor, operator: str, coef: float) -> Tensor:
    """N3 (PBG's "N3"): coef * sum m^3, m = |x| or the modulus of complex pairs (x_k, x_{k+D/2})
    under complex_diagonal, over the positives' rows and their relations' parameters."""
    def cubes(x):
        if operator == "complex_diagonal":
            h = x.shape[-1] // 2
            return (x[..., :h].pow(2) + x[..., h:].pow(2)).sqrt().pow(3).sum()
        return x.abs().pow(3).sum()
    total = cubes(src) + cubes(dst)
    if rel_params.numel():
        total = total + cubes(rel_params)
    return coef * total


# --- the fused chunk step --------------------------------------------------------------------


def _mask_all(scores: Tensor, idx: Tensor, chunk_size: int) -> Tensor:
    """'all' negatives: each edge's own entity (its row of the table) is masked."""
    c = scores.shape[0]
    if c == 0:
        return scores
    own = torch.cat([idx, idx.new_zeros(c * chunk_size - len(idx))]).view(c, chunk_size, 1)
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter_(2, own, True)
    return scores.masked_fill(mask, MASKED_SCORE)


def _negatives(pos_chunks: Tensor, uniform: Tensor, mode: str) -> Tensor:
    if mode == "batch_uniform":
        return torch.cat([pos_chunks, uniform], dim=1)
    return uniform


def _mask(scores: Tensor, num_pos: int, chunk_size: int, mode: str) -> Tensor:
    """PBG's ignore mask for batch negatives: each edge's own entity, and padding columns."""
    c = scores.shape[0]
    if mode != "batch_uniform" or c == 0:
        return scores
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    idx = torch.arange(chunk_size, device=scores.device)
    mask[:, idx, idx] = True
    last = num_pos - (c - 1) * chunk_size
    mask[-1, :last, last:chunk_size] = True
    return scores.masked_fill(mask, MASKED_SCORE)


def chunk_step(
    src_emb, dst_emb, src_idx, dst_idx, rel, op_params, src_uniform, dst_uniform, weight,
    src_global, dst_global, chunk_size, src_mode, dst_mode, comparator, operator, loss_name,
    margin=0.1, reg_coef=0.0,
):
    """Same contract as pbg_fast.ops.chunk_step, via padding, masks and autograd."""
    b, d = src_idx.shape[0], src_emb.shape[1]
    c = math.ceil(b / chunk_size)
    us, ud = src_uniform.shape[1], dst_uniform.shape[1]
    # 'all': the extra rows are the whole table (their gradient is returned per table row).
    s_extra = torch.arange(src_emb.shape[0], device=src_idx.device) if src_mode == "all" else src_uniform.flatten()
    d_extra = torch.arange(dst_emb.shape[0], device=dst_idx.device) if dst_mode == "all" else dst_uniform.flatten()
    src_rows = src_emb[torch.cat([src_idx, s_extra])].detach().requires_grad_()
    dst_rows = dst_emb[torch.cat([dst_idx, d_extra])].detach().requires_grad_()
    params = op_params.detach().clone().requires_grad_()
    globals_ = [None if g is None else g.detach().clone().requires_grad_()
                for g in (src_global, dst_global)]
    src_in = src_rows if globals_[0] is None else src_rows + globals_[0]
    dst_in = dst_rows if globals_[1] is None else dst_rows + globals_[1]
    uni_rel = rel[::chunk_size].repeat_interleave(ud) if b > 0 else rel[:0]

    src_pos = prepare(src_in[:b], comparator)
    if src_mode == "all":
        src_uni = prepare(src_in[b:], comparator).unsqueeze(0).expand(c, -1, -1)
    else:
        src_uni = prepare(src_in[b:], comparator).view(c, us, d)
    dst_pos = prepare(operator_forward(dst_in[:b], params, rel, operator), comparator)
    if dst_mode == "all":  # operator 'none' only
        dst_uni = prepare(dst_in[b:], comparator).unsqueeze(0).expand(c, -1, -1)
    else:
        dst_uni = prepare(operator_forward(dst_in[b:], params, uni_rel, operator), comparator)
        dst_uni = dst_uni.view(c, ud, d)

    pad = c * chunk_size - b
    src_c = torch.cat([src_pos, src_pos.new_zeros(pad, d)]).view(c, chunk_size, d)
    dst_c = torch.cat([dst_pos, dst_pos.new_zeros(pad, d)]).view(c, chunk_size, d)
    src_neg = _negatives(src_c, src_uni, src_mode)
    dst_neg = _negatives(dst_c, dst_uni, dst_mode)
    pos = _matched(src_c, dst_c, comparator).flatten()[:b]
    src_scores = _mask(_pairwise(dst_c, src_neg, comparator), b, chunk_size, src_mode)
    dst_scores = _mask(_pairwise(src_c, dst_neg, comparator), b, chunk_size, dst_mode)
    if src_mode == "all":
        src_scores = _mask_all(src_scores, src_idx, chunk_size)
    if dst_mode == "all":
        dst_scores = _mask_all(dst_scores, dst_idx, chunk_size)
    src_scores = src_scores.flatten(0, 1)[:b]
    dst_scores = dst_scores.flatten(0, 1)[:b]

    total = src_rows.new_zeros(())
    violators = torch.zeros(2, dtype=torch.long, device=src_emb.device)
    for side, (mode, scores, u) in enumerate(
        [(src_mode, src_scores, us), (dst_mode, dst_scores, ud)]
    ):
        if mode == "skip":
            continue
        # Padding columns do not exist in the kernel; they are masked, so only the logistic
        # 1/M normalisation sees them, and it does here too (M = chunk_size + U).
        total = total + loss(pos, scores, weight, loss_name, margin)
        violators[side] = (scores > pos.unsqueeze(1)).sum()
    if reg_coef:
        total = total + n3(src_rows[:b], dst_rows[:b], params[rel], operator, reg_coef)
    leaves = [src_rows, dst_rows, params] + [g for g in globals_ if g is not None]
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]
    it = iter(grads[3:])
    g_src = next(it) if globals_[0] is not None else src_rows.new_zeros(0)
    g_dst = next(it) if globals_[1] is not None else src_rows.new_zeros(0)
    return total.detach(), grads[0], grads[1], grads[2], g_src, g_dst, violators


# --- counter-based random numbers (csrc/kernels/counter_rng.h, same names) ----------------------

_GAMMA = 0x9E3779B97F4A7C15
_M32 = np.uint64(0xFFFFFFFF)
SHUFFLE, LHS_NEGATIVES, RHS_NEGATIVES = 1, 2, 3  # stream purposes


def _u64(x) -> np.ndarray:
    """As uint64 (two's complement for negative ints, as a C++ cast), at least 1-D."""
    if isinstance(x, int):
        x = x & 0xFFFFFFFFFFFFFFFF
    return np.atleast_1d(np.asarray(x, dtype=np.uint64))


def mix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def rng_draw(key, counter) -> np.ndarray:
    """Position `counter` of the SplitMix64 stream `key`: mix64(key + (counter + 1) * gamma)."""
    with np.errstate(over="ignore"):
        return mix64(_u64(key) + (_u64(counter) + np.uint64(1)) * np.uint64(_GAMMA))


def rng_stream_key(seed: int, purpose: int, index: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        inner = mix64(_u64(seed) ^ (_u64(purpose) * np.uint64(_GAMMA)))
        return mix64(inner + (_u64(index) + np.uint64(1)) * np.uint64(_GAMMA))


def rng_below(u: np.ndarray, n: int) -> np.ndarray:
    """The high 64 bits of u * n (Lemire's scaling into [0, n)), from 32-bit halves."""
    u, n = _u64(u), _u64(n)
    with np.errstate(over="ignore"):
        a_lo, a_hi, b_lo, b_hi = u & _M32, u >> np.uint64(32), n & _M32, n >> np.uint64(32)
        p0, p1, p2, p3 = a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi
        mid = (p0 >> np.uint64(32)) + (p1 & _M32) + (p2 & _M32)
        return (p3 + (p1 >> np.uint64(32)) + (p2 >> np.uint64(32)) + (mid >> np.uint64(32))).astype(
            np.int64)


def rng_shuffle(seed: int, n: int) -> np.ndarray:
    """The shuffled order of [0, n): position i holds Shuffle(seed, n)(i) (4-round Feistel on
    the smallest even-bit power of two >= n, cycle-walked into [0, n))."""
    key = rng_stream_key(seed, SHUFFLE, 0)
    bits = 2
    while bits < 64 and (1 << bits) < n:
        bits += 2
    half = np.uint64(bits // 2)
    mask = np.uint64((1 << (bits // 2)) - 1)

    def encrypt(x):
        left, right = x >> half, x & mask
        for rnd in range(4):
            f = rng_draw(key, (np.uint64(rnd) << np.uint64(32)) | right) & mask
            left, right = right, left ^ f
        return (left << half) | right

    x = encrypt(np.arange(n, dtype=np.uint64))
    while True:
        out = x >= np.uint64(n)
        if not out.any():
            return x.astype(np.int64)
        x[out] = encrypt(x[out])


def rng_uniform(seed: int, purpose: int, batch: int, count: int, n: int) -> Tensor:
    """Batch `batch`'s `count` uniform draws in [0, n) of a negatives stream."""
    key = rng_stream_key(seed, purpose, batch)
    return torch.from_numpy(rng_below(rng_draw(key, np.arange(count, dtype=np.uint64)), n))


# --- the whole bucket ---------------------------------------------------------------------------


def _renorm_rows_(emb: Tensor, rows: Tensor, max_norm: float) -> None:
    rows = torch.unique(rows)
    norm = emb[rows].norm(dim=1)
    scale = torch.where(norm > max_norm, max_norm / (norm + 1e-7), torch.ones_like(norm))
    emb[rows] = emb[rows] * scale.unsqueeze(1)


def train_bucket_(
    lhs_emb, lhs_state, rhs_emb, rhs_state, rhs_op_params, rhs_op_state, lhs_op_params,
    lhs_op_state, lhs_global, lhs_global_state, rhs_global, rhs_global_state, lhs, rhs, rel,
    weight, batch_size, num_batch_negs, num_uniform_negs, disable_lhs_negs, disable_rhs_negs,
    dynamic, comparator, operator, loss_name, margin, relation_weight, lr, relation_lr,
    workers=1, seed=0, reg_coef=0.0, all_negs=False, max_norm=0.0, on_batch=None,
) -> Tensor:
    """Same contract as pbg_fast.ops.train_bucket_ with one worker, batch after batch: the
    shuffle and the negatives from the counter-based streams, each batch's chunk steps (both
    directions with dynamic relations) on the tables as they were at the batch's start, then
    one row-Adagrad step per touched row (its gradient summed over the batch) and element-wise
    Adagrad on the relation parameters and global embeddings. `on_batch(b)` runs after batch b's
    updates. Returns [loss, lhs violators, rhs violators, edges, 0]."""
    if all_negs:
        raise NotImplementedError("the bucket reference samples negatives (all_negs: see "
                                  "tests/ops/test_train_bucket.py)")
    eps = 1e-10
    same_table = lhs_emb.data_ptr() == rhs_emb.data_ptr()
    glob = lhs_global.numel() > 0
    same_glob = glob and (same_table or lhs_global.data_ptr() == rhs_global.data_ptr())
    n_edges = lhs.numel()
    chunk = num_batch_negs if num_batch_negs > 0 else num_uniform_negs
    base = "batch_uniform" if num_batch_negs > 0 else "uniform"
    lhs_mode, ul = ("uniform", 0) if disable_lhs_negs else (base, num_uniform_negs)
    rhs_mode, ur = ("uniform", 0) if disable_rhs_negs else (base, num_uniform_negs)
    dev = lhs_emb.device
    rel = rel if rel.numel() else torch.zeros(n_edges, dtype=torch.long, device=dev)
    w_all = torch.full((n_edges,), float(relation_weight), dtype=lhs_emb.dtype, device=dev)
    if weight is not None:
        w_all = w_all * weight
    order = torch.from_numpy(rng_shuffle(seed, n_edges)).to(dev)
    stats = torch.zeros(5, dtype=torch.float64)
    for b in range(math.ceil(n_edges / batch_size)):
        e = order[b * batch_size:(b + 1) * batch_size]
        n = e.numel()
        c = math.ceil(n / chunk)
        li, ri, rl, w = lhs[e], rhs[e], rel[e], w_all[e]
        l_uni = rng_uniform(seed, LHS_NEGATIVES, b, c * ul, lhs_emb.shape[0]).to(dev).view(c, ul)
        r_uni = rng_uniform(seed, RHS_NEGATIVES, b, c * ur, rhs_emb.shape[0]).to(dev).view(c, ur)
        if max_norm > 0:
            if same_table:
                _renorm_rows_(lhs_emb, torch.cat([li, l_uni.flatten(), ri, r_uni.flatten()]), max_norm)
            else:
                _renorm_rows_(lhs_emb, torch.cat([li, l_uni.flatten()]), max_norm)
                _renorm_rows_(rhs_emb, torch.cat([ri, r_uni.flatten()]), max_norm)
        g_lhs = torch.zeros_like(lhs_emb)
        g_rhs = g_lhs if same_table else torch.zeros_like(rhs_emb)
        g_ops = [torch.zeros_like(rhs_op_params), torch.zeros_like(lhs_op_params)]
        g_glob = [torch.zeros_like(lhs_global), torch.zeros_like(rhs_global)]
        directions = [False, True] if dynamic else [False]
        for rev in directions:
            s_emb, d_emb = (rhs_emb, lhs_emb) if rev else (lhs_emb, rhs_emb)
            s_idx, d_idx = (ri, li) if rev else (li, ri)
            s_uni, d_uni = (r_uni, l_uni) if rev else (l_uni, r_uni)
            g_s, g_d = (g_rhs, g_lhs) if rev else (g_lhs, g_rhs)
            if dynamic:
                s_mode, d_mode, d_uni = (rhs_mode if rev else lhs_mode), "skip", d_uni[:, :0]
            else:
                s_mode, d_mode = lhs_mode, rhs_mode
            op_params = lhs_op_params if rev else rhs_op_params
            s_glob = (rhs_global if rev else lhs_global) if glob else None
            d_glob = (lhs_global if rev else rhs_global) if glob else None
            total, gs, gd, gop, ggs, ggd, viol = chunk_step(
                s_emb, d_emb, s_idx, d_idx, rl, op_params, s_uni, d_uni, w, s_glob, d_glob,
                chunk, s_mode, d_mode, comparator, operator, loss_name, margin, reg_coef)
            g_s.index_add_(0, torch.cat([s_idx, s_uni.flatten()]), gs)
            g_d.index_add_(0, torch.cat([d_idx, d_uni.flatten()]), gd)
            g_ops[1 if rev else 0] += gop
            if glob:
                g_glob[1 if rev else 0] += ggs
                g_glob[0 if rev else 1] += ggd
            stats[0] += float(total)
            stats[2 if rev else 1] += float(viol[0])
            stats[1 if rev else 2] += float(viol[1])
        # Row Adagrad on every row the batch touched (a row whose gradient sums to zero is
        # stepped too: its state does not change, nor does the row).
        for emb, state, g, idx in ([(lhs_emb, lhs_state, g_lhs, torch.cat(
                [li, l_uni.flatten(), ri, r_uni.flatten()]))] if same_table else
                [(lhs_emb, lhs_state, g_lhs, torch.cat([li, l_uni.flatten()])),
                 (rhs_emb, rhs_state, g_rhs, torch.cat([ri, r_uni.flatten()]))]):
            rows = torch.unique(idx)
            state[rows] += g[rows].pow(2).mean(1)
            emb[rows] -= lr * g[rows] / (state[rows].sqrt() + eps).unsqueeze(1)
        touched = torch.unique(rl)
        for p, st, g in [(rhs_op_params, rhs_op_state, g_ops[0])] + (
                [(lhs_op_params, lhs_op_state, g_ops[1])] if dynamic else []):
            if p.shape[1] == 0:
                continue
            st[touched] += g[touched] * g[touched]
            p[touched] -= relation_lr * g[touched] / (st[touched].sqrt() + eps)
        if glob:
            steps = ([(lhs_global, lhs_global_state, g_glob[0] + g_glob[1])] if same_glob else
                     [(lhs_global, lhs_global_state, g_glob[0]),
                      (rhs_global, rhs_global_state, g_glob[1])])
            for p, st, g in steps:
                st += g * g
                p -= relation_lr * g / (st.sqrt() + eps)
        stats[3] += n
        if on_batch is not None:
            on_batch(b)
    return stats
