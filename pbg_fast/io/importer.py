"""Import TSV edge lists into PBG 1.0's partitioned on-disk layout, streaming.

One parse of each input, in chunks of about `block_bytes` cut at line ends, each read by Arrow's
multi-threaded C++ CSV reader: each chunk's names are dictionary-encoded in C++ into local
integer codes, which are kept (or spilled to disk past a memory budget), and merged into one
name table per entity type. Memory is bounded by the chunk size (or the longest line), the name
tables (compact Arrow strings) and the integer codes. Then partitions are assigned at random
(seeded), and a second pass over the integers maps them to (partition, offset) and appends each
edge to its bucket file. All outputs are staged in hidden temporary files and renamed into place
only when everything succeeded: a malformed line leaves nothing half-written.

Malformed lines (wrong column count, empty field, bad weight, undecodable bytes; see "what a
line is" below) fail with file:line, or with skip_bad_lines=True are skipped and counted.

Scratch space lives beside the outputs, never in the system temp directory:
<entity_path>/.pbg_fast_spill.<pid>.<random> (spilled integer codes) and
<output dir>/.pbg_fast_import.<pid>.<random> (staged outputs). They are removed when the import
ends, however it ends; a killed import's are removed by the next import into the same
directories (those whose pid is no longer alive). Argument and input file errors are raised
before anything is read or written.
"""

import contextlib
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

from .. import faults
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


# ---- what a line is ------------------------------------------------------------------------------
#
# Lines end at "\n"; one "\r" before it (or before the end of the file) is part of the line end.
# A line that is empty apart from its end is blank and skipped (it still counts in line numbers);
# a UTF-8 byte order mark at the start of the file is dropped. Any other line must have at least
# max(column)+1 fields, each used field non-empty and valid UTF-8 (unused fields are not looked
# at), no other "\r", and a weight that Arrow parses (spaces and tabs around it allowed) to a
# finite float32 >= 0. The line-by-line path (_parse_slow) is the reference for these rules; the
# Arrow path (_parse_fast) takes a chunk only when it can vouch that the reference would produce
# the same rows, and otherwise hands the chunk over. So a bad line gets the same verdict and
# message wherever it falls, and valid input never differs between the two.

_BOM = b"\xef\xbb\xbf"


def _line_fields(line: bytes, cols: _Columns, delim: bytes) -> Tuple[Optional[str], List[str]]:
    """(None, the used fields decoded) for a good line (given without its line end), or (why it
    is malformed, []). Weights are checked later, a chunk at a time (_parse_weights)."""
    if b"\r" in line:
        return "stray carriage return (\\r) inside the line; end lines with \\n or \\r\\n", []
    fields = line.split(delim)
    if len(fields) < cols.min_fields:
        return f"expected at least {cols.min_fields} columns, got {len(fields)}", []
    out = []
    for c in cols.used:
        raw = fields[c]
        if not raw:
            return f"empty field in column {c}", []
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            if c == cols.weight:
                return f"column {c}: weight {raw!r} is not a number", []
            at = sum(len(f) + len(delim) for f in fields[:c]) + e.start
            return f"undecodable bytes in column {c} ({e.reason} at byte {at} of the line)", []
    return None, out


