"""A user's mistakes end in one line `pbg-fast: error: <where>: <what>` and exit 2, and change
nothing on disk: a table of bad configs, data, checkpoints and command lines, each run through
the real CLI (in process) against a copy of a small imported-and-trained workspace, with the
workspace's bytes compared before and after."""

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pbg_fast.cli import main

ROOT = Path(__file__).resolve().parent.parent


def base_config(w: Path, **over):
    cfg = dict(
        entities={"all": {"num_partitions": 1}},
        relations=[{"name": "r", "lhs": "all", "rhs": "all", "operator": "none"}],
        dimension=8, comparator="dot", loss_fn="softmax", lr=0.1, num_epochs=1,
        batch_size=100, num_batch_negs=10, num_uniform_negs=10, eval_fraction=0,
        entity_path=str(w / "ent"), edge_paths=[str(w / "edges")],
        checkpoint_path=str(w / "ckpt"), workers=1)
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A workspace with a config, its TSV, the imported data and a trained checkpoint."""
    w = tmp_path_factory.mktemp("template")
    rows = [f"n{i % 37}\tn{(i * 7 + 3) % 41}\n" for i in range(400)]
    (w / "in.tsv").write_text("".join(rows))
    (w / "config.json").write_text(json.dumps(base_config(w)))
    assert main(["import-from-tsv", str(w / "config.json"), str(w / "in.tsv"), "-l", "0",
                 "-r", "1"]) == 0
    assert main(["train", str(w / "config.json"), "--quiet"]) == 0
    return w


def snapshot(root: Path):
    """Every file under root (the trainer's lock file aside) with a hash of its bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if name == ".pbg_fast.lock":
                continue
            out[str(p.relative_to(root))] = hashlib.sha1(p.read_bytes()).hexdigest()
        for name in dirnames:
            out[str((Path(dirpath) / name).relative_to(root)) + "/"] = "dir"
    return out


def write_config(w, name="bad.json", **over):
    (w / name).write_text(json.dumps(base_config(w, **over)))
    return str(w / name)


def rewrite_edges(w, **arrays):
    f = w / "edges" / "edges_0_0.h5"
    with h5py.File(f, "r") as hf:
        data = {k: hf[k][...] for k in hf}
    data.update(arrays)
    with h5py.File(f, "w") as hf:
        hf.attrs["format_version"] = 1
        for k, v in data.items():
            hf.create_dataset(k, data=v)


def nan_checkpoint(w):
    f = w / "ckpt" / "embeddings_all_0.v1.h5"
    with h5py.File(f, "r+") as hf:
        e = hf["embeddings"][...]
        e[3, 2] = np.nan
        hf["embeddings"][...] = e


def hold_lock(w):
    fd = os.open(w / "ckpt" / ".pbg_fast.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(dict(pid=424242, host="otherhost", what="pbg-fast train",
                                  since="2026-01-01 00:00:00")).encode(), 0)
    return Held(fd)


class Held(int):
    """A file descriptor the case holds open (its lock) until the command has run."""


C = "config.json"


def case(name, args, expect, setup=None):
    return pytest.param(setup, args, expect, id=name)


