"""import_from_tsv: PBG's layout, partitions, weights, min counts, and bad input that fails with
file:line and leaves nothing behind."""

import json

import h5py
import numpy as np
import pytest

from pbg_fast.config import parse_config
from pbg_fast.io.files import DataError
from pbg_fast.io.importer import import_from_tsv


def config(tmp_path, parts=1, dynamic=False, relations=None, n_paths=1):
    return parse_config(dict(
        entities={"node": {"num_partitions": parts}},
        relations=relations or [{"name": "r0", "lhs": "node", "rhs": "node"}],
        dimension=8, dynamic_relations=dynamic, global_emb=not dynamic,
        entity_path=str(tmp_path / "ent"),
        edge_paths=[str(tmp_path / f"edges{i}") for i in range(n_paths)],
        checkpoint_path=str(tmp_path / "ckpt")))


def read_back(cfg, parts):
    """All edges as (lhs name, rel, rhs name) triples, from PBG's layout."""
    names = {p: json.loads((tmp := cfg.entity_path + f"/entity_names_node_{p}.json") and open(tmp).read())
             for p in range(parts)}
    out = []
    for lp in range(parts):
        for rp in range(parts):
            f = f"{cfg.edge_paths[0]}/edges_{lp}_{rp}.h5"
            try:
                hf = h5py.File(f, "r")
            except FileNotFoundError:
                continue
            with hf:
                assert hf.attrs["format_version"] == 1
                for l, r, t in zip(hf["lhs"][...], hf["rel"][...], hf["rhs"][...]):
                    out.append((names[lp][l], int(r), names[rp][t]))
    return sorted(out)


@pytest.mark.parametrize("parts", [1, 3])
def test_roundtrip_static(tmp_path, parts):
    rows = [(f"a{i % 17}", f"b{(i * 7) % 23}") for i in range(500)]
    (tmp_path / "in.tsv").write_text("".join(f"{l}\t{r}\n" for l, r in rows))
    cfg = config(tmp_path, parts)
    st = import_from_tsv(cfg, [str(tmp_path / "in.tsv")], lhs_col=0, rhs_col=1)
    assert st.lines == 500 and st.edges == 500
    counts = [int(open(f"{cfg.entity_path}/entity_count_node_{p}.txt").read()) for p in range(parts)]
    assert sum(counts) == len({x for row in rows for x in row}) == st.entities["node"]
    assert read_back(cfg, parts) == sorted((l, 0, r) for l, r in rows)


def test_dynamic_relations_weights_and_min_counts(tmp_path):
    lines = ["x\trare\ty\t0.5\n"] + [f"u{i % 5}\tcommon\tv{i % 3}\t{i / 10}\n" for i in range(30)]
    (tmp_path / "in.tsv").write_text("".join(lines))
    cfg = config(tmp_path, dynamic=True)
    st = import_from_tsv(cfg, [str(tmp_path / "in.tsv")], lhs_col=0, rhs_col=2, rel_col=1,
                         weight_col=3, relation_type_min_count=2)
    assert st.edges == 30 and st.dropped_edges == 1
    assert open(f"{cfg.entity_path}/dynamic_rel_count.txt").read().strip() == "1"
    with h5py.File(f"{cfg.edge_paths[0]}/edges_0_0.h5") as hf:
        assert sorted(hf["weight"][...].tolist()) == pytest.approx(sorted(i / 10 for i in range(30)))


def test_entity_min_count_drops_edges(tmp_path):
    (tmp_path / "in.tsv").write_text("a\tb\na\tc\nd\tb\n")
    cfg = config(tmp_path)
    st = import_from_tsv(cfg, [str(tmp_path / "in.tsv")], 0, 1, entity_min_count=2)
    # a: 2, b: 2, c: 1, d: 1 -> only a-b survives
    assert st.entities["node"] == 2 and st.edges == 1 and st.dropped_edges == 2


@pytest.mark.parametrize("content, line, reason", [
    (b"a\tb\nc\n", 2, "expected at least 2 columns"),
    (b"a\tb\n\tb\n", 2, "empty field in column 0"),
    (b"a\tb\nc\td\n\xff\xfe\tz\n", 3, "undecodable bytes"),
])
def test_malformed_line_fails_with_file_line_and_writes_nothing(tmp_path, content, line, reason):
    src = tmp_path / "in.tsv"
    src.write_bytes(content)
    cfg = config(tmp_path)
    with pytest.raises(DataError, match=rf"in\.tsv:{line}: {reason}"):
        import_from_tsv(cfg, [str(src)], 0, 1)
    for d in (cfg.entity_path, cfg.edge_paths[0]):
        leftovers = list((tmp_path / d).iterdir()) if (tmp_path / d).exists() else []
        assert leftovers == [], leftovers


