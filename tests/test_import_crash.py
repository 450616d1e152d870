"""A re-import killed (SIGKILL) anywhere leaves either the previous import intact, or the new
one complete, or the in-progress marker that makes the trainer refuse the data; and a clean
re-run then gives the output of an uninterrupted import, with no leftovers.

The imports run in child processes of one server process (``sys.executable -c SERVER``): it
imports pbg_fast once (torch makes that seconds long) and forks a child per import, which
dies at a fault point (PBG_FAST_KILL_AT) or is SIGKILLed by the server after a random delay.
The server kills before it reaps, so the pid cannot have been reused by then.
"""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pbg_fast.config import parse_config
from pbg_fast.errors import DataError
from pbg_fast.io import files
from pbg_fast.io.importer import import_from_tsv

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 1024  # ~27 chunks of the new file: 27 spill files, ~100 bucket appends

SERVER = r"""
import json, os, signal, sys, time, traceback
from pbg_fast.config import parse_config
from pbg_fast.io import importer
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if job["kill_at"]:
                os.environ["PBG_FAST_KILL_AT"] = job["kill_at"]
            importer._Spill.BUDGET = 0  # spill every chunk: real work to interrupt
            importer.import_from_tsv(parse_config(job["config"]), [job["input"]], 0, 2,
                                     rel_col=1, block_bytes=job["block_bytes"])
        except BaseException:
            traceback.print_exc()
            code = 3
        os._exit(code)
    if job["kill_after"] is not None:
        time.sleep(job["kill_after"])
        os.kill(pid, signal.SIGKILL)  # not reaped yet: still our child (or its zombie)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status),
                      "seconds": time.perf_counter() - t0}), flush=True)
"""


def raw_config(d: Path):
    return dict(entities={"node": {"num_partitions": 2}},
                relations=[{"name": "all", "lhs": "node", "rhs": "node"}],
                dynamic_relations=True, global_emb=False, dimension=8,
                entity_path=str(d / "ent"), edge_paths=[str(d / "edges")],
                checkpoint_path=str(d / "ckpt"))


def output(d: Path):
    """(names, relation names, sorted (lhs, rel, rhs) edges) of an import, read through
    pbg_fast.io.files as the trainer reads it; raises if anything is missing or corrupt."""
    ent, names = d / "ent", {}
    for p in range(2):
        part = files.load_entity_names(ent, "node", p)
        assert files.load_entity_count(ent, "node", p) == len(part)
        names[p] = part
    rels = json.loads((ent / "dynamic_rel_names.json").read_text())
    assert files.load_dynamic_rel_count(ent) == len(rels)
    edges = []
    for lp in range(2):
        for rp in range(2):
            e = files.load_edges(d / "edges", lp, rp)
            edges += [(names[lp][l], rels[r], names[rp][t])
                      for l, r, t in zip(e["lhs"].tolist(), e["rel"].tolist(), e["rhs"].tolist())]
    return sorted(names[0] + names[1]), rels, sorted(edges)


def state(d: Path):
    """'marker' if the trainer would refuse the directories, else what they hold."""
    try:
        files.check_no_partial_import(d / "ent", d / "edges")
    except DataError:
        return "marker"
    return output(d)


def leftovers(d: Path):
    return [p.name for sub in ("ent", "edges") for p in (d / sub).iterdir()
            if p.name.startswith(".pbg_fast")]


@pytest.fixture(scope="module")
def server():
    p = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "ready"
    yield p
    p.stdin.close()
    p.wait(30)


def run(server, d: Path, src: Path, kill_at=None, kill_after=None):
    server.stdin.write(json.dumps(dict(config=raw_config(d), input=str(src), kill_at=kill_at,
                                       kill_after=kill_after, block_bytes=BLOCK)) + "\n")
    server.stdin.flush()
    return json.loads(server.stdout.readline())


# (kill point, n-th time): before the marker, old data must be intact; with it, refused;
# after it is removed, the new data complete.
POINTS = [("import.spilled:1", "old"), ("import.spilled:12", "old"), ("import.bucket:1", "old"),
          ("import.bucket:30", "old"), ("import.marked", "marker"), ("import.moving:1", "marker"),
          ("import.moving:4", "marker"), ("import.moving:8", "marker"),
          ("import.moved", "marker"), ("import.done", "new")]
RANDOM_KILLS = 12


def test_killed_reimport_keeps_old_data_or_is_refused_then_reruns_clean(tmp_path, server):
    old_src, new_src = tmp_path / "old.tsv", tmp_path / "new.tsv"
    old_src.write_text("".join(f"o{i % 97}\tr{i % 3}\to{(i * 7) % 89}\n" for i in range(1500)))
    new_src.write_text("".join(f"n{(i * 13) % 211}\ts{i % 4}\tn{i % 173}\n" for i in range(2000)))
    template = tmp_path / "template"
    import_from_tsv(parse_config(raw_config(template)), [str(old_src)], 0, 2, rel_col=1)
    old = output(template)

    # The uninterrupted re-import, in a server child like the killed ones: the reference
    # output, and how long an import takes (where the random kills must land).
    shutil.copytree(template, tmp_path / "ref")
    res = run(server, tmp_path / "ref", new_src)
    assert res["exit"] == 0
    new, seconds = output(tmp_path / "ref"), res["seconds"]
    assert new != old and not leftovers(tmp_path / "ref")

    rng = random.Random(1234)
    trials = [(point, expect, None) for point, expect in POINTS]
    trials += [(None, None, rng.uniform(0.05, 0.9) * seconds) for _ in range(RANDOM_KILLS)]
    kills, seen, i = 0, set(), 0
    while trials:
        point, expect, delay = trials.pop(0)
        i += 1
        d = tmp_path / f"t{i}"
        shutil.copytree(template, d)
        res = run(server, d, new_src, kill_at=point, kill_after=delay)
        what = point or f"random kill after {delay:.3f} s"
        if res["exit"] == 0 and delay is not None and i < 60:
            trials.append((None, None, rng.uniform(0.05, 0.7) * seconds))  # finished first
            continue
        assert res["exit"] == -9, f"{what}: the import exited with {res['exit']}"
        kills += 1
        got = state(d)
        label = "marker" if got == "marker" else "old" if got == old else "new" if got == new \
            else "mixed"
        assert label == (expect or label) != "mixed", f"{what}: left {label} data"
        seen.add(label)
        # A clean re-run succeeds, removes the killed import's staging and spill directories
        # (its pid is dead) and gives the uninterrupted import's output.
        import_from_tsv(parse_config(raw_config(d)), [str(new_src)], 0, 2, rel_col=1)
        assert state(d) == new, what
        assert not leftovers(d), (what, leftovers(d))
        shutil.rmtree(d)
    assert kills >= 20 and seen == {"old", "marker", "new"}, (kills, seen)