CASES = [
    # ---- config files ----
    case("config-missing", ["train", "nope.json"], r"nope.json: no such config file"),
    case("config-extension", ["train", "cfg.txt"], r"cfg.txt: unknown config format",
         lambda w: (w / "cfg.txt").write_text("{}")),
    case("config-bad-json", ["train", "bad.json"], r"bad.json:3: invalid JSON",
         lambda w: (w / "bad.json").write_text('{\n"dimension": 8,\n"lr": ,\n}')),
    case("config-not-utf8", ["train", "bad.json"], r"bad.json:2: not UTF-8",
         lambda w: (w / "bad.json").write_bytes(b'{\n"name": "\xff\xfe"}')),
    case("config-bad-yaml", ["train", "bad.yaml"], r"bad.yaml:3: invalid YAML",
         lambda w: (w / "bad.yaml").write_text("dimension: 8\nlr: [1, 2\nx: 3\n")),
    case("config-py-syntax", ["train", "cfg.py"], r"cfg.py:2: invalid Python",
         lambda w: (w / "cfg.py").write_text("def get_torchbiggraph_config():\n  return dict(\n")),
    case("config-py-raises", ["train", "cfg.py"], r"cfg.py:2: the config raised ZeroDivisionError",
         lambda w: (w / "cfg.py").write_text("def get_torchbiggraph_config():\n  return 1 / 0\n")),
    case("config-py-no-function", ["train", "cfg.py"], r"cfg.py: defines no get_torchbiggraph_config",
         lambda w: (w / "cfg.py").write_text("x = 1\n")),
    case("config-not-mapping", ["train", "bad.json"], r"bad.json: the config must be a mapping",
         lambda w: (w / "bad.json").write_text("[1, 2]")),
    case("config-unknown-key", ["train", "bad.json"], r"lrr: unknown key",
         lambda w: write_config(w, lrr=0.1)),
    case("config-missing-key", ["train", "bad.json"], r"dimension: missing required key",
         lambda w: (w / "bad.json").write_text(json.dumps(
             {k: v for k, v in base_config(w).items() if k != "dimension"}))),
    case("entity-name-path", ["train", "bad.json"], r"entities\['\.\./evil'\]: entity type name",
         lambda w: write_config(w, entities={"../evil": {"num_partitions": 1}},
                                relations=[{"name": "r", "lhs": "../evil", "rhs": "../evil"}])),
    case("relation-name-tab", ["train", "bad.json"], r"relations\[0\]\.name: relation name",
         lambda w: write_config(w, relations=[{"name": "a\tb", "lhs": "all", "rhs": "all"}])),
    case("lr-nan", ["train", C, "-p", "lr=nan"], r"lr: must be a finite number"),
    case("lr-negative", ["train", C, "-p", "lr=-1"], r"lr: must be non-negative"),
    case("init-scale-inf", ["train", C, "-p", "init_scale=inf"], r"init_scale: must be a finite"),
    case("margin-nan", ["train", C, "-p", "margin=nan"], r"margin: must be a finite"),
    case("margin-negative", ["train", C, "-p", "margin=-1"], r"margin: must be non-negative"),
    case("relation-weight-inf", ["train", C, "-p", "relations.0.weight=inf"],
         r"relations\[0\]\.weight: must be a finite"),
    case("dimension-not-int", ["train", C, "-p", "dimension=abc"], r"dimension: expected an int"),
    case("workers-absurd", ["train", C, "-p", "workers=100000"], r"workers: at most 1024"),
    case("override-no-equals", ["train", C, "-p", "lr"], r"-p lr: expected key=value"),
    case("override-unknown-subkey", ["train", C, "-p", "entities.all.parts=2"],
         r"entities\.all\.parts: unknown key"),
    case("override-bad-index", ["train", C, "-p", "relations.4.operator=none"],
         r"relations has no index 4"),
    case("override-bad-operator", ["train", C, "-p", "relations.0.operator=bogus"],
         r"relations\[0\]\.operator: unknown 'bogus'"),
    case("override-scalar-has-no-key", ["train", C, "-p", "lr.x=1"], r"lr is a float"),
    # ---- data named by the config ----
    case("edge-path-missing", ["train", C, "-p", "edge_paths=nowhere"],
         r"edge_paths\[0\]: nowhere does not exist"),
    case("edge-path-empty", ["train", C, "-p", "edge_paths=empty"],
         r"edge_paths\[0\]: empty holds no edge files", lambda w: (w / "empty").mkdir()),
    case("edge-file-outside-grid", ["train", C], r"edges_2_0.h5: bucket \(2, 0\) is outside",
         lambda w: shutil.copy(w / "edges" / "edges_0_0.h5", w / "edges" / "edges_2_0.h5")),
    case("entity-path-missing", ["train", C, "-p", "entity_path=nowhere"],
         r"entity_path: nowhere does not exist"),
    case("partitions-not-imported", ["train", C, "-p", "entities.all.num_partitions=2"],
         r"entity_count_all_1.txt: missing"),
    case("init-path-missing", ["train", C, "-p", "init_path=nowhere",
                               "-p", "checkpoint_path=fresh"],
         r"init_path: nowhere holds no checkpoint"),
    case("dynamic-rel-count-garbage", ["train", C, "-p", "dynamic_relations=true",
                                       "-p", "global_emb=false", "-p", "checkpoint_path=fresh"],
         r"dynamic_rel_count.txt: expected a non-negative integer, got 'lots'",
         lambda w: (w / "ent" / "dynamic_rel_count.txt").write_text("lots\n")),
    case("edge-file-truncated", ["train", C], r"edges_0_0.h5: cannot read edge file",
         lambda w: os.truncate(w / "edges" / "edges_0_0.h5", 300)),
    case("edge-ids-out-of-range", ["train", C, "-p", "num_epochs=2"], r"edges_0_0.h5: lhs entity offset 1000000 is outside",
         lambda w: rewrite_edges(w, lhs=np.full(400, 10**6, np.int64))),
    case("edge-weight-nan", ["train", C, "-p", "num_epochs=2"], r"edges_0_0.h5: edge 0 has weight nan",
         lambda w: rewrite_edges(w, weight=np.full(400, np.nan, np.float32))),
    case("edge-lengths-differ", ["train", C, "-p", "num_epochs=2"], r"edges_0_0.h5: datasets of different lengths",
         lambda w: rewrite_edges(w, rhs=np.zeros(10, np.int64))),
    case("checkpoint-path-under-file", ["train", C, "-p", "checkpoint_path=in.tsv/ck"],
         r"checkpoint_path: cannot create or write"),
    case("training-diverges", ["train", C, "-p", "lr=1e30", "-p", "num_epochs=2"],
         r"training diverged in epoch 1, .* bucket \(0, 0\): .* stays at version 1\. Likely "
         r"cause: lr = 1e\+30"),
    # ---- the checkpoint ----
    case("dimension-vs-checkpoint", ["train", C, "-p", "dimension=16"],
         r"dimension: the config has 16 but the checkpoint in .* was written with 8"),
    case("operator-vs-checkpoint", ["train", C, "-p", "relations.0.operator=diagonal"],
         r"relations\.0\.operator: the config has 'diagonal' but .* with 'none'"),
    case("comparator-vs-checkpoint", ["eval", C, "-p", "comparator=cos"],
         r"comparator: the config has 'cos' but"),
    case("export-dimension-vs-checkpoint", ["export-to-tsv", C, "out.tsv", "-p", "dimension=4"],
         r"dimension: the config has 4 but"),
    case("version-garbage", ["train", C], r"checkpoint_version.txt: not a checkpoint version",
         lambda w: (w / "ckpt" / "checkpoint_version.txt").write_text("banana\n")),
    case("version-negative", ["train", C], r"checkpoint_version.txt: not a checkpoint version .*'-3'",
         lambda w: (w / "ckpt" / "checkpoint_version.txt").write_text("-3\n")),
    case("second-trainer", ["train", C],
         r"checkpoint_path: .* is in use by pbg-fast train \(pid 424242 on otherhost", hold_lock),
    case("eval-nan-checkpoint", ["eval", C], r"embeddings_all_0.v1.h5: the embeddings of 'all' "
         r"partition 0 hold NaN or inf", nan_checkpoint),
    case("export-nan-checkpoint", ["export-to-tsv", C, "out.tsv"], r"hold NaN or inf",
         nan_checkpoint),
    case("eval-no-checkpoint", ["eval", C, "-p", "checkpoint_path=fresh"],
         r"checkpoint_path: fresh does not exist"),
    # ---- eval / export options ----
    case("filter-path-missing", ["eval", C, "--filtered", "--filter-edge-paths", "nowhere"],
         r"--filter-edge-paths: nowhere does not exist"),
    case("filter-without-filtered", ["eval", C, "--filter-edge-paths", "edges"],
         r"--filter-edge-paths: only meaningful with --filtered"),
    case("export-name-with-tab", ["export-to-tsv", C, "out.tsv"],
         r"entity_names_all_0.json: entity 0 of 'all' .* contains a tab",
         lambda w: (w / "ent" / "entity_names_all_0.json").write_text(json.dumps(
             ["a\tb"] + json.loads((w / "ent" / "entity_names_all_0.json").read_text())[1:]))),
    case("export-names-count", ["export-to-tsv", C, "out.tsv"], r"3 names but the checkpoint has",
         lambda w: (w / "ent" / "entity_names_all_0.json").write_text('["a", "b", "c"]')),
    case("export-npy-onto-file", ["export-to-tsv", C, "in.tsv", "--format", "npy"],
         r"in.tsv: exists and is not a directory"),
    # ---- import ----
    case("import-input-missing", ["import-from-tsv", C, "nope.tsv", "-l", "0", "-r", "1"],
         r"nope.tsv"),
    case("import-inputs-vs-edge-paths", ["import-from-tsv", C, "in.tsv", "in.tsv", "-l", "0",
                                         "-r", "1"], r"edge_paths: the config names 1"),
    case("import-bad-line", ["import-from-tsv", C, "bad.tsv", "-l", "0", "-r", "1"],
         r"bad.tsv:2: expected at least 2 columns",
         lambda w: (w / "bad.tsv").write_text("a\tb\nc\n")),
]


@pytest.mark.parametrize("setup,args,expect", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(template, tmp_path, capsys, monkeypatch,
                                                         setup, args, expect):
    w = tmp_path / "w"
    shutil.copytree(template, w)
    # The template's config names the template's paths: re-point them at the copy.
    (w / C).write_text(json.dumps(base_config(w)))
    monkeypatch.chdir(w)
    held = setup(w) if setup else None
    before = snapshot(w)
    try:
        code = main(args)
    finally:
        if isinstance(held, Held):
            os.close(held)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("pbg-fast: error: "), err
    import re
    assert re.search(expect, err[0]), err[0]
    assert snapshot(w) == before


def test_table_is_large_enough():
    assert len(CASES) >= 40


def test_real_process_exit_code_and_no_traceback(template, tmp_path):
    """The same through a real `python -m pbg_fast` process: status 2, one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "pbg_fast", "train", str(template / C), "-p",
                           "lr=nan"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "pbg-fast: error: lr: must be a finite number, got 'nan'"
