"""Out-of-core training: a graph whose embedding table does not fit the partition buffer's
memory, trained through the PartitionBuffer, against the old synchronous swaps and against the
same graph held fully in memory, all in the same run (issue #8).

    python benchmarks/bench_out_of_core.py [--quick] [--nodes N --edges E --dim D --parts P]

Default: a power-law graph of 16M nodes and 64M edges at d=100 (a 6.4 GB table), one epoch:
  p1_memory    P=1, the whole table in memory (the yardstick)
  pP_buffer    P=16, bucket_order=buffer, partition_io=async, the buffer's capacity as the
               default rule derives it from partition_buffer_memory_gb = --budget x table
               (default 0.35: a machine whose buffer may hold a third of the table)
  pP_sync      P=16, partition_io=sync, 2 partitions, inside_out: the swaps pbg_fast made
               before the buffer (load, train, evict, all in the training thread)
Each run is a subprocess (its own VmHWM). Reports wall-clock edges/s of the epoch (swaps and
commit included), I/O seconds hidden behind training and not, partition loads, and peak RSS
against the table's bytes; the import of the same graph from TSV, with its peak RSS; and the
partition loads every bucket order costs a buffer of c partitions. JSON lines.

The checkpoint files go through the OS page cache: on this 24 GB box the 6.4 GB table's files
stay cached, so "disk" reads are memory copies here; on a machine whose RAM is smaller than
the table they hit the disk and there is more I/O to hide.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.bench_train import make_graph, run_training  # noqa: E402
from benchmarks.common import emit  # noqa: E402
from pbg_fast.train.schedule import bucket_order, count_loads  # noqa: E402

IMPORT_RUNNER = """
import json, sys
sys.path.insert(0, {root!r})
from pbg_fast.config import parse_config
from pbg_fast.io.importer import import_from_tsv
st = import_from_tsv(parse_config(json.loads({cfg!r})), [{tsv!r}], 0, 1)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps(dict(lines=st.lines, seconds=st.seconds, peak_rss_mb=int(hwm) / 1024)))
"""


def subprocess_json(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-4000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def config(ent, edges, ckpt, parts, dim, **over):
    cfg = dict(
        entities={"node": {"num_partitions": parts}},
        relations=[{"name": "link", "lhs": "node", "rhs": "node"}],
        dimension=dim, comparator="dot", loss_fn="softmax", lr=0.1, num_epochs=1,
        batch_size=1000, num_batch_negs=50, num_uniform_negs=50, eval_fraction=0,
        global_emb=False, workers=2, entity_path=ent, edge_paths=[edges], checkpoint_path=ckpt)
    cfg.update(over)
    return cfg


def write_tsv(path: Path, nodes: int, edges: int, seed: int = 0) -> None:
    """The same kind of graph as make_graph, as names in a TSV (streamed in blocks)."""
    rng = np.random.default_rng(seed)
    relabel = rng.permutation(nodes)
    block = 1 << 22
    with open(path, "w") as f:
        for start in range(0, edges, block):
            n = min(block, edges - start)
            lhs = relabel[(nodes * rng.random(n) ** 2.5).astype(np.int64)]
            rhs = relabel[(nodes * rng.random(n) ** 2.5).astype(np.int64)]
            f.write("\n".join(f"n{a}\tn{b}" for a, b in zip(lhs.tolist(), rhs.tolist())))
            f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--nodes", type=int, default=None)
    ap.add_argument("--edges", type=int, default=None)
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--parts", type=int, default=16)
    ap.add_argument("--budget", type=float, default=0.35,
                    help="the buffer's memory budget as a fraction of the table")
    ap.add_argument("--no-import", action="store_true", help="skip the import check")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--only", default=None, help="train only this run (p1_memory, "
                    "pP_buffer or pP_sync), to look into one; the summary needs all three")
    a = ap.parse_args()
    nodes = a.nodes or (1_000_000 if a.quick else 16_000_000)
    edges = a.edges or (4_000_000 if a.quick else 64_000_000)
    parts, dim = a.parts, a.dim
    table_bytes = nodes * (dim + 1) * 4  # embeddings and the row-Adagrad state
    work = Path(a.workdir or tempfile.mkdtemp(prefix="pbg_fast_ooc_"))
    work.mkdir(parents=True, exist_ok=True)
    base = dict(nodes=nodes, edges=edges, dim=dim, table_gb=table_bytes / 1e9, parts=parts)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown")
    emit(dict(what="out_of_core_setup", cpu=cpu, **base))

    for c in (3, 4, 6, 8):
        loads = {o: count_loads(bucket_order(o, parts, parts, 0, c), c)
                 for o in ("buffer", "inside_out", "outside_in", "affinity", "random")}
        emit(dict(what="partition_loads_per_epoch", parts=parts, capacity=c, **loads))

    if not a.no_import:
        tsv = work / "graph.tsv"
        t0 = time.perf_counter()
        write_tsv(tsv, nodes, edges)
        gen_s = time.perf_counter() - t0
        icfg = config(str(work / "imp_ent"), str(work / "imp_edges"), str(work / "imp_ck"),
                      parts, dim)
        res = subprocess_json(IMPORT_RUNNER.format(root=str(ROOT), cfg=json.dumps(icfg),
                                                   tsv=str(tsv)))
        emit(dict(what="out_of_core_import", tsv_gb=tsv.stat().st_size / 1e9,
                  write_tsv_seconds=gen_s, lines_per_s=res["lines"] / res["seconds"],
                  peak_rss_mb=res["peak_rss_mb"], **base))
        tsv.unlink()
        shutil.rmtree(work / "imp_edges", ignore_errors=True)
        shutil.rmtree(work / "imp_ent", ignore_errors=True)

    graphs = {}
    runs = [
        ("p1_memory", 1, dict(bucket_order="inside_out")),
        (f"p{parts}_buffer", parts, dict(bucket_order="buffer", partition_io="async",
                                         partition_buffer_memory_gb=a.budget * table_bytes / 2**30)),
        (f"p{parts}_sync", parts, dict(bucket_order="inside_out", partition_io="sync",
                                       partition_buffer_size=2)),
    ]
    results = {}
    for name, p, over in runs:
        if a.only and name != a.only.replace("pP", f"p{parts}"):
            continue
        if p not in graphs:
            graphs[p] = make_graph(work, nodes, edges, p)
        ent, ed = graphs[p]
        ck = work / f"ck_{name}"
        out = run_training(config(ent, ed, str(ck), p, dim, **over))
        shutil.rmtree(ck, ignore_errors=True)
        it = out["recs"][-1]
        res = dict(wall_edges_per_s=it["wall_edges_per_s"], bucket_op_edges_per_s=it["edges_per_s"],
                   epoch_seconds=it["seconds"], train_seconds=it["train_seconds"],
                   io_seconds=it["io_seconds"], io_wait_seconds=it["io_wait_seconds"],
                   io_wait_first_bucket_seconds=it["io_wait_first_bucket_seconds"],
                   io_wait_commit_seconds=it["io_wait_commit_seconds"],
                   io_hidden_fraction=(it["io_hidden_seconds"] / it["io_seconds"]
                                       if it["io_seconds"] > 0 else None),
                   partition_loads=it["partition_loads"], partition_writes=it["partition_writes"],
                   buffer_capacity=it["buffer_capacity"], gb_read=it["bytes_read"] / 1e9,
                   gb_written=it["bytes_written"] / 1e9, peak_rss_mb=out["peak_rss_mb"],
                   peak_rss_vs_table=out["peak_rss_mb"] * 2**20 / table_bytes)
        results[name] = res
        emit(dict(what="out_of_core_train", run=name, config=over, **base, **res))
    if a.only:
        return
    mem, buf, sync = (results[n] for n, _, _ in runs)
    emit(dict(what="out_of_core_summary", **base,
              buffer_vs_memory_wall=buf["wall_edges_per_s"] / mem["wall_edges_per_s"],
              sync_vs_memory_wall=sync["wall_edges_per_s"] / mem["wall_edges_per_s"],
              buffer_vs_sync_wall=buf["wall_edges_per_s"] / sync["wall_edges_per_s"],
              buffer_peak_rss_vs_table=buf["peak_rss_vs_table"],
              buffer_io_hidden_fraction=buf["io_hidden_fraction"]))
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
