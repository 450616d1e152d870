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
from .files import FORMAT_VERSION, FORMAT_VERSION_ATTR, DataError


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
    config.edge_paths[i] (as torchbiggraph_import_from_tsv does)."""
    t0 = time.perf_counter()
    if len(inputs) != len(config.edge_paths):
        raise DataError(f"edge_paths: the config names {len(config.edge_paths)} edge paths but "
                        f"{len(inputs)} input files were given; they pair up one to one")
    cols = _Columns(lhs_col, rhs_col, rel_col, weight_col)
    stats = ImportStats()
    dynamic = config.dynamic_relations
    rel_names_cfg = [r.name for r in config.relations]

    # ---- pass 1: relation types and entity counts ----
    rel_counts: Dict[str, int] = {}
    # Per entity type, per chunk: the names seen (or their counts when a min count applies);
    # combined once at the end (combining per chunk would cost O(entities) every chunk).
    seen: Dict[str, list] = {e: [] for e in config.entities}
    types = {(r.lhs, r.rhs) for r in config.relations}
    single_type = len(types) == 1 and len(set(next(iter(types)))) == 1 if types else False
    if dynamic or rel_col is None:
        single_type = config.relations[0].lhs == config.relations[0].rhs

    def rel_types(rel_values: pd.Series) -> Tuple[pd.Series, pd.Series]:
        if dynamic or rel_col is None:
            r = config.relations[0]
            return (pd.Series(r.lhs, index=rel_values.index), pd.Series(r.rhs, index=rel_values.index))
        lhs_t = {r.name: r.lhs for r in config.relations}
        rhs_t = {r.name: r.rhs for r in config.relations}
        return rel_values.map(lhs_t), rel_values.map(rhs_t)

    def column_values(chunk, rel_values):
        """{entity type: Series of the names of that type in this chunk (both sides)}."""
        if single_type:
            etype = config.relations[0].lhs
            return {etype: pd.concat([chunk[lhs_col], chunk[rhs_col]], ignore_index=True)}
        lt, rt = rel_types(rel_values)
        out = {}
        for etype in config.entities:
            vals = pd.concat([chunk[lhs_col][(lt == etype).to_numpy()],
                              chunk[rhs_col][(rt == etype).to_numpy()]], ignore_index=True)
            if len(vals):
                out[etype] = vals
        return out

    for path in inputs:
        for chunk in _iter_chunks(path, cols, delimiter, chunk_rows, skip_bad_lines, stats, True):
            stats.lines += len(chunk)
            rel_values = chunk[rel_col] if rel_col is not None else pd.Series(
                rel_names_cfg[0], index=chunk.index)
            if rel_col is not None:
                for name, n in rel_values.value_counts().items():
                    rel_counts[name] = rel_counts.get(name, 0) + int(n)
            else:
                rel_counts[rel_names_cfg[0]] = rel_counts.get(rel_names_cfg[0], 0) + len(chunk)
            if not dynamic and rel_col is not None:
                unknown = set(rel_counts) - set(rel_names_cfg)
                if unknown:
                    bad = sorted(unknown)[0]
                    pos = int(np.argmax((rel_values == bad).to_numpy()))
                    raise DataError(f"{path}: relation {bad!r} (data row {stats.lines - len(chunk) + pos + 1}) "
                                    f"is not among the config's relations {rel_names_cfg}")
            for etype, vals in column_values(chunk, rel_values).items():
                seen[etype].append(vals.value_counts() if entity_min_count > 1 else
                                   pd.Series(pd.unique(vals.to_numpy())))

    # ---- dictionaries ----
    rng = random.Random(seed)
    if dynamic:
        rel_list = sorted(n for n, k in rel_counts.items() if k >= relation_type_min_count)
    else:
        rel_list = rel_names_cfg
    rel_index = pd.Index(rel_list)
    ent_index: Dict[str, pd.Index] = {}
    ent_part: Dict[str, np.ndarray] = {}
    ent_off: Dict[str, np.ndarray] = {}
    parts_of: Dict[str, List[List[str]]] = {}
    for etype, ec in config.entities.items():
        if not seen[etype]:
            names = []
        elif entity_min_count > 1:
            counts = pd.concat(seen[etype]).groupby(level=0).sum()
            names = sorted(counts.index[counts.to_numpy() >= entity_min_count].tolist())
        else:
            names = sorted(pd.unique(pd.concat(seen[etype], ignore_index=True).to_numpy()).tolist())
        seen[etype] = None
        rng.shuffle(names)
        p = ec.num_partitions
        split = [names[i * len(names) // p:(i + 1) * len(names) // p] for i in range(p)]
        parts_of[etype] = split
        ent_index[etype] = pd.Index([n for part in split for n in part])
        ent_part[etype] = np.concatenate([np.full(len(s), i, np.int64) for i, s in enumerate(split)]) \
            if names else np.zeros(0, np.int64)
        ent_off[etype] = np.concatenate([np.arange(len(s), dtype=np.int64) for s in split]) \
            if names else np.zeros(0, np.int64)
        stats.entities[etype] = len(names)

    # ---- pass 2: edges into staged bucket files ----
    staged: List[Tuple[Path, Path]] = []  # (staging dir, final dir)
    try:
        for path, out_dir in zip(inputs, config.edge_paths):
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=".pbg_fast_import.", dir=out))
            staged.append((stage, out))
            writer = _BucketWriter(stage, weight_col is not None)
            try:
                for chunk in _iter_chunks(path, cols, delimiter, chunk_rows, skip_bad_lines,
                                          stats, False):
                    if rel_col is not None:
                        rel = rel_index.get_indexer(chunk[rel_col])
                    else:
                        rel = np.zeros(len(chunk), dtype=np.int64)
                    rel_values = chunk[rel_col] if rel_col is not None else pd.Series(
                        rel_names_cfg[0], index=chunk.index)
                    lt, rt = (None, None) if single_type else rel_types(rel_values)
                    lhs_id = np.full(len(chunk), -1, np.int64)
                    rhs_id = np.full(len(chunk), -1, np.int64)
                    lhs_p = np.zeros(len(chunk), np.int64)
                    rhs_p = np.zeros(len(chunk), np.int64)
                    for etype in config.entities:
                        for col, ids, parts, types in ((lhs_col, lhs_id, lhs_p, lt),
                                                       (rhs_col, rhs_id, rhs_p, rt)):
                            m = (np.ones(len(chunk), bool) if single_type
                                 else (types == etype).to_numpy())
                            if single_type and etype != config.relations[0].lhs:
                                continue
                            if m.any():
                                pos = ent_index[etype].get_indexer(chunk[col][m])
                                ok = pos >= 0
                                sel = np.flatnonzero(m)
                                ids[sel[ok]] = ent_off[etype][pos[ok]]
                                parts[sel[ok]] = ent_part[etype][pos[ok]]
                    keep = (lhs_id >= 0) & (rhs_id >= 0) & (rel >= 0)
                    stats.dropped_edges += int((~keep).sum())
                    weight = (chunk[weight_col].to_numpy(dtype=np.float32)
                              if weight_col is not None else None)
                    idx = np.flatnonzero(keep)
                    nr = max(e.num_partitions for e in config.entities.values())
                    key = lhs_p[idx] * nr + rhs_p[idx]
                    order = np.argsort(key, kind="stable")
                    idx, key = idx[order], key[order]
                    bounds = np.flatnonzero(np.diff(key)) + 1
                    for seg in np.split(np.arange(len(idx)), bounds):
                        if len(seg) == 0:
                            continue
                        rows = idx[seg]
                        lp, rp = divmod(int(key[seg[0]]), nr)
                        writer.append(lp, rp, lhs_id[rows], rhs_id[rows], rel[rows],
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
        for stage, final in staged:
            # Old bucket files of a previous import would mix with the new ones: remove them.
            if final != ent_dir:
                for old in final.glob("edges_*_*.h5"):
                    old.unlink()
            for f in stage.iterdir():
                os.replace(f, final / f.name)
    finally:
        for stage, _ in staged:
            shutil.rmtree(stage, ignore_errors=True)
    stats.seconds = time.perf_counter() - t0
    return stats
