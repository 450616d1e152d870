"""The partition buffer: prefetch and write-back change timing, not results; it holds at most
its capacity; the buffer order costs no more loads than inside-out; a kill during an
asynchronous write-back or an I/O error on its thread loses nothing."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbg_fast.config import BUCKET_ORDERS, parse_config
from pbg_fast.demo import planted_graph, write_tsv
from pbg_fast.errors import DataError
from pbg_fast.io.checkpoint import CheckpointManager
from pbg_fast.io.importer import import_from_tsv
from pbg_fast.train import partition_buffer
from pbg_fast.train.schedule import bucket_order, count_loads
from pbg_fast.train.trainer import train

ROOT = Path(__file__).resolve().parent.parent


def setup(tmp_path, parts=4, **over):
    rows, _ = planted_graph(1200, 12, 8, 0.9, seed=5)
    write_tsv(tmp_path / "train.tsv", rows)
    raw = dict(
        entities={"node": {"num_partitions": parts}},
        relations=[{"name": "link", "lhs": "node", "rhs": "node", "operator": "diagonal"}],
        dimension=16, comparator="dot", loss_fn="softmax", lr=0.1, num_epochs=2,
        batch_size=100, num_batch_negs=10, num_uniform_negs=10, eval_fraction=0.05,
        eval_num_batch_negs=10, eval_num_uniform_negs=10,
        entity_path=str(tmp_path / "ent"), edge_paths=[str(tmp_path / "edges")],
        checkpoint_path=str(tmp_path / "ckpt"), workers=1)
    raw.update(over)
    import_from_tsv(parse_config(raw), [str(tmp_path / "train.tsv")], 0, 1)
    return raw


def committed(path):
    ck = CheckpointManager(path)
    v = ck.load_version()
    out = {}
    for f in sorted(Path(path).glob(f"*.v{v}.h5")):
        with h5py.File(f) as hf:
            hf.visititems(lambda n, o: out.__setitem__((f.name, n), o[...])
                          if isinstance(o, h5py.Dataset) else None)
    return v, out


@pytest.mark.parametrize("order,capacity", [("buffer", 2), ("buffer", 3), ("inside_out", 3),
                                            ("random", 2), ("affinity", 4)])
def test_async_buffer_gives_the_synchronous_result(tmp_path, order, capacity):
    raw = setup(tmp_path, bucket_order=order, partition_buffer_size=capacity)
    results = {}
    for io in ("sync", "async"):
        train(parse_config(dict(raw, partition_io=io, checkpoint_path=str(tmp_path / io))))
        results[io] = committed(str(tmp_path / io))
    assert results["sync"][0] == results["async"][0] == 2
    assert results["sync"][1].keys() == results["async"][1].keys()
    for k, v in results["sync"][1].items():
        np.testing.assert_array_equal(results["async"][1][k], v, err_msg=str(k))


def test_loads_follow_the_plan_and_capacity_is_honoured(tmp_path, monkeypatch):
    raw = setup(tmp_path, bucket_order="buffer", partition_buffer_size=3, num_epochs=2)
    peak = []
    real_acquire = partition_buffer.PartitionBuffer.acquire

    def acquire(self, i):
        out = real_acquire(self, i)
        peak.append(sum(1 for k in self.resident if k[0] == "node"))
        allocated = sum(s is not None for s in self.slots["node"])
        assert allocated <= 3
        return out

    monkeypatch.setattr(partition_buffer.PartitionBuffer, "acquire", acquire)
    recs = train(parse_config(raw))
    assert max(peak) <= 3
    expected = count_loads(bucket_order("buffer", 4, 4, 7919 * 0 + 0, 3), 3)
    assert recs[0]["partition_loads"] == expected
    # The next iteration starts with the last one's partitions resident.
    assert recs[1]["partition_loads"] <= expected - 3 + 1
    stats = [json.loads(line) for line in open(tmp_path / "ckpt" / "training_stats.json")]
    buckets = [r for r in stats if r["kind"] == "bucket"]
    assert all({"io_wait_seconds", "bytes_read", "bytes_written"} <= r.keys() for r in buckets)
    it = [r for r in stats if r["kind"] == "iteration"][0]
    assert it["bytes_written"] >= 4 * 300 * 17 * 4  # every partition of the version written


def test_all_in_memory_reads_each_partition_once_per_run(tmp_path):
    raw = setup(tmp_path, parts=1, num_epochs=3)
    recs = train(parse_config(raw))
    assert [r["partition_loads"] for r in recs] == [1, 0, 0]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 14), st.integers(0, 10**6),
       st.sampled_from(BUCKET_ORDERS))
def test_every_order_trains_every_bucket_once(nparts, capacity, seed, order):
    buckets = bucket_order(order, nparts, nparts, seed, capacity)
    assert sorted(buckets) == [(l, r) for l in range(nparts) for r in range(nparts)]
    one_sided = bucket_order(order, nparts, 1, seed, capacity)
    assert sorted(one_sided) == [(l, 0) for l in range(nparts)]


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 16), st.integers(3, 16), st.integers(0, 10**6))
def test_buffer_order_loads_no_more_than_inside_out(nparts, capacity, seed):
    ours = count_loads(bucket_order("buffer", nparts, nparts, seed, capacity), capacity)
    theirs = count_loads(bucket_order("inside_out", nparts, nparts, seed, capacity), capacity)
    assert ours <= theirs
    assert ours >= min(nparts, capacity) and (ours == nparts or capacity < nparts)


def test_kill_during_async_write_back_then_restart_finishes(tmp_path):
    raw = setup(tmp_path, bucket_order="buffer", partition_buffer_size=2, num_epochs=2)
    ref = dict(raw, checkpoint_path=str(tmp_path / "ref"))
    first = train(parse_config(ref))[0]["partition_writes"]
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(raw))
    env = dict(os.environ, PBG_FAST_KILL_AT=f"buffer.write_back:{first + 2}")  # 2nd iteration
    proc = subprocess.run([sys.executable, "-m", "pbg_fast", "train", str(cfg), "--quiet"],
                          cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    v, files = committed(raw["checkpoint_path"])
    assert v == 1 and len([k for k in files if k[1] == "embeddings"]) == 4
    env.pop("PBG_FAST_KILL_AT")
    proc = subprocess.run([sys.executable, "-m", "pbg_fast", "train", str(cfg), "--quiet"],
                          cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    got, want = committed(raw["checkpoint_path"]), committed(ref["checkpoint_path"])
    assert got[0] == want[0] == 2
    for k, a in want[1].items():
        np.testing.assert_array_equal(got[1][k], a, err_msg=str(k))


def test_write_error_on_the_io_thread_stops_training_and_loses_nothing(tmp_path, monkeypatch):
    raw = setup(tmp_path, partition_buffer_size=2, num_epochs=1)
    train(parse_config(raw))
    before = committed(raw["checkpoint_path"])
    calls = []
    real = CheckpointManager.save_partition

    def failing(self, entity, part, version, *a, **k):
        calls.append(version)
        if len(calls) == 3:
            raise DataError(f"{self.embeddings_file(entity, part, version)}: cannot write "
                            f"partition: No space left on device")
        return real(self, entity, part, version, *a, **k)

    monkeypatch.setattr(CheckpointManager, "save_partition", failing)
    with pytest.raises(DataError, match=r"embeddings_node_\d\.v2\.h5: cannot write partition: "
                                        r"No space left"):
        train(parse_config(dict(raw, num_epochs=2)))
    after = committed(raw["checkpoint_path"])
    assert after[0] == 1 and after[1].keys() == before[1].keys()
    for k, a in before[1].items():
        np.testing.assert_array_equal(after[1][k], a)
    assert not list(Path(raw["checkpoint_path"]).glob("*.v2.h5"))


def test_read_error_on_the_io_thread_names_the_file(tmp_path):
    raw = setup(tmp_path, partition_buffer_size=2, num_epochs=1)
    train(parse_config(raw))
    f = Path(raw["checkpoint_path"]) / "embeddings_node_3.v1.h5"
    os.truncate(f, f.stat().st_size - 100)
    with pytest.raises(DataError, match=r"embeddings_node_3\.v1\.h5: (truncated|cannot read)"):
        train(parse_config(dict(raw, num_epochs=2)))
    assert CheckpointManager(raw["checkpoint_path"]).load_version() == 1


def test_default_capacity_follows_the_memory_budget(tmp_path):
    raw = setup(tmp_path)
    # 4 partitions of 300 rows x (16 + 1) floats = 20.4 KB each
    for gb, want in ((1e-9, 2), (2.1 * 20400 / 2**30, 2), (3.5 * 20400 / 2**30, 3), (1.0, 4)):
        cfg = parse_config(dict(raw, partition_buffer_memory_gb=gb))
        buf = partition_buffer.PartitionBuffer(cfg, CheckpointManager(raw["checkpoint_path"]), 0)
        assert buf.capacity == want, (gb, buf.capacity)
        buf.close()
