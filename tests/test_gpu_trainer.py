"""The GPU trainer (num_gpus: 1): the bucket's partitions in a DeviceTier in front of the host
partition buffer. Its bookkeeping runs here with the CPU standing in for the device (real
copies, the same calls): the result must be the CPU trainer's, bit for bit, with swapping
(P=4, two partitions of room). On a machine with a GPU, a small training on cuda reaches the
CPU trainer's MRR (benchmarks/gpu_check.sh runs this file)."""

import json

import numpy as np
import pytest
import torch

import pbg_fast
from pbg_fast.config import ConfigError, parse_config
from pbg_fast.eval.link_prediction import evaluate
from pbg_fast.io.checkpoint import CheckpointManager
from pbg_fast.train.trainer import Trainer
from tests.test_partition_buffer import committed, setup


@pytest.mark.parametrize("order,capacity,operator", [("buffer", 2, "diagonal"),
                                                     ("inside_out", 3, "complex_diagonal"),
                                                     ("random", 2, "linear"),
                                                     ("inside_out", 4, "translation")])
def test_device_tier_gives_the_cpu_trainers_result(tmp_path, order, capacity, operator):
    raw = setup(tmp_path, bucket_order=order, partition_buffer_size=capacity,
                relations=[{"name": "link", "lhs": "node", "rhs": "node", "operator": operator}])
    Trainer(parse_config(dict(raw, checkpoint_path=str(tmp_path / "host")))).train()
    recs = Trainer(parse_config(dict(raw, checkpoint_path=str(tmp_path / "dev"))),
                   device=torch.device("cpu")).train()
    host, dev = committed(str(tmp_path / "host")), committed(str(tmp_path / "dev"))
    assert host[0] == dev[0] == 2
    assert host[1].keys() == dev[1].keys()
    for k, v in host[1].items():
        np.testing.assert_array_equal(dev[1][k], v, err_msg=str(k))
    # The tier really copied: every bucket's partitions in, and out again.
    assert all(r["device_copies"] > 0 and r["device_bytes_in"] == r["device_bytes_out"]
               for r in recs)
    if capacity == 4:  # every partition stays loaded on the host: the next bucket's new
        # partitions are copied to the device ahead of time (prefetch), and used
        assert recs[-1]["device_prefetched"] > 0
    stats = [json.loads(line) for line in open(CheckpointManager(str(tmp_path / "dev")).stats_file())]
    assert [s["device"] for s in stats if s["kind"] == "iteration"] == ["cpu", "cpu"]


def test_num_gpus_is_checked(tmp_path):
    raw = setup(tmp_path)
    with pytest.raises(ConfigError, match="num_gpus"):
        parse_config(dict(raw, num_gpus=2))
    with pytest.raises(ConfigError, match="num_gpus"):
        parse_config(dict(raw, num_gpus=1, num_machines=2))
    with pytest.raises(ConfigError, match="matmul_precision: one of fp32, tf32, bf16"):
        parse_config(dict(raw, num_gpus=1, matmul_precision="fp16"))
    with pytest.raises(ConfigError, match="matmul_precision: 'tf32' is for the GPU trainer"):
        parse_config(dict(raw, matmul_precision="tf32"))
    assert parse_config(dict(raw, num_gpus=1, matmul_precision="tf32")).matmul_precision == "tf32"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="num_gpus: 1, but torch sees no CUDA device"):
            Trainer(parse_config(dict(raw, num_gpus=1)))


@pytest.mark.skipif(not torch.cuda.is_available() or not pbg_fast.build_info()["cuda_ext"],
                    reason="needs a GPU and the CUDA build")
@pytest.mark.parametrize("precision,tol", [("fp32", 0.01), ("tf32", 0.02), ("bf16", 0.02)])
def test_gpu_training_reaches_the_cpu_mrr(tmp_path, precision, tol):
    raw = setup(tmp_path, parts=4, partition_buffer_size=2, num_epochs=4, eval_fraction=0)
    mrr = {}
    for name, gpus in (("cpu", 0), ("gpu", 1)):
        cfg = parse_config(dict(raw, num_gpus=gpus, checkpoint_path=str(tmp_path / name),
                                matmul_precision=precision if gpus else "fp32"))
        Trainer(cfg).train()
        mrr[name] = evaluate(parse_config(dict(raw, checkpoint_path=str(tmp_path / name))))[
            "overall"]["mrr"]
    assert mrr["cpu"] > 0.3
    assert abs(mrr["gpu"] - mrr["cpu"]) < tol, mrr
