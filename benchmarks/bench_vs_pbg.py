"""pbg_fast against PyTorch-BigGraph 1.0 itself, same graph, same config, same run.

    python benchmarks/bench_vs_pbg.py --peer-python .peer-venv/bin/python [--nodes N --edges E]
        [--precisions fp32,bf16]

Both train one epoch of a synthetic power-law graph written once in PBG's layout (d=100, dot,
softmax, 50 in-chunk + 50 uniform negatives, batch 1000, 2 workers, hogwild_delay 0,
eval_fraction 0). Reports each one's end-to-end wall time (process start to exit) and edges per
second of wall time. Needs the peer venv (`make peer`).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.bench_train import config, make_graph  # noqa: E402
from benchmarks.common import emit  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer-python", required=True)
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--edges", type=int, default=2_000_000)
    ap.add_argument("--precisions", default="fp32",
                    help="pbg_fast's matmul_precision, one run each after PBG's, comma-separated "
                         "(bf16: where the CPU has AVX512-BF16)")
    ap.add_argument("--fb15k237-epochs", type=int, default=0,
                    help="instead: PBG's FB15k config on FB15k-237 for this many epochs")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pbg_fast_vs_pbg_"))
    if a.fb15k237_epochs:
        import gzip
        from pbg_fast.config import load_config
        from pbg_fast.demo import shared_data_dir
        from pbg_fast.io.importer import import_from_tsv
        src = shared_data_dir() / "fb15k-237" / "train.txt.gz"
        (work / "train.tsv").write_text(gzip.open(src, "rt").read())
        paths = [f"entity_path={work / 'ent'}", f"edge_paths={work / 'train'}",
                 f"checkpoint_path={work / 'ck'}", f"num_epochs={a.fb15k237_epochs}",
                 "regularization_coef=0"]
        base = load_config(str(ROOT / "benchmarks/configs/fb15k237.py"), paths)
        import_from_tsv(base, [str(work / "train.tsv")], lhs_col=0, rhs_col=2, rel_col=1)
        a.edges = 272_115 * a.fb15k237_epochs
        base_dict = base.to_pbg_dict()
    else:
        ent, edges = make_graph(work, a.nodes, a.edges, 1)
    results = {}
    precisions = a.precisions.split(",")
    runs = [("pbg", None)] + [("pbg_fast", p) for p in precisions]
    for name, precision in runs:
        ck = str(work / f"ck_{name}{'_' + precision if precision else ''}")  # a fresh run each
        if a.fb15k237_epochs:
            cfg = dict(base_dict, checkpoint_path=ck)
        else:
            cfg = config(ent, edges, ck, 1)
        cfg.update(hogwild_delay=0)
        if precision is not None:
            cfg.update(matmul_precision=precision)
        cfg_file = work / f"{name}_config.py"
        cfg_file.write_text("def get_torchbiggraph_config():\n    return " + repr(cfg) + "\n")
        cmd = ([a.peer_python, "-m", "torchbiggraph.train", str(cfg_file)] if name == "pbg" else
               [sys.executable, "-m", "pbg_fast", "train", str(cfg_file), "--quiet"])
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=work,
                             env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        wall = time.perf_counter() - t0
        if out.returncode:
            sys.exit(f"{name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        # Training-only rate, as each reports it: PBG logs "Processed N edges in T s" per bucket;
        # pbg_fast's iteration record has the bucket op's seconds.
        if name == "pbg":
            import re
            m = re.findall(r"Processed (\d+) edges in ([\d.]+) s", out.stdout + out.stderr)
            train_rate = sum(int(n) for n, _ in m) / sum(float(t) for _, t in m) if m else None
        else:
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            train_rate = rec["edges_per_s"]
        results[precision] = (wall, train_rate)
        emit(dict(what="vs_pbg", trainer=name, matmul_precision=precision, nodes=a.nodes,
                  edges=a.edges, wall_s=wall, wall_edges_per_s=a.edges / wall,
                  training_edges_per_s=train_rate))
    w_pbg, r_pbg = results[None]
    for p in precisions:
        w_ours, r_ours = results[p]
        emit(dict(what="vs_pbg_ratio", matmul_precision=p, speedup_wall=w_pbg / w_ours,
                  speedup_training=(r_ours / r_pbg) if r_pbg else None))


if __name__ == "__main__":
    main()
