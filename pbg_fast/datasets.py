"""Small real knowledge graphs for the demo, tests and benchmarks: where to find them, as TSV.

    from pbg_fast import datasets
    ds = datasets.load("umls")        # Dataset: ds.paths["train"] is a `head\\trel\\ttail` file
    ds.num_entities, ds.num_relations, ds.num_triples["test"], ds.source

Names: fb15k-237, wn18rr, wn18, umls, kinship, nations. `load` looks in this order, and takes
the first folder that exists:

1. ``$PBG_FAST_DATA/<name>``: a folder of ``train.txt``, ``valid.txt``, ``test.txt`` (each may
   be gzipped as ``.txt.gz``), one ``head<TAB>relation<TAB>tail`` triple per line.
2. ``../shared/data/<name>`` beside the repository checkout (the project's own copies; read in
   place, never copied into the project).
3. umls, kinship and nations only: the files that the PyPI package ``pykeen==1.11.1`` (MIT)
   ships as package data, ``pykeen/datasets/{umls,kinships,nations}/{train,valid,test}.txt``.
   ``make setup`` installs it with ``pip install --no-deps pykeen==1.11.1`` (0.7 MB, none of its
   dependencies). pykeen is never imported: its folder is found with
   ``importlib.util.find_spec``, which does not run the package, and the files are read directly.

Plain files are used where they lie. Gzipped ones are decompressed once into a per-user cache,
``$PBG_FAST_CACHE/datasets/<name>/`` (default ``$XDG_CACHE_HOME/pbg_fast`` or
``~/.cache/pbg_fast``), under a name keyed by the source file's path, size and mtime, and written
atomically (a temporary file in the same folder, then ``os.replace``), so concurrent runs never
see a half-written file and a changed source is never served stale.

Provenance and licences
-----------------------
umls, kinship, nations
    The relational data sets of Kemp, Tenenbaum, Griffiths, Yamada and Ueda, "Learning systems of
    concepts with an infinite relational model", AAAI 2006 (UMLS: McCray's Unified Medical
    Language System semantic network; Kinship: Denham's Alyawarra kinship terms; Nations:
    Rummel's Dimensionality of Nations), in the train/valid/test split of Kok & Domingos,
    "Statistical predicate invention", ICML 2007 (the Alchemy benchmarks) as distributed with
    ConvE (Dettmers et al. 2018, ``TimDettmers/ConvE``, MIT code licence). No licence file is
    attached to the data itself; the copies in pykeen's MIT-licensed wheel are byte-identical
    to ConvE's, and pykeen redistributes them as package data. Counts (all splits):
    umls 135 entities, 46 relations, 5,216 / 652 / 661 triples;
    kinship 104 entities, 25 relations, 8,544 / 1,068 / 1,074;
    nations 14 entities, 55 relations, 1,592 / 199 / 201.
fb15k-237
    Toutanova & Chen, "Observed versus latent features for knowledge base and text inference",
    2015, derived from FB15k (Bordes et al. 2013, CC-BY 2.5). Microsoft Research Data License
    Agreement: non-commercial / research use, redistribution only under the same terms. Not
    redistributed by pbg_fast: read from a folder the user provides (``PBG_FAST_DATA``) or from
    ../shared/data. 14,541 entities, 237 relations, 272,115 / 17,535 / 20,466 triples.
wn18rr
    Dettmers, Minervini, Stenetorp & Riedel, "Convolutional 2D knowledge graph embeddings",
    AAAI 2018, derived from WordNet 3.0 through WN18; the WordNet 3.0 licence asks that its
    notice go with every copy. Not redistributed by pbg_fast: user-provided folder only.
    40,943 entities, 11 relations, 86,835 / 3,034 / 3,134 triples.
wn18
    Bordes, Glorot, Weston & Bengio, "A semantic matching energy function for learning with
    multi-relational data", Machine Learning 2013 (wordnet-mlj12); WordNet 3.0 licence.
    User-provided folder only. 40,943 entities, 18 relations, 141,442 / 5,000 / 5,000 triples.
"""

import gzip
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .errors import DataError

SPLITS: Tuple[str, ...] = ("train", "valid", "test")

PYKEEN_VERSION = "1.11.1"
PYKEEN_INSTALL = f"pip install --no-deps pykeen=={PYKEEN_VERSION}"

