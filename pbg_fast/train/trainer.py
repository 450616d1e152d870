"""The single-machine trainer: epochs x edge paths x edge chunks x buckets, one native
`train_bucket_` call per (bucket, relation), with the partitions in a PartitionBuffer of
`partition_buffer_size` partitions that prefetches the next bucket's and writes finished ones
back while training runs. Checkpoints after every (epoch, edge path, edge chunk) iteration, as
PBG does.

Seams for what comes next: the `PartitionBuffer` (acquire / release / finish_iteration; a
partition server or a GPU tier stands behind the same calls), `bucket_order` (a lock server
hands out buckets in the distributed trainer), and the bucket op (a CUDA backend takes the same
arguments).
"""

import json
import logging
import math
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .. import build_info, faults
from ..config import ConfigError, ConfigSchema, check_matches_checkpoint
from ..errors import TrainingDiverged
from ..io.checkpoint import CheckpointManager, operator_params_from_pbg, operator_params_to_pbg
from ..io.files import (DataError, check_edge_path, check_entity_path, check_no_partial_import,
                        count_edges, load_dynamic_rel_count, load_edges)
from ..ops import operator_init_params, operator_num_params
from .device_tier import DeviceTier
from .partition_buffer import PartitionBuffer
from .schedule import bucket_order

logger = logging.getLogger("pbg_fast")

# The numerics guard's ceiling on any trained value: float32 scores of rows this large overflow
# (a dot product of two rows of d values near x reaches 3.4e38 at x ~ 1.8e19 / sqrt(d)), and a
# loss that clamps (ranking: max(0, NaN) = 0) can then hide the NaN. No stable run comes near.
EXPLODED = 1e15


def value_range(t: torch.Tensor) -> Tuple[float, float]:
    """(min, max) of a non-empty tensor in one pass, without a temporary; NaN if any is NaN."""
    lo, hi = torch.aminmax(t)
    return float(lo), float(hi)


@dataclass
class RelationParams:
    """One relation's operator parameters and Adagrad state, packed [R, K] (R = 1, or the
    number of dynamic relations). `lhs` exists only with dynamic relations."""

    rhs: torch.Tensor
    rhs_state: torch.Tensor
    lhs: torch.Tensor
    lhs_state: torch.Tensor


