# FB15k-237 with ComplEx, in PyTorch-BigGraph's config format: its examples/configs/fb15k_config.py
# plus N3 regularisation and 20 epochs (paths set by the runner with -p):
#   python benchmarks/bench_quality.py fb15k237
def get_torchbiggraph_config():
    return dict(
        entity_path="data/fb15k237",
        edge_paths=["data/fb15k237/train", "data/fb15k237/valid", "data/fb15k237/test"],
        checkpoint_path="model/fb15k237",
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
        regularization_coef=0.05,
    )