def test_bad_weight_fails_with_line(tmp_path):
    (tmp_path / "in.tsv").write_text("a\tb\t1.0\nc\td\theavy\n")
    with pytest.raises(DataError, match=r"in\.tsv:2: column 2: weight 'heavy' is not a number"):
        import_from_tsv(config(tmp_path), [str(tmp_path / "in.tsv")], 0, 1, weight_col=2)


def test_skip_bad_lines_counts_them(tmp_path):
    (tmp_path / "in.tsv").write_bytes(b"a\tb\nbroken\n\tx\nc\td\n\xff\tq\n")
    st = import_from_tsv(config(tmp_path), [str(tmp_path / "in.tsv")], 0, 1, skip_bad_lines=True)
    assert st.skipped_bad_lines == 3 and st.edges == 2


def test_unknown_static_relation_is_an_error(tmp_path):
    (tmp_path / "in.tsv").write_text("a\tr0\tb\nc\tr9\td\n")
    with pytest.raises(DataError, match=r"relation 'r9' .* is not among the config's relations"):
        import_from_tsv(config(tmp_path), [str(tmp_path / "in.tsv")], 0, 2, rel_col=1)


def test_input_count_must_match_edge_paths(tmp_path):
    (tmp_path / "in.tsv").write_text("a\tb\n")
    with pytest.raises(DataError, match="edge_paths: the config names 2 edge paths but 1 input"):
        import_from_tsv(config(tmp_path, n_paths=2), [str(tmp_path / "in.tsv")], 0, 1)


def test_dynamic_relations_need_a_relation_column(tmp_path):
    (tmp_path / "in.tsv").write_text("a\tb\n")
    with pytest.raises(DataError, match="--rel-col: dynamic_relations needs a relation column"):
        import_from_tsv(config(tmp_path, dynamic=True), [str(tmp_path / "in.tsv")], 0, 1)


def test_interrupted_import_is_refused_by_the_trainer(tmp_path):
    from pbg_fast.io.files import IMPORT_MARKER
    from pbg_fast.train.trainer import train
    (tmp_path / "in.tsv").write_text("a\tb\nb\tc\n")
    cfg = config(tmp_path)
    import_from_tsv(cfg, [str(tmp_path / "in.tsv")], 0, 1)
    assert not (tmp_path / "ent" / IMPORT_MARKER).exists()
    (tmp_path / "edges0" / IMPORT_MARKER).write_text("")  # as a kill mid-move leaves it
    with pytest.raises(DataError, match="an import into this directory did not finish"):
        train(cfg)


def test_many_blocks_merges_and_spills_match_one_block(tmp_path, monkeypatch):
    """Small parse blocks, a name-table merge after every block and every block spilled to
    disk give the same import as one block in memory."""
    from pbg_fast.io import importer
    rng = np.random.default_rng(1)
    rows = [(f"n{a}", f"r{b}", f"n{c}") for a, b, c in
            zip(rng.zipf(1.5, 3000) % 400, rng.integers(0, 4, 3000), rng.integers(0, 700, 3000))]
    (tmp_path / "in.tsv").write_text("".join(f"{l}\t{r}\t{t}\n" for l, r, t in rows))

    def run(sub):
        cfg = parse_config(dict(
            entities={"node": {"num_partitions": 3}},
            relations=[{"name": "all", "lhs": "node", "rhs": "node"}], dynamic_relations=True,
            global_emb=False, dimension=8, entity_path=str(tmp_path / sub / "ent"),
            edge_paths=[str(tmp_path / sub / "edges")], checkpoint_path=str(tmp_path / sub / "ck")))
        st = import_from_tsv(cfg, [str(tmp_path / "in.tsv")], 0, 2, 1, entity_min_count=2,
                             block_bytes=1 << 20 if sub == "one" else 512)
        rels = json.loads(open(f"{cfg.entity_path}/dynamic_rel_names.json").read())
        return st, [(l, rels[r], t) for l, r, t in read_back(cfg, 3)]

    st1, edges1 = run("one")
    monkeypatch.setattr(importer._NameTable, "MERGE_AT", 1)
    monkeypatch.setattr(importer._Spill, "BUDGET", 0)
    st2, edges2 = run("many")
    names = [x for l, _, t in rows for x in (l, t)]
    kept = {x for x in names if names.count(x) >= 2}
    expect = sorted((l, r, t) for l, r, t in rows if l in kept and t in kept)
    assert edges1 == edges2 == expect
    assert st1.entities == st2.entities == {"node": len(kept)}
    assert st1.dropped_edges == st2.dropped_edges == len(rows) - len(expect)
