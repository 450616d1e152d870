# WN18RR with ComplEx, in PyTorch-BigGraph's config format (paths set by the runner with -p):
#   python benchmarks/bench_quality.py wn18rr
def get_torchbiggraph_config():
    return dict(
        entity_path="data/wn18rr",
        edge_paths=["data/wn18rr/train", "data/wn18rr/valid", "data/wn18rr/test"],
        checkpoint_path="model/wn18rr",
        entities={"all": {"num_partitions": 1}},
        relations=[{"name": "all_edges", "lhs": "all", "rhs": "all", "operator": "complex_diagonal"}],
        dynamic_relations=True,
        dimension=400,
        global_emb=False,
        comparator="dot",
        num_epochs=50,
        num_uniform_negs=1000,
        loss_fn="softmax",
        lr=0.1,
        eval_fraction=0,
    )
