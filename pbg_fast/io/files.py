"""PBG 1.0's on-disk layout for entities and edges, and crash-safe file writing.

entity_path/  entity_count_<type>_<part>.txt, entity_names_<type>_<part>.json,
              dynamic_rel_count.txt (and dynamic_rel_names.json)
edge_path/    edges_<lhs_part>_<rhs_part>.h5: int64 datasets lhs, rhs, rel (+ float32 weight),
              attribute format_version = 1
"""

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import h5py
import numpy as np

FORMAT_VERSION_ATTR = "format_version"
FORMAT_VERSION = 1


from ..errors import DataError  # noqa: F401  (re-exported: pbg_fast.io.files.DataError)


@contextlib.contextmanager
def atomic_path(path: Path, durable: bool = True):
    """Yields a temporary path beside `path`; on success it is fsynced and renamed over `path`,
    on failure removed. A reader sees the old file or the new one, never half of one.
    durable=False skips both fsyncs: the file is renamed in place but may not survive a crash
    (for scratch copies that a durable write replaces, or `fsync_file` makes durable, before
    anything names them as committed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; honour the umask
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (no race with threads
    creating files), else by setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


TMP_GLOB = ".*.tmp"  # what atomic_path leaves behind when killed before its rename


def remove_stale_temporaries(directory: Path) -> int:
    """Removes atomic_path temporaries a killed process left in `directory`; returns how many.
    Call only while holding the directory's lock (a live writer's temporaries look the same)."""
    n = 0
    for f in Path(directory).glob(TMP_GLOB):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
            n += 1
    return n


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Persist a directory's entries (renames, deletions) where the OS supports it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


IMPORT_MARKER = ".pbg_fast_import_in_progress"


def check_no_partial_import(*dirs) -> None:
    """Refuse data that an interrupted import may have left half old, half new."""
    for d in dirs:
        if (Path(d) / IMPORT_MARKER).exists():
            raise DataError(f"{d}: an import into this directory did not finish "
                            f"({IMPORT_MARKER} is present); run the import again")


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def entity_count_file(entity_path, entity: str, part: int) -> Path:
    return Path(entity_path) / f"entity_count_{entity}_{part}.txt"


def entity_names_file(entity_path, entity: str, part: int) -> Path:
    return Path(entity_path) / f"entity_names_{entity}_{part}.json"


def edges_file(edge_path, lhs_part: int, rhs_part: int) -> Path:
    return Path(edge_path) / f"edges_{lhs_part}_{rhs_part}.h5"


def _read_count(path: Path, missing: str) -> int:
    """A non-negative integer alone in a text file (entity counts, dynamic_rel_count.txt)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        n = int(text.strip())
    except ValueError:
        raise DataError(f"{path}: expected a non-negative integer, got {text.strip()[:40]!r}; "
                        f"re-import the data") from None
    if n < 0:
        raise DataError(f"{path}: expected a non-negative integer, got {n}; re-import the data")
    return n


def load_entity_count(entity_path, entity: str, part: int) -> int:
    return _read_count(entity_count_file(entity_path, entity, part),
                       "missing entity count file (was the data imported?)")


def load_entity_names(entity_path, entity: str, part: int) -> List[str]:
    path = entity_names_file(entity_path, entity, part)
    try:
        names = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing entity names file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read entity names: {e}") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: expected a JSON list of names")
    return names


def save_entity_partition(entity_path, entity: str, part: int, names: List[str]) -> None:
    write_text_atomic(entity_count_file(entity_path, entity, part), f"{len(names)}\n")
    write_text_atomic(entity_names_file(entity_path, entity, part), json.dumps(names, indent=4))


def load_dynamic_rel_count(entity_path) -> int:
    return _read_count(Path(entity_path) / "dynamic_rel_count.txt",
                       "dynamic_relations is on but this file is missing (import with --rel-col)")


def save_edges(edge_path, lhs_part: int, rhs_part: int, lhs: np.ndarray, rhs: np.ndarray,
               rel: np.ndarray, weight: Optional[np.ndarray] = None) -> None:
    with atomic_path(edges_file(edge_path, lhs_part, rhs_part)) as tmp:
        with h5py.File(tmp, "w") as hf:
            hf.attrs[FORMAT_VERSION_ATTR] = FORMAT_VERSION
            hf.create_dataset("lhs", data=np.asarray(lhs, dtype=np.int64))
            hf.create_dataset("rhs", data=np.asarray(rhs, dtype=np.int64))
            hf.create_dataset("rel", data=np.asarray(rel, dtype=np.int64))
            if weight is not None:
                hf.create_dataset("weight", data=np.asarray(weight, dtype=np.float32))


