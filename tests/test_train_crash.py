"""Crash safety, locked in: a training run killed with SIGKILL more than 20 times, at injected
points (mid-bucket, mid-partition-write, between the model write and the version commit, right
after the commit) and at random moments, each time resumed by the same command, ends with
embeddings and model bitwise equal to an uninterrupted run's (workers=1). After every kill the
committed version is complete and loadable, and no second trainer's lock is left behind."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from pbg_fast.config import parse_config
from pbg_fast.demo import planted_graph, write_tsv
from pbg_fast.io.checkpoint import CheckpointManager
from pbg_fast.io.importer import import_from_tsv
from pbg_fast.train.trainer import train

ROOT = Path(__file__).resolve().parent.parent

# Each start resumes and is killed at its point (name:n = the n-th time it is reached). P=2 and
# two edge chunks give 4 buckets and partition swaps in each of the 12 iterations.
INJECTED = ["train.bucket:1", "checkpoint.partition_write:1", "checkpoint.model_written:1",
            "checkpoint.before_commit:1", "checkpoint.after_commit:1", "train.bucket:3",
            "checkpoint.partition_write:2", "checkpoint.model_written:1",
            "checkpoint.before_commit:1", "train.bucket:4", "checkpoint.partition_write:3",
            "checkpoint.after_commit:1", "train.bucket:2", "checkpoint.partition_write:1"]
RANDOM_KILLS = 8
ITERATIONS = 12  # 6 epochs x 2 edge chunks


def make_config(tmp_path: Path, ckpt: str):
    train_rows, _ = planted_graph(2000, 20, 8, 0.9, seed=3)
    if not (tmp_path / "train.tsv").exists():
        write_tsv(tmp_path / "train.tsv", train_rows)
    raw = dict(
        entities={"node": {"num_partitions": 2}},
        relations=[{"name": "link", "lhs": "node", "rhs": "node", "operator": "translation"}],
        dimension=16, comparator="dot", loss_fn="softmax", lr=0.1, num_epochs=6,
        num_edge_chunks=2, batch_size=200, num_batch_negs=20, num_uniform_negs=20,
        eval_fraction=0.05, eval_num_batch_negs=20, eval_num_uniform_negs=20,
        entity_path=str(tmp_path / "ent"), edge_paths=[str(tmp_path / "edges")],
        checkpoint_path=str(tmp_path / ckpt), workers=1)
    return raw


def read_checkpoint(path: str):
    """Every dataset of the committed version, by file and name (loads it: must be complete)."""
    ck = CheckpointManager(path)
    v = ck.load_version()
    out = {}
    for f in sorted(Path(path).glob(f"*.v{v}.h5")):
        with h5py.File(f, "r") as hf:
            hf.visititems(lambda n, o: out.__setitem__((f.name, n), o[...])
                          if isinstance(o, h5py.Dataset) else None)
    return v, out


def holds_lock(ckpt: Path, pid: int) -> bool:
    try:
        return json.loads((ckpt / ".pbg_fast.lock").read_text())["pid"] == pid
    except (OSError, ValueError, KeyError):
        return False


def run(config_file: Path, ckpt: Path, kill_at=None, kill_after=None):
    """One `pbg-fast train` process; killed at a point, or `kill_after` seconds after it took
    the checkpoint lock (training has begun: the interpreter's start is not counted)."""
    env = dict(os.environ)
    env.pop("PBG_FAST_KILL_AT", None)
    if kill_at:
        env["PBG_FAST_KILL_AT"] = kill_at
    proc = subprocess.Popen([sys.executable, "-m", "pbg_fast", "train", str(config_file),
                             "--quiet"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    if kill_after is not None:
        deadline = time.monotonic() + 120
        while proc.poll() is None and not holds_lock(ckpt, proc.pid):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err.decode()


def test_twenty_kills_resume_to_the_uninterrupted_result(tmp_path):
    ref_raw = make_config(tmp_path, "ckpt_ref")
    import_from_tsv(parse_config(ref_raw), [str(tmp_path / "train.tsv")], 0, 1)
    t0 = time.perf_counter()
    train(parse_config(ref_raw))
    train_s = time.perf_counter() - t0
    ref_version, ref = read_checkpoint(ref_raw["checkpoint_path"])
    assert ref_version == ITERATIONS

    raw = make_config(tmp_path, "ckpt")
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(raw))
    ckpt = Path(raw["checkpoint_path"])
    kills, versions = 0, []
    rng = random.Random(7)
    per_iteration = train_s / ITERATIONS  # random kills land within about one iteration
    plan = [(p, None) for p in INJECTED] + [
        (None, rng.uniform(0.0, 1.2) * per_iteration) for _ in range(RANDOM_KILLS)]
    for kill_at, kill_after in plan:
        code, err = run(cfg_file, ckpt, kill_at, kill_after)
        if code == 0:
            assert kill_after is not None, f"{kill_at} was never reached: {err}"
            break  # a random kill came after the run had finished
        assert code == -signal.SIGKILL, (kill_at, code, err)
        kills += 1
        v, _ = read_checkpoint(raw["checkpoint_path"])  # the committed version loads whole
        versions.append(v)
    assert kills >= 20, kills
    assert versions == sorted(versions)  # never goes back
    code, err = run(cfg_file, ckpt)
    assert code == 0, err
    version, got = read_checkpoint(raw["checkpoint_path"])
    assert version == ref_version
    assert got.keys() == ref.keys()
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=str(key))
    leftovers = [p.name for p in Path(raw["checkpoint_path"]).iterdir()
                 if p.name.endswith(".tmp") or (".v" in p.name and f".v{version}." not in p.name)]
    assert leftovers == []
    iters = [json.loads(line) for line in open(Path(raw["checkpoint_path"]) / "training_stats.json")
             if '"iteration"' in line]
    assert len(iters) <= ITERATIONS  # a kill after a commit may lose that iteration's record, never add one
