"""Config: PBG files load unchanged, JSON/YAML, overrides, and errors that name the key."""

import json

import pytest

from pbg_fast.config import ConfigError, apply_overrides, load_config, parse_config, schema_help

PBG_FILE = '''
def get_torchbiggraph_config():
    config = dict(
        entity_path="data/FB15k",
        edge_paths=["data/train", "data/valid"],
        checkpoint_path="model/fb15k",
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
    return config
'''

# Every key of PBG 1.0's ConfigSchema at its default (what ConfigSchema.to_dict() writes).
PBG_DEFAULTS = dict(
    entities={"e": {"num_partitions": 1, "featurized": False}},
    relations=[{"name": "r", "lhs": "e", "rhs": "e", "weight": 1.0, "operator": "none",
                "all_negs": False}],
    dimension=10, init_scale=1e-3, max_norm=None, global_emb=True, comparator="cos", bias=False,
    loss_fn="ranking", margin=0.1, entity_path="x", edge_paths=["y"], checkpoint_path="z",
    init_path=None, checkpoint_preservation_interval=None, num_epochs=1, num_edge_chunks=None,
    max_edges_per_chunk=1_000_000_000, bucket_order="inside_out", workers=None, batch_size=1000,
    num_batch_negs=50, num_uniform_negs=50, disable_lhs_negs=False, disable_rhs_negs=False,
    lr=1e-2, relation_lr=None, eval_fraction=0.05, eval_num_batch_negs=1000,
    eval_num_uniform_negs=1000, background_io=False, verbose=0, hogwild_delay=2,
    dynamic_relations=False, num_machines=1, num_partition_servers=-1,
    distributed_init_method=None, distributed_tree_init_order=True,
)


def test_pbg_python_config_loads_unchanged(tmp_path):
    f = tmp_path / "fb15k_config.py"
    f.write_text(PBG_FILE)
    c = load_config(str(f))
    assert c.dimension == 400 and c.dynamic_relations and c.relations[0].operator == "complex_diagonal"
    assert c.num_batch_negs == 50 and c.batch_size == 1000  # PBG defaults filled in


def test_every_pbg_default_is_accepted():
    c = parse_config(PBG_DEFAULTS)
    assert c.bucket_order == "inside_out" and c.global_emb


def test_json_config_and_overrides(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps(PBG_DEFAULTS))
    c = load_config(str(f), ["relations.0.operator=diagonal", "edge_paths=a,b", "num_epochs=3",
                             "global_emb=false"])
    assert c.relations[0].operator == "diagonal"
    assert c.edge_paths == ["a", "b"] and c.num_epochs == 3 and c.global_emb is False


def test_yaml_config(tmp_path):
    yaml = pytest.importorskip("yaml")
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(PBG_DEFAULTS))
    assert load_config(str(f)).dimension == 10


@pytest.mark.parametrize("change, message", [
    ({"relations": [{"name": "r", "lhs": "e", "rhs": "e", "operator": "foo"}]},
     r"relations\[0\]\.operator: unknown 'foo'; expected one of none, translation"),
    ({"comparator": "manhattan"}, r"comparator: unknown 'manhattan'"),
    ({"loss_fn": "hinge"}, r"loss_fn: unknown 'hinge'"),
    ({"bucket_order": "zigzag"}, r"bucket_order: unknown 'zigzag'"),
    ({"foo": 1}, r"foo: unknown key"),
    ({"dimension": "ten"}, r"dimension: expected an int"),
    ({"dimension": 0}, r"dimension: must be positive"),
    ({"batch_size": 1010}, r"batch_size: must be a multiple of num_batch_negs"),
    ({"relations": [{"name": "r", "lhs": "e", "rhs": "f"}]}, r"relations\[0\]\.rhs: unknown entity type 'f'"),
    ({"entities": {"e": {"num_partitions": 1, "featurized": True}}}, r"featurized entities are not supported"),
    ({"num_machines": 0}, r"num_machines: must be at least 1"),
    ({"num_partition_servers": -2}, r"num_partition_servers: -1 \(one per trainer\)"),
    ({"distributed_lease": 0.0}, r"distributed_lease: must be positive"),
    ({"distributed_timeout": float("inf")}, r"distributed_timeout: must be a finite number"),
    ({"max_norm": -1.0}, r"max_norm: must be positive"),
    ({"dynamic_relations": True}, r"global_emb: cannot be used with dynamic_relations"),
    ({"regularizer": "L2"}, r"regularizer: unknown 'L2'; expected one of N3"),
    ({"disable_lhs_negs": True, "disable_rhs_negs": True}, r"cannot disable negatives on both sides"),
    ({"relations": [{"name": "r", "lhs": "e", "rhs": "e", "bogus": 1}]}, r"relations\[0\]\.bogus: unknown key"),
    ({"relations": [{"name": "r", "lhs": "e", "rhs": "e", "operator": "diagonal", "all_negs": True}]},
     r"relations\[0\]\.all_negs: with static relations all_negs needs operator 'none'"),
])
def test_bad_config_names_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(dict(PBG_DEFAULTS, **change))


