"""Export trained embeddings: TSV (as torchbiggraph_export_to_tsv), .npy or .h5."""

import json
from pathlib import Path

import h5py
import numpy as np

from .config import ConfigSchema
from .eval.link_prediction import load_model
from .io.checkpoint import operator_params_to_pbg
from .io.files import atomic_path, load_entity_names


def export(config: ConfigSchema, out: str, fmt: str = "tsv") -> Path:
    model = load_model(config)
    out = Path(out)
    if fmt == "tsv":
        with atomic_path(out) as tmp, open(tmp, "w") as f:
            for e, ec in config.entities.items():
                for p in range(ec.num_partitions):
                    names = load_entity_names(config.entity_path, e, p)
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
            names = [n for p in range(ec.num_partitions) for n in load_entity_names(config.entity_path, e, p)]
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
    else:
        raise ValueError(f"--format: unknown {fmt!r}; expected tsv, npy or h5")
    return out
