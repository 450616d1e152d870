"""import_from_tsv: PBG's layout, partitions, weights, min counts, and bad input that fails with
file:line and leaves nothing behind."""

import json
import os
import shutil
import subprocess
import tempfile

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
    with pytest.raises(DataError,
                       match=r"in\.tsv:2: relation 'r9' .* is not among the config's relations"):
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


# ---- a bad line: same verdict and message wherever it falls --------------------------------------

# ~5 KB: many 256-byte chunks; blank lines (\n and \r\n) count in line numbers too
GOOD = "".join(f"a{i}\tb{i % 7}\t0.5\n" + "\n" * (i % 50 == 0) + "\r\n" * (i % 70 == 0)
               for i in range(400))


@pytest.mark.parametrize("bad, reason", [
    (b"x\n", "expected at least 3 columns, got 1"),
    (b"a\t\t1\n", "empty field in column 1"),
    (b"\xff\xfe\tz\t1\n", "undecodable bytes in column 0"),
    (b"a\tb\theavy\n", "column 2: weight 'heavy' is not a number"),
    (b"a\tb\tnan\n", "column 2: weight 'nan' must be a finite number >= 0"),
    (b"a\tb\tinf\n", "column 2: weight 'inf' must be a finite number >= 0"),
    (b"a\tb\t-inf\n", "column 2: weight '-inf' must be a finite number >= 0"),
    (b"a\tb\t-0.5\n", "column 2: weight '-0.5' must be a finite number >= 0"),
    (b"a\tb\t1e400\n", "column 2: weight '1e400' must be a finite number >= 0"),
    (b"a\rb\tc\t1\n", r"stray carriage return"),
])
def test_bad_line_same_message_in_first_and_later_blocks(tmp_path, bad, reason):
    first, later = tmp_path / "first.tsv", tmp_path / "later.tsv"
    first.write_bytes(bad + GOOD.encode())
    later.write_bytes(GOOD.encode() + bad + GOOD.encode())
    line = GOOD.count("\n") + 1  # absolute, blank lines included
    msgs = []
    for src in (first, later):
        cfg = config(tmp_path / src.stem)
        with pytest.raises(DataError) as e:
            import_from_tsv(cfg, [str(src)], 0, 1, weight_col=2, block_bytes=256)
        msgs.append(str(e.value))
        assert not (tmp_path / src.stem / "ent").exists()  # nothing written, not even dirs
    assert msgs[0].startswith(f"{first}:1: ") and reason in msgs[0]
    assert msgs[1] == msgs[0].replace(f"{first}:1:", f"{later}:{line}:")
    # skip_bad_lines: skipped and counted, the same in both places
    for src, n in ((first, 400), (later, 800)):
        st = import_from_tsv(config(tmp_path / f"skip_{src.stem}"), [str(src)], 0, 1,
                             weight_col=2, block_bytes=256, skip_bad_lines=True)
        assert (st.skipped_bad_lines, st.edges) == (1, n)


def test_unknown_relation_names_its_line_in_a_later_block(tmp_path):
    src = tmp_path / "in.tsv"
    src.write_text("".join(f"a{i}\tr0\tb{i}\n" for i in range(300)) + "\nc\tr9\td\n")
    with pytest.raises(DataError, match=r"in\.tsv:302: relation 'r9' \(column 1\) is not"):
        import_from_tsv(config(tmp_path), [str(src)], 0, 2, rel_col=1, block_bytes=128)


