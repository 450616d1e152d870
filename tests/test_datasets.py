"""pbg_fast.datasets: lookup order, pykeen's package data, counts, gz cache, errors."""

import gzip
import os
from pathlib import Path

import pytest

from pbg_fast import datasets
from pbg_fast.errors import DataError

# name -> (entities, relations, train/valid/test triples), as published and as in the files.
KNOWN_COUNTS = {
    "umls": (135, 46, {"train": 5216, "valid": 652, "test": 661}),
    "kinship": (104, 25, {"train": 8544, "valid": 1068, "test": 1074}),
    "nations": (14, 55, {"train": 1592, "valid": 199, "test": 201}),
}

TINY = {
    "train": "a\tlikes\tb\nb\tlikes\tc\nc\thates\ta\n",
    "valid": "a\thates\tc\n",
    "test": "b\tlikes\ta\nd\tknows\ta\n",
}


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No PBG_FAST_DATA, no ../shared/data, the cache under tmp_path."""
    monkeypatch.delenv("PBG_FAST_DATA", raising=False)
    monkeypatch.setenv("PBG_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "_repo_shared_data", lambda: tmp_path / "no-shared-data")
    return tmp_path


def _pykeen_files(pykeen_name):
    pk = datasets._pykeen_dir()
    if pk is None:
        pytest.skip(f"pykeen's package data is not installed "
                    f"(`{datasets.PYKEEN_INSTALL}`, as `make setup` does)")
    folder = pk / "datasets" / pykeen_name
    if not all((folder / f"{s}.txt").is_file() for s in datasets.SPLITS):
        pytest.skip(f"{folder}: pykeen is installed but lacks {pykeen_name}'s files")
    return folder


def _write_tiny(folder: Path, gz: bool = False):
    folder.mkdir(parents=True)
    for split, text in TINY.items():
        if gz:
            with gzip.open(folder / f"{split}.txt.gz", "wt") as f:
                f.write(text)
        else:
            (folder / f"{split}.txt").write_text(text)


@pytest.mark.parametrize("name,pykeen_name",
                         [("umls", "umls"), ("kinship", "kinships"), ("nations", "nations")])
def test_pykeen_package_data(isolated, name, pykeen_name):
    folder = _pykeen_files(pykeen_name)
    ds = datasets.load(name)
    ne, nr, nt = KNOWN_COUNTS[name]
    assert (ds.num_entities, ds.num_relations, ds.num_triples) == (ne, nr, nt)
    assert ds.splits == ("train", "valid", "test")
    # Read in place (plain text), nothing cached; pykeen itself was never imported.
    assert ds.paths == {s: folder / f"{s}.txt" for s in ds.splits}
    assert ds.source_dir == folder
    assert not (isolated / "cache").exists()
    assert "pykeen" in ds.source and "Kemp" in ds.source
    assert datasets.path_of(name) == folder
    assert name in datasets.available()
    assert "fb15k-237" not in datasets.available()


def test_pykeen_is_not_imported(isolated):
    import sys
    _pykeen_files("umls")
    datasets.load("umls")
    assert "pykeen" not in sys.modules


def test_shared_copy_matches_pykeen(monkeypatch):
    """../shared/data's umls (when present) holds the same triples as pykeen's."""
    monkeypatch.delenv("PBG_FAST_DATA", raising=False)
    shared = datasets._repo_shared_data() / "umls"
    if not (shared / "train.txt.gz").is_file():
        pytest.skip(f"{shared} not present (the project's shared data is not beside this checkout)")
    folder = _pykeen_files("umls")
    for s in datasets.SPLITS:
        with gzip.open(shared / f"{s}.txt.gz", "rb") as f:
            assert f.read() == (folder / f"{s}.txt").read_bytes(), s


def test_unknown_name_lists_the_names(isolated):
    with pytest.raises(DataError) as e:
        datasets.load("freebase")
    msg = str(e.value)
    assert "'freebase'" in msg
    for n in datasets.NAMES:
        assert n in msg
    assert set(datasets.NAMES) == {"fb15k-237", "wn18rr", "wn18", "umls", "kinship", "nations"}


def test_missing_dataset_says_where_and_how(isolated):
    with pytest.raises(DataError) as e:
        datasets.load("fb15k-237")
    msg = str(e.value)
    assert "PBG_FAST_DATA" in msg and str(isolated / "no-shared-data" / "fb15k-237") in msg
    assert "pip install --no-deps pykeen==1.11.1" in msg
    for n in datasets.NAMES:
        assert n in msg


def test_missing_pykeen_says_how(isolated, monkeypatch):
    monkeypatch.setattr(datasets, "_pykeen_dir", lambda: None)
    with pytest.raises(DataError, match=r"pykeen not installed.*pip install --no-deps pykeen"):
        datasets.load("umls")
    assert datasets.available() == []


def test_env_folder(isolated, monkeypatch):
    root = isolated / "data"
    _write_tiny(root / "wn18rr")
    _write_tiny(root / "umls")  # PBG_FAST_DATA comes before pykeen's copy
    monkeypatch.setenv("PBG_FAST_DATA", str(root))
    for name in ("wn18rr", "WN18RR", "umls"):
        ds = datasets.load(name)
        assert ds.name == name.lower()
        assert (ds.num_entities, ds.num_relations) == (4, 3)
        assert ds.num_triples == {"train": 3, "valid": 1, "test": 2}
        assert ds.paths["test"] == root / name.lower() / "test.txt"
        assert str(root / name.lower()) in ds.source and "PBG_FAST_DATA" in ds.source
    assert datasets.path_of("wn18rr") == root / "wn18rr"
    assert datasets.shared_data_dir() == root
    assert {"wn18rr", "umls"} <= set(datasets.available())


def test_kinship_accepts_pykeen_folder_name(isolated, monkeypatch):
    _write_tiny(isolated / "data" / "kinships")
    monkeypatch.setenv("PBG_FAST_DATA", str(isolated / "data"))
    assert datasets.load("kinships").name == "kinship"
    assert datasets.path_of("kinship") == isolated / "data" / "kinships"


def test_gz_decompressed_into_cache_atomically(isolated, monkeypatch):
    root = isolated / "data"
    _write_tiny(root / "nations", gz=True)
    monkeypatch.setenv("PBG_FAST_DATA", str(root))
    cache = isolated / "cache" / "datasets" / "nations"
    ds = datasets.load("nations")
    assert ds.num_triples == {"train": 3, "valid": 1, "test": 2}
    for s in ds.splits:
        assert ds.paths[s].parent == cache
        assert ds.paths[s].read_text() == TINY[s]
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in ds.paths.values())

    # Made once: a second load reuses the files without decompressing again.
    def no_gzip(*a, **k):
        raise AssertionError("decompressed twice")
    with monkeypatch.context() as m:
        m.setattr(datasets.gzip, "open", no_gzip)
        assert datasets.load("nations").paths == ds.paths

    # A changed source gets a new cache file, never the stale one.
    with gzip.open(root / "nations" / "test.txt.gz", "wt") as f:
        f.write("x\tr\ty\n")
    st = (root / "nations" / "test.txt.gz").stat()
    os.utime(root / "nations" / "test.txt.gz", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds2 = datasets.load("nations")
    assert ds2.paths["test"] != ds.paths["test"] and ds2.num_triples["test"] == 1
    assert ds2.paths["train"] == ds.paths["train"]


def test_gz_failure_leaves_no_partial_file(isolated, monkeypatch):
    root = isolated / "data"
    _write_tiny(root / "wn18", gz=True)
    good = (root / "wn18" / "train.txt.gz").read_bytes()
    (root / "wn18" / "train.txt.gz").write_bytes(good[: len(good) // 2])  # truncated gzip
    monkeypatch.setenv("PBG_FAST_DATA", str(root))
    with pytest.raises(DataError, match="train.txt.gz: cannot decompress"):
        datasets.load("wn18")
    cache = isolated / "cache" / "datasets" / "wn18"
    assert not any(p.name.startswith("train") or p.suffix == ".tmp" for p in cache.iterdir())


def test_incomplete_folder(isolated, monkeypatch):
    folder = isolated / "data" / "fb15k-237"
    folder.mkdir(parents=True)
    (folder / "train.txt").write_text(TINY["train"])
    monkeypatch.setenv("PBG_FAST_DATA", str(isolated / "data"))
    with pytest.raises(DataError, match=r"fb15k-237: dataset 'fb15k-237' lacks valid.txt\[.gz\], "
                                        r"test.txt\[.gz\]"):
        datasets.load("fb15k-237")


def test_malformed_line_names_file_and_line(isolated, monkeypatch):
    _write_tiny(isolated / "data" / "umls")
    (isolated / "data" / "umls" / "valid.txt").write_text("a\tr\tb\na\tb\n")
    monkeypatch.setenv("PBG_FAST_DATA", str(isolated / "data"))
    with pytest.raises(DataError, match=r"valid.txt:2: expected head<TAB>relation<TAB>tail"):
        datasets.load("umls")