def _parse_weights(texts: List[str], col: int) -> Tuple[np.ndarray, List[Tuple[int, str]]]:
    """float32 weights parsed as Arrow's CSV reader parses them (it trims spaces and tabs), and
    (index, reason) of each that is not a finite number >= 0."""
    trimmed = pa.array([t.strip(" \t") for t in texts], pa.string())
    parsed = np.ones(len(texts), bool)
    try:
        w = trimmed.cast(pa.float32()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:  # some are not numbers: find them one by one
        w = np.zeros(len(texts), np.float32)
        for i, t in enumerate(trimmed):
            try:
                w[i] = t.cast(pa.float32()).as_py()
            except pa.ArrowInvalid:
                parsed[i] = False
    with np.errstate(invalid="ignore"):
        bad = ~parsed | ~np.isfinite(w) | (w < 0)
    return w, [(int(i), f"column {col}: weight {texts[i]!r} "
                + ("must be a finite number >= 0" if parsed[i] else "is not a number"))
               for i in np.flatnonzero(bad)]


def _parse_slow(path: str, chunk: bytes, first_line: int, cols: _Columns, delimiter: str,
                skip_bad: bool, stats: ImportStats) -> Tuple[Dict[int, pa.Array], List[int]]:
    """Line by line in Python: the reference rules, the exact diagnostics and skip_bad_lines.
    Returns the chunk's {column: Arrow array} (the weight as float32) and each row's line."""
    delim = delimiter.encode()
    rows: List[List[str]] = []
    line_nos: List[int] = []
    bad: List[Tuple[int, str]] = []  # (line, reason)
    for i, line in enumerate(chunk.split(b"\n")):
        if first_line == 1 and i == 0 and line.startswith(_BOM):
            line = line[len(_BOM):]
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            continue
        err, fields = _line_fields(line, cols, delim)
        if err is not None:
            bad.append((first_line + i, err))
            if not skip_bad:
                break  # the lines before it may still hold an earlier bad weight
            continue
        rows.append(fields)
        line_nos.append(first_line + i)
    out = {c: pa.array([r[k] for r in rows], pa.string()) for k, c in enumerate(cols.used)}
    if cols.weight is not None:
        w, w_bad = _parse_weights(out[cols.weight].to_pylist(), cols.weight)
        bad += [(line_nos[i], reason) for i, reason in w_bad]
        out[cols.weight] = pa.array(w, pa.float32())
        if w_bad and skip_bad:
            keep = np.ones(len(rows), bool)
            keep[[i for i, _ in w_bad]] = False
            out = {c: a.filter(pa.array(keep)) for c, a in out.items()}
            line_nos = [n for n, k in zip(line_nos, keep) if k]
    if bad and not skip_bad:
        line_no, reason = min(bad)
        raise DataError(f"{path}:{line_no}: {reason}")
    stats.skipped_bad_lines += len(bad)
    return out, line_nos


def _parse_fast(chunk: bytes, at_file_start: bool, cols: _Columns,
                delimiter: str) -> Optional[Dict[int, pa.Array]]:
    """The chunk's {column: Arrow array} from Arrow's C++ CSV reader, or None where the chunk
    may hold a line that _parse_slow would not read the same (then it decides)."""
    n_cr = chunk.count(b"\r")
    if n_cr and n_cr != chunk.count(b"\r\n") + chunk.endswith(b"\r"):
        return None  # a stray \r: Arrow would end the row there
    if not at_file_start and chunk.startswith(_BOM):
        return None  # Arrow drops a BOM at the start of its input; only the file's is one
    names = {c: f"f{c}" for c in cols.used}
    types = {names[c]: pa.string() for c in cols.used}
    if cols.weight is not None:
        types[names[cols.weight]] = pa.float32()
    try:
        table = pa_csv.read_csv(
            pa.BufferReader(chunk),
            # One Arrow block per chunk: chunks end at line ends, so no row straddles blocks.
            read_options=pa_csv.ReadOptions(autogenerate_column_names=True,
                                            block_size=len(chunk) + 1, use_threads=True),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, quote_char=False,
                                              double_quote=False, escape_char=False,
                                              newlines_in_values=False, ignore_empty_lines=True),
            convert_options=pa_csv.ConvertOptions(
                include_columns=list(types), column_types=types, strings_can_be_null=False,
                quoted_strings_can_be_null=False, null_values=[]))
    except (pa.ArrowException, ValueError, OverflowError):
        return None  # a bad line, uneven column counts, only blank lines, ...
    out = {}
    for c in cols.used:
        a = table.column(names[c]).combine_chunks()
        if a.null_count:
            return None
        if c == cols.weight:
            w = a.to_numpy(zero_copy_only=False)
            with np.errstate(invalid="ignore"):
                if not (np.isfinite(w).all() and (w >= 0).all()):
                    return None
        elif len(a) and pc.min(pc.binary_length(a)).as_py() == 0:
            return None  # an empty field
        out[c] = a
    return out


def _chunks(path: str, f, block_bytes: int):
    """(chunk, its first line number): about block_bytes of the file at a time, cut after the
    last line end in it; a line longer than that grows its chunk until it ends."""
    rest, line_no = b"", 1
    while True:
        try:
            data = f.read(max(block_bytes, len(rest)))  # doubling: linear in a huge line
        except OSError as e:
            raise DataError(f"{path}: cannot read the input file ({e.strerror or e})") from None
        if not data:
            if rest:
                yield rest, line_no
            return
        buf = rest + data if rest else data
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            rest = buf
            continue
        chunk, rest = buf[:cut], buf[cut:]
        yield chunk, line_no
        line_no += chunk.count(b"\n")


_SLOW_BYTES = 64 << 10  # a chunk the Arrow path rejects is halved down to this, then read slowly


