"""What an operator who lost a week to a silent failure wants: a diverging run stops before it
commits and keeps the last good version; a degenerate model cannot score well; one trainer per
checkpoint directory; a killed run's leftovers are cleaned at the next start; files respect the
umask; readers get a committed version while a trainer commits."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pbg_fast.config import parse_config
from pbg_fast.errors import CheckpointLocked, DataError, TrainingDiverged
from pbg_fast.eval.link_prediction import _rank, evaluate
from pbg_fast.export import export
from pbg_fast.io.checkpoint import CheckpointManager
from pbg_fast.io.importer import import_from_tsv
from pbg_fast.train.trainer import train

ROOT = Path(__file__).resolve().parent.parent


def setup(tmp_path, weights=False, **over):
    rows = [(f"n{i % 53}", f"n{(i * 11 + 5) % 59}", f"{1 + i % 3}") for i in range(1500)]
    (tmp_path / "in.tsv").write_text("".join("\t".join(r) + "\n" for r in rows))
    raw = dict(
        entities={"all": {"num_partitions": 1}},
        relations=[{"name": "r", "lhs": "all", "rhs": "all"}],
        dimension=16, comparator="dot", loss_fn="softmax", lr=0.1, num_epochs=1,
        batch_size=100, num_batch_negs=20, num_uniform_negs=20, eval_fraction=0,
        eval_num_batch_negs=20, eval_num_uniform_negs=20,
        entity_path=str(tmp_path / "ent"), edge_paths=[str(tmp_path / "edges")],
        checkpoint_path=str(tmp_path / "ckpt"), workers=1)
    raw.update(over)
    import_from_tsv(parse_config(raw), [str(tmp_path / "in.tsv")], 0, 1,
                    weight_col=2 if weights else None)
    return raw


def files(root: Path):
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())
            if p.is_file() and p.name != ".pbg_fast.lock"}


@pytest.mark.parametrize("over", [dict(lr=1e30), dict(lr=1e30, loss_fn="ranking"),
                                  dict(lr=1e30, comparator="l2", loss_fn="logistic")],
                         ids=["softmax-dot", "ranking-dot", "logistic-l2"])
def test_divergence_stops_before_commit_and_keeps_last_good_version(tmp_path, over):
    raw = setup(tmp_path, **{k: v for k, v in over.items() if k != "lr"})
    train(parse_config(raw))
    good = evaluate(parse_config(raw))["overall"]
    before = files(tmp_path / "ckpt")
    with pytest.raises(TrainingDiverged) as e:
        train(parse_config(dict(raw, num_epochs=2, lr=over["lr"])))
    msg = str(e.value)
    assert "epoch 1" in msg and "bucket (0, 0)" in msg and "stays at version 1" in msg, msg
    assert "lr = 1e+30" in msg, msg  # the likely cause is named
    assert files(tmp_path / "ckpt") == before  # nothing committed, nothing left behind
    assert evaluate(parse_config(raw))["overall"] == good


def test_divergence_of_a_first_run_commits_nothing(tmp_path):
    raw = setup(tmp_path, init_scale=1e25)
    with pytest.raises(TrainingDiverged, match=r"epoch 0, .* stays at version 0\..*init_scale"):
        train(parse_config(raw))
    assert files(tmp_path / "ckpt") == {}


def test_divergence_from_huge_edge_weights_names_the_weights(tmp_path):
    raw = setup(tmp_path, weights=False)
    from pbg_fast.io.files import save_edges, load_edges
    e = load_edges(raw["edge_paths"][0], 0, 0)
    save_edges(raw["edge_paths"][0], 0, 0, e["lhs"], e["rhs"], e["rel"],
               np.full(len(e["lhs"]), 3e38, np.float32))
    with pytest.raises(TrainingDiverged, match="very large edge weights"):
        train(parse_config(raw))
    assert CheckpointManager(raw["checkpoint_path"]).load_version() == 0
    assert not list(Path(raw["checkpoint_path"]).glob("*.h5"))
    assert not (Path(raw["checkpoint_path"]) / "config.json").exists()


def test_a_degenerate_model_scores_no_better_than_chance(tmp_path):
    """Every embedding equal: every score ties. Ties rank pessimistically (sampled) or by the
    mean (filtered), so MRR is near chance, never 1.0 as an optimistic rank would give."""
    raw = setup(tmp_path, global_emb=False)
    train(parse_config(raw))
    f = tmp_path / "ckpt" / "embeddings_all_0.v1.h5"
    with h5py.File(f, "r+") as hf:
        hf["embeddings"][...] = np.ones(hf["embeddings"].shape, np.float32)
    cfg = parse_config(raw)
    sampled = evaluate(cfg)["overall"]
    filtered = evaluate(cfg, filtered=True)["overall"]
    n = len(np.unique(np.concatenate([np.arange(59)])))  # candidates per side: ~59 entities
    assert sampled["hits1"] == 0 and sampled["mrr"] < 0.1, sampled
    assert filtered["hits1"] == 0 and filtered["mrr"] < 4 / n, filtered
    assert sampled["auc"] == 0


def test_rank_handles_ties_nan_and_masks():
    scores = torch.tensor([[1.0, 2.0, 2.0, -float("inf")],
                           [float("nan"), 0.0, 0.0, 0.0],
                           [1.0, 1.0, 1.0, 1.0]])
    pos = torch.tensor([2.0, 1.0, float("nan")])
    assert _rank(scores, pos, "pessimistic").tolist() == [3, 2, 5]
    assert _rank(scores, pos, "mean").tolist() == [2, 2, 5]


def test_a_second_trainer_is_refused_naming_the_holder(tmp_path):
    raw = setup(tmp_path)
    ckpt = CheckpointManager(raw["checkpoint_path"])
    with ckpt.lock("pbg-fast train (test holder)"):
        with pytest.raises(CheckpointLocked, match=rf"in use by pbg-fast train \(test holder\) "
                                                    rf"\(pid {os.getpid()}"):
            train(parse_config(raw))
    assert ckpt.load_version() == 0 and not (ckpt.path / "config.json").exists()
    train(parse_config(raw))  # released: the next one runs
    assert ckpt.load_version() == 1


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    code = (f"import os, signal\nfrom pbg_fast.io.checkpoint import CheckpointManager\n"
            f"with CheckpointManager({str(ckpt_dir)!r}).lock('doomed'):\n"
            f"    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120)
    assert proc.returncode == -9
    assert "doomed" in (ckpt_dir / ".pbg_fast.lock").read_text()
    with CheckpointManager(str(ckpt_dir)).lock("next"):
        pass


def test_leftovers_of_a_killed_run_are_cleaned_at_the_next_start(tmp_path):
    raw = setup(tmp_path)
    train(parse_config(raw))
    ck = tmp_path / "ckpt"
    (ck / ".embeddings_all_0.v2.h5.abc.tmp").write_bytes(b"half")
    (ck / "embeddings_all_0.v2.h5").write_bytes(b"pending version of a killed run")
    (ck / "model.v7.h5").write_bytes(b"junk")
    train(parse_config(dict(raw, num_epochs=2)))
    names = sorted(p.name for p in ck.iterdir())
    assert names == [".pbg_fast.lock", "checkpoint_version.txt", "config.json",
                     "embeddings_all_0.v2.h5", "model.v2.h5", "training_stats.json"], names
    with h5py.File(ck / "embeddings_all_0.v2.h5") as hf:
        assert hf["embeddings"].shape == (59, 16) or hf["embeddings"].shape[1] == 16


def test_files_respect_the_umask(tmp_path):
    raw = setup(tmp_path)
    old = os.umask(0o027)
    try:
        train(parse_config(raw))
        export(parse_config(raw), str(tmp_path / "out.tsv"))
        export(parse_config(raw), str(tmp_path / "out_npy"), "npy")
    finally:
        os.umask(old)
    for f in [tmp_path / "ckpt" / "model.v1.h5", tmp_path / "ckpt" / "embeddings_all_0.v1.h5",
              tmp_path / "ckpt" / "checkpoint_version.txt", tmp_path / "out.tsv",
              tmp_path / "out_npy" / "all.npy"]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, f


def test_readers_retry_when_a_trainer_commits_under_them(tmp_path):
    ck = CheckpointManager(str(tmp_path))
    ck.path.mkdir(exist_ok=True)
    (tmp_path / "checkpoint_version.txt").write_text("3\n")
    seen = []

    def load(v):
        seen.append(v)
        if v == 3:  # the trainer commits 4 and removes 3's files while we read them
            (tmp_path / "checkpoint_version.txt").write_text("4\n")
            raise DataError("embeddings_x_0.v3.h5: missing")
        return f"model v{v}"

    assert ck.read_committed(load) == "model v4" and seen == [3, 4]
    with pytest.raises(DataError, match="missing"):
        ck.read_committed(lambda v: (_ for _ in ()).throw(DataError("missing")))


def test_training_stats_count_each_iteration_once(tmp_path):
    raw = setup(tmp_path, num_epochs=3)
    train(parse_config(raw))
    recs = [json.loads(line) for line in (tmp_path / "ckpt" / "training_stats.json").open()]
    assert [r["epoch"] for r in recs if r["kind"] == "iteration"] == [0, 1, 2]
