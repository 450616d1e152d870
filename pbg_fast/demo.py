"""`pbg-fast demo`: real structure, end to end. A planted-community graph and a small real
knowledge graph (pbg_fast.datasets: FB15k-237 when provided, otherwise UMLS, which `make setup`
makes available through pykeen's package data) are written as TSV, imported, trained,
evaluated; MRR and edges/s are printed."""

import random
import sys
import tempfile
import time
from pathlib import Path

from . import datasets
from .config import parse_config
from .datasets import shared_data_dir  # noqa: F401  (kept here for benchmarks/*.py)
from .errors import DataError
from .eval.link_prediction import evaluate
from .io.importer import import_from_tsv
from .train.trainer import train


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


# The knowledge-graph recipes: ComplEx (complex_diagonal + dot) with softmax loss and N3.
KG_RECIPES = {
    # benchmarks/configs/fb15k237.py's recipe (PBG's FB15k config + N3), shorter.
    "fb15k-237": dict(dimension=400, lr=0.1, num_epochs=10, batch_size=1000, num_batch_negs=50,
                      num_uniform_negs=1000, regularization_coef=0.05),
    # UMLS (135 entities): filtered test MRR 0.856-0.864, Hits@10 0.996, in ~3 s on 2 cores.
    # Tried: N3 0.005/0.01/0.03/0.05 (0.83/0.85/0.85/0.81), 20-60 epochs (plateau from ~40),
    # d=400, lr 0.05/0.2, 200 or 1000 uniform negatives: none better.
    "umls": dict(dimension=200, lr=0.1, num_epochs=40, batch_size=1000, num_batch_negs=50,
                 num_uniform_negs=100, regularization_coef=0.02),
}


def pick_kg(quick: bool):
    """The demo's knowledge graph: umls for --quick; otherwise fb15k-237 when it can be found,
    else umls. Returns (the Dataset or None, the reasons the ones before it were not found)."""
    wanted = ["umls"] if quick else ["fb15k-237", "umls"]
    errors = []
    for name in wanted:
        try:
            return datasets.load(name), errors
        except DataError as e:
            errors.append(str(e))
    return None, errors


def run_kg(work: Path, ds: "datasets.Dataset"):
    name = ds.name
    print(f"[{name}] {ds.summary()}")
    paths = [str(ds.paths[s]) for s in ("train", "valid", "test")]
    rec = KG_RECIPES[name]
    cfg = base_config(
        work, entities={"entity": {"num_partitions": 1}},
        relations=[{"name": "all", "lhs": "entity", "rhs": "entity",
                    "operator": "complex_diagonal"}],
        dynamic_relations=True, comparator="dot", loss_fn="softmax",
        edge_paths=[str(work / f"edges_{s}") for s in ("train", "valid", "test")], **rec,
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
    print(f"[{name}] ComplEx d={cfg['dimension']}, N3 {cfg['regularization_coef']}, "
          f"{cfg['num_epochs']} epochs: {edges / train_s:,.0f} edges/s, {wall:.1f} s wall; "
          f"filtered test MRR {res['mrr']:.3f}, Hits@1 {res['hits1']:.3f}, "
          f"Hits@10 {res['hits10']:.3f}")
    return res


def run_demo(quick: bool = False, workdir=None):
    with tempfile.TemporaryDirectory(prefix="pbg_fast_demo_") as tmp:
        root = Path(workdir or tmp)
        for p in (1, 4):
            d = root / f"planted_p{p}"
            d.mkdir(parents=True, exist_ok=True)
            run_planted(d, p, quick)
        ds, errors = pick_kg(quick)
        for e in errors if ds is not None else ():
            print(f"[kg] {e}; using {ds.name} instead", file=sys.stderr)
        if ds is None:
            print("[kg] no knowledge graph found, so the knowledge-graph part did not run:",
                  file=sys.stderr)
            for e in errors:
                print(f"[kg]   {e}", file=sys.stderr)
            return
        d = root / "kg"
        d.mkdir(parents=True, exist_ok=True)
        run_kg(d, ds)