class Model:
    """Everything trainable except the entity partitions: relation operators and global
    embeddings, with their Adagrad states; converts to/from PBG's model checkpoint."""

    def __init__(self, config: ConfigSchema, num_dynamic_rels: int):
        self.config = config
        d = config.dimension
        self.dynamic = config.dynamic_relations
        nrel = num_dynamic_rels if self.dynamic else 1
        self.relations: List[RelationParams] = []
        for r in config.relations:
            k = operator_num_params(r.operator, d)
            rhs = operator_init_params(r.operator, d, nrel)
            lhs = operator_init_params(r.operator, d, nrel) if self.dynamic else torch.zeros(0, k)
            self.relations.append(RelationParams(rhs, torch.zeros_like(rhs), lhs, torch.zeros_like(lhs)))
        self.global_embs: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        if config.global_emb:
            for e in config.entities:
                self.global_embs[e] = (torch.zeros(d), torch.zeros(d))

    def to(self, device: torch.device) -> "Model":
        """Moves the parameters and their states (the GPU trainer keeps them on its device)."""
        for rp in self.relations:
            for name in ("rhs", "rhs_state", "lhs", "lhs_state"):
                setattr(rp, name, getattr(rp, name).to(device))
        self.global_embs = {e: (v.to(device), s.to(device)) for e, (v, s) in self.global_embs.items()}
        return self

    def to_checkpoint(self):
        """(params, states) for the model file, as host tensors."""
        params, states = self._to_checkpoint()
        return ({k: (n, t.cpu()) for k, (n, t) in params.items()},
                {k: t.cpu() for k, t in states.items()})

    def _to_checkpoint(self):
        d, params, states = self.config.dimension, {}, {}
        for i, (rc, rp) in enumerate(zip(self.config.relations, self.relations)):
            sides = [("rhs", rp.rhs, rp.rhs_state)]
            if self.dynamic:
                sides.append(("lhs", rp.lhs, rp.lhs_state))
            for side, p, s in sides:
                for name, t in operator_params_to_pbg(p, rc.operator, d, self.dynamic).items():
                    params[f"relations/{i}/operator/{side}/{name}"] = (f"{side}_operators.{i}.{name}", t)
                states[f"relations/{i}/{side}"] = s
        for e, (v, s) in self.global_embs.items():
            params[f"entities/{e}/global_embedding"] = (f"global_embs.emb_{e}", v)
            states[f"entities/{e}"] = s
        return params, states

    def load_checkpoint(self, params: Dict[str, torch.Tensor], states: Dict[str, torch.Tensor],
                        source: str = "model checkpoint"):
        d = self.config.dimension

        def put(dst: torch.Tensor, src: torch.Tensor, what: str):
            if src.numel() != dst.numel():
                raise DataError(f"{source}: {what} has shape {tuple(src.shape)}, the config "
                                f"implies {tuple(dst.shape)} (another dimension, operator or "
                                f"number of dynamic relations?)")
            dst.copy_(src.reshape(dst.shape))

        for i, (rc, rp) in enumerate(zip(self.config.relations, self.relations)):
            sides = [("rhs", "rhs")] + ([("lhs", "lhs")] if self.dynamic else [])
            for side, attr in sides:
                prefix = f"relations/{i}/operator/{side}/"
                found = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
                cur = getattr(rp, attr)
                if cur.shape[1] == 0:
                    continue
                try:
                    new = operator_params_from_pbg(found, rc.operator, d, self.dynamic,
                                                   cur.shape[0])
                except RuntimeError as e:  # a reshape of parameters of another shape
                    raise DataError(f"{source}: relations[{i}] {side} operator parameters do "
                                    f"not fit the config ({e})") from None
                put(cur, new, f"relations[{i}] {side} operator")
                st = states.get(f"relations/{i}/{side}")
                if st is not None:
                    put(getattr(rp, attr + "_state"), st, f"relations[{i}] {side} state")
        for e, (v, s) in self.global_embs.items():
            key = f"entities/{e}/global_embedding"
            if key in params:
                put(v, params[key], f"global embedding of {e!r}")
            if f"entities/{e}" in states:
                put(s, states[f"entities/{e}"], f"global embedding state of {e!r}")


