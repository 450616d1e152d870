"""Import TSV edge lists into PBG 1.0's partitioned on-disk layout, streaming.

One parse of each input, in blocks read by Arrow's multi-threaded C++ CSV reader: each block's
names are dictionary-encoded in C++ into local integer codes, which are kept (or spilled to disk
past a memory budget), and merged into one name table per entity type. Memory is bounded by the
block size, the name tables (compact Arrow strings) and the integer codes. Then partitions are
assigned at random (seeded), and a second pass over the integers maps them to (partition,
offset) and appends each edge to its bucket file. All outputs are staged in hidden temporary
files and renamed into place only when everything succeeded: a malformed line leaves nothing
half-written.

Malformed lines (wrong column count, empty field, bad weight, undecodable bytes) fail with
file:line, or with skip_bad_lines=True are skipped and counted.
"""

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

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


_SLOW_BATCH_ROWS = 1 << 20


def _iter_batches_slow(path: str, cols: _Columns, delimiter: str, skip_bad: bool,
                       stats: ImportStats):
    """Line by line in Python: exact diagnostics, and the skip-bad-lines mode. Yields the same
    {column: Arrow array} batches as the fast path."""
    rows, line_no = [], 0

    def batch():
        out = {c: pa.array([r[i] for r in rows], pa.string()) for i, c in enumerate(cols.used)}
        if cols.weight is not None:
            out[cols.weight] = out[cols.weight].cast(pa.float32())
        return out

    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            err = _line_error(path, line_no, line, cols, delimiter)
            if err is not None:
                if skip_bad:
                    stats.skipped_bad_lines += 1
                    continue
                raise DataError(f"{path}:{line_no}: {err}")
            fields = line.decode("utf-8").rstrip("\r\n").split(delimiter)
            rows.append([fields[c] for c in cols.used])
            if len(rows) >= _SLOW_BATCH_ROWS:
                yield batch()
                rows = []
    if rows:
        yield batch()


def _iter_batches(path: str, cols: _Columns, delimiter: str, block_bytes: int, skip_bad: bool,
                  stats: ImportStats):
    """{column: Arrow array} batches of the used columns (strings; the weight as float32). The
    fast path is Arrow's multi-threaded C++ CSV reader; on any parse problem the slow path
    re-reads the file to name the offending line."""
    if skip_bad:
        yield from _iter_batches_slow(path, cols, delimiter, True, stats)
        return
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such input file")
    if os.path.getsize(path) == 0:
        return
    names = {c: f"f{c}" for c in cols.used}
    types = {names[c]: pa.string() for c in cols.used}
    if cols.weight is not None:
        types[names[cols.weight]] = pa.float32()
    yielded = False
    try:
        reader = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(autogenerate_column_names=True, block_size=block_bytes,
                                            use_threads=True),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, quote_char=False,
                                              double_quote=False, escape_char=False,
                                              newlines_in_values=False, ignore_empty_lines=True),
            convert_options=pa_csv.ConvertOptions(
                include_columns=[names[c] for c in cols.used], column_types=types,
                strings_can_be_null=False, quoted_strings_can_be_null=False, null_values=[]),
        )
        for rb in reader:
            out = {c: rb.column(names[c]) for c in cols.used}
            for c in cols.used:
                if c != cols.weight and len(out[c]) and pc.min(pc.binary_length(out[c])).as_py() == 0:
                    raise ValueError(f"empty field in column {c}")
            yielded = True
            yield out
    except (ValueError, UnicodeDecodeError, pa.ArrowException) as e:
        # Find and name the first bad line (re-reading: correctness over speed here).
        if yielded:
            for _ in _iter_batches_slow(path, cols, delimiter, False, stats):
                pass
            raise DataError(f"{path}: malformed input ({e})") from None
        # Nothing consumed yet (or a file Arrow cannot start on, e.g. only blank lines): the
        # slow path either names the bad line or yields the rows.
        yield from _iter_batches_slow(path, cols, delimiter, False, stats)


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


class _NameTable:
    """Names -> ids in first-seen order, hashed in C++ (Arrow), never as Python strings.

    Each batch registers its own dictionary (the distinct names of the batch, from
    `pc.dictionary_encode`) and keeps its local codes. Pending dictionaries are merged into the
    table by re-encoding [table, pending...]: the table comes first and is already distinct, so
    its ids never change, and each pending dictionary gets its local -> global map. Merging when
    the pending names outnumber the table keeps the total work linear in the input.
    """

    MERGE_AT = 1 << 22  # pending names that trigger a merge, at least (tests lower it)

    def __init__(self):
        self.names = pa.array([], pa.large_string())
        self.counts = np.zeros(0, np.int64)
        self.maps: List[Optional[np.ndarray]] = []
        self._pending: List[Tuple[int, pa.Array, np.ndarray]] = []
        self._pending_len = 0

    def add(self, uniques: pa.Array, local_counts: np.ndarray) -> int:
        """Registers one batch's dictionary; returns its slot (for `maps`)."""
        slot = len(self.maps)
        self.maps.append(None)
        self._pending.append((slot, uniques.cast(pa.large_string()), local_counts))
        self._pending_len += len(uniques)
        if self._pending_len > max(len(self.names), self.MERGE_AT):
            self.merge()
        return slot

    def merge(self) -> None:
        if not self._pending:
            return
        enc = pc.dictionary_encode(pa.concat_arrays([self.names] + [u for _, u, _ in self._pending]))
        idx = enc.indices.to_numpy()
        off = len(self.names)
        self.names = enc.dictionary
        counts = np.zeros(len(self.names), np.int64)
        counts[: len(self.counts)] = self.counts
        for slot, u, cnt in self._pending:
            m = idx[off: off + len(u)].astype(np.int64)
            off += len(u)
            self.maps[slot] = m
            counts[m] += cnt  # a batch's names are distinct, so are their ids
        self.counts = counts
        self._pending, self._pending_len = [], 0


