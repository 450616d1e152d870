"""Import TSV edge lists into PBG 1.0's partitioned on-disk layout, streaming.

Two passes over each input, in chunks of rows parsed by pandas' C reader (memory is bounded by
the chunk size plus the entity dictionaries): the first counts entities and relation types, the
second maps names to (partition, offset) and appends each edge to its bucket file. Partitions
are assigned at random (seeded). All outputs are staged in hidden temporary files and renamed
into place only when everything succeeded: a malformed line leaves nothing half-written.

Malformed lines (wrong column count, empty field, bad weight, undecodable bytes) fail with
file:line, or with skip_bad_lines=True are skipped and counted.
"""

import csv
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h5py
import numpy as np
import pandas as pd

from ..config import ConfigSchema
from .files import FORMAT_VERSION, FORMAT_VERSION_ATTR, IMPORT_MARKER, DataError, fsync_dir


@dataclass
class ImportStats:
    lines: int = 0
    edges: int = 0
    skipped_bad_lines: int = 0
    dropped_edges: int = 0  # edges whose entity or relation was filtered by a min count
    entities: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class _Columns:
    def __init__(self, lhs: int, rhs: int, rel: Optional[int], weight: Optional[int]):
        self.lhs, self.rhs, self.rel, self.weight = lhs, rhs, rel, weight
        self.used = [c for c in (lhs, rhs, rel, weight) if c is not None]
        self.min_fields = max(self.used) + 1


