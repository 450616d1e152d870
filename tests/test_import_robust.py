"""The importer's verdict does not depend on where a line falls; fields larger than a read block
import; weights must be finite and >= 0; bad arguments fail before anything is written; staging
and spill directories never outlive an import, a killed one's are removed by the next."""

import os
import tempfile
from pathlib import Path

import pytest

from pbg_fast.config import parse_config
from pbg_fast.errors import DataError
from pbg_fast.io.importer import _Spill, import_from_tsv


def config(tmp_path, **over):
    raw = dict(entities={"n": {"num_partitions": 2}},
               relations=[{"name": "r", "lhs": "n", "rhs": "n"}], dimension=4,
               entity_path=str(tmp_path / "ent"), edge_paths=[str(tmp_path / "edges")],
               checkpoint_path=str(tmp_path / "ck"))
    raw.update(over)
    return parse_config(raw)


def good_lines(n, weight=False):
    return "".join(f"a{i}\tb{i % 97}" + ("\t0.5" if weight else "") + "\n" for i in range(n))


def outputs(tmp_path):
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                  if p.name.startswith(("edges_", "entity_", "dynamic_", ".pbg_fast")))


@pytest.mark.parametrize("bad,reason", [
    ("only_one_field\n", "expected at least 2 columns, got 1"),
    ("x\t\n", "empty field in column 1"),
    (b"\xff\xfe\tq\n", "undecodable bytes in column 0 (invalid start byte at byte 0 of the line)"),
])
def test_a_bad_line_gets_the_same_message_wherever_it_falls(tmp_path, bad, reason):
    bad = bad if isinstance(bad, bytes) else bad.encode()
    head = good_lines(5000).encode()  # ~60 KB: many 4 KiB blocks before the bad line
    msgs = []
    for name, data, line in (("top.tsv", bad + head, 1), ("late.tsv", head + bad + head, 5001)):
        f = tmp_path / name
        f.write_bytes(data)
        with pytest.raises(DataError) as e:
            import_from_tsv(config(tmp_path), [str(f)], 0, 1, block_bytes=4096)
        assert str(e.value) == f"{f}:{line}: {reason}", str(e.value)
        msgs.append(str(e.value).split(": ", 1)[1])
        assert outputs(tmp_path) == []
    assert msgs[0] == msgs[1]


def test_a_field_far_larger_than_a_block_imports(tmp_path):
    big = "x" * (1 << 20)
    f = tmp_path / "in.tsv"
    f.write_text(f"a\tb\n{big}\tc\n" + good_lines(100))
    st = import_from_tsv(config(tmp_path), [str(f)], 0, 1, block_bytes=64 << 10)
    assert st.lines == st.edges == 102
    names = "".join(p.read_text() for p in (tmp_path / "ent").glob("entity_names_n_*.json"))
    assert big in names


@pytest.mark.parametrize("w", ["nan", "inf", "-inf", "-1", "1e400", "abc"])
def test_weights_must_be_finite_and_non_negative(tmp_path, w):
    f = tmp_path / "in.tsv"
    f.write_text(good_lines(300, weight=True) + f"p\tq\t{w}\n" + good_lines(10, weight=True))
    with pytest.raises(DataError, match=rf"{f}:301: column 2: weight '{w}' "):
        import_from_tsv(config(tmp_path), [str(f)], 0, 1, weight_col=2)
    assert outputs(tmp_path) == []
    st = import_from_tsv(config(tmp_path), [str(f)], 0, 1, weight_col=2, skip_bad_lines=True)
    assert st.skipped_bad_lines == 1 and st.edges == 310


@pytest.mark.parametrize("kwargs,message", [
    (dict(delimiter=""), r"--delimiter: must be one ASCII character"),
    (dict(delimiter="::"), r"--delimiter: must be one ASCII character"),
    (dict(delimiter="\n"), r"--delimiter: must be one ASCII character"),
    (dict(lhs_col=1, rhs_col=1), r"--rhs-col: column 1 is already the --lhs-col"),
    (dict(rel_col=0), r"--rel-col: column 0 is already the --lhs-col"),
    (dict(lhs_col=-1), r"--lhs-col: must be a column index"),
    (dict(entity_min_count=0), r"--entity-min-count: must be an integer >= 1"),
    (dict(skip_bad_lines=True, missing=True), r"nope.tsv: no such input file"),
    (dict(directory=True), r"is a directory"),
])
def test_bad_arguments_fail_before_anything_is_written(tmp_path, kwargs, message):
    f = tmp_path / "in.tsv"
    f.write_text(good_lines(10))
    if kwargs.pop("missing", False):
        f = tmp_path / "nope.tsv"
    if kwargs.pop("directory", False):
        f = tmp_path / "adir"
        f.mkdir()
    args = dict(lhs_col=0, rhs_col=1)
    args.update(kwargs)
    with pytest.raises(DataError, match=message):
        import_from_tsv(config(tmp_path), [str(f)], **args)
    assert not (tmp_path / "ent").exists() and not (tmp_path / "edges").exists()


def test_nothing_is_left_behind_and_stale_scratch_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(_Spill, "BUDGET", 1)  # spill every batch
    before_tmp = set(os.listdir(tempfile.gettempdir()))
    (tmp_path / "ent").mkdir()
    (tmp_path / "edges").mkdir()
    dead = 2**22 + 12345  # above pid_max's default: no such process
    stale = [tmp_path / "ent" / f".pbg_fast_spill.{dead}.abc",
             tmp_path / "edges" / f".pbg_fast_import.{dead}.xyz"]
    live = tmp_path / "edges" / f".pbg_fast_import.{os.getpid()}.live"
    for d in stale + [live]:
        d.mkdir()
        (d / "junk.npz").write_bytes(b"x" * 1000)
    f = tmp_path / "in.tsv"
    f.write_text(good_lines(2000))
    import_from_tsv(config(tmp_path), [str(f)], 0, 1, block_bytes=4096)
    assert not any(d.exists() for d in stale)
    assert live.exists()  # a live process's scratch is not touched
    live.joinpath("junk.npz").unlink()
    live.rmdir()
    assert [p for p in outputs(tmp_path) if ".pbg_fast" in p] == []
    (tmp_path / "bad.tsv").write_text(good_lines(2000) + "broken\n")
    with pytest.raises(DataError):
        import_from_tsv(config(tmp_path), [str(tmp_path / "bad.tsv")], 0, 1, block_bytes=4096)
    assert [p for p in outputs(tmp_path) if ".pbg_fast" in p] == []
    new_tmp = {n for n in set(os.listdir(tempfile.gettempdir())) - before_tmp if "pbg_fast" in n}
    assert new_tmp == set()
