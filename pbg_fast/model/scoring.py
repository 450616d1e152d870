"""Scoring with a trained model, in plain PyTorch (evaluation and export are not hot loops):
embeddings with the global vector, relation operators, comparator prepare and scores, with
PBG's semantics (see ops.py for the packing of operator parameters)."""

from typing import Dict, List, Tuple

import torch

from ..config import ConfigSchema
from .reference import _pairwise, operator_forward, prepare


def prepared_vectors(table: torch.Tensor, glob, ids: torch.Tensor, operator: str, op_params,
                     rels, comparator: str, max_norm=None) -> torch.Tensor:
    """prepare(op(renorm(table[ids]) + glob)): what the comparator scores for entities on one
    side. `glob` (global embedding) and `op_params` may be None (no global vector / no
    operator); `max_norm` (PBG's) scales rows longer than it down to it, as the lookup does."""
    x = table[ids]
    if max_norm:
        norm = x.norm(dim=1, keepdim=True)
        x = torch.where(norm > max_norm, x * (max_norm / (norm + 1e-7)), x)
    if glob is not None:
        x = x + glob
    if op_params is not None:
        x = operator_forward(x, op_params, rels, operator)
    return prepare(x, comparator)


class LoadedModel:
    """All partitions of every entity type concatenated (global ids: partition-major), plus the
    relation parameters and global embeddings, read from a checkpoint."""

    def __init__(self, config: ConfigSchema, embeddings: Dict[str, List[torch.Tensor]],
                 relations, global_embs: Dict[str, torch.Tensor]):
        self.config = config
        self.part_embeddings = embeddings
        self.embeddings = {e: torch.cat(parts) if parts else torch.zeros(0, config.dimension)
                           for e, parts in embeddings.items()}
        self.part_offsets = {}
        for e, parts in embeddings.items():
            offs, total = [], 0
            for p in parts:
                offs.append(total)
                total += len(p)
            self.part_offsets[e] = offs
        self.relations = relations  # list of RelationParams (packed [R, K])
        self.global_embs = global_embs

    def global_id(self, entity: str, part: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        base = torch.tensor(self.part_offsets[entity], dtype=torch.long)
        return base[part] + offset

    def side_vectors(self, rel_idx: int, rel_ids: torch.Tensor, entity: str, ids: torch.Tensor,
                     side: str) -> torch.Tensor:
        """Prepared vectors of entities on one side of relation rel_idx. With static relations the
        operator acts on the rhs; with dynamic ones `side` names which operator ('lhs' / 'rhs')
        acts (or 'none')."""
        c = self.config
        rc = c.relations[0 if c.dynamic_relations else rel_idx]
        rp = self.relations[0 if c.dynamic_relations else rel_idx]
        params = None if side == "none" else (rp.rhs if side == "rhs" else rp.lhs)
        r = rel_ids if c.dynamic_relations else torch.zeros(len(ids), dtype=torch.long)
        return prepared_vectors(self.embeddings[entity], self.global_embs.get(entity), ids,
                                rc.operator, params, r, c.comparator, c.max_norm)

    def pairwise(self, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """[B, D] x [N, D] -> [B, N] scores."""
        return _pairwise(queries.unsqueeze(0), candidates.unsqueeze(0), self.config.comparator)[0]

    def matched(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        from .reference import _matched
        return _matched(a, b, self.config.comparator)