def _line_error(path: str, line_no: int, line: bytes, cols: _Columns, delimiter: str) -> Optional[str]:
    """Why a raw line is malformed (None if it is fine)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"undecodable bytes ({e.reason} at byte {e.start})"
    text = text.rstrip("\r\n")
    fields = text.split(delimiter)
    if len(fields) < cols.min_fields:
        return f"expected at least {cols.min_fields} columns, got {len(fields)}"
    for c in cols.used:
        if fields[c] == "":
            return f"empty field in column {c}"
    if cols.weight is not None:
        try:
            float(fields[cols.weight])
        except ValueError:
            return f"column {cols.weight}: weight {fields[cols.weight]!r} is not a number"
    return None


def _iter_chunks_slow(path: str, cols: _Columns, delimiter: str, chunk_rows: int,
                      skip_bad: bool, stats: ImportStats, count_lines: bool):
    """Line by line in Python: exact diagnostics, and the skip-bad-lines mode."""
    rows, line_no = [], 0
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            err = _line_error(path, line_no, line, cols, delimiter)
            if err is not None:
                if skip_bad:
                    if count_lines:
                        stats.skipped_bad_lines += 1
                    continue
                raise DataError(f"{path}:{line_no}: {err}")
            fields = line.decode("utf-8").rstrip("\r\n").split(delimiter)
            rows.append([fields[c] for c in cols.used])
            if len(rows) >= chunk_rows:
                yield pd.DataFrame(rows, columns=cols.used)
                rows = []
    if rows:
        yield pd.DataFrame(rows, columns=cols.used)


def _iter_chunks(path: str, cols: _Columns, delimiter: str, chunk_rows: int, skip_bad: bool,
                 stats: ImportStats, count_lines: bool):
    """DataFrames of the used columns (strings). The fast path is pandas' C reader; on any
    parse problem the slow path re-reads the file to name the offending line."""
    if skip_bad:
        yield from _iter_chunks_slow(path, cols, delimiter, chunk_rows, True, stats, count_lines)
        return
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such input file")
    try:
        reader = pd.read_csv(
            path, sep=delimiter, header=None, dtype=str, usecols=cols.used, chunksize=chunk_rows,
            engine="c", na_filter=True, keep_default_na=False, na_values=[""],
            quoting=csv.QUOTE_NONE, encoding="utf-8", skip_blank_lines=True,
        )
        for chunk in reader:
            if chunk.isna().to_numpy().any():
                raise ValueError("empty or missing field")
            if cols.weight is not None:
                pd.to_numeric(chunk[cols.weight], errors="raise")
            yield chunk
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        # Find and name the first bad line (re-reading: correctness over speed here).
        for _ in _iter_chunks_slow(path, cols, delimiter, chunk_rows, False, stats, False):
            pass
        raise DataError(f"{path}: malformed input ({e})") from None
    except pd.errors.EmptyDataError:
        return


class _BucketWriter:
    """Appends edges to edges_<l>_<r>.h5 files staged in a temporary directory."""

    def __init__(self, stage: Path, with_weight: bool):
        self.stage, self.with_weight, self.files = stage, with_weight, {}

    def append(self, lp: int, rp: int, lhs, rhs, rel, weight) -> None:
        key = (lp, rp)
        if key not in self.files:
            hf = h5py.File(self.stage / f"edges_{lp}_{rp}.h5", "w")
            hf.attrs[FORMAT_VERSION_ATTR] = FORMAT_VERSION
            for name, dt in (("lhs", np.int64), ("rhs", np.int64), ("rel", np.int64)) + (
                    (("weight", np.float32),) if self.with_weight else ()):
                hf.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(1 << 16,))
            self.files[key] = hf
        hf = self.files[key]
        arrays = {"lhs": lhs, "rhs": rhs, "rel": rel}
        if self.with_weight:
            arrays["weight"] = weight
        for name, arr in arrays.items():
            ds = hf[name]
            n = ds.shape[0]
            ds.resize((n + len(arr),))
            ds[n:] = arr

    def close(self) -> None:
        for hf in self.files.values():
            hf.close()


class _Dictionary:
    """Names -> provisional ids in first-seen order, with occurrence counts."""

    def __init__(self):
        self.ids: Dict[str, int] = {}
        self.counts = np.zeros(1024, np.int64)

    def encode(self, values: np.ndarray) -> np.ndarray:
        codes, uniques = pd.factorize(values)  # C hashing of the chunk's strings
        ids = self.ids
        # One dict operation per distinct name of the chunk, not per line.
        to_global = np.fromiter((ids.setdefault(u, len(ids)) for u in uniques), np.int64,
                                len(uniques))
        out = to_global[codes]
        if len(ids) > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(len(ids) * 2 - len(self.counts), np.int64)])
        self.counts[: len(ids)] += np.bincount(out, minlength=len(ids))
        return out

    def names(self) -> List[str]:
        return list(self.ids)


def import_from_tsv(
    config: ConfigSchema,
    inputs: List[str],
    lhs_col: int = 0,
    rhs_col: int = 1,
    rel_col: Optional[int] = None,
    weight_col: Optional[int] = None,
    delimiter: str = "\t",
    relation_type_min_count: int = 1,
    entity_min_count: int = 1,
    skip_bad_lines: bool = False,
    chunk_rows: int = 1 << 20,
    seed: int = 0,
) -> ImportStats:
    """Writes the entity files to config.entity_path and inputs[i]'s edges to
    config.edge_paths[i] (as torchbiggraph_import_from_tsv does).

    One parse: each chunk's names become provisional integer ids (a dictionary per entity type
    and one for relations), spilled with the chunk to a temporary file. Then partitions are
    assigned, and a second pass over the integers only maps them to (partition, offset) and
    appends each edge to its bucket.
    """
    t0 = time.perf_counter()
    if len(inputs) != len(config.edge_paths):
        raise DataError(f"edge_paths: the config names {len(config.edge_paths)} edge paths but "
                        f"{len(inputs)} input files were given; they pair up one to one")
    if config.dynamic_relations and rel_col is None:
        raise DataError("--rel-col: dynamic_relations needs a relation column")
    cols = _Columns(lhs_col, rhs_col, rel_col, weight_col)
    stats = ImportStats()
    dynamic = config.dynamic_relations
    rel_names_cfg = [r.name for r in config.relations]
    ents = {e: _Dictionary() for e in config.entities}
    rels = _Dictionary()
    if not dynamic:  # static relations: ids are the config's indices
        for name in rel_names_cfg:
            rels.ids.setdefault(name, len(rels.ids))
        rels.counts = np.zeros(max(1024, len(rels.ids)), np.int64)
    side_types = [(r.lhs, r.rhs) for r in config.relations]
    single_type = len({t for pair in side_types for t in pair}) == 1
    rel_lhs_type = np.array([config.relations[0 if dynamic else i].lhs for i in range(len(rel_names_cfg))])
    rel_rhs_type = np.array([config.relations[0 if dynamic else i].rhs for i in range(len(rel_names_cfg))])

    staged: List[Tuple[Path, Path]] = []  # (staging dir, final dir)
    spill_dir = Path(tempfile.mkdtemp(prefix="pbg_fast_import_"))
    try:
        # ---- pass 1: parse once; provisional ids to spill files ----
        spills: List[List[Path]] = []
        for path in inputs:
            files = []
            for chunk in _iter_chunks(path, cols, delimiter, chunk_rows, skip_bad_lines, stats, True):
                first_row = stats.lines
                stats.lines += len(chunk)
                if rel_col is not None:
                    rel_values = chunk[rel_col].to_numpy()
                    if dynamic:
                        rel = rels.encode(rel_values)
                    else:
                        codes, uniques = pd.factorize(rel_values)
                        bad = [u for u in uniques if u not in rels.ids]
                        if bad:
                            pos = int(np.argmax(rel_values == bad[0]))
                            raise DataError(f"{path}: relation {bad[0]!r} (data row {first_row + pos + 1}) "
                                            f"is not among the config's relations {rel_names_cfg}")
                        rel = np.array([rels.ids[u] for u in uniques], np.int64)[codes]
                        rels.counts[: len(rels.ids)] += np.bincount(rel, minlength=len(rels.ids))
                else:
                    rel = np.zeros(len(chunk), np.int64)
                    rels.counts[0] += len(chunk)
                lhs_vals, rhs_vals = chunk[lhs_col].to_numpy(), chunk[rhs_col].to_numpy()
                if single_type:
                    etype = side_types[0][0]
                    both = ents[etype].encode(np.concatenate([lhs_vals, rhs_vals]))
                    lhs_id, rhs_id = both[: len(chunk)], both[len(chunk):]
                else:
                    lhs_id = np.empty(len(chunk), np.int64)
                    rhs_id = np.empty(len(chunk), np.int64)
                    rel_cfg = np.zeros(len(chunk), np.int64) if dynamic else rel
                    for etype in config.entities:
                        for vals, ids, types in ((lhs_vals, lhs_id, rel_lhs_type),
                                                 (rhs_vals, rhs_id, rel_rhs_type)):
                            m = types[rel_cfg] == etype
                            if m.any():
                                ids[m] = ents[etype].encode(vals[m])
                weight = (chunk[weight_col].to_numpy(dtype=np.float32)
                          if weight_col is not None else None)
                f = spill_dir / f"{len(spills)}_{len(files)}.npz"
                np.savez(f, lhs=lhs_id, rhs=rhs_id, rel=rel,
                         **({"weight": weight} if weight is not None else {}))
                files.append(f)
            spills.append(files)

        # ---- dictionaries: min counts, random partitions ----
        rng = random.Random(seed)
        n_rel = len(rels.ids)
        rel_keep = (rels.counts[:n_rel] >= relation_type_min_count) if dynamic else np.ones(n_rel, bool)
        rel_list_prov = rels.names()
        rel_final = np.full(n_rel, -1, np.int64)
        kept_rels = [i for i in range(n_rel) if rel_keep[i]]
        if dynamic:
            kept_rels.sort(key=lambda i: rel_list_prov[i])
        for new, old in enumerate(kept_rels):
            rel_final[old] = new
        rel_list = [rel_list_prov[i] for i in kept_rels]
        part_of, off_of, parts_of = {}, {}, {}
        for etype, ec in config.entities.items():
            d = ents[etype]
            names = d.names()
            keep = np.flatnonzero(d.counts[: len(names)] >= entity_min_count).tolist()
            rng.shuffle(keep)
            p = ec.num_partitions
            part = np.full(len(names), -1, np.int64)
            off = np.full(len(names), -1, np.int64)
            split = []
            for i in range(p):
                members = keep[i * len(keep) // p:(i + 1) * len(keep) // p]
                part[members] = i
                off[members] = np.arange(len(members))
                split.append([names[m] for m in members])
            part_of[etype], off_of[etype], parts_of[etype] = part, off, split
            stats.entities[etype] = len(keep)
            d.ids = None  # the strings are no longer needed

        # ---- pass 2: integers only, into staged bucket files ----
        nr = max(e.num_partitions for e in config.entities.values())
        for files, out_dir in zip(spills, config.edge_paths):
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=".pbg_fast_import.", dir=out))
            staged.append((stage, out))
            writer = _BucketWriter(stage, weight_col is not None)
            try:
                for f in files:
                    z = np.load(f)
                    lhs_id, rhs_id, rel = z["lhs"], z["rhs"], z["rel"]
                    weight = z["weight"] if weight_col is not None else None
                    rel_cfg = np.zeros(len(rel), np.int64) if dynamic else rel
                    if single_type:
                        etype = side_types[0][0]
                        lp, lo = part_of[etype][lhs_id], off_of[etype][lhs_id]
                        rp, ro = part_of[etype][rhs_id], off_of[etype][rhs_id]
                    else:
                        lp, lo, rp, ro = (np.full(len(rel), -1, np.int64) for _ in range(4))
                        for etype in config.entities:
                            for ids, pp, oo, types in ((lhs_id, lp, lo, rel_lhs_type),
                                                       (rhs_id, rp, ro, rel_rhs_type)):
                                m = types[rel_cfg] == etype
                                pp[m] = part_of[etype][ids[m]]
                                oo[m] = off_of[etype][ids[m]]
                    new_rel = rel_final[rel]
                    keep = (lo >= 0) & (ro >= 0) & (new_rel >= 0)
                    stats.dropped_edges += int((~keep).sum())
                    idx = np.flatnonzero(keep)
                    key = lp[idx] * nr + rp[idx]
                    order = np.argsort(key, kind="stable")
                    idx, key = idx[order], key[order]
                    bounds = np.flatnonzero(np.diff(key)) + 1
                    for seg in np.split(np.arange(len(idx)), bounds):
                        if len(seg) == 0:
                            continue
                        rows = idx[seg]
                        bl, br = divmod(int(key[seg[0]]), nr)
                        writer.append(bl, br, lo[rows], ro[rows], new_rel[rows],
                                      weight[rows] if weight is not None else None)
                    stats.edges += len(idx)
            finally:
                writer.close()

        # ---- everything parsed: move into place ----
        ent_dir = Path(config.entity_path)
        ent_dir.mkdir(parents=True, exist_ok=True)
        ent_stage = Path(tempfile.mkdtemp(prefix=".pbg_fast_import.", dir=ent_dir))
        staged.append((ent_stage, ent_dir))
        for etype, split in parts_of.items():
            for i, names in enumerate(split):
                (ent_stage / f"entity_count_{etype}_{i}.txt").write_text(f"{len(names)}\n")
                (ent_stage / f"entity_names_{etype}_{i}.json").write_text(json.dumps(names))
        # Relation type names and count, as PBG's importer writes them (dynamic or not).
        (ent_stage / "dynamic_rel_count.txt").write_text(f"{len(rel_list)}\n")
        (ent_stage / "dynamic_rel_names.json").write_text(json.dumps(rel_list))
        # The move below replaces several files per directory: mark the directories first, so
        # that a kill half-way leaves data the trainer refuses (files.check_no_partial_import)
        # rather than old entity files beside new buckets.
        finals = list(dict.fromkeys(final for _, final in staged))
        for final in finals:
            (final / IMPORT_MARKER).write_text("")
            fsync_dir(final)
        for stage, final in staged:
            # Old bucket files of a previous import would mix with the new ones: remove them.
            if final != ent_dir:
                for old in final.glob("edges_*_*.h5"):
                    old.unlink()
            for f in stage.iterdir():
                os.replace(f, final / f.name)
            fsync_dir(final)
        for final in finals:
            (final / IMPORT_MARKER).unlink()
            fsync_dir(final)
    finally:
        for stage, _ in staged:
            shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(spill_dir, ignore_errors=True)
    stats.seconds = time.perf_counter() - t0
    return stats
