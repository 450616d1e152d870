"""PBG 1.0's on-disk layout for entities and edges, and crash-safe file writing.

entity_path/  entity_count_<type>_<part>.txt, entity_names_<type>_<part>.json,
              dynamic_rel_count.txt (and dynamic_rel_names.json)
edge_path/    edges_<lhs_part>_<rhs_part>.h5: int64 datasets lhs, rhs, rel (+ float32 weight),
              attribute format_version = 1
"""

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import h5py
import numpy as np

FORMAT_VERSION_ATTR = "format_version"
FORMAT_VERSION = 1


class DataError(RuntimeError):
    """Input data is missing or malformed; the message names the file."""


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yields a temporary path beside `path`; on success it is fsynced and renamed over `path`,
    on failure removed. A reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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


def load_entity_count(entity_path, entity: str, part: int) -> int:
    path = entity_count_file(entity_path, entity, part)
    try:
        return int(path.read_text().strip())
    except FileNotFoundError:
        raise DataError(f"{path}: missing entity count file (was the data imported?)") from None
    except ValueError:
        raise DataError(f"{path}: not an integer count") from None


def load_entity_names(entity_path, entity: str, part: int) -> List[str]:
    path = entity_names_file(entity_path, entity, part)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing entity names file") from None


def save_entity_partition(entity_path, entity: str, part: int, names: List[str]) -> None:
    write_text_atomic(entity_count_file(entity_path, entity, part), f"{len(names)}\n")
    write_text_atomic(entity_names_file(entity_path, entity, part), json.dumps(names, indent=4))


def load_dynamic_rel_count(entity_path) -> int:
    path = Path(entity_path) / "dynamic_rel_count.txt"
    try:
        return int(path.read_text().strip())
    except FileNotFoundError:
        raise DataError(f"{path}: dynamic_relations is on but this file is missing") from None


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
            n = hf["rel"].shape[0]
            begin, end = n * chunk // num_chunks, n * (chunk + 1) // num_chunks
            # astype(copy=False): no second copy of arrays that are already int64 / float32.
            out = {k: hf[k][begin:end].astype(np.int64, copy=False) for k in ("lhs", "rhs", "rel")}
            out["weight"] = (hf["weight"][begin:end].astype(np.float32, copy=False)
                             if "weight" in hf else None)
            return out
    except OSError as e:
        raise DataError(f"{path}: cannot read edge file: {e}") from None
