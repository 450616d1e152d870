"""matmul_precision: the bucket op's score and gradient products on bfloat16 inputs (fp32
accumulation). On the CPU that is AVX512-BF16 (refused by name where the CPU lacks it); a small
training with it reaches the fp32 run's MRR. The GPU's tf32 / bf16 runs are in
tests/test_gpu_trainer.py."""

import pytest

import pbg_fast
from pbg_fast.config import ConfigError, parse_config
from pbg_fast.eval.link_prediction import evaluate
from pbg_fast.train.trainer import Trainer
from tests.test_partition_buffer import setup


def test_bf16_training_on_the_cpu_reaches_the_fp32_mrr(tmp_path):
    raw = setup(tmp_path, parts=2, num_epochs=4, eval_fraction=0)
    if not pbg_fast.build_info()["bf16_gemm"]:
        with pytest.raises(ConfigError, match="matmul_precision: 'bf16' on the CPU needs AVX512"):
            Trainer(parse_config(dict(raw, matmul_precision="bf16")))
        pytest.skip("this CPU (or PBG_FAST_ISA) has no AVX512-BF16")
    mrr = {}
    for precision in ("fp32", "bf16"):
        cfg = dict(raw, checkpoint_path=str(tmp_path / precision), matmul_precision=precision)
        Trainer(parse_config(cfg)).train()
        mrr[precision] = evaluate(parse_config(cfg))["overall"]["mrr"]
    assert mrr["fp32"] > 0.3
    assert abs(mrr["bf16"] - mrr["fp32"]) < 0.02, mrr
