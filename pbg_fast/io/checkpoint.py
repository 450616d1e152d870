"""Checkpoints in PBG 1.0's layout and HDF5 format, versioned and committed last.

checkpoint_path/
  checkpoint_version.txt          the committed version N (= iterations completed); written last
  config.json                     the config of the run
  embeddings_<type>_<part>.v<N>.h5   dataset "embeddings" [count, D] float32; attrs
                                  format_version=1; our row-Adagrad state as
                                  "pbg_fast/row_adagrad_sum" (PBG reads its own pickled
                                  "optimizer/state_dict" only if present, so it starts fresh)
  model.v<N>.h5                   group "model": relations/<i>/operator/<side>/<param> and
                                  entities/<type>/global_embedding, each with attr state_dict_key
                                  (PBG's private name); attrs config/json, iteration/*
  training_stats.json             one JSON line per bucket and per iteration
  epoch_<E>/                      snapshots kept every checkpoint_preservation_interval epochs

Commit protocol: every file of version N+1 is written under a temporary name, fsynced and
renamed; only then is checkpoint_version.txt replaced (atomically) by N+1, and version N's
files removed. A crash at any point leaves version N loadable. pbg_fast writes no pickle; PBG's
pickled optimizer state is read only through torch's weights-only loader.
"""

import contextlib
import fcntl
import io
import json
import logging
import os
import re
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Tuple, TypeVar

import h5py
import numpy as np
import torch

from .. import faults
from ..errors import CheckpointLocked
from ..memory import empty_table
from .files import (FORMAT_VERSION, FORMAT_VERSION_ATTR, DataError, atomic_path, current_umask,
                    fsync_dir, fsync_file, remove_stale_temporaries, write_text_atomic)

T = TypeVar("T")

logger = logging.getLogger("pbg_fast")

LOCK_NAME = ".pbg_fast.lock"
STATE_DICT_KEY_ATTR = "state_dict_key"
OUR_ROW_STATE = "pbg_fast/row_adagrad_sum"
OUR_PARAM_STATE_GROUP = "pbg_fast/adagrad_sum"

# PBG's parameter names per operator: (name, slicer over our packed [.., K] params, shape fn)
def _operator_layout(operator: str, dim: int, dynamic: bool):
    """[(pbg_param_name, start, end, per-relation shape)] for our packed [R, K] layout."""
    h, dd = dim // 2, dim * dim
    s = "s" if dynamic else ""
    layouts = {
        "none": [],
        "translation": [(f"translation{s}", 0, dim, (dim,))],
        "diagonal": [(f"diagonal{s}", 0, dim, (dim,))],
        "complex_diagonal": [("real", 0, h, (h,)), ("imag", h, dim, (h,))],
        "linear": [(f"linear_transformation{s}", 0, dd, (dim, dim))],
        "affine": [(f"linear_transformation{s}", 0, dd, (dim, dim)),
                   (f"translation{s}", dd, dd + dim, (dim,))],
    }
    return layouts[operator]


def operator_params_to_pbg(params: torch.Tensor, operator: str, dim: int, dynamic: bool):
    """Our packed [R, K] -> {pbg_param_name: tensor} ([..] for static, [R, ..] for dynamic)."""
    out = {}
    for name, a, b, shape in _operator_layout(operator, dim, dynamic):
        t = params[:, a:b].reshape(params.shape[0], *shape)
        out[name] = t if dynamic else t[0]
    return out


def operator_params_from_pbg(tensors: Dict[str, torch.Tensor], operator: str, dim: int,
                             dynamic: bool, num_rels: int) -> torch.Tensor:
    layout = _operator_layout(operator, dim, dynamic)
    k = layout[-1][2] if layout else 0
    out = torch.zeros(num_rels, k)
    for name, a, b, _ in layout:
        if name not in tensors:
            raise DataError(f"model checkpoint lacks operator parameter {name!r}")
        out[:, a:b] = tensors[name].reshape(num_rels, b - a)
    return out