def _encode(values: pa.Array) -> Tuple[np.ndarray, pa.Array, np.ndarray]:
    """(local int32 codes, distinct values in first-seen order, their counts) of one batch."""
    enc = pc.dictionary_encode(values)
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return codes, enc.dictionary, np.bincount(codes, minlength=len(enc.dictionary))


class _Spill:
    """Per-batch integer arrays: kept in memory up to a budget, then in .npz files."""

    BUDGET = 512 << 20  # bytes held in memory before spilling to disk (tests lower it)

    def __init__(self, directory: Path):
        self.dir, self.budget, self.used, self.files = directory, self.BUDGET, 0, 0

    def put(self, arrays: Dict[str, np.ndarray]):
        size = sum(a.nbytes for a in arrays.values())
        if self.used + size <= self.budget:
            self.used += size
            return arrays
        f = self.dir / f"{self.files}.npz"
        self.files += 1
        np.savez(f, **arrays)
        return f

    @staticmethod
    def get(handle) -> Dict[str, np.ndarray]:
        if isinstance(handle, dict):
            return handle
        with np.load(handle) as z:
            return {k: z[k] for k in z.files}


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
    block_bytes: int = 16 << 20,
    seed: int = 0,
) -> ImportStats:
    """Writes the entity files to config.entity_path and inputs[i]'s edges to
    config.edge_paths[i] (as torchbiggraph_import_from_tsv does).

    One parse (Arrow's threaded C++ reader, in blocks of `block_bytes`): each block's names are
    dictionary-encoded in C++ into local integer codes, kept (or spilled) with the block, and
    merged into one name table per entity type (see _NameTable). Then partitions are assigned,
    and a second pass over the integers only maps them to (partition, offset) and appends each
    edge to its bucket.
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
    ents = {e: _NameTable() for e in config.entities}
    # Relation names are few: a Python dict (static relations: the config's indices).
    rel_ids: Dict[str, int] = {} if dynamic else {n: i for i, n in enumerate(rel_names_cfg)}
    rel_counts = np.zeros(len(rel_ids), np.int64)
    side_types = [(r.lhs, r.rhs) for r in config.relations]
    single_type = len({t for pair in side_types for t in pair}) == 1
    rel_lhs_type = np.array([config.relations[0 if dynamic else i].lhs for i in range(len(rel_names_cfg))])
    rel_rhs_type = np.array([config.relations[0 if dynamic else i].rhs for i in range(len(rel_names_cfg))])

    staged: List[Tuple[Path, Path]] = []  # (staging dir, final dir)
    spill_dir = Path(tempfile.mkdtemp(prefix="pbg_fast_import_"))
    spill = _Spill(spill_dir)
    try:
        # ---- pass 1: parse once; local codes per batch, name tables merged in C++ ----
        batches: List[List[Tuple[object, Dict[str, int]]]] = []  # per input: (spill handle, slots)
        for path in inputs:
            per_input = []
            for batch in _iter_batches(path, cols, delimiter, block_bytes, skip_bad_lines, stats):
                n = len(batch[lhs_col])
                first_row = stats.lines
                stats.lines += n
                if rel_col is not None:
                    r_codes, r_uniques, _ = _encode(batch[rel_col])
                    names = r_uniques.to_pylist()
                    if not dynamic:
                        bad = [u for u in names if u not in rel_ids]
                        if bad:
                            pos = int(np.argmax(r_codes == names.index(bad[0])))
                            raise DataError(f"{path}: relation {bad[0]!r} (data row {first_row + pos + 1}) "
                                            f"is not among the config's relations {rel_names_cfg}")
                    to_global = np.array([rel_ids.setdefault(u, len(rel_ids)) for u in names], np.int64)
                    rel = to_global[r_codes]
                else:
                    rel = np.zeros(n, np.int64)
                counts = np.bincount(rel, minlength=len(rel_counts))  # grows with new relations
                counts[: len(rel_counts)] += rel_counts
                rel_counts = counts
                lhs_vals, rhs_vals = batch[lhs_col], batch[rhs_col]
                arrays = {"rel": rel}
                slots = {}
                if single_type:
                    etype = side_types[0][0]
                    codes, uniques, cnt = _encode(pa.concat_arrays([lhs_vals, rhs_vals]))
                    slots[etype] = ents[etype].add(uniques, cnt)
                    arrays["lhs"], arrays["rhs"] = codes[:n], codes[n:]
                else:
                    # Each entity type encodes the lhs / rhs values of the rows whose relation
                    # puts that type there; codes are local to the (type, batch) dictionary.
                    lhs_code = np.full(n, -1, np.int32)
                    rhs_code = np.full(n, -1, np.int32)
                    rel_cfg = np.zeros(n, np.int64) if dynamic else rel
                    lt, rt = rel_lhs_type[rel_cfg], rel_rhs_type[rel_cfg]
                    for etype in config.entities:
                        ml, mr = lt == etype, rt == etype
                        if not (ml.any() or mr.any()):
                            continue
                        codes, uniques, cnt = _encode(pa.concat_arrays(
                            [lhs_vals.filter(pa.array(ml)), rhs_vals.filter(pa.array(mr))]))
                        slots[etype] = ents[etype].add(uniques, cnt)
                        k = int(ml.sum())
                        lhs_code[ml], rhs_code[mr] = codes[:k], codes[k:]
                    arrays["lhs"], arrays["rhs"] = lhs_code, rhs_code
                if weight_col is not None:
                    arrays["weight"] = batch[weight_col].to_numpy(zero_copy_only=False).astype(
                        np.float32, copy=False)
                per_input.append((spill.put(arrays), slots))
            batches.append(per_input)
        for t in ents.values():
            t.merge()

        # ---- dictionaries: min counts, random partitions ----
        rng = np.random.default_rng(seed)
        n_rel = len(rel_ids)
        rel_list_prov = list(rel_ids)
        rel_keep = (rel_counts[:n_rel] >= relation_type_min_count) if dynamic else np.ones(n_rel, bool)
        rel_final = np.full(max(1, n_rel), -1, np.int64)
        kept_rels = [i for i in range(n_rel) if rel_keep[i]]
        if dynamic:
            kept_rels.sort(key=lambda i: rel_list_prov[i])
        for new, old in enumerate(kept_rels):
            rel_final[old] = new
        rel_list = [rel_list_prov[i] for i in kept_rels]
        part_of, off_of, parts_of = {}, {}, {}
        for etype, ec in config.entities.items():
            t = ents[etype]
            keep = rng.permutation(np.flatnonzero(t.counts >= entity_min_count))
            p = ec.num_partitions
            part = np.full(len(t.names), -1, np.int64)
            off = np.full(len(t.names), -1, np.int64)
            split = []
            for i in range(p):
                members = keep[i * len(keep) // p:(i + 1) * len(keep) // p]
                part[members] = i
                off[members] = np.arange(len(members))
                split.append(members)
            part_of[etype], off_of[etype], parts_of[etype] = part, off, split
            stats.entities[etype] = len(keep)

        # ---- pass 2: integers only, into staged bucket files ----
        nr = max(e.num_partitions for e in config.entities.values())
        for per_input, out_dir in zip(batches, config.edge_paths):
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=".pbg_fast_import.", dir=out))
            staged.append((stage, out))
            writer = _BucketWriter(stage, weight_col is not None)
            try:
                for handle, slots in per_input:
                    z = spill.get(handle)
                    lhs_code, rhs_code, rel = z["lhs"], z["rhs"], z["rel"]
                    weight = z["weight"] if weight_col is not None else None
                    if single_type:
                        etype = side_types[0][0]
                        to_global = ents[etype].maps[slots[etype]]
                        lg, rg = to_global[lhs_code], to_global[rhs_code]
                        lp, lo = part_of[etype][lg], off_of[etype][lg]
                        rp, ro = part_of[etype][rg], off_of[etype][rg]
                    else:
                        rel_cfg = np.zeros(len(rel), np.int64) if dynamic else rel
                        lp, lo, rp, ro = (np.full(len(rel), -1, np.int64) for _ in range(4))
                        for etype, slot in slots.items():
                            to_global = ents[etype].maps[slot]
                            for codes, pp, oo, types in ((lhs_code, lp, lo, rel_lhs_type),
                                                         (rhs_code, rp, ro, rel_rhs_type)):
                                m = types[rel_cfg] == etype
                                g = to_global[codes[m]]
                                pp[m] = part_of[etype][g]
                                oo[m] = off_of[etype][g]
                    new_rel = rel_final[rel]
                    keep = (lo >= 0) & (ro >= 0) & (new_rel >= 0)
                    stats.dropped_edges += int((~keep).sum())
                    idx = np.flatnonzero(keep)
                    key = lp[idx] * nr + rp[idx]
                    if nr > 1:
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
            for i, members in enumerate(split):
                names = ents[etype].names.take(pa.array(members)).to_pylist()
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