def test_bad_override_and_missing_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps(PBG_DEFAULTS))
    with pytest.raises(ConfigError, match="nope: unknown key"):
        load_config(str(f), ["nope=1"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(str(tmp_path / "missing.py"))
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  \"dimension\": ,\n}")
    with pytest.raises(ConfigError, match=r"bad\.json:2: invalid JSON"):
        load_config(str(bad))


def test_schema_help_lists_every_key():
    text = schema_help()
    for key in PBG_DEFAULTS:
        assert f"\n{key} (" in "\n" + text


def test_torchbiggraph_to_dict_loads(tmp_path):
    tbg = pytest.importorskip("torchbiggraph.config")
    raw = dict(PBG_DEFAULTS)
    c = tbg.ConfigSchema.from_dict(raw)
    assert parse_config(c.to_dict()).dimension == 10


def test_to_pbg_dict_drops_later_keys_at_defaults():
    c = parse_config(PBG_DEFAULTS)
    d = c.to_pbg_dict()
    assert "num_gpus" not in d and "regularization_coef" not in d
    assert "dimension" not in d["entities"]["e"]
    assert set(d) == set(PBG_DEFAULTS)
    with pytest.raises(ConfigError, match="regularization_coef: PyTorch-BigGraph 1.0 has no such key"):
        parse_config(dict(PBG_DEFAULTS, regularization_coef=0.1)).to_pbg_dict()


def _override_base():
    return dict(entities={"user": {"num_partitions": 1}},
                relations=[{"name": "follows", "lhs": "user", "rhs": "user"}],
                dimension=10, entity_path="e", edge_paths=["a"], checkpoint_path="c")


@pytest.mark.parametrize("override,check", [
    # a record's scalar keys: int, float, bool, str, Optional[int], Optional[str]
    ("dimension=20", lambda c: c.dimension == 20),
    ("lr=0.25", lambda c: c.lr == 0.25),
    ("global_emb=false", lambda c: c.global_emb is False),
    ("comparator=l2", lambda c: c.comparator == "l2"),
    ("num_edge_chunks=3", lambda c: c.num_edge_chunks == 3),
    ("init_path=warm", lambda c: c.init_path == "warm"),
    ("init_path=null", lambda c: c.init_path is None),
    # a list: comma-separated or JSON
    ("edge_paths=x,y", lambda c: c.edge_paths == ["x", "y"]),
    ('edge_paths=["x,1", "y"]', lambda c: c.edge_paths == ["x,1", "y"]),
    # a dict's entries: an existing one, a new one, a whole entry as JSON
    ("entities.user.num_partitions=4", lambda c: c.entities["user"].num_partitions == 4),
    ("entities.user.featurized=false", lambda c: not c.entities["user"].featurized),
    ('entities={"user": {"num_partitions": 2}}', lambda c: c.entities["user"].num_partitions == 2),
    # a list of records: by index, or whole as JSON
    ("relations.0.operator=diagonal", lambda c: c.relations[0].operator == "diagonal"),
    ("relations.0.weight=0.5", lambda c: c.relations[0].weight == 0.5),
    ("relations.0.all_negs=true", lambda c: c.relations[0].all_negs),
    ('relations=[{"name": "x", "lhs": "user", "rhs": "user", "operator": "translation"}]',
     lambda c: c.relations[0].name == "x" and c.relations[0].operator == "translation"),
])
def test_override_reaches_every_kind_of_field(override, check):
    assert check(parse_config(apply_overrides(_override_base(), [override])))


def test_override_creates_a_new_dict_entry():
    c = parse_config(apply_overrides(_override_base(), [
        "entities.item.num_partitions=1", "relations.0.rhs=item"]))
    assert sorted(c.entities) == ["item", "user"] and c.relations[0].rhs == "item"


@pytest.mark.parametrize("override,message", [
    ("entities.user.parts=2", r"entities\.user\.parts: unknown key"),
    ("relations.1.operator=none", r"relations has no index 1 \(it has 1 entries\)"),
    ("relations.x.operator=none", r"relations has no index x"),
    ("lr.x=1", r"lr is a float, it has no key 'x'"),
    ("entities=3", r"this key holds a mapping"),
    ("relations=[1,", r"invalid JSON value"),
    ("=3", r"expected key=value"),
    ("lr=inf", r"lr: must be a finite number"),
    ("dimension=99999999999999999999", r"dimension: .* out of range"),
])
def test_override_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(apply_overrides(_override_base(), [override]))


@pytest.mark.parametrize("overrides,message", [
    # Found by test_config_fuzz: a mapping replaced by a list, then walked into by key.
    (["entities=[]", "entities.all.num_partitions="], r"entities is \[\], not a mapping"),
    (["relations={}", "relations.0.operator=none"], r"relations is \{\}, not a list"),
])
def test_override_paths_through_a_replaced_value_of_the_wrong_kind(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(_override_base(), overrides)