class CheckpointManager:
    def __init__(self, path: str):
        self.path = Path(path)

    # ---- names -------------------------------------------------------------------------------
    def version_file(self) -> Path:
        return self.path / "checkpoint_version.txt"

    def embeddings_file(self, entity: str, part: int, version: int, root: Optional[Path] = None):
        return (root or self.path) / f"embeddings_{entity}_{part}.v{version}.h5"

    def model_file(self, version: int, root: Optional[Path] = None) -> Path:
        return (root or self.path) / f"model.v{version}.h5"

    def stats_file(self) -> Path:
        return self.path / "training_stats.json"

    # ---- version -----------------------------------------------------------------------------
    def load_version(self) -> int:
        try:
            text = self.version_file().read_text().strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{self.version_file()}: cannot read: {e}") from None
        if not re.fullmatch(r"\d{1,15}", text):
            raise DataError(f"{self.version_file()}: not a checkpoint version (a non-negative "
                            f"integer): {text[:40]!r}; restore it, or train into a new "
                            f"checkpoint_path")
        return int(text)

    def commit(self, version: int) -> None:
        """Make `version` current (its files must all be written), then drop older versions."""
        fsync_dir(self.path)  # the new version's renames are durable before it is named
        faults.point("checkpoint.before_commit")
        write_text_atomic(self.version_file(), f"{version}\n")
        faults.point("checkpoint.after_commit")
        self.remove_other_versions(version)

    def remove_other_versions(self, version: int) -> int:
        """Deletes every versioned file but `version`'s: older versions after a commit, and the
        pending version a killed or refused run left half-written. Call under the lock."""
        n = 0
        for f in self.path.glob("*.v*.h5"):
            m = re.search(r"\.v(\d+)\.h5$", f.name)
            if m and int(m.group(1)) != version:
                f.unlink(missing_ok=True)
                n += 1
        return n

    def clean_leftovers(self) -> None:
        """At the start of a run (under the exclusive lock): the temporaries and the pending
        version files that a killed run left behind."""
        if not self.path.is_dir():
            return
        remove_stale_temporaries(self.path)
        self.remove_other_versions(self.load_version())

    # ---- lock --------------------------------------------------------------------------------
    def lock_file(self) -> Path:
        return self.path / LOCK_NAME

    @contextlib.contextmanager
    def lock(self, what: str):
        """The trainer's exclusive OS lock on the checkpoint directory (flock: the kernel drops
        it when the holder dies, so a kill -9 leaves no stale lock). A second trainer is refused
        at once with the holder's pid, host and command. Readers (eval, export) take no lock:
        they read a committed version (see read_committed)."""
        path = self.lock_file()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        except OSError as e:
            raise DataError(f"checkpoint_path: cannot create or write {self.path} "
                            f"({e.strerror}); choose a directory you can write") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CheckpointLocked(
                    f"checkpoint_path: {self.path} is in use by {_read_holder(path)}; wait for "
                    f"it to finish or stop it (one trainer per checkpoint directory)") from None
            info = json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), what=what,
                                   since=time.strftime("%Y-%m-%d %H:%M:%S")))
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode() + b"\n", 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    def read_committed(self, load: Callable[[int], T], attempts: int = 5) -> T:
        """`load(version)` of the committed version, consistent while a trainer commits newer
        ones: a version's files never change once written, so a read that failed or ended
        after the version moved on is retried on the new one."""
        for _ in range(attempts):
            version = self.load_version()
            try:
                out = load(version)
            except DataError:
                if self.load_version() != version:
                    continue  # the trainer committed and removed what we were reading
                raise
            if self.load_version() == version:
                return out
        raise DataError(f"{self.path}: the checkpoint changed {attempts} times while being "
                        f"read; try again")

    def write_config(self, config_json: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path / "config.json", config_json)

    def append_stats(self, records: Iterable[dict]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.stats_file(), "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")

    # ---- embeddings --------------------------------------------------------------------------
    def save_partition(self, entity: str, part: int, version: int, emb: torch.Tensor,
                       state: torch.Tensor, metadata: Dict[str, object],
                       durable: bool = True) -> int:
        """Writes a partition file straight from the tensors (no copy): h5py lays out the file
        with both datasets allocated contiguously, then the bytes go in with os.pwrite, which
        releases the GIL, so an I/O thread writes while training runs. Returns bytes written.
        durable=False leaves the file in the page cache (no fsync): for a pending version's
        copy that a later durable write replaces, or that `sync_partition` makes durable."""
        path = self.embeddings_file(entity, part, version)
        emb, state = emb.contiguous(), state.contiguous()
        try:
            with atomic_path(path, durable=durable) as tmp:
                with h5py.File(tmp, "w") as hf:
                    hf.attrs[FORMAT_VERSION_ATTR] = FORMAT_VERSION
                    for k, v in metadata.items():
                        hf.attrs[k] = v
                    offsets = [_contiguous_dataset(hf, "embeddings", tuple(emb.shape)),
                               _contiguous_dataset(hf, OUR_ROW_STATE, tuple(state.shape))]
                fd = os.open(tmp, os.O_WRONLY)
                try:
                    _pwrite_all(fd, emb, offsets[0])
                    faults.point("checkpoint.partition_write")  # half of a partition written
                    _pwrite_all(fd, state, offsets[1])
                finally:
                    os.close(fd)
        except OSError as e:
            raise DataError(f"{path}: cannot write partition: {e.strerror or e}") from None
        return emb.nbytes + state.nbytes

    def sync_partition(self, entity: str, part: int, version: int) -> None:
        """Makes a partition file written with durable=False durable (file, then directory)."""
        path = self.embeddings_file(entity, part, version)
        try:
            fsync_file(path)
            fsync_dir(path.parent)
        except OSError as e:
            raise DataError(f"{path}: cannot sync partition: {e.strerror or e}") from None

    def has_partition(self, entity: str, part: int, version: int, root=None) -> bool:
        return self.embeddings_file(entity, part, version, root).exists()

    def partition_shape(self, entity: str, part: int, version: int) -> Tuple[int, ...]:
        path = self.embeddings_file(entity, part, version)
        try:
            with h5py.File(path, "r") as hf:
                return tuple(hf["embeddings"].shape)
        except (OSError, KeyError) as e:
            raise DataError(f"{path}: cannot read checkpoint file: {e}") from None

    def read_partition_into(self, entity: str, part: int, version: int, emb: torch.Tensor,
                            state: torch.Tensor, root: Optional[Path] = None) -> Tuple[bool, int]:
        """Reads a partition into preallocated tensors of its shape (no intermediate copy; with
        a plain read into their memory, GIL released, for files laid out contiguously as ours
        and PBG's are). Returns (whether an Adagrad state was found, bytes read); without one
        `state` is zeroed."""
        path = self.embeddings_file(entity, part, version, root)
        try:
            with h5py.File(path, "r") as hf:
                if hf.attrs.get(FORMAT_VERSION_ATTR) != FORMAT_VERSION:
                    raise DataError(f"{path}: unsupported format_version "
                                    f"{hf.attrs.get(FORMAT_VERSION_ATTR)!r}")
                if "embeddings" not in hf:
                    raise DataError(f"{path}: no 'embeddings' dataset")
                ds = hf["embeddings"]
                if tuple(ds.shape) != tuple(emb.shape):
                    raise DataError(f"{path}: embeddings of shape {tuple(ds.shape)}, expected "
                                    f"{tuple(emb.shape)} (entity count x dimension)")
                plan = [(ds, emb, _raw_offset(ds))]
                found = True
                if OUR_ROW_STATE in hf and tuple(hf[OUR_ROW_STATE].shape) == tuple(state.shape):
                    plan.append((hf[OUR_ROW_STATE], state, _raw_offset(hf[OUR_ROW_STATE])))
                elif "optimizer/state_dict" in hf:
                    st = _pbg_row_state(hf["optimizer/state_dict"][...].tobytes(), path)
                    found = st is not None and tuple(st.shape) == tuple(state.shape)
                    if found:
                        state.copy_(st)
                    else:
                        state.zero_()
                else:
                    found = False
                    state.zero_()
                for d, t, off in plan:
                    if off is None and d.size:  # chunked, compressed or another dtype
                        t.copy_(torch.from_numpy(d[...].astype(np.float32)).reshape(t.shape))
            with open(path, "rb", buffering=0) as f:
                for d, t, off in plan:
                    if off is not None and t.numel():
                        _pread_all(f, t, off, path)
        except OSError as e:
            raise DataError(f"{path}: cannot read checkpoint file: {e}") from None
        return found, emb.nbytes + state.nbytes

    def load_partition(self, entity: str, part: int, version: int,
                       root: Optional[Path] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """A partition in new tensors (its Adagrad state None where the file has none)."""
        path = self.embeddings_file(entity, part, version, root)
        try:
            with h5py.File(path, "r") as hf:
                shape = tuple(hf["embeddings"].shape)
        except (OSError, KeyError) as e:
            raise DataError(f"{path}: cannot read checkpoint file: {e}") from None
        if len(shape) != 2:
            raise DataError(f"{path}: embeddings of shape {shape}, expected 2 dimensions")
        emb, state = empty_table(*shape), torch.empty(shape[0])
        found, _ = self.read_partition_into(entity, part, version, emb, state, root)
        return emb, (state if found else None)

    def link_partition(self, entity: str, part: int, src_version: int, dst_version: int) -> None:
        """Carry an untouched partition into a new version without rewriting it."""
        src = self.embeddings_file(entity, part, src_version)
        dst = self.embeddings_file(entity, part, dst_version)
        with atomic_path(dst) as tmp:
            os.unlink(tmp)
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)

    # ---- model -------------------------------------------------------------------------------
    def save_model(self, version: int, params: Dict[str, Tuple[str, torch.Tensor]],
                   states: Dict[str, torch.Tensor], metadata: Dict[str, object]) -> None:
        """params: public name -> (private name, tensor); states: name -> Adagrad state."""
        with atomic_path(self.model_file(version)) as tmp:
            with h5py.File(tmp, "w") as hf:
                hf.attrs[FORMAT_VERSION_ATTR] = FORMAT_VERSION
                for k, v in metadata.items():
                    hf.attrs[k] = v
                g = hf.create_group("model", track_order=True)
                for public, (private, t) in params.items():
                    ds = g.create_dataset(public, data=t.detach().numpy())
                    ds.attrs[STATE_DICT_KEY_ATTR] = private
                sg = hf.create_group(OUR_PARAM_STATE_GROUP)
                for name, t in states.items():
                    sg.create_dataset(name, data=t.numpy())
        faults.point("checkpoint.model_written")  # the whole version written, not committed

    def load_model(self, version: int) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], dict]:
        path = self.model_file(version)
        params, states = {}, {}
        try:
            with h5py.File(path, "r") as hf:
                def visit(name, obj):
                    if isinstance(obj, h5py.Dataset):
                        params[name] = torch.from_numpy(obj[...].astype(np.float32))
                if "model" in hf:
                    hf["model"].visititems(visit)
                if OUR_PARAM_STATE_GROUP in hf:
                    def visit_state(name, obj):
                        if isinstance(obj, h5py.Dataset):
                            states[name] = torch.from_numpy(obj[...].astype(np.float32))
                    hf[OUR_PARAM_STATE_GROUP].visititems(visit_state)
                attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in hf.attrs.items()}
        except FileNotFoundError:
            raise DataError(f"{path}: missing model file of checkpoint version {version}") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read model file: {e}") from None
        return params, states, attrs

    def saved_config(self, version: int) -> Tuple[Optional[dict], str]:
        """The config a version was trained with (the model file's, else config.json), and a
        description of where it came from, for messages."""
        where = f"the checkpoint in {self.path} (version {version})"
        text = None
        try:
            with h5py.File(self.model_file(version), "r") as hf:
                text = hf.attrs.get("config/json")
        except OSError:
            pass
        if text is None and (self.path / "config.json").is_file():
            text = (self.path / "config.json").read_text(errors="replace")
        if text is None:
            return None, where
        try:
            saved = json.loads(text if isinstance(text, str) else bytes(text).decode())
        except (ValueError, UnicodeDecodeError):
            raise DataError(f"{self.path}: the saved config of version {version} is not valid "
                            f"JSON") from None
        return (saved if isinstance(saved, dict) else None), where

    # ---- snapshots ---------------------------------------------------------------------------
    def snapshot(self, version: int, epoch: int) -> None:
        """Keep version `version` in epoch_<epoch>/ (hard links; copies where links fail)."""
        root = self.path / f"epoch_{epoch}"
        root.mkdir(parents=True, exist_ok=True)
        for f in list(self.path.glob(f"*.v{version}.h5")) + [self.path / "config.json"]:
            if f.exists():
                target = root / f.name
                target.unlink(missing_ok=True)
                try:
                    os.link(f, target)
                except OSError:
                    shutil.copyfile(f, target)
        write_text_atomic(root / "checkpoint_version.txt", f"{version}\n")