def load_edges(edge_path, lhs_part: int, rhs_part: int, chunk: int = 0,
               num_chunks: int = 1) -> Dict[str, np.ndarray]:
    """Edges of a bucket (or of its chunk-th of num_chunks equal parts); empty if no file."""
    path = edges_file(edge_path, lhs_part, rhs_part)
    if not path.exists():
        empty = np.zeros(0, dtype=np.int64)
        return dict(lhs=empty, rhs=empty, rel=empty, weight=None)
    try:
        with h5py.File(path, "r") as hf:
            if hf.attrs.get(FORMAT_VERSION_ATTR, None) != FORMAT_VERSION:
                raise DataError(f"{path}: unsupported edge file format version "
                                f"{hf.attrs.get(FORMAT_VERSION_ATTR)!r} (expected 1)")
            if "lhsd" in hf or "rhsd" in hf:
                raise DataError(f"{path}: featurized edges are not supported by pbg_fast yet")
            names = [k for k in ("lhs", "rhs", "rel", "weight") if k in hf or k != "weight"]
            lengths = {k: hf[k].shape[0] for k in names}
            if len(set(lengths.values())) > 1:
                raise DataError(f"{path}: datasets of different lengths {lengths}; re-import")
            n = lengths["rel"]
            begin, end = n * chunk // num_chunks, n * (chunk + 1) // num_chunks
            # astype(copy=False): no second copy of arrays that are already int64 / float32.
            out = {k: hf[k][begin:end].astype(np.int64, copy=False) for k in ("lhs", "rhs", "rel")}
            out["weight"] = (hf["weight"][begin:end].astype(np.float32, copy=False)
                             if "weight" in hf else None)
    except OSError as e:
        raise DataError(f"{path}: cannot read edge file: {e}") from None
    except KeyError as e:
        raise DataError(f"{path}: not an edge file (no dataset {e}); re-import") from None
    w = out["weight"]
    if w is not None and len(w) and not (np.isfinite(w).all() and (w >= 0).all()):
        bad = int(np.flatnonzero(~(np.isfinite(w) & (w >= 0)))[0])
        raise DataError(f"{path}: edge {begin + bad} has weight {float(w[bad])}; weights must be "
                        f"finite and >= 0 (re-import, or fix the weight column)")
    return out


# ---- named paths must exist and hold what the config implies ----------------------------------

_EDGE_FILE = re.compile(r"edges_(\d+)_(\d+)\.h5\Z")


def check_entity_path(config) -> None:
    """entity_path holds the count file of every partition of every entity type, and no more
    partitions than the config has (data imported with another num_partitions)."""
    root = Path(config.entity_path)
    if not root.is_dir():
        raise DataError(f"entity_path: {root} does not exist or is not a directory; import the "
                        f"data first (pbg-fast import-from-tsv)")
    for entity, ec in config.entities.items():
        for part in range(ec.num_partitions):
            f = entity_count_file(root, entity, part)
            if not f.is_file():
                raise DataError(f"{f}: missing; entity_path holds no partition {part} of "
                                f"{entity!r} (entities.{entity}.num_partitions is "
                                f"{ec.num_partitions}); was the data imported with this config?")
        extra = entity_count_file(root, entity, ec.num_partitions)
        if extra.exists():
            raise DataError(f"{extra}: the data has more partitions of {entity!r} than "
                            f"entities.{entity}.num_partitions = {ec.num_partitions}; set it "
                            f"to the value used at import, or re-import")


def check_edge_path(config, path, key: str) -> None:
    """`path` (the config key or option `key` names it) is a directory with edge files, all
    inside the config's lhs x rhs partition grid."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{key}: {root} does not exist or is not a directory")
    nl, nr = config.side_partitions("lhs"), config.side_partitions("rhs")
    found = 0
    for f in root.iterdir():
        m = _EDGE_FILE.match(f.name)
        if not m:
            continue
        found += 1
        lp, rp = int(m.group(1)), int(m.group(2))
        if lp >= nl or rp >= nr:
            raise DataError(f"{f}: bucket ({lp}, {rp}) is outside the config's {nl} x {nr} "
                            f"partitions; set num_partitions to the value used at import, or "
                            f"re-import")
    if not found:
        raise DataError(f"{key}: {root} holds no edge files (edges_<lhs>_<rhs>.h5); import "
                        f"edges into it first")


def count_edges(edge_path, lhs_part: int, rhs_part: int) -> int:
    """Number of edges in a bucket file (0 if it has none), without reading them."""
    path = edges_file(edge_path, lhs_part, rhs_part)
    if not path.exists():
        return 0
    try:
        with h5py.File(path, "r") as hf:
            return int(hf["rel"].shape[0])
    except OSError as e:
        raise DataError(f"{path}: cannot read edge file: {e}") from None
    except KeyError:
        raise DataError(f"{path}: not an edge file (no dataset 'rel'); re-import") from None