class Trainer:
    def __init__(self, config: ConfigSchema, seed: int = 0,
                 progress: Optional[Callable[[dict], None]] = None,
                 device: Optional[torch.device] = None):
        """`device`: where the bucket op runs, with the partitions of the bucket in a
        DeviceTier in front of the host buffer. Default: the GPU with num_gpus: 1, else none
        (the CPU trainer, straight from the host buffer). Tests pass the CPU to run the GPU
        trainer's bookkeeping without a GPU."""
        self.config = config
        if device is None and config.num_gpus:
            if not torch.cuda.is_available():
                raise ConfigError("num_gpus: 1, but torch sees no CUDA device "
                                  "(torch.cuda.is_available() is False)")
            if not build_info()["cuda_ext"]:
                raise ConfigError("num_gpus: 1, but pbg_fast was built without its CUDA "
                                  "kernels (rebuild with torch's CUDA build and nvcc)")
            device = torch.device("cuda")
        self.device = torch.device(device) if device is not None else None
        on_cpu = self.device is None or self.device.type == "cpu"
        if config.matmul_precision == "bf16" and on_cpu and not build_info()["bf16_gemm"]:
            raise ConfigError("matmul_precision: 'bf16' on the CPU needs AVX512-BF16, which this "
                              "CPU (or PBG_FAST_ISA) lacks; use 'fp32'")
        self.seed = seed
        self.progress = progress
        self.ckpt = CheckpointManager(config.checkpoint_path)
        self.num_dynamic_rels = (load_dynamic_rel_count(config.entity_path)
                                 if config.dynamic_relations else 0)
        self.workers = config.workers or os.cpu_count() or 1

    def num_edge_chunks(self) -> int:
        c = self.config
        if c.num_edge_chunks is not None:
            return c.num_edge_chunks
        most = 0
        for path in c.edge_paths:
            for lp in range(c.side_partitions("lhs")):
                for rp in range(c.side_partitions("rhs")):
                    most = max(most, count_edges(path, lp, rp))
        return max(1, math.ceil(most / c.max_edges_per_chunk))

    def check_inputs(self) -> None:
        """Everything the config names exists and fits, before any work or any write."""
        c = self.config
        check_no_partial_import(c.entity_path, *c.edge_paths)
        check_entity_path(c)
        for i, path in enumerate(c.edge_paths):
            check_edge_path(c, path, f"edge_paths[{i}]")
        if c.init_path is not None:
            init = CheckpointManager(c.init_path)
            if not init.path.is_dir() or init.load_version() == 0:
                raise DataError(f"init_path: {c.init_path} holds no checkpoint "
                                f"(checkpoint_version.txt) to start from")
            saved, where = init.saved_config(init.load_version())
            if saved is not None:
                check_matches_checkpoint(c, saved, f"init_path's {where}")

    def train(self) -> List[dict]:
        self.check_inputs()
        return self._under_lock(f"pbg-fast train (seed {self.seed})", self._train)

    def _under_lock(self, what: str, body: Callable[[], List[dict]]) -> List[dict]:
        """body() holding the checkpoint's one-trainer lock, after a killed run's leftovers are
        removed; a refused or failed run leaves only the last committed version."""
        with self.ckpt.lock(what):
            self.ckpt.clean_leftovers()
            try:
                return body()
            except BaseException:
                self.ckpt.remove_other_versions(self.ckpt.load_version())
                raise

    def _start_model(self, version: int) -> Model:
        """The model to train from: committed `version`'s (its config checked against this
        one), or init_path's parameters (a warm start, optimizer afresh), or a new one."""
        c, ckpt = self.config, self.ckpt
        model = Model(c, self.num_dynamic_rels)
        if version > 0:
            saved, where = ckpt.saved_config(version)
            if saved is not None:
                check_matches_checkpoint(c, saved, where)
            params, states, _ = ckpt.load_model(version)
            model.load_checkpoint(params, states, str(ckpt.model_file(version)))
        elif c.init_path:
            init = CheckpointManager(c.init_path)
            params, _, _ = init.load_model(init.load_version())
            model.load_checkpoint(params, {}, str(init.model_file(init.load_version())))
        return model

    def _iteration_meta(self, it: int, n_paths: int, n_chunks: int):
        """(epoch, edge path index, edge chunk index, checkpoint metadata) of iteration it."""
        c = self.config
        epoch, rest = divmod(it, n_paths * n_chunks)
        path_idx, chunk_idx = divmod(rest, n_chunks)
        meta = {
            "config/json": json.dumps(c.to_dict()),
            "iteration/num_epochs": c.num_epochs, "iteration/epoch_idx": epoch,
            "iteration/num_edge_paths": n_paths, "iteration/edge_path_idx": path_idx,
            "iteration/edge_path": c.edge_paths[path_idx], "iteration/num_edge_chunks": n_chunks,
            "iteration/edge_chunk_idx": chunk_idx,
        }
        return epoch, path_idx, chunk_idx, meta

    def _commit_version(self, it: int, model: Optional[Model], meta, epoch: int,
                        last_of_epoch: bool, snapshot=None) -> None:
        """With every partition of version it + 1 written: the model (or `snapshot`, its
        to_checkpoint() taken earlier), config.json (with the first commit), the epoch's
        preserved copy, then the commit itself."""
        c, ckpt = self.config, self.ckpt
        params, states = snapshot if snapshot is not None else model.to_checkpoint()
        ckpt.save_model(it + 1, params, states, meta)
        if it == self._first_iteration:
            ckpt.write_config(json.dumps(c.to_dict(), indent=4))
        if (c.checkpoint_preservation_interval and last_of_epoch
                and (epoch + 1) % c.checkpoint_preservation_interval == 0):
            # Before the commit, so a kill in between retries it; named as PBG names it.
            ckpt.snapshot(it + 1, epoch + 1)
        ckpt.commit(it + 1)

    def _train(self) -> List[dict]:
        c = self.config
        ckpt = self.ckpt
        version = ckpt.load_version()
        model = self._start_model(version)
        if self.device is not None:
            model.to(self.device)
        # config.json is written with the first commit, so that a refused run writes none.
        self._first_iteration = version
        n_chunks = self.num_edge_chunks()
        n_paths = len(c.edge_paths)
        total_iters = c.num_epochs * n_paths * n_chunks
        nl, nr = c.side_partitions("lhs"), c.side_partitions("rhs")
        epoch_records = []
        relation_lr = c.relation_lr if c.relation_lr is not None else c.lr

        buffer = PartitionBuffer(c, ckpt, self.seed, pin_memory=self.device is not None
                                 and self.device.type == "cuda")
        try:
            for it in range(version, total_iters):
                epoch_records.append(self._iteration(it, buffer, model, relation_lr, nl, nr,
                                                     n_paths, n_chunks))
        finally:
            buffer.close()
        return epoch_records

    def _iteration(self, it: int, buffer: PartitionBuffer, model: "Model", relation_lr: float,
                   nl: int, nr: int, n_paths: int, n_chunks: int) -> dict:
        """Iteration `it` (one epoch x edge path x edge chunk): trains its buckets, then commits
        version it + 1."""
        c, ckpt = self.config, self.ckpt
        epoch, path_idx, chunk_idx, meta = self._iteration_meta(it, n_paths, n_chunks)
        edge_path = c.edge_paths[path_idx]
        t_iter = time.perf_counter()
        it_loss, it_count, it_train_s = 0.0, 0, 0.0
        pending_stats = []  # written after the commit, so a killed iteration leaves none
        buckets = bucket_order(c.bucket_order, nl, nr, self.seed * 7919 + it, buffer.capacity)
        io_start = buffer.stats.snapshot()
        buffer.start_iteration(it, buckets, meta)
        tier = DeviceTier(buffer, self.device) if self.device is not None else None
        store = tier if tier is not None else buffer
        for b_idx, (lp, rp) in enumerate(buckets):
            io_before = buffer.stats.snapshot()
            buffer.acquire(b_idx)
            if tier is not None:
                tier.enter(b_idx)
            needed = buffer.plan[b_idx]
            edges = load_edges(edge_path, lp, rp, chunk_idx, n_chunks)
            edges["path"] = str(Path(edge_path) / f"edges_{lp}_{rp}.h5")
            # The held-out edges must be the same ones in every epoch (as PBG's).
            holdout_seed = zlib.crc32(f"{self.seed}:{path_idx}:{chunk_idx}:{lp}:{rp}".encode())
            faults.point("train.bucket")
            stats = self._train_bucket(store, model, edges, lp, rp, relation_lr,
                                       seed=self.seed * 1_000_003 + it * 1009 + b_idx,
                                       holdout_seed=holdout_seed)
            self._check_finite(store, model, needed, stats, epoch, edge_path, chunk_idx,
                               (lp, rp), version=it, has_weights=edges["weight"] is not None)
            if tier is not None:
                tier.leave(b_idx)
            buffer.release(b_idx)
            io = buffer.stats.since(io_before)
            it_loss += stats["loss"]
            it_count += stats["count"]
            it_train_s += stats["seconds"]
            rec = dict(kind="bucket", epoch=epoch, edge_path=path_idx, edge_chunk=chunk_idx,
                       bucket=[lp, rp], **stats,
                       edges_per_s=stats["count"] / max(stats["seconds"], 1e-9),
                       io_wait_seconds=io["wait_seconds"], bytes_read=io["bytes_read"],
                       bytes_written=io["bytes_written"], partition_loads=io["loads"])
            pending_stats.append(rec)
            if self.progress:
                self.progress(rec)
        # Commit version it + 1: every partition written (or linked), then the model.
        before_commit = buffer.stats.wait_seconds
        if tier is not None:
            tier.flush()
        buffer.finish_iteration()
        commit_wait = buffer.stats.wait_seconds - before_commit
        self._commit_version(it, model, meta, epoch,
                             last_of_epoch=path_idx == n_paths - 1 and chunk_idx == n_chunks - 1)
        io = buffer.stats.since(io_start)
        rec = dict(kind="iteration", epoch=epoch, edge_path=path_idx, edge_chunk=chunk_idx,
                   loss=it_loss, count=it_count, train_seconds=it_train_s,
                   seconds=time.perf_counter() - t_iter,
                   edges_per_s=it_count / max(it_train_s, 1e-9),
                   wall_edges_per_s=it_count / max(time.perf_counter() - t_iter, 1e-9),
                   bucket_order=c.bucket_order, buffer_capacity=buffer.capacity,
                   partition_io=c.partition_io, partition_loads=io["loads"],
                   partition_writes=io["writes"], bytes_read=io["bytes_read"],
                   bytes_written=io["bytes_written"], io_seconds=io["io_seconds"],
                   io_wait_seconds=io["wait_seconds"],
                   io_hidden_seconds=max(0.0, io["io_seconds"] - io["wait_seconds"]),
                   io_wait_first_bucket_seconds=(pending_stats[0]["io_wait_seconds"]
                                                 if pending_stats else 0.0),
                   io_wait_commit_seconds=commit_wait)
        if tier is not None:
            rec.update(device=str(self.device), **tier.stats())
        ckpt.append_stats(pending_stats + [rec])
        if self.progress:
            self.progress(rec)
        return rec

    def _check_finite(self, store: PartitionBuffer, model: Model, needed, stats, epoch: int,
                      edge_path: str, chunk: int, bucket, version: int, has_weights: bool):
        """The numerics guard: after each bucket, its loss, the partitions it updated and every
        shared parameter must be finite (one min/max pass each, ~2% of a bucket's time); else
        the run stops before this iteration commits, and the last good version stays."""
        c = self.config
        bad = None
        if not math.isfinite(stats["loss"]):
            bad = f"the loss became {stats['loss']}"
        else:
            tensors = [(f"embeddings of {e!r} partition {p}", t) for (e, p) in sorted(needed)
                       for t in store.get(e, p)]
            for i, rp in enumerate(model.relations):
                tensors += [(f"relations[{i}] operator parameters", t)
                            for t in (rp.rhs, rp.lhs, rp.rhs_state, rp.lhs_state)]
            tensors += [(f"global embedding of {e!r}", t)
                        for e, pair in model.global_embs.items() for t in pair]
            for what, t in tensors:
                if not t.numel():
                    continue
                lo, hi = value_range(t)
                if not (math.isfinite(lo) and math.isfinite(hi)):
                    bad = f"the {what} became non-finite (NaN or inf)"
                    break
                if max(-lo, hi) > EXPLODED:
                    bad = (f"the {what} exploded (values up to {max(-lo, hi):.3g}; scores of "
                           f"such rows overflow float32)")
                    break
        if bad is None:
            return
        causes = []
        lr = c.lr
        if lr > 1:
            causes.append(f"lr = {lr:g} is far above the usual 0.001-0.5; try {lr / 100:g}")
        if c.relation_lr is not None and c.relation_lr > 1:
            causes.append(f"relation_lr = {c.relation_lr:g} is far above the usual range")
        if c.init_scale > 1:
            causes.append(f"init_scale = {c.init_scale:g} is far above PBG's 0.001")
        if c.margin > 100:
            causes.append(f"margin = {c.margin:g} is very large")
        if has_weights:
            causes.append("very large edge weights")
        if not causes:
            causes.append(f"a learning rate too large for this loss and comparator; try lr = "
                          f"{lr / 10:g}")
        raise TrainingDiverged(
            f"training diverged in epoch {epoch}, edge path {edge_path}, edge chunk {chunk}, "
            f"bucket {tuple(bucket)}: {bad}. Nothing of this iteration was committed; "
            f"{c.checkpoint_path} stays at version {version}. Likely cause: "
            f"{'; or '.join(causes)}")

    def _train_bucket(self, store: PartitionBuffer, model: Model, edges, lp: int, rp: int,
                      relation_lr: float, seed: int, holdout_seed: int = 0) -> dict:
        c = self.config
        out = dict(loss=0.0, violators_lhs=0, violators_rhs=0, count=0, seconds=0.0)
        if len(edges["lhs"]) == 0:
            return out
        edge_file = edges.get("path", f"edges_{lp}_{rp}.h5")
        lhs_all = torch.from_numpy(edges["lhs"])
        rhs_all = torch.from_numpy(edges["rhs"])
        rel_all = torch.from_numpy(edges["rel"])
        if not c.dynamic_relations and len(c.relations) == 1:
            if int(rel_all.max()) > 0 or int(rel_all.min()) < 0:
                bad = int(rel_all.max()) if int(rel_all.max()) > 0 else int(rel_all.min())
                raise DataError(f"{edge_file}: relation id {bad} not in the "
                                f"config's {len(c.relations)} relations")
            rel_all = torch.zeros(len(lhs_all), dtype=torch.int8)  # not needed: free it
            edges["rel"] = None
        w_all = torch.from_numpy(edges["weight"]) if edges["weight"] is not None else None
        held_out = None
        if c.eval_fraction > 0:
            # PBG holds out eval_fraction of each bucket's edges and evaluates them after the
            # bucket is trained (sampled ranking, eval_num_batch_negs + eval_num_uniform_negs).
            g = torch.Generator().manual_seed(holdout_seed)
            mask = torch.rand(len(lhs_all), generator=g) < c.eval_fraction
            held_out = (lhs_all[mask], rhs_all[mask], rel_all[mask])
            keep = ~mask
            lhs_all, rhs_all, rel_all = lhs_all[keep], rhs_all[keep], rel_all[keep]
            w_all = w_all[keep] if w_all is not None else None
        if c.dynamic_relations or len(c.relations) == 1:
            groups = [(0, slice(None))]  # one relation entry: no grouping (and no copies)
        else:
            order = torch.argsort(rel_all, stable=True)
            lhs_all, rhs_all, rel_all = lhs_all[order], rhs_all[order], rel_all[order]
            w_all = w_all[order] if w_all is not None else None
            ids, counts = torch.unique_consecutive(rel_all, return_counts=True)
            starts = torch.cumsum(counts, 0) - counts
            groups = [(int(i), slice(int(s), int(s + n))) for i, s, n in zip(ids, starts, counts)]
        if held_out is not None and len(held_out[0]):
            # As PBG: the held-out edges are ranked before and after the bucket trains, against
            # the same negatives (the generator is seeded the same way both times).
            before = self._eval_held_out(store, model, *held_out, lp, rp, seed)
            out.update(eval_before_mrr=before["eval_mrr"], eval_before_hits10=before["eval_hits10"])
        for rel_id, sl in groups:
            if not 0 <= rel_id < len(c.relations):
                raise DataError(f"{edge_file}: relation id {rel_id} not in the config's "
                                f"{len(c.relations)} relations")
            r = c.relations[rel_id]
            lhs_part = lp if c.entities[r.lhs].num_partitions > 1 else 0
            rhs_part = rp if c.entities[r.rhs].num_partitions > 1 else 0
            lhs_emb, lhs_state = store.get(r.lhs, lhs_part)
            rhs_emb, rhs_state = store.get(r.rhs, rhs_part)
            for side, ids, table, ent, part in (("lhs", lhs_all[sl], lhs_emb, r.lhs, lhs_part),
                                                ("rhs", rhs_all[sl], rhs_emb, r.rhs, rhs_part)):
                if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(table)):
                    bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
                    raise DataError(f"{edge_file}: {side} entity offset {bad} is outside "
                                    f"{ent!r} partition {part}, which has {len(table)} "
                                    f"entities; the edges and entity_path come from different "
                                    f"imports (re-import both)")
            if c.dynamic_relations and len(rel_all[sl]) and (
                    int(rel_all[sl].min()) < 0 or int(rel_all[sl].max()) >= self.num_dynamic_rels):
                raise DataError(f"{edge_file}: relation id {int(rel_all[sl].max())} is outside "
                                f"the {self.num_dynamic_rels} relation types of "
                                f"dynamic_rel_count.txt; re-import")
            rp_ = model.relations[rel_id]
            dev = lhs_emb.device
            empty = torch.zeros(0, device=dev)
            lg, lgs = model.global_embs.get(r.lhs, (empty, empty))
            rg, rgs = model.global_embs.get(r.rhs, (empty, empty))
            rel_arg = rel_all[sl] if c.dynamic_relations else torch.zeros(0, dtype=torch.long)
            stats = torch.ops.pbg_fast.train_bucket_(
                lhs_emb, lhs_state, rhs_emb, rhs_state, rp_.rhs, rp_.rhs_state, rp_.lhs,
                rp_.lhs_state, lg, lgs, rg, rgs, lhs_all[sl].contiguous().to(dev),
                rhs_all[sl].contiguous().to(dev), rel_arg.contiguous().to(dev),
                w_all[sl].contiguous().to(dev) if w_all is not None else None,
                c.batch_size, c.num_batch_negs, c.num_uniform_negs, c.disable_lhs_negs,
                c.disable_rhs_negs, c.dynamic_relations, c.comparator, r.operator, c.loss_fn,
                c.margin, r.weight, c.lr, relation_lr, self.workers, seed,
                c.regularization_coef, r.all_negs, c.max_norm or 0.0, c.matmul_precision)
            s = stats.tolist()
            out["loss"] += s[0]
            out["violators_lhs"] += int(s[1])
            out["violators_rhs"] += int(s[2])
            out["count"] += int(s[3])
            out["seconds"] += s[4]
        if held_out is not None and len(held_out[0]):
            out.update(self._eval_held_out(store, model, *held_out, lp, rp, seed))
        return out

    @torch.no_grad()
    def _eval_held_out(self, store, model, lhs, rhs, rel, lp, rp, seed) -> dict:
        """Sampled ranking of held-out edges against in-chunk + uniform negatives per side."""
        from ..model.reference import _matched, _pairwise
        from ..model.scoring import prepared_vectors
        c = self.config
        g = torch.Generator().manual_seed(seed + 1)
        ranks = []
        rel_ids = [0] if (c.dynamic_relations or len(c.relations) == 1) else torch.unique(rel).tolist()
        for rel_id in rel_ids:
            m = slice(None) if len(rel_ids) == 1 else (rel == rel_id)
            h, t, rr = lhs[m], rhs[m], rel[m] if c.dynamic_relations else torch.zeros_like(lhs[m])
            r = c.relations[rel_id]
            le, _ = store.get(r.lhs, lp if c.entities[r.lhs].num_partitions > 1 else 0)
            re, _ = store.get(r.rhs, rp if c.entities[r.rhs].num_partitions > 1 else 0)
            dev = le.device  # the GPU trainer's tables are on its device
            h, t, rr = h.to(dev), t.to(dev), rr.long().to(dev)
            lg = model.global_embs.get(r.lhs, (None,))[0]
            rg = model.global_embs.get(r.rhs, (None,))[0]
            params = model.relations[rel_id]

            def vec(table, glob, ids, op_params=None, rels=None):
                return prepared_vectors(table, glob, ids, r.operator, op_params, rels,
                                        c.comparator, c.max_norm)

            nb, nu = c.eval_num_batch_negs or 0, c.eval_num_uniform_negs or 0
            chunk = nb if nb else max(nu, 1)
            for start in range(0, len(h), chunk):
                hh, tt, rl = h[start:start + chunk], t[start:start + chunk], rr[start:start + chunk]
                k = len(hh)
                # (query vectors, true vectors, candidate table/op) for each side's negatives.
                sides = []
                # A side whose negatives are disabled is not ranked (as PBG skips it).
                if c.dynamic_relations:
                    if not c.disable_lhs_negs:
                        sides.append((vec(re, rg, tt, params.rhs, rl), vec(le, lg, hh), le, lg, None))
                    if not c.disable_rhs_negs:
                        sides.append((vec(le, lg, hh, params.lhs, rl), vec(re, rg, tt), re, rg, None))
                else:
                    zero = torch.zeros(k, dtype=torch.long, device=dev)
                    dst = vec(re, rg, tt, params.rhs, zero)
                    src = vec(le, lg, hh)
                    if not c.disable_lhs_negs:
                        sides.append((dst, src, le, lg, None))
                    if not c.disable_rhs_negs:
                        sides.append((src, dst, re, rg, params.rhs))
                for q, true, table, glob, op_params in sides:
                    uni = torch.randint(0, len(table), (nu,), generator=g).to(dev)
                    cand = vec(table, glob, uni, op_params,
                               torch.zeros(nu, dtype=torch.long, device=dev)
                               if op_params is not None else None)
                    negs = torch.cat([true if nb else true[:0], cand])
                    scores = _pairwise(q.unsqueeze(0), negs.unsqueeze(0), c.comparator)[0]
                    if nb:
                        diag = torch.arange(k, device=dev)
                        scores[diag, diag] = -float("inf")
                    pos = _matched(q, true, c.comparator)
                    ranks.append((scores >= pos.unsqueeze(1)).sum(1) + 1)
        rk = torch.cat(ranks).double().cpu()
        return dict(eval_count=len(lhs), eval_mrr=float((1 / rk).mean()),
                    eval_hits10=float((rk <= 10).double().mean()))


def train(config: ConfigSchema, seed: int = 0, progress=None) -> List[dict]:
    logger.info("pbg_fast %s", build_info())
    return Trainer(config, seed=seed, progress=progress).train()
