# WN18RR with ComplEx, in PyTorch-BigGraph's config format: PBG's FB15k recipe (examples/configs/
# fb15k_config.py) plus N3 regularisation and 20 epochs (paths set by the runner with -p):
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
        num_epochs=20,  # PBG's FB15k config: 50, without regularisation
        num_uniform_negs=1000,
        loss_fn="softmax",
        lr=0.1,
        eval_fraction=0,
        # pbg_fast's addition: N3 regularisation (PBG's later `regularization_coef`).
        regularization_coef=0.1,
    )
