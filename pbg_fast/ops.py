"""Typed wrappers over torch.ops.pbg_fast.*: shapes, semantics, autograd and fake kernels.

Every op here has a plain-PyTorch twin of the same name in ``pbg_fast.model.reference``; the
tests compare the two. Names of comparators, operators and losses are PBG's.

Operator parameters are one flat tensor ``op_params [R, K]`` per relation set (R relations, or
one per dynamic relation), packed per row as:
    none [0] | translation [D] | diagonal [D] | complex_diagonal [real D/2 | imag D/2]
    | linear [D*D, row-major, y_i = sum_j M_ij x_j] | affine [D*D | D]
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

COMPARATORS = ("dot", "cos", "l2", "squared_l2")
OPERATORS = ("none", "translation", "diagonal", "complex_diagonal", "linear", "affine")
LOSSES = ("ranking", "logistic", "softmax")
NEG_MODES = ("skip", "uniform", "batch_uniform")


def operator_num_params(operator: str, dim: int) -> int:
    """K, the number of packed parameters per relation for ``operator`` at ``dim``."""
    sizes = {
        "none": 0,
        "translation": dim,
        "diagonal": dim,
        "complex_diagonal": dim,
        "linear": dim * dim,
        "affine": dim * dim + dim,
    }
    try:
        return sizes[operator]
    except KeyError:
        raise ValueError(f"operator: unknown {operator!r}; expected one of {OPERATORS}") from None


def operator_init_params(operator: str, dim: int, num_relations: int = 1) -> Tensor:
    """PBG's initial operator parameters (identity transforms), packed as ``[R, K]``."""
    k = operator_num_params(operator, dim)
    p = torch.zeros(num_relations, k)
    if operator == "diagonal":
        p.fill_(1.0)
    elif operator == "complex_diagonal":
        p[:, : dim // 2] = 1.0
    elif operator in ("linear", "affine"):
        p[:, : dim * dim] = torch.eye(dim).flatten()
    return p


def chunked_neg_scores(
    lhs_pos: Tensor, rhs_pos: Tensor, lhs_neg: Tensor, rhs_neg: Tensor, comparator: str
) -> Tuple[Tensor, Tensor, Tensor]:
    """Scores of chunked positives against their chunk's negatives (PBG's comparator).

    lhs_pos [C, P, D], rhs_pos [C, P, D], lhs_neg [C, L, D], rhs_neg [C, R, D]
    -> pos [C, P], lhs_neg_scores [C, P, L], rhs_neg_scores [C, P, R] with
    pos[c,p] = s(lhs_pos[c,p], rhs_pos[c,p]), lhs_neg_scores[c,p,l] = s(lhs_neg[c,l], rhs_pos[c,p]),
    rhs_neg_scores[c,p,r] = s(lhs_pos[c,p], rhs_neg[c,r]).
    s: dot | cos (dot of unit vectors) | l2 (-|a-b|) | squared_l2 (-|a-b|^2). L or R may be 0.
    Differentiable.
    """
    return torch.ops.pbg_fast.chunked_neg_scores(lhs_pos, rhs_pos, lhs_neg, rhs_neg, comparator)


def loss(
    pos: Tensor, neg: Tensor, weight: Optional[Tensor], loss: str, margin: float = 0.1
) -> Tensor:
    """PBG's loss over pos [N] and neg [N, M] (masked negatives hold -1e9) -> scalar, summed.

    ranking: sum w * relu(margin - pos + neg); logistic: w * softplus(-pos) + w/M * sum
    softplus(neg); softmax: w * (logaddexp(pos, logsumexp(neg)) - pos). Differentiable.
    """
    return torch.ops.pbg_fast.loss_forward(pos, neg, weight, loss, margin)


def operator_forward(x: Tensor, op_params: Tensor, rel: Tensor, operator: str) -> Tensor:
    """Relation operator: x [N, D], op_params [R, K], rel [N] int64 -> y [N, D], row i
    transformed with relation rel[i]'s parameters. Differentiable in x and op_params."""
    return torch.ops.pbg_fast.operator_forward(x, op_params, rel, operator)


def row_adagrad_(
    weight: Tensor, state: Tensor, indices: Tensor, grad: Tensor, lr: float, eps: float = 1e-10
) -> None:
    """PBG's row-wise Adagrad, in place: weight [N, D], state [N], indices [K] int64, grad [K, D].

    Gradients of repeated indices are summed first; then for each touched row i:
    state[i] += mean_d(g_i^2); weight[i] -= lr * g_i / (sqrt(state[i]) + eps).
    Concurrent (HOGWILD) callers on shared rows may lose part of an update; see
    csrc/cpu/row_adagrad.cpp.
    """
    torch.ops.pbg_fast.row_adagrad_(weight, state, indices, grad, lr, eps)


def chunk_step(
    src_emb: Tensor,
    dst_emb: Tensor,
    src_idx: Tensor,
    dst_idx: Tensor,
    rel: Tensor,
    op_params: Tensor,
    src_uniform: Tensor,
    dst_uniform: Tensor,
    weight: Optional[Tensor],
    src_global: Optional[Tensor],
    dst_global: Optional[Tensor],
    chunk_size: int,
    src_mode: str,
    dst_mode: str,
    comparator: str,
    operator: str,
    loss: str,
    margin: float = 0.1,
    reg_coef: float = 0.0,
    precision: str = "fp32",
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fused training step of one batch in one direction (PBG's forward_direction_agnostic
    plus the loss and the backward pass), with no per-pair tensors beyond each chunk's scores.

    Tables: src_emb [Ns, D], dst_emb [Nd, D] (read only). Batch: src_idx, dst_idx, rel [B] int64;
    chunk c holds edges [c*chunk_size, (c+1)*chunk_size) (the last may be short); C = ceil(B /
    chunk_size). The operator (op_params [R, K]) is applied to the dst side: dst rows of edge i use
    relation rel[i]; chunk c's uniform dst negatives use the relation of its first edge (so every
    chunk must hold one relation when dst_uniform is not empty).
    Negatives: src_uniform [C, Us], dst_uniform [C, Ud] int64 rows of each table; per side
    src_mode/dst_mode: 'batch_uniform' = the chunk's own positives (the same edge masked) + the
    uniform ones, 'uniform' = the uniform ones only, 'skip' = no scores and no loss for that side,
    'all' = every row of that side's table (PBG's all_negs; the positive's own row masked; the
    side's uniform must be [C, 0]; on the dst side only with operator 'none').
    N3 regularisation (reg_coef > 0): reg_coef * sum of m^3 over each positive's src and dst rows
    as stored and over its relation's parameters, m = |x_k|, or the modulus of the complex pair
    (x_k, x_{k+D/2}) with complex_diagonal; added to the loss and the gradients.
    Global embeddings (PBG's global_emb): src_global / dst_global [D] or None, added to every row
    of that side before the operator.
    Loss: sum over enabled sides of loss(pos, neg_scores, weight [B] or None); logistic's 1/M uses
    M = chunk_size + U for 'batch_uniform' (PBG counts padding), U for 'uniform', the table's row
    count for 'all'.

    Returns (loss [], src_grad [B + C*Us, D], dst_grad [B + C*Ud, D], op_param_grad [R, K],
    src_global_grad [D] (or [0] without src_global), dst_global_grad [D] (or [0]),
    violators [2] int64): src_grad rows follow cat(src_idx, src_uniform.flatten()) (same for
    dst), so ``row_adagrad_(src_emb, state, cat(src_idx, src_uniform.flatten()), src_grad, ...)``
    applies them; violators counts negatives scoring above their positive, per side. With 'all'
    on a side, that side's rows after the positives' are the gradient of every table row
    ([B + rows, D]: row_adagrad_ indices cat(idx, arange(rows))).
    Precision of the score and gradient products (CUDA, float32 tables): 'fp32' (default),
    'tf32' (tensor cores: inputs with a 10-bit mantissa) or 'bf16' (inputs rounded to
    bfloat16), accumulated in float32 either way; the CPU computes in 'fp32' only.
    """
    return torch.ops.pbg_fast.chunk_step(
        src_emb, dst_emb, src_idx, dst_idx, rel, op_params, src_uniform, dst_uniform, weight,
        src_global, dst_global, chunk_size, src_mode, dst_mode, comparator, operator, loss, margin,
        reg_coef, precision,
    )


def _register() -> None:
    """Autograd formulas and fake (meta) kernels, so the ops work under autograd,
    torch.compile and torch.library.opcheck."""
    lib = "pbg_fast::"

    @torch.library.register_fake(lib + "chunked_neg_scores")
    def _(lhs_pos, rhs_pos, lhs_neg, rhs_neg, comparator):
        c, p, _d = lhs_pos.shape
        return (
            lhs_pos.new_empty((c, p)),
            lhs_pos.new_empty((c, p, lhs_neg.shape[1])),
            lhs_pos.new_empty((c, p, rhs_neg.shape[1])),
        )

    @torch.library.register_fake(lib + "chunked_neg_scores_backward")
    def _(gp, gl, gr, lhs_pos, rhs_pos, lhs_neg, rhs_neg, comparator):
        return (
            torch.empty_like(lhs_pos),
            torch.empty_like(rhs_pos),
            torch.empty_like(lhs_neg),
            torch.empty_like(rhs_neg),
        )

    def cns_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:4])
        ctx.comparator = inputs[4]

    def cns_backward(ctx, gp, gl, gr):
        lp, rp, ln, rn = ctx.saved_tensors
        gp = torch.zeros_like(lp[..., 0]) if gp is None else gp
        gl = lp.new_zeros((lp.shape[0], lp.shape[1], ln.shape[1])) if gl is None else gl
        gr = lp.new_zeros((lp.shape[0], lp.shape[1], rn.shape[1])) if gr is None else gr
        grads = torch.ops.pbg_fast.chunked_neg_scores_backward(
            gp, gl, gr, lp, rp, ln, rn, ctx.comparator
        )
        return (*grads, None)

    torch.library.register_autograd(
        lib + "chunked_neg_scores", cns_backward, setup_context=cns_setup
    )

    @torch.library.register_fake(lib + "loss_forward")
    def _(pos, neg, weight, loss, margin):
        return pos.new_empty(())

    @torch.library.register_fake(lib + "loss_backward")
    def _(grad, pos, neg, weight, loss, margin):
        return torch.empty_like(pos), torch.empty_like(neg)

    def loss_setup(ctx, inputs, output):
        pos, neg, weight, loss_name, margin = inputs
        ctx.save_for_backward(pos, neg, weight)
        ctx.loss_name, ctx.margin = loss_name, margin

    def loss_backward(ctx, grad):
        pos, neg, weight = ctx.saved_tensors
        gpos, gneg = torch.ops.pbg_fast.loss_backward(
            grad, pos, neg, weight, ctx.loss_name, ctx.margin
        )
        return gpos, gneg, None, None, None

    torch.library.register_autograd(lib + "loss_forward", loss_backward, setup_context=loss_setup)

    @torch.library.register_fake(lib + "operator_forward")
    def _(x, op_params, rel, operator):
        return torch.empty_like(x)

    @torch.library.register_fake(lib + "operator_backward")
    def _(grad_out, x, op_params, rel, operator):
        return torch.empty_like(x), torch.empty_like(op_params)

    def op_setup(ctx, inputs, output):
        x, params, rel, operator = inputs
        ctx.save_for_backward(x, params, rel)
        ctx.operator = operator

    def op_backward(ctx, grad):
        x, params, rel = ctx.saved_tensors
        gx, gp = torch.ops.pbg_fast.operator_backward(grad, x, params, rel, ctx.operator)
        return gx, gp, None, None

    torch.library.register_autograd(lib + "operator_forward", op_backward, setup_context=op_setup)

    @torch.library.register_fake(lib + "row_adagrad_")
    def _(weight, state, indices, grad, lr, eps):
        return None

    @torch.library.register_fake(lib + "chunk_step")
    def _(src_emb, dst_emb, src_idx, dst_idx, rel, op_params, src_uniform, dst_uniform, weight,
          src_global, dst_global, chunk_size, src_mode, dst_mode, comparator, operator, loss,
          margin, reg_coef=0.0, precision="fp32"):
        b, d = src_idx.shape[0], src_emb.shape[1]
        c = src_uniform.shape[0]
        ns = src_emb.shape[0] if src_mode == "all" else c * src_uniform.shape[1]
        nd = dst_emb.shape[0] if dst_mode == "all" else c * dst_uniform.shape[1]
        return (
            src_emb.new_empty(()),
            src_emb.new_empty((b + ns, d)),
            src_emb.new_empty((b + nd, d)),
            torch.empty_like(op_params),
            src_emb.new_empty((d if src_global is not None else 0,)),
            src_emb.new_empty((d if dst_global is not None else 0,)),
            src_idx.new_empty((2,)),
        )


if hasattr(torch.ops, "pbg_fast") and hasattr(torch.ops.pbg_fast, "chunk_step"):
    _register()
