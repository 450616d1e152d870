"""Export trained embeddings: TSV (as torchbiggraph_export_to_tsv), .npy or .h5."""

import json
from pathlib import Path

import h5py
import numpy as np

from .config import ConfigSchema
from .eval.link_prediction import load_model
from .io.checkpoint import operator_params_to_pbg
from .io.files import DataError, atomic_path, entity_names_file, load_entity_names


def _tsv_safe(names, entity: str, part: int, entity_path) -> None:
    """A name with a tab or a line break would split its TSV line: refused (not escaped, so
    that every name PBG's export writes verbatim comes out the same)."""
    for i, name in enumerate(names):
        if "\t" in name or "\n" in name or "\r" in name:
            raise DataError(f"{entity_names_file(entity_path, entity, part)}: entity {i} of "
                            f"{entity!r} ({name[:40]!r}) contains a tab or a line break, which "
                            f"TSV cannot hold; export with --format h5 or npy instead")


def export(config: ConfigSchema, out: str, fmt: str = "tsv") -> Path:
    if fmt not in ("tsv", "npy", "h5"):
        raise DataError(f"--format: unknown {fmt!r}; expected tsv, npy or h5")
    out = Path(out)
    if fmt == "tsv" and out.is_dir():
        raise DataError(f"{out}: is a directory; give a file name for the TSV export")
    if fmt != "tsv" and out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory; --format {fmt} writes a "
                        f"directory of files")
    model = load_model(config)
    names_of = {}
    for e, ec in config.entities.items():
        for p in range(ec.num_partitions):
            names = load_entity_names(config.entity_path, e, p)
            if len(names) != len(model.part_embeddings[e][p]):
                raise DataError(f"{entity_names_file(config.entity_path, e, p)}: "
                                f"{len(names)} names but the checkpoint has "
                                f"{len(model.part_embeddings[e][p])} embeddings of {e!r} "
                                f"partition {p}")
            if fmt == "tsv":
                _tsv_safe(names, e, p, config.entity_path)
            names_of[e, p] = names
    if fmt == "tsv":
        with atomic_path(out) as tmp, open(tmp, "w") as f:
            for e, ec in config.entities.items():
                for p in range(ec.num_partitions):
                    names = names_of[e, p]
                    emb = model.part_embeddings[e][p].numpy()
                    for name, row in zip(names, emb):
                        f.write(name + "\t" + "\t".join(f"{x:.7g}" for x in row) + "\n")
            for i, (rc, rp) in enumerate(zip(config.relations, model.relations)):
                for name, t in operator_params_to_pbg(rp.rhs, rc.operator, config.dimension,
                                                      config.dynamic_relations).items():
                    flat = t.flatten().tolist()
                    f.write(f"{rc.name}\trhs\t{name}\t" + "\t".join(f"{x:.7g}" for x in flat) + "\n")
    elif fmt in ("npy", "h5"):
        out.mkdir(parents=True, exist_ok=True)
        for e, ec in config.entities.items():
            names = [n for p in range(ec.num_partitions) for n in names_of[e, p]]
            emb = model.embeddings[e].numpy()
            if fmt == "npy":
                with atomic_path(out / f"{e}.npy") as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, emb)
                with atomic_path(out / f"{e}.names.json") as tmp:
                    Path(tmp).write_text(json.dumps(names))
            else:
                with atomic_path(out / f"{e}.h5") as tmp:
                    with h5py.File(tmp, "w") as hf:
                        hf.create_dataset("embeddings", data=emb)
                        hf.create_dataset("names", data=np.array(names, dtype=object),
                                          dtype=h5py.string_dtype())
    return out
