"""Training throughput on a synthetic power-law graph, against a plain-PyTorch HOGWILD trainer
built from the reference ops, measured in the same run.

    python benchmarks/bench_train.py [--quick] [--nodes N --edges E]
    python benchmarks/bench_train.py --device cuda [--quick]   (the bucket op on one GPU)

Default (issue #3, item 9): 1M nodes, 10M edges, d=100, dot, softmax, 50 in-chunk + 50 uniform
negatives, batch 1000, workers=2, P=1 and P=4 (and P=8 for memory). Each training run is a
subprocess so its peak RSS is its own. Prints JSON lines; writes the negatives sweep as
benchmarks/negatives_sweep.png when matplotlib is available.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import emit  # noqa: E402
from pbg_fast.io.files import save_edges, save_entity_partition  # noqa: E402


def make_graph(work: Path, nodes: int, edges: int, parts: int, seed: int = 0):
    """Power-law-ish endpoints (density ~ x^-0.6 over a shuffled id space), in PBG's layout."""
    rng = np.random.default_rng(seed)
    relabel = rng.permutation(nodes)
    lhs = relabel[(nodes * rng.random(edges) ** 2.5).astype(np.int64)]
    rhs = relabel[(nodes * rng.random(edges) ** 2.5).astype(np.int64)]
    part = rng.integers(0, parts, nodes)
    offset = np.zeros(nodes, np.int64)
    ent = work / f"ent_p{parts}"
    for p in range(parts):
        members = np.flatnonzero(part == p)
        offset[members] = np.arange(len(members))
        (ent).mkdir(parents=True, exist_ok=True)
        (ent / f"entity_count_node_{p}.txt").write_text(f"{len(members)}\n")
    lp, rp = part[lhs], part[rhs]
    key = lp * parts + rp
    order = np.argsort(key, kind="stable")
    bounds = np.searchsorted(key[order], np.arange(parts * parts + 1))
    for k in range(parts * parts):
        sel = order[bounds[k]:bounds[k + 1]]
        save_edges(work / f"edges_p{parts}", k // parts, k % parts, offset[lhs[sel]],
                   offset[rhs[sel]], np.zeros(len(sel), np.int64))
    return str(ent), str(work / f"edges_p{parts}")


