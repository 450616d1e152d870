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

import io
import json
import logging
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

import h5py
import numpy as np
import torch

from ..memory import empty_table
from .files import (FORMAT_VERSION, FORMAT_VERSION_ATTR, DataError, atomic_path, fsync_dir,
                    write_text_atomic)

logger = logging.getLogger("pbg_fast")

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
        try:
            return int(text)
        except ValueError:
            raise DataError(f"{self.version_file()}: not a version number: {text!r}") from None

    def commit(self, version: int) -> None:
        """Make `version` current (its files must all be written), then drop older versions."""
        fsync_dir(self.path)  # the new version's renames are durable before it is named
        write_text_atomic(self.version_file(), f"{version}\n")
        for f in self.path.glob("*.v*.h5"):
            m = re.search(r"\.v(\d+)\.h5$", f.name)
            if m and int(m.group(1)) != version:
                f.unlink(missing_ok=True)

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
                       state: torch.Tensor, metadata: Dict[str, object]) -> None:
        with atomic_path(self.embeddings_file(entity, part, version)) as tmp:
            with h5py.File(tmp, "w") as hf:
                hf.attrs[FORMAT_VERSION_ATTR] = FORMAT_VERSION
                for k, v in metadata.items():
                    hf.attrs[k] = v
                hf.create_dataset("embeddings", data=emb.numpy())
                hf.create_dataset(OUR_ROW_STATE, data=state.numpy())

    def has_partition(self, entity: str, part: int, version: int, root=None) -> bool:
        return self.embeddings_file(entity, part, version, root).exists()

    def load_partition(self, entity: str, part: int, version: int,
                       root: Optional[Path] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        path = self.embeddings_file(entity, part, version, root)
        try:
            with h5py.File(path, "r") as hf:
                if hf.attrs.get(FORMAT_VERSION_ATTR) != FORMAT_VERSION:
                    raise DataError(f"{path}: unsupported format_version "
                                    f"{hf.attrs.get(FORMAT_VERSION_ATTR)!r}")
                ds = hf["embeddings"]
                emb = empty_table(*ds.shape)
                if ds.size:
                    if ds.dtype == np.float32:
                        ds.read_direct(emb.numpy())
                    else:
                        emb.copy_(torch.from_numpy(ds[...].astype(np.float32)))
                if OUR_ROW_STATE in hf:
                    state = torch.from_numpy(hf[OUR_ROW_STATE][...].astype(np.float32))
                elif "optimizer/state_dict" in hf:
                    state = _pbg_row_state(hf["optimizer/state_dict"][...].tobytes(), path)
                else:
                    state = None
        except OSError as e:
            raise DataError(f"{path}: cannot read checkpoint file: {e}") from None
        return emb.contiguous(), state

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
