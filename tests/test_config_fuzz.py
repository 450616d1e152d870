"""Fuzzing the config loader: generated config files (JSON, YAML, Python) and generated raw
configs and -p overrides either load or fail with the project's ConfigError / DataError
(pbg_fast.errors.UserError); nothing else may escape."""

import json
from dataclasses import fields

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbg_fast.config import (ConfigSchema, EntitySchema, RelationSchema, apply_overrides,
                             load_config, parse_config)
from pbg_fast.errors import UserError

KEYS = [f.name for f in fields(ConfigSchema)]
ENTITY_KEYS = [f.name for f in fields(EntitySchema)]
RELATION_KEYS = [f.name for f in fields(RelationSchema)]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["none", "dot", "cos", "l2", "softmax", "ranking", "translation",
                     "complex_diagonal", "all", "1", "0", "true", "nan", "-1", "1e400"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)
entity = st.dictionaries(st.sampled_from(ENTITY_KEYS + ["bogus"]), values, max_size=3)
relation = st.dictionaries(st.sampled_from(RELATION_KEYS + ["bogus"]),
                           st.one_of(values, st.just("all")), max_size=5)


def valid_base():
    return dict(entities={"all": {"num_partitions": 1}},
                relations=[{"name": "r", "lhs": "all", "rhs": "all"}], dimension=8,
                entity_path="e", edge_paths=["p"], checkpoint_path="c")


raw_configs = st.builds(
    lambda base, extra, ents, rels, drop: {
        **{k: v for k, v in base.items() if k not in drop}, **extra,
        **({"entities": ents} if ents is not None else {}),
        **({"relations": rels} if rels is not None else {})},
    st.just(valid_base()),
    st.dictionaries(st.sampled_from(KEYS + ["unknown_key"]), values, max_size=4),
    st.one_of(st.none(), st.dictionaries(st.text(min_size=0, max_size=8), entity, max_size=2)),
    st.one_of(st.none(), st.lists(relation, max_size=2)),
    st.sets(st.sampled_from(KEYS), max_size=2))

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FUZZ
@given(raw_configs)
def test_generated_raw_configs_load_or_raise_config_errors(raw):
    try:
        c = parse_config(raw)
    except UserError:
        return
    # What loads is valid: it round-trips through its own JSON.
    assert parse_config(json.loads(c.to_json())) == c


override_keys = st.one_of(
    st.sampled_from(KEYS), st.sampled_from([f"entities.all.{k}" for k in ENTITY_KEYS]),
    st.sampled_from([f"relations.{i}.{k}" for i in (0, 1, -1) for k in RELATION_KEYS]),
    st.text(alphabet="abc.01_", max_size=12))
override_values = st.one_of(st.text(max_size=10), st.sampled_from(
    ["null", "[1,", "{}", "[]", '{"a": 1}', "nan", "inf", "1e999", "true", "x,y", ""]))


@FUZZ
@given(st.lists(st.tuples(override_keys, override_values), max_size=3))
def test_generated_overrides_apply_or_raise_config_errors(items):
    try:
        parse_config(apply_overrides(valid_base(), [f"{k}={v}" for k, v in items]))
    except UserError:
        pass


@FUZZ
@given(st.sampled_from([".json", ".yaml", ".py"]),
       st.one_of(st.binary(max_size=200),
                 st.builds(lambda raw: json.dumps(raw).encode(), raw_configs),
                 st.builds(lambda raw: ("def get_torchbiggraph_config():\n    return "
                                        + repr(raw) + "\n").encode(), raw_configs)))
def test_generated_config_files_load_or_raise_config_errors(tmp_path_factory, ext, data):
    path = tmp_path_factory.mktemp("cfg") / f"config{ext}"
    path.write_bytes(data)
    try:
        load_config(str(path))
    except UserError as e:
        assert ": " in str(e), str(e)  # "<where>: <what>"