_KEMP = ("Kemp et al. 2006, 'Learning systems of concepts with an infinite relational model' "
         "(AAAI); Kok & Domingos 2007 split as distributed with ConvE")
_WORDNET = "WordNet 3.0 licence (its notice must go with every copy)"

# name -> folder names accepted under $PBG_FAST_DATA and ../shared/data, pykeen's folder name
# (None: not shipped by pykeen), and the provenance/licence note.
_INFO: Dict[str, Tuple[Tuple[str, ...], Optional[str], str]] = {
    "fb15k-237": (("fb15k-237", "FB15k-237", "fb15k237"), None,
                  "Toutanova & Chen 2015, FB15k-237; Microsoft Research Data License Agreement "
                  "(non-commercial/research use; not redistributed by pbg_fast)"),
    "wn18rr": (("wn18rr", "WN18RR"), None,
               f"Dettmers et al. 2018, WN18RR; {_WORDNET}; not redistributed by pbg_fast"),
    "wn18": (("wn18", "WN18"), None,
             f"Bordes et al. 2013, WN18 (wordnet-mlj12); {_WORDNET}; "
             "not redistributed by pbg_fast"),
    "umls": (("umls", "UMLS"), "umls", _KEMP),
    "kinship": (("kinship", "kinships", "Kinship"), "kinships", _KEMP),
    "nations": (("nations", "Nations"), "nations", _KEMP),
}

NAMES: Tuple[str, ...] = tuple(_INFO)


@dataclass
class Dataset:
    """A located data set: per split, the path of a plain ``head\\trel\\ttail`` TSV file."""

    name: str
    paths: Dict[str, Path]
    source: str
    num_entities: int
    num_relations: int
    num_triples: Dict[str, int]
    splits: Tuple[str, ...] = SPLITS
    source_dir: Path = field(default=Path("."))

    def path(self, split: str) -> Path:
        return self.paths[split]

    def summary(self) -> str:
        t = " / ".join(f"{self.num_triples[s]:,}" for s in self.splits)
        return (f"{self.name}: {self.num_entities:,} entities, {self.num_relations:,} relations, "
                f"{t} {'/'.join(self.splits)} triples; from {self.source}")


def shared_data_dir() -> Path:
    """Where the project's benchmark data sets lie: ``$PBG_FAST_DATA`` when set, otherwise
    ``../shared/data`` beside the repository checkout (present on the project's machines only)."""
    env = os.environ.get("PBG_FAST_DATA")
    if env:
        return Path(env)
    return _repo_shared_data()


def _repo_shared_data() -> Path:
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def cache_dir(name: Optional[str] = None) -> Path:
    """``$PBG_FAST_CACHE/datasets[/<name>]``; default root ``$XDG_CACHE_HOME/pbg_fast`` or
    ``~/.cache/pbg_fast``."""
    root = os.environ.get("PBG_FAST_CACHE")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "pbg_fast"
    d = base / "datasets"
    return d / name if name else d


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    aliases = {"fb15k237": "fb15k-237", "kinships": "kinship"}
    key = aliases.get(key, key)
    if key not in _INFO:
        raise DataError(f"dataset {name!r}: unknown name; known names: {', '.join(NAMES)}")
    return key


def _pykeen_dir() -> Optional[Path]:
    """pykeen's package folder, found without importing pykeen (its dependencies are absent)."""
    try:
        spec = importlib.util.find_spec("pykeen")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        if (Path(loc) / "datasets").is_dir():
            return Path(loc)
    return None


def _pykeen_version() -> str:
    try:
        return importlib.metadata.version("pykeen")
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def _split_file(folder: Path, split: str) -> Optional[Path]:
    for suffix in (".txt", ".txt.gz"):
        p = folder / f"{split}{suffix}"
        if p.is_file():
            return p
    return None


def _candidates(name: str) -> List[Tuple[Path, str]]:
    """(folder, kind) in lookup order; kind is 'PBG_FAST_DATA', 'shared' or 'pykeen'."""
    folders, pykeen_name, _ = _INFO[name]
    out: List[Tuple[Path, str]] = []
    env = os.environ.get("PBG_FAST_DATA")
    if env:
        out += [(Path(env) / f, "PBG_FAST_DATA") for f in folders]
    out += [(_repo_shared_data() / f, "shared") for f in folders]
    if pykeen_name:
        pk = _pykeen_dir()
        if pk is not None:
            out.append((pk / "datasets" / pykeen_name, "pykeen"))
    return out