def _parse(path: str, chunk: bytes, first_line: int, cols: _Columns, delimiter: str,
           skip_bad: bool, stats: ImportStats):
    """Yields ({column: Arrow array}, line_of) for a chunk: by Arrow if it can vouch for it,
    else halved at a line end (so one bad line costs a few small slow reads, not 16 MB of them),
    line by line once small. line_of(row) is a row's line number, for errors found later."""
    out = _parse_fast(chunk, first_line == 1, cols, delimiter)
    if out is not None:
        def line_of(row, chunk=chunk, first_line=first_line):  # rare: re-read to count
            return _parse_slow(path, chunk, first_line, cols, delimiter, False,
                               ImportStats())[1][row]
        yield out, line_of
        return
    mid = chunk.rfind(b"\n", 0, len(chunk) // 2) + 1 or chunk.find(b"\n", len(chunk) // 2) + 1
    if len(chunk) <= _SLOW_BYTES or not 0 < mid < len(chunk):
        out, line_nos = _parse_slow(path, chunk, first_line, cols, delimiter, skip_bad, stats)
        yield out, line_nos.__getitem__
        return
    yield from _parse(path, chunk[:mid], first_line, cols, delimiter, skip_bad, stats)
    yield from _parse(path, chunk[mid:], first_line + chunk.count(b"\n", 0, mid), cols,
                      delimiter, skip_bad, stats)


def _iter_batches(path: str, cols: _Columns, delimiter: str, block_bytes: int, skip_bad: bool,
                  stats: ImportStats):
    """({column: Arrow array}, line_of) batches of the used columns (strings; the weight as
    float32), in file order, of about block_bytes of input each."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read the input file ({e.strerror or e})") from None
    with f:
        for chunk, first_line in _chunks(path, f, block_bytes):
            for out, line_of in _parse(path, chunk, first_line, cols, delimiter, skip_bad, stats):
                if len(out[cols.lhs]):
                    yield out, line_of


# ---- arguments, outputs, and what killed imports leave behind -----------------------------------

def _check_args(config: ConfigSchema, inputs: List[str], cols: Dict[str, Optional[int]],
                delimiter, min_counts: Dict[str, int], block_bytes) -> None:
    """Every argument and input file, before anything is read or written."""
    if len(inputs) != len(config.edge_paths):
        raise DataError(f"edge_paths: the config names {len(config.edge_paths)} edge paths but "
                        f"{len(inputs)} input files were given; they pair up one to one")
    if config.dynamic_relations and cols["--rel-col"] is None:
        raise DataError("--rel-col: dynamic_relations needs a relation column")
    if not (isinstance(delimiter, str) and len(delimiter) == 1 and delimiter.isascii()
            and delimiter not in "\r\n"):
        raise DataError(f"--delimiter: must be one ASCII character other than a line break "
                        f"(e.g. a tab, ',' or ' '), got {delimiter!r}")
    seen: Dict[int, str] = {}
    for opt, c in cols.items():
        if c is None and opt in ("--rel-col", "--weight-col"):
            continue
        if not isinstance(c, int) or isinstance(c, bool) or c < 0:
            raise DataError(f"{opt}: must be a column index (0 for the first column), got {c!r}")
        if c in seen:
            raise DataError(f"{opt}: column {c} is already the {seen[c]}; each of lhs, rhs, "
                            f"relation and weight needs its own column")
        seen[c] = opt
    for opt, n in min_counts.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise DataError(f"{opt}: must be an integer >= 1 (1 keeps everything), got {n!r}")
    if not isinstance(block_bytes, int) or block_bytes < 1:
        raise DataError(f"block_bytes: must be a positive number of bytes, got {block_bytes!r}")
    for path in inputs:
        if os.path.isdir(path):
            raise DataError(f"{path}: is a directory; name the TSV file(s) in it instead")
        if not os.path.exists(path):
            raise DataError(f"{path}: no such input file")
        if not os.path.isfile(path):
            raise DataError(f"{path}: not a regular file; import from a file on disk")
        try:
            open(path, "rb").close()
        except OSError as e:
            raise DataError(f"{path}: cannot read the input file ({e.strerror or e})") from None
    for key, d in [("entity_path", config.entity_path)] + [
            (f"edge_paths[{i}]", p) for i, p in enumerate(config.edge_paths)]:
        for parent in [Path(d)] + list(Path(d).parents):
            if parent.exists():
                if not parent.is_dir():
                    raise DataError(f"{key}: {parent} exists and is not a directory")
                break


# Staging and spill directories of an import are named .pbg_fast_import.<pid>.<random> (in each
# output directory) and .pbg_fast_spill.<pid>.<random> (in entity_path): a kill -9 skips the
# cleanup in `finally`, so each import first removes those whose process is gone.
_STAGE_PREFIX, _SPILL_PREFIX = ".pbg_fast_import.", ".pbg_fast_spill."


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove_stale(dirs: List[Path]) -> None:
    for d in dirs:
        try:
            entries = list(os.scandir(d))
        except OSError:  # not there yet
            continue
        for e in entries:
            if not e.name.startswith((_STAGE_PREFIX, _SPILL_PREFIX)):
                continue
            pid = e.name.split(".")[2]  # "" pbg_fast_import <pid> <random>; older: no pid
            if pid.isdigit() and _alive(int(pid)):
                continue
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(e.path)


def _make_dirs(key: str, d: Path) -> List[Path]:
    """mkdir -p; returns the directories it created, deepest last."""
    created = [p for p in reversed([d] + list(d.parents)) if not p.exists()]
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{key}: cannot create {d} ({e.strerror or e})") from None
    return created


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
        faults.point("import.spilled")
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

    One parse (Arrow's threaded C++ reader, in chunks of about `block_bytes`): each chunk's
    names are dictionary-encoded in C++ into local integer codes, kept (or spilled) with the
    chunk, and merged into one name table per entity type (see _NameTable). Then partitions are
    assigned, and a second pass over the integers only maps them to (partition, offset) and
    appends each edge to its bucket.

    Raises DataError for a bad argument (naming its option), input file or line
    (``path:line: reason``), or output directory; with skip_bad_lines=True bad lines are
    counted in stats.skipped_bad_lines instead (an unknown static relation still fails).
    """
    t0 = time.perf_counter()
    _check_args(config, inputs,
                {"--lhs-col": lhs_col, "--rhs-col": rhs_col, "--rel-col": rel_col,
                 "--weight-col": weight_col}, delimiter,
                {"--relation-type-min-count": relation_type_min_count,
                 "--entity-min-count": entity_min_count}, block_bytes)
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

    ent_dir = Path(config.entity_path)
    outs = [("entity_path", ent_dir)] + [(f"edge_paths[{i}]", Path(p))
                                         for i, p in enumerate(config.edge_paths)]
    _remove_stale([d for _, d in outs])
    created: List[Path] = []  # output directories this import made (removed again on failure)
    staged: List[Tuple[Path, Path]] = []  # (staging dir, final dir)
    spill_dir = None
    ok = False
    try:
        for key, d in outs:
            created += _make_dirs(key, d)
        spill_dir = Path(tempfile.mkdtemp(prefix=f"{_SPILL_PREFIX}{os.getpid()}.", dir=ent_dir))
        spill = _Spill(spill_dir)
        # ---- pass 1: parse once; local codes per batch, name tables merged in C++ ----
        batches: List[List[Tuple[object, Dict[str, int]]]] = []  # per input: (spill handle, slots)
        for path in inputs:
            per_input = []
            for batch, line_of in _iter_batches(path, cols, delimiter, block_bytes,
                                                skip_bad_lines, stats):
                n = len(batch[lhs_col])
                stats.lines += n
                if rel_col is not None:
                    r_codes, r_uniques, _ = _encode(batch[rel_col])
                    names = r_uniques.to_pylist()
                    if not dynamic:
                        # Dictionary order is first-seen order: bad[0] is the first bad row's.
                        bad = [u for u in names if u not in rel_ids]
                        if bad:
                            pos = int(np.argmax(r_codes == names.index(bad[0])))
                            raise DataError(
                                f"{path}:{line_of(pos)}: relation {bad[0]!r} (column {rel_col}) "
                                f"is not among the config's relations {rel_names_cfg}; add it "
                                f"to `relations` or set dynamic_relations")
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
            stage = Path(tempfile.mkdtemp(prefix=f"{_STAGE_PREFIX}{os.getpid()}.", dir=out))
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
                        faults.point("import.bucket")
                    stats.edges += len(idx)
            finally:
                writer.close()

        # ---- everything parsed: move into place ----
        ent_stage = Path(tempfile.mkdtemp(prefix=f"{_STAGE_PREFIX}{os.getpid()}.", dir=ent_dir))
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
        faults.point("import.marked")
        for stage, final in staged:
            # Old bucket files of a previous import would mix with the new ones: remove them.
            if final != ent_dir:
                for old in final.glob("edges_*_*.h5"):
                    old.unlink()
            for f in stage.iterdir():
                os.replace(f, final / f.name)
                faults.point("import.moving")
            fsync_dir(final)
        faults.point("import.moved")
        for final in finals:
            (final / IMPORT_MARKER).unlink()
            fsync_dir(final)
        faults.point("import.done")  # complete; only staging and spill are left to remove
        ok = True
    except OSError as e:  # disk full, permissions, ... while writing the outputs
        raise DataError(f"{e.filename or ent_dir}: cannot write the import "
                        f"({e.strerror or e})") from None
    finally:
        for stage, _ in staged:
            shutil.rmtree(stage, ignore_errors=True)
        if spill_dir is not None:
            shutil.rmtree(spill_dir, ignore_errors=True)
        if not ok:  # leave no empty output directories behind either
            for d in reversed(created):
                with contextlib.suppress(OSError):
                    d.rmdir()
    stats.seconds = time.perf_counter() - t0
    return stats
