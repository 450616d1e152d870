"""Link-prediction evaluation: ranks of true edges against candidates, per relation and overall
(MRR, MR, Hits@1/10/50, AUC).

sampled (PBG's RankingEvaluator): each edge against eval_num_batch_negs in-chunk + 
    eval_num_uniform_negs uniform negatives per side; rank = 1 + #(negatives scoring >= it).
filtered (the FB15k-237 / WN18RR protocol): each edge against every entity of the type on
    each side, other known true edges (from all given splits) removed; rank = 1 + #(others
    scoring > it) + #(others tied with it) / 2 (the "realistic" rank: equal scores never rank
    first).
NaN or inf embeddings are refused; a NaN score ranks the true edge last (see _rank).
"""

import math
from collections import defaultdict
from typing import Dict, Optional, Sequence

import torch

from ..config import ConfigSchema, check_matches_checkpoint
from ..io.checkpoint import CheckpointManager
from ..io.files import (DataError, check_edge_path, load_dynamic_rel_count, load_edges,
                        load_entity_count)
from ..model.scoring import LoadedModel
from ..train.trainer import Model, value_range


def load_model(config: ConfigSchema, version: Optional[int] = None) -> LoadedModel:
    """The committed checkpoint (or `version`), checked against the config and refused if any
    value is NaN or inf. Safe while a trainer commits newer versions (read_committed)."""
    ckpt = CheckpointManager(config.checkpoint_path)
    if not ckpt.path.is_dir():
        raise DataError(f"checkpoint_path: {config.checkpoint_path} does not exist (train "
                        f"first, or point it at a checkpoint)")
    return ckpt.read_committed(lambda v: _load_version(config, ckpt, v)) if version is None \
        else _load_version(config, ckpt, version)


def _load_version(config: ConfigSchema, ckpt: CheckpointManager, v: int) -> LoadedModel:
    if v == 0:
        raise DataError(f"{config.checkpoint_path}: no checkpoint to evaluate (train first)")
    saved, where = ckpt.saved_config(v)
    if saved is not None:
        check_matches_checkpoint(config, saved, where)
    nd = load_dynamic_rel_count(config.entity_path) if config.dynamic_relations else 0
    model = Model(config, nd)
    params, states, _ = ckpt.load_model(v)
    model.load_checkpoint(params, states, str(ckpt.model_file(v)))
    for i, rp in enumerate(model.relations):
        _require_finite(rp.rhs, ckpt.model_file(v), f"relations[{i}] operator parameters")
        _require_finite(rp.lhs, ckpt.model_file(v), f"relations[{i}] operator parameters")
    for e, (g, _) in model.global_embs.items():
        _require_finite(g, ckpt.model_file(v), f"the global embedding of {e!r}")
    embs = {}
    for e, ec in config.entities.items():
        embs[e] = []
        for p in range(ec.num_partitions):
            emb = ckpt.load_partition(e, p, v)[0]
            path = ckpt.embeddings_file(e, p, v)
            n = load_entity_count(config.entity_path, e, p)
            if tuple(emb.shape) != (n, config.dimension):
                raise DataError(f"{path}: shape {tuple(emb.shape)}, but entity_path has {n} "
                                f"entities of {e!r} in partition {p} and the dimension is "
                                f"{config.dimension}; the checkpoint and entity_path do not "
                                f"belong together")
            _require_finite(emb, path, f"embeddings of {e!r} partition {p}")
            embs[e].append(emb)
    globals_ = {e: g for e, (g, _) in model.global_embs.items()}
    return LoadedModel(config, embs, model.relations, globals_)


def _require_finite(t: torch.Tensor, path, what: str) -> None:
    if t.numel() and not all(math.isfinite(x) for x in value_range(t)):
        raise DataError(f"{path}: the {what} hold NaN or inf values; a diverged model cannot be "
                        f"evaluated or exported (retrain it, e.g. with a lower lr)")


