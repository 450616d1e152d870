"""import_from_tsv on generated TSV bytes: it imports exactly the lines a simple independent
oracle calls valid (or skips and counts the others), or fails with a UserError naming the
oracle's first bad line and writes nothing. No other exception may escape."""

import json
import math
from pathlib import Path

import h5py
import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pbg_fast.config import parse_config
from pbg_fast.errors import UserError
from pbg_fast.io.importer import import_from_tsv

# ---- the oracle: the line rules of pbg_fast.io.importer, written out plainly -------------------


def oracle(data: bytes, lhs: int, rhs: int, weight):
    """([(lhs, rhs, weight or None)] of the valid lines, [line numbers of the bad lines])."""
    need = max(c for c in (lhs, rhs, weight) if c is not None) + 1
    good, bad = [], []
    for no, line in enumerate(data.split(b"\n"), start=1):
        if no == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        if line.endswith(b"\r"):
            line = line[:-1]
        if line == b"":
            continue  # blank
        fields = line.split(b"\t")
        if b"\r" in line or len(fields) < need:
            bad.append(no)
            continue
        try:
            l, r = fields[lhs].decode(), fields[rhs].decode()
            w = None
            if weight is not None:
                with np.errstate(over="ignore"):  # float32 overflow: inf, a bad weight
                    w = float(np.float32(float(fields[weight].decode().strip(" \t"))))
        except (UnicodeDecodeError, ValueError):
            bad.append(no)
            continue
        if l == "" or r == "" or (w is not None and not (math.isfinite(w) and w >= 0)):
            bad.append(no)
            continue
        good.append((l, r, w))
    return good, bad


# ---- generated files ---------------------------------------------------------------------------

NAMES = ["a", "b", "c", "dd", "é", "名前", "x y", " ", "n\x00", '"q"', "1.5"]
GOOD_WEIGHTS = ["0.5", "1", "0", "-0", "2e3", " 1.5", "1.5 ", "1e-50", ".25", "+3"]
BAD_WEIGHTS = ["nan", "NaN", "inf", "-inf", "-1", "1e400", "1e39", "abc", "", "  ", "1,5", "0x1"]

# Mostly short names; one in twelve is a field of 100 to 3000 bytes (several chunks long).
name = st.tuples(st.sampled_from(NAMES + [None]), st.integers(100, 3000)).map(
    lambda t: "h" * t[1] if t[0] is None else t[0])
good_weight = st.one_of(st.sampled_from(GOOD_WEIGHTS), st.floats(0, 1e38).map(repr))
weight = st.one_of(good_weight, st.sampled_from(BAD_WEIGHTS),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr))
field = st.one_of(name.map(str.encode), weight.map(str.encode),
                  st.sampled_from([b"", b"\xff", b"\xc3", b"ok\xe9", b" ", b"a\rb"]))
odd_line = st.sampled_from([b"", b"\r", b" ", b"\t", b" \t ", b"\xef\xbb\xbfa\tb"])


@st.composite
def good_row(draw, need: int, w):
    """need valid fields (all names, but a valid weight in the weight column)."""
    fields = [draw(name).encode() for _ in range(need)]
    if w is not None:
        fields[w] = draw(good_weight).encode()
    return b"\t".join(fields)


@st.composite
def odd_row(draw, need: int):
    """A line that is often bad: a column more or too few, odd fields, any weight."""
    n = draw(st.sampled_from([need, need, need + 1, need + 2, 1, need - 1, 0]))
    fields = [draw(field) for _ in range(max(n, 0))]
    if len(fields) > 2 and draw(st.booleans()):  # a weight-like column 2
        fields[2] = draw(weight).encode()
    return b"\t".join(fields)


