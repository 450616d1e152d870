"""`pbg-fast demo`: real structure, end to end. A planted-community graph (and a small KG from
../shared/data when present) is written as TSV, imported, trained, evaluated; MRR and edges/s
are printed."""

import gzip
import json
import os
import random
import tempfile
import time
from pathlib import Path

from .config import parse_config
from .eval.link_prediction import evaluate
from .io.importer import import_from_tsv
from .train.trainer import train


def shared_data_dir():
    env = os.environ.get("PBG_FAST_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def planted_graph(num_nodes: int, num_communities: int, degree: int, p_in: float,
                  seed: int):
    """Nodes in equal communities; each node links to `degree` others, in its own community with
    probability p_in. Returns (train rows, test rows) split 95/5."""
    rng = random.Random(seed)
    size = num_nodes // num_communities
    rows = []
    for u in range(num_nodes):
        c = u // size
        for _ in range(degree):
            if rng.random() < p_in:
                v = min(c * size + rng.randrange(size), num_nodes - 1)
            else:
                v = rng.randrange(num_nodes)
            if v != u:
                rows.append((f"n{u}", f"n{v}"))
    rng.shuffle(rows)
    k = len(rows) // 20
    return rows[k:], rows[:k]


def write_tsv(path: Path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write("\t".join(r) + "\n")


def base_config(work: Path, **over):
    cfg = dict(
        entities={"node": {"num_partitions": 1}},
        relations=[{"name": "link", "lhs": "node", "rhs": "node", "operator": "none"}],
        dimension=64, comparator="dot", loss_fn="softmax", lr=0.1, num_epochs=10,
        batch_size=1000, num_batch_negs=50, num_uniform_negs=50, eval_fraction=0,
        global_emb=False, entity_path=str(work / "entities"),
        edge_paths=[str(work / "edges_train"), str(work / "edges_test")],
        checkpoint_path=str(work / "checkpoint"), workers=2,
    )
    cfg.update(over)
    return cfg


def run_planted(work: Path, partitions: int, quick: bool):
    n = 20_000 if quick else 100_000
    train_rows, test_rows = planted_graph(n, 200, 10, 0.9, seed=0)
    write_tsv(work / "train.tsv", train_rows)
    write_tsv(work / "test.tsv", test_rows)
    cfg = base_config(work, entities={"node": {"num_partitions": partitions}},
                      num_epochs=5 if quick else 10)
    config = parse_config(cfg)
    st = import_from_tsv(config, [str(work / "train.tsv"), str(work / "test.tsv")], 0, 1)
    print(f"[planted P={partitions}] imported {st.lines:,} lines in {st.seconds:.2f} s "
          f"({st.lines / st.seconds:,.0f} lines/s)")
    train_cfg = parse_config(dict(cfg, edge_paths=cfg["edge_paths"][:1]))
    t0 = time.perf_counter()
    recs = train(train_cfg)
    wall = time.perf_counter() - t0
    edges = sum(r["count"] for r in recs)
    train_s = sum(r["train_seconds"] for r in recs)
    test_cfg = parse_config(dict(cfg, edge_paths=cfg["edge_paths"][1:]))
    res = evaluate(test_cfg)["overall"]
    print(f"[planted P={partitions}] {n:,} nodes, {len(train_rows):,} train edges x "
          f"{train_cfg.num_epochs} epochs: {edges / train_s:,.0f} edges/s in the bucket op, "
          f"{wall:.1f} s wall; test MRR {res['mrr']:.3f} (sampled, 1000+1000 negatives), "
          f"Hits@10 {res['hits10']:.3f}")
    return res


def run_kg(work: Path, name: str, quick: bool):
    src = shared_data_dir() / name
    if not (src / "train.txt.gz").exists():
        print(f"[{name}] skipped: {src} not present")
        return None
    paths = []
    for split in ("train", "valid", "test"):
        out = work / f"{split}.tsv"
        with gzip.open(src / f"{split}.txt.gz", "rt") as f, open(out, "w") as g:
            g.write(f.read())
        paths.append(str(out))
    # benchmarks/configs/fb15k237.py's recipe (PBG's FB15k config + N3), shorter.
    cfg = base_config(
        work, entities={"entity": {"num_partitions": 1}},
        relations=[{"name": "all", "lhs": "entity", "rhs": "entity", "operator": "complex_diagonal"}],
        dynamic_relations=True, dimension=200 if quick else 400, comparator="dot",
        loss_fn="softmax", lr=0.1, num_epochs=10, batch_size=1000, num_batch_negs=50,
        num_uniform_negs=1000, regularization_coef=0.05,
        edge_paths=[str(work / f"edges_{s}") for s in ("train", "valid", "test")],
    )
    config = parse_config(cfg)
    import_from_tsv(config, paths, lhs_col=0, rhs_col=2, rel_col=1)
    t0 = time.perf_counter()
    recs = train(parse_config(dict(cfg, edge_paths=cfg["edge_paths"][:1])))
    wall = time.perf_counter() - t0
    edges = sum(r["count"] for r in recs)
    train_s = sum(r["train_seconds"] for r in recs)
    res = evaluate(parse_config(dict(cfg, edge_paths=cfg["edge_paths"][2:])), filtered=True,
                   filter_paths=cfg["edge_paths"])["overall"]
    print(f"[{name}] ComplEx d={cfg['dimension']}, N3, {cfg['num_epochs']} epochs: {edges / train_s:,.0f} edges/s, "
          f"{wall:.1f} s wall; filtered test MRR {res['mrr']:.3f}, Hits@10 {res['hits10']:.3f}")
    return res


def run_demo(quick: bool = False, workdir=None):
    with tempfile.TemporaryDirectory(prefix="pbg_fast_demo_") as tmp:
        root = Path(workdir or tmp)
        for p in (1, 4):
            d = root / f"planted_p{p}"
            d.mkdir(parents=True, exist_ok=True)
            run_planted(d, p, quick)
        d = root / "kg"
        d.mkdir(parents=True, exist_ok=True)
        run_kg(d, "umls" if quick else "fb15k-237", quick)