def load_all_edges(config: ConfigSchema, model: LoadedModel, edge_paths: Sequence[str]):
    """Edges of all buckets with global entity ids: dict of int64 tensors lhs, rhs, rel."""
    out = defaultdict(list)
    for path in edge_paths:
        for lp in range(config.side_partitions("lhs")):
            for rp in range(config.side_partitions("rhs")):
                e = load_edges(path, lp, rp)
                if len(e["lhs"]) == 0:
                    continue
                rel = torch.from_numpy(e["rel"])
                lhs, rhs = torch.from_numpy(e["lhs"]), torch.from_numpy(e["rhs"])
                glhs, grhs = torch.empty_like(lhs), torch.empty_like(rhs)
                for r in torch.unique(rel).tolist():
                    rc = config.relations[0 if config.dynamic_relations else r]
                    m = rel == r
                    glhs[m] = model.global_id(rc.lhs, torch.full_like(lhs[m], lp if config.entities[rc.lhs].num_partitions > 1 else 0), lhs[m])
                    grhs[m] = model.global_id(rc.rhs, torch.full_like(rhs[m], rp if config.entities[rc.rhs].num_partitions > 1 else 0), rhs[m])
                out["lhs"].append(glhs)
                out["rhs"].append(grhs)
                out["rel"].append(rel)
    if not out:
        z = torch.zeros(0, dtype=torch.long)
        return dict(lhs=z, rhs=z, rel=z)
    return {k: torch.cat(v) for k, v in out.items()}


def _rank(scores: torch.Tensor, pos: torch.Tensor, ties: str) -> torch.Tensor:
    """1 + how many candidates score above the true edge; a tie counts as above
    ("pessimistic", PBG's sampled ranking) or as half ("mean", the realistic rank of the
    filtered protocol), so a degenerate model (all scores equal) ranks last or in the middle,
    never first. NaN is the worst: a NaN candidate counts as above, a NaN true score ranks
    below every candidate. Masked candidates (-inf) never count."""
    p = pos.unsqueeze(1)
    above = (scores > p) | torch.isnan(scores)
    tied = (scores == p) & (scores != -math.inf)
    if ties == "mean":
        rank = 1 + above.sum(1).double() + tied.sum(1).double() / 2
    else:
        rank = 1 + (above | tied).sum(1).double()
    worst = 1 + (scores != -math.inf).sum(1).double()
    return torch.where(torch.isnan(pos), worst, rank)


def _metrics(ranks: torch.Tensor, auc_sum: float, auc_n: int) -> Dict[str, float]:
    if len(ranks) == 0:
        return dict(count=0)
    r = ranks.double()
    return dict(count=len(r), mrr=float((1 / r).mean()), mr=float(r.mean()),
                hits1=float((r <= 1).double().mean()), hits10=float((r <= 10).double().mean()),
                hits50=float((r <= 50).double().mean()),
                auc=auc_sum / auc_n if auc_n else float("nan"))


