"""Crash safety of the importer: a re-import over a finished one, killed with SIGKILL more than
20 times (at injected points: after a spill, mid bucket writing, with the directories marked,
while files move into place, after the move; and at random moments), never leaves data mixed
from both: the old import loads intact, or the trainer refuses the directory (the import
marker); a clean re-run then gives exactly an uninterrupted import's output, and leaves no
scratch directory behind."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from pbg_fast.config import parse_config
from pbg_fast.errors import DataError
from pbg_fast.io.files import check_no_partial_import
from pbg_fast.io.importer import import_from_tsv

ROOT = Path(__file__).resolve().parent.parent
POINTS = ["import.spilled:1", "import.spilled:3", "import.bucket:1", "import.bucket:4",
          "import.marked:1", "import.moving:1", "import.moving:2", "import.moving:3",
          "import.moved:1", "import.done:1", "import.bucket:2", "import.spilled:2"]
RANDOM_KILLS = 9


def raw_config(tmp_path):
    return dict(entities={"n": {"num_partitions": 2}},
                relations=[{"name": "r", "lhs": "n", "rhs": "n"}], dimension=4,
                entity_path=str(tmp_path / "ent"), edge_paths=[str(tmp_path / "edges")],
                checkpoint_path=str(tmp_path / "ck"))


def write(path: Path, prefix: str, n: int):
    path.write_text("".join(f"{prefix}{i % 301}\t{prefix}{(i * 7) % 283}\n" for i in range(n)))


def read_back(tmp_path):
    """(entity names per partition, the set of (lhs name, rel, rhs name) edges)."""
    ent, edges = tmp_path / "ent", tmp_path / "edges"
    names = {p: json.loads((ent / f"entity_names_n_{p}.json").read_text()) for p in range(2)}
    out = set()
    for lp in range(2):
        for rp in range(2):
            f = edges / f"edges_{lp}_{rp}.h5"
            if f.exists():
                with h5py.File(f) as hf:
                    for a, r, b in zip(hf["lhs"][...], hf["rel"][...], hf["rhs"][...]):
                        out.add((names[lp][a], int(r), names[rp][b]))
    return names, out


CODE = """
import sys
sys.path.insert(0, {root!r})
from pbg_fast.config import parse_config
from pbg_fast.io.importer import import_from_tsv, _Spill
_Spill.BUDGET = 1  # spill every block: more real work to be killed in
import_from_tsv(parse_config({cfg!r}), [{tsv!r}], 0, 1, block_bytes=8192)
"""


def run(tmp_path, tsv, kill_at=None, kill_after=None):
    env = dict(os.environ)
    env.pop("PBG_FAST_KILL_AT", None)
    if kill_at:
        env["PBG_FAST_KILL_AT"] = kill_at
    code = CODE.format(root=str(ROOT), cfg=raw_config(tmp_path), tsv=str(tsv))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err.decode()


def test_killed_reimports_never_mix_and_rerun_matches(tmp_path):
    old_tsv, new_tsv = tmp_path / "old.tsv", tmp_path / "new.tsv"
    write(old_tsv, "o", 3000)
    write(new_tsv, "w", 6000)
    cfg = parse_config(raw_config(tmp_path))
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    import_from_tsv(parse_config(raw_config(ref_dir)), [str(new_tsv)], 0, 1, block_bytes=8192)
    want_new = read_back(ref_dir)
    import_from_tsv(cfg, [str(old_tsv)], 0, 1, block_bytes=8192)
    want_old = read_back(tmp_path)
    t0 = time.perf_counter()
    assert run(tmp_path, old_tsv)[0] == 0  # one whole run's time, start-up included
    whole = time.perf_counter() - t0
    rng = random.Random(3)
    plan = [(p, None) for p in POINTS] + [(None, rng.uniform(0.3, 1.0) * whole)
                                          for _ in range(RANDOM_KILLS)]
    kills = 0
    for kill_at, kill_after in plan:
        code, err = run(tmp_path, new_tsv, kill_at, kill_after)
        if code == 0:
            assert kill_after is not None, f"{kill_at} never reached: {err}"
        else:
            assert code == -signal.SIGKILL, (kill_at, code, err)
            kills += 1
        try:
            check_no_partial_import(cfg.entity_path, *cfg.edge_paths)
        except DataError:
            got = None  # refused whole: the marker is there, as it must be mid-move
        else:
            got = read_back(tmp_path)
            assert got in (want_old, want_new), kill_at  # never a mix
        if got != want_old:
            # Put the old import back for the next kill (a clean import: a restart test too).
            assert run(tmp_path, old_tsv)[0] == 0
            assert read_back(tmp_path) == want_old
    assert kills >= 20, kills
    assert run(tmp_path, new_tsv)[0] == 0
    assert read_back(tmp_path) == want_new
    left = [p.name for d in (tmp_path / "ent", tmp_path / "edges") for p in d.iterdir()
            if p.name.startswith(".pbg_fast")]
    assert left == []
