"""TSV import speed: pbg_fast's importer against a plain-Python line-by-line importer (PBG
1.0's approach: split, dictionary lookups) measured in the same run on the same file.

    python benchmarks/bench_import.py [--quick] [--lines N]

A 3-column TSV (lhs, relation, rhs) of a power-law graph with 10 relation types.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import emit  # noqa: E402
from pbg_fast.config import parse_config  # noqa: E402
from pbg_fast.io.importer import import_from_tsv  # noqa: E402


def write_tsv(path: Path, lines: int, nodes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    block = 1_000_000
    with open(path, "w") as f:
        for start in range(0, lines, block):
            n = min(block, lines - start)
            lhs = (nodes * rng.random(n) ** 2.5).astype(np.int64)
            rhs = (nodes * rng.random(n) ** 2.5).astype(np.int64)
            rel = rng.integers(0, 10, n)
            f.write("".join(f"n{a}\tr{r}\tn{b}\n" for a, r, b in zip(lhs, rel, rhs)))


def python_baseline(path: Path, max_lines: int) -> float:
    """Lines/s of a straightforward Python importer: two passes, dicts, per-bucket lists."""
    t0 = time.perf_counter()
    names, rels, n = {}, {}, 0
    with open(path) as f:
        for line in f:
            if n >= max_lines:
                break
            a, r, b = line.rstrip("\n").split("\t")
            names.setdefault(a, len(names))
            names.setdefault(b, len(names))
            rels.setdefault(r, len(rels))
            n += 1
    out = ([], [], [])
    with open(path) as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            a, r, b = line.rstrip("\n").split("\t")
            out[0].append(names[a])
            out[1].append(rels[r])
            out[2].append(names[b])
    arrays = [np.array(x, dtype=np.int64) for x in out]
    assert len(arrays[0]) == n
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--lines", type=int, default=None)
    a = ap.parse_args()
    lines = a.lines or (1_000_000 if a.quick else 10_000_000)
    work = Path(tempfile.mkdtemp(prefix="pbg_fast_bench_import_"))
    src = work / "edges.tsv"
    write_tsv(src, lines, nodes=lines // 10)
    cfg = parse_config(dict(
        entities={"node": {"num_partitions": 1}},
        relations=[{"name": "all", "lhs": "node", "rhs": "node"}], dynamic_relations=True,
        global_emb=False,
        dimension=8, entity_path=str(work / "ent"), edge_paths=[str(work / "edges")],
        checkpoint_path=str(work / "ck")))
    base = python_baseline(src, min(lines, 1_000_000))
    st = import_from_tsv(cfg, [str(src)], lhs_col=0, rhs_col=2, rel_col=1)
    emit(dict(what="import", lines=lines, file_mb=src.stat().st_size / 2**20,
              edges_per_s=st.lines / st.seconds, seconds=st.seconds,
              python_baseline_lines_per_s=base, speedup=st.lines / st.seconds / base,
              entities=st.entities))


if __name__ == "__main__":
    main()
