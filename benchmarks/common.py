"""Shared helpers for the benchmarks: timing with an in-run baseline, JSON-line records."""

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import pbg_fast

ROOT = Path(__file__).resolve().parent.parent


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def emit(record: dict) -> None:
    record = dict(record, build_info=pbg_fast.build_info(), git=git_sha())
    print(json.dumps(record), flush=True)


def time_pair(fn_a, fn_b, seconds: float, repeats: int = 5):
    """Median seconds per call of fn_a and fn_b, measured in alternating rounds so that
    machine noise hits both alike."""
    fn_a()
    fn_b()
    rounds = {0: [], 1: []}
    for _ in range(repeats):
        for k, fn in ((0, fn_a), (1, fn_b)):
            n, t0 = 0, time.perf_counter()
            while True:
                fn()
                n += 1
                dt = time.perf_counter() - t0
                if dt >= seconds / repeats:
                    break
            rounds[k].append(dt / n)
    return statistics.median(rounds[0]), statistics.median(rounds[1])


def gemm_peak_gflops(seconds: float) -> float:
    """fp32 GEMM throughput of this machine right now (torch.mm, all intra-op threads): the
    in-run yardstick for 'fraction of peak'."""
    n = 1536
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0) / 1e9


def quick_flag() -> bool:
    return "--quick" in sys.argv[1:]