def test_valid_tricky_input_never_takes_the_slow_path(tmp_path, monkeypatch):
    """CRLF, a BOM, blank lines, spaces in names, padded weights, an undecodable unused column,
    a field longer than the block: all Arrow's, with the same result as line by line."""
    from pbg_fast.io import importer
    data = b"\xef\xbb\xbf" + b"".join(
        b"n %d\tm\x00%d\t %d.5 \t\xff\r\n" % (i, i % 9, i % 4) + (b"\n" if i % 40 == 0 else b"")
        for i in range(1000))
    data += b"h" * 50_000 + b"\tz\t1\tq\r\n"
    (tmp_path / "in.tsv").write_bytes(data)

    def run(sub):
        cfg = config(tmp_path / sub)
        st = import_from_tsv(cfg, [str(tmp_path / "in.tsv")], 0, 1, weight_col=2,
                             block_bytes=4096)
        with h5py.File(f"{cfg.edge_paths[0]}/edges_0_0.h5") as hf:
            w = hf["weight"][...].tolist()
        return st.edges, sorted(zip(read_back(cfg, 1), w))

    normal = run("normal")
    real_slow = importer._parse_slow
    monkeypatch.setattr(importer, "_parse_slow", lambda *a: pytest.fail("slow path taken"))
    fast = run("fast")
    assert fast == normal and fast[0] == 1001
    assert ("n 0", 0, "m\x000") in [e for e, _ in fast[1]]
    monkeypatch.setattr(importer, "_parse_slow", real_slow)
    monkeypatch.setattr(importer, "_parse_fast", lambda *a: None)  # all line by line
    assert run("all_slow") == fast


def test_field_far_larger_than_a_block_imports(tmp_path):
    """A row bigger than the read block (Arrow's 'straddling object') grows its chunk."""
    big = "x" * (1 << 20)
    (tmp_path / "in.tsv").write_text(f"a\tb\t1\n{big}\tb\t2\nc\t{big}\t3\n" + GOOD)
    cfg = config(tmp_path)
    st = import_from_tsv(cfg, [str(tmp_path / "in.tsv")], 0, 1, weight_col=2, block_bytes=64 << 10)
    assert st.edges == 403
    edges = read_back(cfg, 1)
    assert (big, 0, "b") in edges and ("c", 0, big) in edges
    ref = config(tmp_path / "ref")
    import_from_tsv(ref, [str(tmp_path / "in.tsv")], 0, 1, weight_col=2)
    assert read_back(ref, 1) == edges


# ---- arguments and input files: a DataError naming them, before anything is written ------------

@pytest.mark.parametrize("kw, match", [
    (dict(delimiter=""), "--delimiter: must be one ASCII character"),
    (dict(delimiter="::"), "--delimiter: must be one ASCII character"),
    (dict(delimiter="\n"), "--delimiter: must be one ASCII character"),
    (dict(delimiter="\r"), "--delimiter: must be one ASCII character"),
    (dict(delimiter="é"), "--delimiter: must be one ASCII character"),
    (dict(rhs_col=0), "--rhs-col: column 0 is already the --lhs-col"),
    (dict(rel_col=1), "--rel-col: column 1 is already the --rhs-col"),
    (dict(rel_col=2, weight_col=2), "--weight-col: column 2 is already the --rel-col"),
    (dict(weight_col=0), "--weight-col: column 0 is already the --lhs-col"),
    (dict(lhs_col=-1), r"--lhs-col: must be a column index \(0 for the first column\), got -1"),
    (dict(weight_col=-2), "--weight-col: must be a column index"),
    (dict(entity_min_count=0), "--entity-min-count: must be an integer >= 1"),
    (dict(relation_type_min_count=-1), "--relation-type-min-count: must be an integer >= 1"),
    (dict(block_bytes=0), "block_bytes: must be a positive number of bytes"),
])
def test_bad_arguments_fail_before_writing(tmp_path, kw, match):
    (tmp_path / "in.tsv").write_text("a\tb\t1\n")
    args = dict(lhs_col=0, rhs_col=1)
    args.update(kw)
    with pytest.raises(DataError, match=match):
        import_from_tsv(config(tmp_path), [str(tmp_path / "in.tsv")], **args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tsv"]


@pytest.mark.parametrize("skip", [False, True])
def test_bad_input_files_fail_before_writing(tmp_path, monkeypatch, skip):
    from pbg_fast.io import importer
    cfg = config(tmp_path)
    good = tmp_path / "good.tsv"
    good.write_text("a\tb\n")
    cases = [(tmp_path / "missing.tsv", "no such input file"),
             (tmp_path, "is a directory"),
             (good / "x.tsv", "no such input file")]  # a file as a directory
    for path, match in cases:
        with pytest.raises(DataError, match=f"^{path}: {match}"):
            import_from_tsv(cfg, [str(path)], 0, 1, skip_bad_lines=skip)
    # Unreadable (tests run as root, so a permission error is simulated).
    real_open = open

    def deny(p, *a, **k):
        if str(p) == str(good):
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, *a, **k)

    monkeypatch.setattr(importer, "open", deny, raising=False)
    with pytest.raises(DataError,
                       match=rf"^{good}: cannot read the input file \(Permission denied\)"):
        import_from_tsv(cfg, [str(good)], 0, 1, skip_bad_lines=skip)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.tsv"]
    # An output path that is a file
    (tmp_path / "ent").write_text("")
    with pytest.raises(DataError, match=r"^entity_path: .*ent exists and is not a directory"):
        import_from_tsv(cfg, [str(good)], 0, 1, skip_bad_lines=skip)