@st.composite
def near_good_row(draw, need: int, w):
    """A good line with one defect Arrow alone would miss or read differently: a bad weight,
    an empty field, a stray \r, a BOM in front, an extra column, an undecodable unused one."""
    line = draw(good_row(need, w))
    fields = line.split(b"\t")
    kind = draw(st.sampled_from(["weight", "empty", "cr", "bom", "extra", "unused"]))
    if kind == "weight" and w is not None:
        fields[w] = draw(st.sampled_from(BAD_WEIGHTS)).encode()
    elif kind == "empty":
        fields[draw(st.integers(0, need - 1))] = b""
    elif kind == "cr":
        fields[0] += b"\r"
    elif kind == "bom":
        fields[0] = b"\xef\xbb\xbf" + fields[0]
    else:
        fields.append(b"\xff" if kind == "unused" else b"extra")
    return b"\t".join(fields)


LAYOUTS = [(0, 1, None), (0, 1, 2), (1, 0, None), (2, 0, 1), (0, 2, None)]


@st.composite
def tsv(draw):
    """(file bytes, lhs, rhs, weight column): good lines, and odd ones at a per-file rate (none
    in some files, most in others), with \n or \r\n ends, maybe no last end, maybe a BOM."""
    lhs, rhs, w = draw(st.sampled_from(LAYOUTS))
    need = max(c for c in (lhs, rhs, w) if c is not None) + 1
    odd_pct = draw(st.sampled_from([0, 0, 2, 10, 50]))
    line = st.integers(0, 99).flatmap(lambda p: (
        good_row(need, w) if p >= odd_pct else
        st.one_of(near_good_row(need, w), near_good_row(need, w), odd_row(need), odd_line)))
    end = st.sampled_from([b"\n", b"\n", b"\r\n"])
    data = b"".join(draw(line) + draw(end) for _ in range(draw(st.integers(0, 60))))
    if data and draw(st.booleans()):
        data = data.rstrip(b"\n")  # no line end after the last line
    if draw(st.integers(0, 9)) == 0:
        data = b"\xef\xbb\xbf" + data
    return data, lhs, rhs, w


def read_back(cfg, with_weight):
    names = json.loads(Path(cfg.entity_path, "entity_names_node_0.json").read_text())
    f = Path(cfg.edge_paths[0], "edges_0_0.h5")
    if not f.exists():
        return []
    with h5py.File(f, "r") as hf:
        ws = hf["weight"][...].tolist() if with_weight else [None] * len(hf["lhs"])
        return [(names[l], names[r], w) for l, r, w in zip(hf["lhs"][...], hf["rhs"][...], ws)]


def key(edge):
    l, r, w = edge
    return l, r, -1.0 if w is None else float(np.float32(w))


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=tsv(), skip=st.booleans(), block_bytes=st.sampled_from([1, 16, 64, 300, 1 << 20]))
def test_import_matches_oracle(tmp_path_factory, case, skip, block_bytes):
    data, lhs, rhs, w = case
    tmp = tmp_path_factory.mktemp("fuzz")
    src = tmp / "in.tsv"
    src.write_bytes(data)
    cfg = parse_config(dict(
        entities={"node": {"num_partitions": 1}},
        relations=[{"name": "r0", "lhs": "node", "rhs": "node"}], dimension=8,
        entity_path=str(tmp / "ent"), edge_paths=[str(tmp / "edges")],
        checkpoint_path=str(tmp / "ckpt")))
    good, bad = oracle(data, lhs, rhs, w)
    event("bad lines" if bad else "all valid")
    event("lines %d+" % min(data.count(b"\n") // 10 * 10, 60))
    try:
        st_ = import_from_tsv(cfg, [str(src)], lhs, rhs, weight_col=w, skip_bad_lines=skip,
                              block_bytes=block_bytes)
    except UserError as e:
        assert not skip and bad, f"unexpected error {e}"
        assert str(e).startswith(f"{src}:{bad[0]}: "), (str(e), bad[0])
        for d in (tmp / "ent", tmp / "edges"):
            left = [p.name for p in d.iterdir()] if d.exists() else []
            assert not [n for n in left if n.startswith(("edges_", "entity_", ".pbg_fast"))], left
        return
    assert skip or not bad, f"line {bad[0]} is bad but the import succeeded"
    assert st_.skipped_bad_lines == len(bad)
    assert st_.edges == st_.lines == len(good)
    got = read_back(cfg, w is not None)
    assert sorted(map(key, got)) == sorted(map(key, good))
