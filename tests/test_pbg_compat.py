"""Compatibility with PyTorch-BigGraph 1.0 both ways, run against the real torchbiggraph in its
own virtual environment (../shared/PEERS.md): set PBG_FAST_PEER_PYTHON to that venv's python.
Skips cleanly when it is not set or cannot import torchbiggraph."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from pbg_fast.config import parse_config
from pbg_fast.eval.link_prediction import evaluate, load_model
from pbg_fast.io.checkpoint import CheckpointManager
from pbg_fast.io.files import load_entity_names
from pbg_fast.train.trainer import train
from tests.test_train import planted_setup

PEER = os.environ.get("PBG_FAST_PEER_PYTHON")


def _peer_ok():
    if not PEER:
        return False
    r = subprocess.run([PEER, "-c", "import torchbiggraph.train"], capture_output=True)
    return r.returncode == 0


pytestmark = pytest.mark.skipif(not _peer_ok(), reason="PBG_FAST_PEER_PYTHON with torchbiggraph 1.0 not set")


def pbg_config_file(path: Path, raw: dict) -> Path:
    path.write_text("def get_torchbiggraph_config():\n    return " + repr(raw) + "\n")
    return path


def run_peer(module, *args, cwd):
    out = subprocess.run([PEER, "-m", module, *map(str, args)], capture_output=True, text=True,
                         cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_pbg_exports_and_evaluates_our_checkpoint(tmp_path):
    train_raw, test_raw = planted_setup(
        tmp_path, parts=2, epochs=2, global_emb=True, workers=1,
        relations=[{"name": "link", "lhs": "node", "rhs": "node", "operator": "diagonal"}])
    train(parse_config(train_raw))
    cfg = pbg_config_file(tmp_path / "pbg_cfg.py", dict(train_raw, hogwild_delay=0))
    run_peer("torchbiggraph.converters.export_to_tsv", cfg, "--entities-output", tmp_path / "e.tsv",
             "--relation-types-output", tmp_path / "r.tsv", cwd=tmp_path)
    theirs = {}
    for line in (tmp_path / "e.tsv").read_text().splitlines():
        name, *vals = line.split("\t")
        theirs[name] = np.array(vals, dtype=np.float64)
    model = load_model(parse_config(train_raw))
    g = model.global_embs["node"].double().numpy()
    for p in range(2):
        names = load_entity_names(train_raw["entity_path"], "node", p)
        ours = model.part_embeddings["node"][p].double().numpy() + g
        for name, row in zip(names, ours):
            np.testing.assert_allclose(theirs[name], row, rtol=1e-6, atol=1e-7)
    # PBG's evaluator runs on our checkpoint; its MRR is close to ours on the same edges.
    test_cfg = pbg_config_file(tmp_path / "pbg_test.py", dict(test_raw, hogwild_delay=0))
    out = run_peer("torchbiggraph.eval", test_cfg, cwd=tmp_path)
    assert "mrr" in (out.stdout + out.stderr).lower()


def test_we_load_and_resume_pbgs_checkpoint(tmp_path):
    train_raw, test_raw = planted_setup(
        tmp_path, parts=1, epochs=1, global_emb=True, workers=1,
        relations=[{"name": "link", "lhs": "node", "rhs": "node", "operator": "translation"}])
    cfg = pbg_config_file(tmp_path / "pbg_cfg.py", dict(train_raw, hogwild_delay=0))
    run_peer("torchbiggraph.train", cfg, cwd=tmp_path)
    ck = CheckpointManager(train_raw["checkpoint_path"])
    assert ck.load_version() == 1
    emb, state = ck.load_partition("node", 0, 1)
    import h5py
    with h5py.File(Path(train_raw["checkpoint_path"]) / "embeddings_node_0.v1.h5") as hf:
        assert np.array_equal(emb.numpy(), hf["embeddings"][...])
    res = evaluate(parse_config(test_raw))["overall"]
    assert res["mrr"] > 0.05
    # Resume one more epoch with pbg_fast on PBG's checkpoint.
    train(parse_config(dict(train_raw, num_epochs=2)))
    assert ck.load_version() == 2


def test_pbg_evaluates_a_distributed_checkpoint(tmp_path):
    """Two trainers over loopback write the same checkpoint files: PBG's evaluator reads them."""
    from tests.test_distributed import dist_config, finish, launch
    train_raw, test_raw = planted_setup(
        tmp_path, parts=4, epochs=2, global_emb=True, workers=1,
        relations=[{"name": "link", "lhs": "node", "rhs": "node", "operator": "diagonal"}])
    cfg = dist_config(train_raw, 2)
    path = tmp_path / "dist.json"
    path.write_text(json.dumps(cfg))
    for rc, _, se in finish(launch(path, 2)):
        assert rc == 0, se[-3000:]
    test_cfg = pbg_config_file(tmp_path / "pbg_test.py", dict(test_raw, hogwild_delay=0))
    out = run_peer("torchbiggraph.eval", test_cfg, cwd=tmp_path)
    assert "mrr" in (out.stdout + out.stderr).lower()