def _contiguous_dataset(hf: h5py.File, name: str, shape: Tuple[int, ...]) -> int:
    """A float32 dataset allocated now (no fill), laid out contiguously: its byte offset."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    ds = hf.create_dataset(name, shape=shape, dtype=np.float32, dcpl=dcpl)
    off = ds.id.get_offset()
    return 0 if off is None else off  # None only for an empty dataset: nothing to write


def _raw_offset(ds: h5py.Dataset) -> Optional[int]:
    """Where a dataset's bytes lie in its file, when they can be read as-is (contiguous,
    uncompressed, little-endian float32); None otherwise."""
    if ds.chunks is not None or ds.dtype != np.dtype("<f4") or ds.compression is not None:
        return None
    return ds.id.get_offset()


_IO_BLOCK = 64 << 20  # bytes per system call: bounded, and other threads run between calls


def _pwrite_all(fd: int, t: torch.Tensor, offset: int) -> None:
    view = memoryview(t.numpy()).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:done + _IO_BLOCK], offset + done)


def _pread_all(f, t: torch.Tensor, offset: int, path) -> None:
    view = memoryview(t.numpy()).cast("B")
    f.seek(offset)
    done = 0
    while done < len(view):
        n = f.readinto(view[done:done + _IO_BLOCK])
        if not n:
            raise DataError(f"{path}: truncated (ends {len(view) - done} bytes early)")
        done += n


def _read_holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"{h['what']} (pid {h['pid']} on {h['host']}, since {h['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (starting up)"


def _pbg_row_state(blob: bytes, path: Path) -> Optional[torch.Tensor]:
    """PBG pickles its optimizer state; read it only with torch's weights-only loader."""
    try:
        sd = torch.load(io.BytesIO(blob), weights_only=True)
        for st in sd.get("state", {}).values():
            if "sum" in st:
                return st["sum"].float().contiguous()
    except Exception as e:  # noqa: BLE001 - any refusal means: start the state fresh
        warnings.warn(f"{path}: PBG optimizer state not loadable with weights_only ({e}); "
                      "starting Adagrad state fresh")
    return None