def _where_looked(name: str) -> str:
    folders, pykeen_name, _ = _INFO[name]
    env = os.environ.get("PBG_FAST_DATA")
    places = [str(Path(env) / folders[0]) if env else f"$PBG_FAST_DATA/{folders[0]} (not set)",
              str(_repo_shared_data() / folders[0])]
    if pykeen_name:
        pk = _pykeen_dir()
        places.append(str(pk / "datasets" / pykeen_name) if pk else
                      "pykeen's package data (pykeen not installed)")
    return "; ".join(places)


def _how_to_get() -> str:
    return (f"`{PYKEEN_INSTALL}` provides umls, kinship, nations; for fb15k-237, wn18rr, wn18 "
            f"set PBG_FAST_DATA to a folder holding <name>/train.txt, valid.txt, test.txt "
            f"(.txt.gz also read)")


def _locate(name: str) -> Tuple[Path, str, Dict[str, Path]]:
    for folder, kind in _candidates(name):
        if not folder.is_dir():
            continue
        files = {s: _split_file(folder, s) for s in SPLITS}
        missing = [s for s, p in files.items() if p is None]
        if missing:
            raise DataError(f"{folder}: dataset {name!r} lacks "
                            f"{', '.join(s + '.txt[.gz]' for s in missing)}")
        return folder, kind, files  # type: ignore[return-value]
    raise DataError(f"dataset {name!r} not found; looked in: {_where_looked(name)}. "
                    f"{_how_to_get()}. Known names: {', '.join(NAMES)}")


def path_of(name: str) -> Path:
    """The folder that ``load(name)`` reads its source files from (raises DataError if none)."""
    return _locate(_canonical(name))[0]


def available() -> List[str]:
    """The known names that can be loaded here, in NAMES order."""
    out = []
    for n in NAMES:
        try:
            _locate(n)
        except DataError:
            continue
        out.append(n)
    return out


def _describe(name: str, folder: Path, kind: str) -> str:
    note = _INFO[name][2]
    if kind == "pykeen":
        return (f"pykeen {_pykeen_version()} package data ({folder}; pykeen is MIT-licensed); "
                f"{note}")
    where = "$PBG_FAST_DATA" if kind == "PBG_FAST_DATA" else "../shared/data"
    return f"{folder} ({where}); {note}"


def _decompressed(name: str, src: Path) -> Path:
    """A plain copy of the gzipped `src` in the cache, made once, written atomically."""
    st = src.stat()
    key = hashlib.sha1(f"{src.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = src.name[:-len(".txt.gz")]
    d = cache_dir(name)
    out = d / f"{stem}-{key}.txt"
    if out.is_file():
        return out
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}-", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as g, gzip.open(src, "rb") as f:
            shutil.copyfileobj(f, g, 1 << 20)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, out)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, (OSError, EOFError)):
            raise DataError(f"{src}: cannot decompress into {d}: {e}") from e
        raise
    return out


def _count(paths: Dict[str, Path]) -> Tuple[int, int, Dict[str, int]]:
    entities, relations, triples = set(), set(), {}
    for split, p in paths.items():
        n = 0
        with open(p, "r", encoding="utf-8", newline=None) as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line:
                    continue
                parts = line.split("\t")
                if len(parts) != 3:
                    raise DataError(f"{p}:{lineno}: expected head<TAB>relation<TAB>tail, "
                                    f"got {len(parts)} field(s)")
                h, r, t = parts
                entities.add(h)
                entities.add(t)
                relations.add(r)
                n += 1
        triples[split] = n
    return len(entities), len(relations), triples


def load(name: str) -> Dataset:
    """Locate `name` (see the module docstring for the order), decompress it if gzipped, count
    it. Raises DataError when it is not found, with where it looked and how to get it."""
    key = _canonical(name)
    folder, kind, files = _locate(key)
    paths = {s: (_decompressed(key, p) if p.name.endswith(".gz") else p) for s, p in files.items()}
    ne, nr, nt = _count(paths)
    return Dataset(name=key, paths=paths, source=_describe(key, folder, kind), num_entities=ne,
                   num_relations=nr, num_triples=nt, source_dir=folder)