# ---- nothing left behind --------------------------------------------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()  # reaped: no process has this pid now
    return p.pid


def _pbg_fast_entries(d):
    if not d.exists():
        return []
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".pbg_fast"))


def test_killed_imports_leftovers_are_removed_and_nothing_is_left(tmp_path):
    tmp_before = {p for p in os.listdir(tempfile.gettempdir()) if "pbg_fast" in p}
    cfg = config(tmp_path)
    ent, edges = tmp_path / "ent", tmp_path / "edges0"
    dead, live = _dead_pid(), os.getppid()
    stale = [ent / f".pbg_fast_import.{dead}.abc", ent / f".pbg_fast_spill.{dead}.xyz",
             edges / f".pbg_fast_import.{dead}.q1", edges / ".pbg_fast_import.oldfmt9"]
    alive = edges / f".pbg_fast_import.{live}.busy"  # a concurrent import's: kept
    for d in stale + [alive]:
        d.mkdir(parents=True)
        (d / "edges_0_0.h5").write_bytes(b"x" * 1000)
    (tmp_path / "in.tsv").write_text("a\tb\nb\tc\n")
    import_from_tsv(cfg, [str(tmp_path / "in.tsv")], 0, 1)
    assert _pbg_fast_entries(ent) == [] and _pbg_fast_entries(edges) == [alive.name]
    shutil.rmtree(alive)
    # a failed import (a bad line after some chunks were parsed) leaves nothing either
    (tmp_path / "bad.tsv").write_text("a\tb\n" * 100 + "oops\n")
    with pytest.raises(DataError):
        import_from_tsv(cfg, [str(tmp_path / "bad.tsv")], 0, 1, block_bytes=64)
    assert _pbg_fast_entries(ent) == _pbg_fast_entries(edges) == []
    # the earlier import's output is untouched by the failed one
    assert read_back(cfg, 1) == [("a", 0, "b"), ("b", 0, "c")]
    tmp_after = {p for p in os.listdir(tempfile.gettempdir()) if "pbg_fast" in p}
    assert tmp_after <= tmp_before, tmp_after - tmp_before


def test_spill_lives_under_entity_path(tmp_path, monkeypatch):
    from pbg_fast.io import importer
    monkeypatch.setattr(importer._Spill, "BUDGET", 0)
    seen = []
    real_put = importer._Spill.put

    def put(self, arrays):
        seen.append(self.dir)
        return real_put(self, arrays)

    monkeypatch.setattr(importer._Spill, "put", put)
    (tmp_path / "in.tsv").write_text("a\tb\n" * 50)
    import_from_tsv(config(tmp_path), [str(tmp_path / "in.tsv")], 0, 1, block_bytes=64)
    assert seen and all(d.parent == tmp_path / "ent" and d.name.startswith(".pbg_fast_spill.")
                        for d in seen)
    assert not seen[0].exists()