@torch.no_grad()
def evaluate(config: ConfigSchema, edge_paths: Optional[Sequence[str]] = None, filtered: bool = False,
             filter_paths: Sequence[str] = (), batch: int = 1000, seed: int = 0,
             model: Optional[LoadedModel] = None) -> Dict[str, Dict[str, float]]:
    paths = list(edge_paths or config.edge_paths)
    for i, p in enumerate(paths):
        check_edge_path(config, p, f"edge_paths[{i}]" if edge_paths is None else p)
    for p in filter_paths:
        check_edge_path(config, p, "--filter-edge-paths")
    model = model or load_model(config)
    edges = load_all_edges(config, model, paths)
    known = None
    if filtered:
        paths = list(dict.fromkeys(list(edge_paths or config.edge_paths) + list(filter_paths)))
        allk = load_all_edges(config, model, paths)
        known = defaultdict(set)
        for h, r, t in zip(allk["lhs"].tolist(), allk["rel"].tolist(), allk["rhs"].tolist()):
            known[("t", h, r)].add(t)
            known[("h", t, r)].add(h)
    g = torch.Generator().manual_seed(seed)
    per_rel = defaultdict(list)
    auc = defaultdict(lambda: [0.0, 0])
    for r in torch.unique(edges["rel"]).tolist() if len(edges["rel"]) else []:
        m = edges["rel"] == r
        lhs, rhs = edges["lhs"][m], edges["rhs"][m]
        rc = config.relations[0 if config.dynamic_relations else r]
        nl, nr = len(model.embeddings[rc.lhs]), len(model.embeddings[rc.rhs])
        rel_ids = torch.full_like(lhs, r)
        # Both directions: predict the rhs given lhs ("tail"), and the lhs given rhs ("head").
        dyn = config.dynamic_relations
        all_cands = {}  # filtered: every entity of a side, prepared once per relation
        for start in range(0, len(lhs), batch):
            h, t, rr = lhs[start:start + batch], rhs[start:start + batch], rel_ids[start:start + batch]
            for direction in ("tail", "head"):
                if direction == "tail":
                    q = model.side_vectors(r, rr, rc.lhs, h, "lhs" if dyn else "none")
                    true = model.side_vectors(r, rr, rc.rhs, t, "none" if dyn else "rhs")
                    cand_entity, n_cand, cand_op, true_ids, q_ids = rc.rhs, nr, ("none" if dyn else "rhs"), t, h
                else:
                    q = model.side_vectors(r, rr, rc.rhs, t, "rhs")
                    true = model.side_vectors(r, rr, rc.lhs, h, "none")
                    cand_entity, n_cand, cand_op, true_ids, q_ids = rc.lhs, nl, "none", h, t
                pos = model.matched(q, true)
                if filtered:
                    if direction not in all_cands:
                        all_cands[direction] = model.side_vectors(
                            r, torch.full((n_cand,), r), cand_entity, torch.arange(n_cand), cand_op)
                    scores = model.pairwise(q, all_cands[direction])
                    key = "t" if direction == "tail" else "h"
                    for i in range(len(q)):
                        others = known[(key, int(q_ids[i]), r)] - {int(true_ids[i])}
                        if others:
                            scores[i, list(others)] = -math.inf
                        scores[i, true_ids[i]] = -math.inf
                    ranks = _rank(scores, pos, ties="mean")
                else:
                    nb = config.eval_num_batch_negs or 0
                    nu = config.eval_num_uniform_negs or 0
                    uni = torch.randint(0, n_cand, (nu,), generator=g)
                    cand_ids = torch.cat([true_ids[:nb] if nb else true_ids[:0], uni])
                    cand = model.side_vectors(r, rr[:1].expand(len(cand_ids)), cand_entity, cand_ids, cand_op)
                    scores = model.pairwise(q, cand)
                    if nb:
                        k = min(nb, len(q))
                        scores[torch.arange(k), torch.arange(k)] = -math.inf  # the edge itself
                    ranks = _rank(scores, pos, ties="pessimistic")
                valid = scores != -math.inf  # the masked entries; a NaN score beats the edge
                auc[r][0] += float(((pos.unsqueeze(1) > scores) & valid).sum())
                auc[r][1] += int(valid.sum())
                per_rel[r].append(ranks)
    results = {}
    all_ranks, tot_auc, tot_n = [], 0.0, 0
    for r, ranks in sorted(per_rel.items()):
        rk = torch.cat(ranks)
        name = config.relations[0 if config.dynamic_relations else r].name
        key = name if not config.dynamic_relations else f"{name}[{r}]"
        results[key] = _metrics(rk, *auc[r])
        all_ranks.append(rk)
        tot_auc += auc[r][0]
        tot_n += auc[r][1]
    results["overall"] = _metrics(torch.cat(all_ranks) if all_ranks else torch.zeros(0), tot_auc, tot_n)
    return results