def config(ent, edges, ckpt, parts, negs_batch=50, negs_uniform=50, epochs=1, dim=100):
    batch = max(1000, negs_batch) if negs_batch else 1000
    batch = (batch // negs_batch) * negs_batch if negs_batch else batch
    return dict(
        entities={"node": {"num_partitions": parts}},
        relations=[{"name": "link", "lhs": "node", "rhs": "node"}],
        dimension=dim, comparator="dot", loss_fn="softmax", lr=0.1, num_epochs=epochs,
        batch_size=batch, num_batch_negs=negs_batch, num_uniform_negs=negs_uniform,
        eval_fraction=0, global_emb=False, workers=2, bucket_order="inside_out",
        entity_path=ent, edge_paths=[edges], checkpoint_path=ckpt)


RUNNER = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from pbg_fast.config import parse_config
from pbg_fast.train.trainer import train
t0 = time.perf_counter()
recs = train(parse_config(json.loads({cfg!r})))
wall = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps(dict(recs=recs, wall=wall, peak_rss_mb=int(hwm) / 1024)))
"""


def run_training(cfg: dict, env: dict = None, root: str = None) -> dict:
    code = RUNNER.format(root=root or str(ROOT), cfg=json.dumps(cfg))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, **(env or {})))
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def reference_hogwild(nodes: int, dim: int, lhs, rhs, batch: int, negs_batch: int,
                      negs_uniform: int, seconds: float, workers: int = 2) -> float:
    """The baseline: the same training step from the plain-PyTorch reference ops (autograd),
    HOGWILD over Python threads sharing the tables. Returns edges/s."""
    from pbg_fast.model import reference as ref
    emb = torch.randn(nodes, dim) * 1e-3
    state = torch.zeros(nodes)
    params = torch.zeros(1, 0)
    done = [0] * workers
    stop = time.perf_counter() + seconds

    def worker(w):
        g = torch.Generator().manual_seed(w)
        while time.perf_counter() < stop:
            i = torch.randint(0, len(lhs) - batch, (1,), generator=g).item()
            s = torch.from_numpy(lhs[i:i + batch])
            d = torch.from_numpy(rhs[i:i + batch])
            chunk = negs_batch or negs_uniform
            c = (batch + chunk - 1) // chunk
            su = torch.randint(0, nodes, (c, negs_uniform), generator=g)
            du = torch.randint(0, nodes, (c, negs_uniform), generator=g)
            mode = "batch_uniform" if negs_batch else "uniform"
            _, gs, gd, *_ = ref.chunk_step(emb, emb, s, d, torch.zeros(batch, dtype=torch.long),
                                           params, su, du, None, None, None, chunk, mode, mode,
                                           "dot", "none", "softmax", 0.1)
            rows = torch.cat([s, su.flatten(), d, du.flatten()])
            ref.row_adagrad_(emb, state, rows, torch.cat([gs, gd]), 0.1)
            done[w] += batch

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def device_bench(a) -> None:
    """--device DEV: the whole bucket op (train_bucket_) on one device, on a graph that fits in
    its memory (default 10M nodes, 100M edges; --quick 1M / 10M), d=100, dot, softmax, 50
    in-chunk + 50 uniform negatives per side, batch 10,000, against a plain-PyTorch trainer on
    the same device built from the reference ops (reference.chunk_step + row_adagrad_, autograd),
    in the same run. Reports edges/s, the ratio, and peak device memory."""
    from pbg_fast.model import reference as ref
    dev = torch.device(a.device)
    info = dict(device=str(dev), build_info=__import__("pbg_fast").build_info())
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            emit(dict(what="train_device", skipped="no CUDA device", **info))
            return
        info["device_name"] = torch.cuda.get_device_name(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    nodes = a.nodes or (1_000_000 if a.quick else 10_000_000)
    edges = a.edges or (10_000_000 if a.quick else 100_000_000)
    dim, batch, negs = 100, 10_000, 50
    g = torch.Generator(device=dev).manual_seed(0)
    emb = torch.randn(nodes, dim, device=dev, generator=g) * 1e-3
    state = torch.zeros(nodes, device=dev)
    lhs = (nodes * torch.rand(edges, device=dev, generator=g) ** 2.5).long()
    rhs = (nodes * torch.rand(edges, device=dev, generator=g) ** 2.5).long()
    none = torch.zeros(1, 0, device=dev)
    empty = torch.zeros(0, device=dev)
    no_rel = torch.zeros(0, dtype=torch.long, device=dev)

    def bucket(n, seed, precision):
        return torch.ops.pbg_fast.train_bucket_(
            emb, state, emb, state, none, none.clone(), none.clone(), none.clone(), empty,
            empty.clone(), empty.clone(), empty.clone(), lhs[:n], rhs[:n], no_rel, None, batch,
            negs, negs, False, False, False, "dot", "none", "softmax", 0.1, 1.0, 0.1, 0.1,
            os.cpu_count() if dev.type == "cpu" else 1, seed, 0.0, False, 0.0, precision)

    # The op once per precision of its products (the first is the headline; a precision named
    # twice runs twice, to bracket the box's noise), each after a warm-up, on the same tables.
    precisions = (a.precisions or ("fp32,tf32,bf16" if dev.type == "cuda" else "fp32")).split(",")
    op = []
    for precision in precisions:
        bucket(min(edges, 20 * batch), 1, precision)  # warm-up
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        sync()
        t0 = time.perf_counter()
        stats = bucket(edges, 2, precision)
        sync()
        op.append(dict(precision=precision, seconds=time.perf_counter() - t0,
                       loss_per_edge=float(stats[0]) / edges,
                       peak_device_mb=(torch.cuda.max_memory_allocated(dev) / 2**20
                                       if dev.type == "cuda" else None)))
    op_s = op[0]["seconds"]
    op_eps = edges / op_s
    peak = op[0]["peak_device_mb"]

    # The baseline: the same step from the reference ops, batch after batch, for a while.
    seconds = 10 if a.quick else 30
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        i = (done // batch) * batch % max(edges - batch, 1)
        s, d = lhs[i:i + batch], rhs[i:i + batch]
        c = batch // negs
        su = torch.randint(0, nodes, (c, negs), device=dev, generator=g)
        du = torch.randint(0, nodes, (c, negs), device=dev, generator=g)
        _, gs, gd, *_ = ref.chunk_step(emb, emb, s, d, torch.zeros(batch, dtype=torch.long, device=dev),
                                       none, su, du, None, None, None, negs, "batch_uniform",
                                       "batch_uniform", "dot", "none", "softmax", 0.1)
        ref.row_adagrad_(emb, state, torch.cat([s, su.flatten(), d, du.flatten()]),
                         torch.cat([gs, gd]), 0.1)
        done += batch
        sync()
    ref_eps = done / (time.perf_counter() - t0)
    emit(dict(what="train_device", nodes=nodes, edges=edges, dim=dim, batch=batch,
              negatives=f"{negs} in-chunk + {negs} uniform per side", op_seconds=op_s,
              edges_per_s=op_eps, reference_edges_per_s=ref_eps,
              speedup_vs_reference=op_eps / ref_eps, peak_device_mb=peak,
              precision=op[0]["precision"], loss_per_edge=op[0]["loss_per_edge"], **info))
    for run in op[1:]:  # the other precisions (or repeats), same run, same tables
        emit(dict(what="train_device_precision", precision=run["precision"], edges=edges,
                  edges_per_s=edges / run["seconds"],
                  speedup_vs_first=op_s / run["seconds"], first=op[0]["precision"],
                  loss_per_edge=run["loss_per_edge"], peak_device_mb=run["peak_device_mb"],
                  **info))
    del emb, state, lhs, rhs
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    # Swapping: the GPU trainer (DeviceTier) at P=4 with room for one bucket's two partitions
    # on the device and on the host, the same graph shape on disk, one epoch, against the CPU
    # trainer is not repeated here (bench_train's own P=4 run is that).
    from pbg_fast.config import parse_config
    from pbg_fast.train.trainer import Trainer
    work = Path(a.workdir or tempfile.mkdtemp(prefix="pbg_fast_bench_device_"))
    swap_edges = edges // 2 if a.quick else edges
    ent, ed = make_graph(work, nodes, swap_edges, 4)
    cfg = config(ent, ed, str(work / "ck_device_p4"), 4)
    cfg.update(batch_size=batch, partition_buffer_size=2)
    t0 = time.perf_counter()
    recs = Trainer(parse_config(cfg), device=dev).train()
    wall = time.perf_counter() - t0
    it = recs[-1]
    emit(dict(what="train_device_swapping", nodes=nodes, edges=swap_edges, partitions=4,
              buffer_partitions=2, edges_per_s=it["edges_per_s"],
              wall_edges_per_s=it["count"] / wall, device_copies=it["device_copies"],
              device_prefetched=it["device_prefetched"],
              device_copy_seconds=it["device_copy_seconds"],
              seconds_per_device_copy=it["device_copy_seconds"] / max(it["device_copies"], 1),
              device_gb_moved=(it["device_bytes_in"] + it["device_bytes_out"]) / 2**30,
              partition_loads=it["partition_loads"], io_wait_seconds=it["io_wait_seconds"],
              peak_device_mb=(torch.cuda.max_memory_allocated(dev) / 2**20
                              if dev.type == "cuda" else None), **info))


def kernel_sweep(a, work: Path, nodes: int, edges: int, base: dict) -> None:
    """bench_train's P=1 run at each ISA level this CPU runs (PBG_FAST_ISA: blas = the x86-64
    baseline with torch's BLAS, avx2, avx512), and at the best level with torch's BLAS for the
    GEMMs (PBG_FAST_GEMM=blas: our GEMM kernels against MKL, all else equal), in interleaved
    rounds; medians, each against the blas level."""
    import shutil
    import statistics

    import pbg_fast
    best = pbg_fast._C.native_build_info()["gemm_isa_best"]
    levels = ["blas", "avx2", "avx512"][:["blas", "avx2", "avx512"].index(best) + 1]
    runs = [(lv, {"PBG_FAST_ISA": lv}) for lv in levels]
    if best != "blas":
        runs.append((f"{best}+blas_gemm", {"PBG_FAST_ISA": best, "PBG_FAST_GEMM": "blas"}))
    ent, ed = make_graph(work, nodes, edges, 1)
    got = {name: [] for name, _ in runs}
    for _ in range(a.rounds):
        for name, env in runs:
            out = run_training(config(ent, ed, str(work / "ck_kernels"), 1), env=env)
            shutil.rmtree(work / "ck_kernels", ignore_errors=True)
            got[name].append(out["recs"][-1]["edges_per_s"])
    med = {n: statistics.median(v) for n, v in got.items()}
    for name, env in runs:
        emit(dict(what="train_isa", config=dict(base, partitions=1), run=name, env=env,
                  edges_per_s=med[name], runs=got[name], vs_blas_level=med[name] / med["blas"]))


def build_sweep(a, work: Path, nodes: int, edges: int, base: dict) -> None:
    """bench_train's P=1 run once per build folder (its pbg_fast/ first on sys.path), in
    interleaved rounds; medians, each against the first build."""
    import shutil
    import statistics
    roots = [str(Path(r).resolve()) for r in a.builds.split(",")]
    ent, ed = make_graph(work, nodes, edges, 1)
    got = {r: [] for r in roots}
    info = {}
    for _ in range(a.rounds):
        for r in roots:
            out = run_training(config(ent, ed, str(work / "ck_build"), 1), root=r)
            shutil.rmtree(work / "ck_build", ignore_errors=True)
            got[r].append(out["recs"][-1]["edges_per_s"])
            probe = subprocess.run(
                [sys.executable, "-c", "import sys, json; sys.path.insert(0, sys.argv[1]); "
                 "import pbg_fast; print(json.dumps(pbg_fast.build_info()))", r],
                capture_output=True, text=True)
            info[r] = json.loads(probe.stdout.strip().splitlines()[-1])
    med = {r: statistics.median(v) for r, v in got.items()}
    for r in roots:
        emit(dict(what="train_build", config=dict(base, partitions=1), build=r,
                  compiled_isa=info[r]["compiled_isa"], gemm_isa=info[r]["gemm_isa"],
                  edges_per_s=med[r], runs=got[r], vs_first=med[r] / med[roots[0]]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--nodes", type=int, default=None)
    ap.add_argument("--edges", type=int, default=None)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--kernels", action="store_true",
                    help="only P=1, once per ISA level (PBG_FAST_ISA) and with BLAS GEMMs "
                         "(PBG_FAST_GEMM), interleaved rounds")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--builds", default=None,
                    help="only P=1, once per build: comma-separated folders each holding a "
                         "built pbg_fast/ (e.g. a portable and a -march=native copy)")
    ap.add_argument("--device", default=None,
                    help="the bucket op alone on this device (cuda, or cpu for a smoke run), "
                         "against a plain-PyTorch trainer on the same device")
    ap.add_argument("--precisions", default=None,
                    help="with --device: the products' precisions to time, comma-separated "
                         "(default fp32,tf32,bf16 on cuda, fp32 on cpu)")
    a = ap.parse_args()
    if a.device:
        return device_bench(a)
    nodes = a.nodes or (100_000 if a.quick else 1_000_000)
    edges = a.edges or (1_000_000 if a.quick else 10_000_000)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="pbg_fast_bench_train_"))
    base = dict(nodes=nodes, edges=edges, dim=100, comparator="dot", loss="softmax",
                batch=1000, workers=2)

    if a.kernels:
        return kernel_sweep(a, work, nodes, edges, base)
    if a.builds:
        return build_sweep(a, work, nodes, edges, base)
    graphs = {p: make_graph(work, nodes, edges, p) for p in (1, 4, 8)}
    # Baseline first (same graph, same step, plain PyTorch).
    rng = np.random.default_rng(1)
    lhs = (nodes * rng.random(min(edges, 2_000_000)) ** 2.5).astype(np.int64)
    rhs = (nodes * rng.random(min(edges, 2_000_000)) ** 2.5).astype(np.int64)
    ref_eps = reference_hogwild(nodes, 100, lhs, rhs, 1000, 50, 50, 10 if a.quick else 30)
    emit(dict(what="train_reference_hogwild", config=base, edges_per_s=ref_eps))

    results = {}
    for p in (1, 4, 8):
        ent, ed = graphs[p]
        out = run_training(config(ent, ed, str(work / f"ck_p{p}"), p))
        it = out["recs"][-1]
        buckets = p * p
        results[p] = dict(edges_per_s=it["edges_per_s"], wall_s=out["wall"],
                          wall_edges_per_s=it["count"] / out["wall"], peak_rss_mb=out["peak_rss_mb"],
                          partition_loads=it["partition_loads"], io_seconds=it["io_seconds"],
                          io_wait_seconds=it["io_wait_seconds"],
                          buffer_capacity=it["buffer_capacity"], buckets=buckets)
        emit(dict(what="train", config=dict(base, partitions=p), **results[p],
                  speedup_vs_reference=it["edges_per_s"] / ref_eps))
    emit(dict(what="partition_memory", p1_peak_rss_mb=results[1]["peak_rss_mb"],
              p8_peak_rss_mb=results[8]["peak_rss_mb"],
              reduction=1 - results[8]["peak_rss_mb"] / results[1]["peak_rss_mb"],
              p4_vs_p1_throughput=results[4]["edges_per_s"] / results[1]["edges_per_s"]))

    # Negatives sweep: edges/s as negatives per side grow (batch negatives = uniform = n/2).
    sweep = []
    ent, ed = graphs[1]
    sweep_edges = edges if a.quick else 2_000_000
    for n in (10, 100, 1000):
        cfg = config(ent, ed, str(work / f"ck_sweep{n}"), 1, negs_batch=n // 2, negs_uniform=n // 2)
        cfg["num_edge_chunks"] = max(1, edges // sweep_edges)
        out = run_training(cfg)
        it = out["recs"][-1]
        sweep.append((n, it["edges_per_s"]))
        emit(dict(what="negatives_sweep", negatives_per_side=n, edges_per_s=it["edges_per_s"],
                  config=dict(base, batch=cfg["batch_size"])))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs, ys = zip(*sweep)
        ax.plot(xs, [y / 1e6 for y in ys], "o-")
        ax.set_xscale("log")
        ax.set_xlabel("negatives per positive, per side")
        ax.set_ylabel("M edges/s (2 workers)")
        ax.set_title("Batched negatives: cost per edge vs negatives")
        ax.set_ylim(bottom=0)
        fig.tight_layout()
        fig.savefig(Path(__file__).parent / "negatives_sweep.png", dpi=120)
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)


if __name__ == "__main__":
    main()
