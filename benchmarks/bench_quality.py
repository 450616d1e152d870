"""Link-prediction quality on ../shared/data: import, train, filtered eval, wall time.

    python benchmarks/bench_quality.py fb15k237 [-p num_epochs=5 ...] [--workdir DIR]

Uses benchmarks/configs/<name>.py (PBG format); paths are set here. Prints JSON lines: per
epoch-set training throughput, then filtered test MRR / Hits@k with the wall time.
"""

import argparse
import gzip
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import emit  # noqa: E402
from pbg_fast.config import load_config  # noqa: E402
from pbg_fast.demo import shared_data_dir  # noqa: E402
from pbg_fast.eval.link_prediction import evaluate  # noqa: E402
from pbg_fast.io.importer import import_from_tsv  # noqa: E402
from pbg_fast.train.trainer import train  # noqa: E402

DATA = {"fb15k237": "fb15k-237", "wn18rr": "wn18rr"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=sorted(DATA))
    ap.add_argument("-p", "--param", action="append", default=[])
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    src = shared_data_dir() / DATA[a.name]
    if not (src / "train.txt.gz").exists():
        sys.exit(f"{src}: dataset not present")
    work = Path(a.workdir or tempfile.mkdtemp(prefix=f"pbg_fast_{a.name}_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg_file = Path(__file__).parent / "configs" / f"{a.name}.py"
    splits = ("train", "valid", "test")
    paths = [f"entity_path={work / 'entities'}",
             "edge_paths=" + ",".join(str(work / s) for s in splits),
             f"checkpoint_path={work / 'checkpoint'}"]
    config = load_config(str(cfg_file), paths + a.param)
    tsvs = []
    for s in splits:
        out = work / f"{s}.tsv"
        with gzip.open(src / f"{s}.txt.gz", "rt") as f, open(out, "w") as g:
            g.write(f.read())
        tsvs.append(str(out))
    t0 = time.perf_counter()
    st = import_from_tsv(config, tsvs, lhs_col=0, rhs_col=2, rel_col=1)
    t_import = time.perf_counter() - t0
    train_cfg = load_config(str(cfg_file), paths + a.param + [f"edge_paths={work / 'train'}"])
    t0 = time.perf_counter()
    recs = train(train_cfg)
    t_train = time.perf_counter() - t0
    edges = sum(r["count"] for r in recs)
    op_s = sum(r["train_seconds"] for r in recs)
    test_cfg = load_config(str(cfg_file), paths + a.param + [f"edge_paths={work / 'test'}"])
    t0 = time.perf_counter()
    res = evaluate(test_cfg, filtered=True, filter_paths=[str(work / s) for s in splits])
    t_eval = time.perf_counter() - t0
    o = res["overall"]
    emit(dict(what="quality", dataset=a.name, overrides=a.param, epochs=train_cfg.num_epochs,
              dim=train_cfg.dimension, import_seconds=t_import, train_wall_seconds=t_train,
              bucket_op_edges_per_s=edges / op_s, eval_seconds=t_eval, filtered_test=o,
              entities=st.entities))


if __name__ == "__main__":
    main()
