"""Distributed training on one machine: trainers as processes over loopback (torch.distributed
RPC), launched PBG's way (--rank with distributed_init_method) and by torchrun. They reach the
quality of one process; a trainer killed mid-epoch costs only its bucket (partitions through
the shared disk) or stops every rank with one clear error (partitions served by the trainers,
or the lock server's rank), and the same command resumes from the last committed version."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pbg_fast.config import parse_config
from pbg_fast.eval.link_prediction import evaluate
from pbg_fast.io.checkpoint import CheckpointManager
from pbg_fast.train.trainer import train

from .test_train import planted_setup

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 4


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def dist_config(raw, machines, servers=-1, **over):
    out = dict(raw, num_machines=machines, num_partition_servers=servers, workers=1,
               distributed_init_method=f"tcp://127.0.0.1:{free_port()}",
               distributed_timeout=60, distributed_lease=4, param_sync_interval=0.05)
    out.update(over)
    return out


def launch(cfg_path, machines, env_for=None, extra=(), servers=0):
    """The trainers (and `servers` standalone partition servers, after them)."""
    procs = []
    for r in range(servers):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pbg_fast", "partitionserver", str(cfg_path), "--rank",
             str(r)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for r in range(machines):
        env = dict(os.environ)
        env.update((env_for or {}).get(r, {}))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pbg_fast", "train", str(cfg_path), "--rank", str(r),
             "--quiet", *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs, timeout=240):
    out = []
    for p in procs:
        try:
            so, se = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, so, se))
    return out


def max_partition_bytes(raw):
    from pbg_fast.io.files import load_entity_count
    ent = raw["entities"]["node"]["num_partitions"]
    rows = max(load_entity_count(raw["entity_path"], "node", p) for p in range(ent))
    return rows * (raw["dimension"] + 1) * 4


def mrr(test_raw, ckpt):
    return evaluate(parse_config(dict(test_raw, checkpoint_path=ckpt)))["overall"]["mrr"]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The planted graph imported at P=4 and P=8, with one-process MRR for each."""
    out = {}
    for parts in (4, 8):
        d = tmp_path_factory.mktemp(f"p{parts}")
        train_raw, test_raw = planted_setup(d, parts=parts, epochs=EPOCHS)
        single = dict(train_raw, workers=1, checkpoint_path=str(d / "single"))
        train(parse_config(single))
        out[parts] = (d, train_raw, test_raw, mrr(test_raw, single["checkpoint_path"]))
    return out


@pytest.mark.parametrize("machines,parts,servers", [(2, 4, -1), (4, 8, -1), (2, 8, 0), (2, 4, 2)])
def test_trainers_reach_the_quality_of_one_process(graphs, machines, parts, servers):
    d, train_raw, test_raw, single = graphs[parts]
    ckpt = d / f"dist_{machines}_{servers}"
    cfg = dist_config(train_raw, machines, servers, checkpoint_path=str(ckpt))
    path = d / f"dist_{machines}_{servers}.json"
    path.write_text(json.dumps(cfg))
    results = finish(launch(path, machines, servers=max(servers, 0)))
    for rank, (rc, so, se) in enumerate(results):
        assert rc == 0, f"process {rank}: {se[-3000:]}"
    ck = CheckpointManager(str(ckpt))
    assert ck.load_version() == EPOCHS
    stats = [json.loads(line) for line in open(ck.stats_file())]
    totals = [s for s in stats if s["kind"] == "iteration" and s["rank"] is None]
    per_rank = [s for s in stats if s["kind"] == "iteration" and s["rank"] is not None]
    buckets = [s for s in stats if s["kind"] == "bucket"]
    assert len(totals) == EPOCHS and len(per_rank) == EPOCHS * machines
    assert sum(t["count"] for t in totals) == sum(b["count"] for b in buckets)
    if servers != 0:  # every load and write moved one whole partition, no more
        for s in per_rank:
            moved = s["bytes_read"] + s["bytes_written"]
            assert moved <= (s["partition_loads"] + s["partition_writes"]) * max_partition_bytes(
                train_raw), s
    # Every bucket trained once per epoch, by some trainer.
    for e in range(EPOCHS):
        got = sorted(tuple(b["bucket"]) for b in buckets if b["epoch"] == e)
        assert got == sorted((l, r) for l in range(parts) for r in range(parts)), e
    assert len({b["rank"] for b in buckets}) >= 2  # the work was shared
    assert abs(mrr(test_raw, str(ckpt)) - single) < 0.02, (mrr(test_raw, str(ckpt)), single)


def test_shared_parameters_stay_in_sync(tmp_path):
    """A relation operator and global embeddings (parameter shards, synced in the background)
    train to the quality of one process; the committed model is one model, not two."""
    train_raw, test_raw = planted_setup(
        tmp_path, parts=4, epochs=EPOCHS, global_emb=True, workers=1,
        relations=[{"name": "link", "lhs": "node", "rhs": "node", "operator": "diagonal"}])
    single = dict(train_raw, checkpoint_path=str(tmp_path / "single"))
    train(parse_config(single))
    cfg = dist_config(train_raw, 2, checkpoint_path=str(tmp_path / "dist"))
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    for rc, _, se in finish(launch(path, 2)):
        assert rc == 0, se[-3000:]
    ck = CheckpointManager(str(tmp_path / "dist"))
    params, _, _ = ck.load_model(ck.load_version())
    diag = [v for k, v in params.items() if "operator" in k]
    assert diag and not all(bool((v == 1).all()) for v in diag)  # the operator did train
    got, want = mrr(test_raw, str(tmp_path / "dist")), mrr(test_raw, single["checkpoint_path"])
    assert abs(got - want) < 0.02, (got, want)


def test_edge_chunks_and_resume_from_a_single_machine_checkpoint(graphs, tmp_path):
    """Iterations are epochs x edge chunks, as on one machine; a distributed run resumes a
    checkpoint that one machine wrote (same files)."""
    d, train_raw, test_raw, single = graphs[4]
    ckpt = str(tmp_path / "ckpt")
    train(parse_config(dict(train_raw, num_epochs=1, num_edge_chunks=2, checkpoint_path=ckpt)))
    assert CheckpointManager(ckpt).load_version() == 2
    cfg = dist_config(train_raw, 2, checkpoint_path=ckpt, num_epochs=2, num_edge_chunks=2)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    for rc, _, se in finish(launch(path, 2)):
        assert rc == 0, se[-3000:]
    ck = CheckpointManager(ckpt)
    assert ck.load_version() == 4
    stats = [json.loads(line) for line in open(ck.stats_file())]
    chunks = [(s["epoch"], s["edge_chunk"]) for s in stats
              if s["kind"] == "iteration" and s.get("rank", "single") is None]
    assert chunks == [(1, 0), (1, 1)]
    for it in chunks:
        got = sorted(tuple(b["bucket"]) for b in stats if b["kind"] == "bucket"
                     and (b["epoch"], b["edge_chunk"]) == it and "rank" in b)
        assert got == sorted((l, r) for l in range(4) for r in range(4)), it
    assert mrr(test_raw, ckpt) > single - 0.05


def test_torchrun_launch(graphs, tmp_path):
    d, train_raw, test_raw, single = graphs[4]
    cfg = dist_config(train_raw, 2, checkpoint_path=str(tmp_path / "ckpt"))
    cfg.pop("distributed_init_method")
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    torchrun = Path(sys.executable).parent / "torchrun"
    port = free_port()
    procs = [subprocess.Popen(
        [str(torchrun), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
         "--rdzv-endpoint", f"127.0.0.1:{port}", "-m", "pbg_fast", "train", str(path),
         "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)]
    for rc, so, se in finish(procs):
        assert rc == 0, se[-3000:]
    assert CheckpointManager(str(tmp_path / "ckpt")).load_version() == EPOCHS
    assert abs(mrr(test_raw, str(tmp_path / "ckpt")) - single) < 0.02


@pytest.mark.parametrize("servers", [0, 1])
def test_a_killed_trainer_loses_only_its_bucket(tmp_path, servers):
    """Partitions through the shared disk, or on a standalone server, and shared parameters (a
    diagonal operator, global embeddings) on rank 0 or the server: rank 1 dies (kill -9) in its
    third bucket; after its lease the lock server gives its unfinished buckets to rank 0, which
    finishes the run to the quality of one process."""
    train_raw, test_raw = planted_setup(
        tmp_path, parts=4, epochs=EPOCHS, global_emb=True, workers=1,
        relations=[{"name": "link", "lhs": "node", "rhs": "node", "operator": "diagonal"}])
    single_ckpt = str(tmp_path / "single")
    train(parse_config(dict(train_raw, checkpoint_path=single_ckpt)))
    single = mrr(test_raw, single_ckpt)
    cfg = dist_config(train_raw, 2, servers=servers, checkpoint_path=str(tmp_path / "ckpt"),
                      distributed_lease=2)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    procs = launch(path, 2, env_for={1: {"PBG_FAST_KILL_AT": "dist.bucket:3"}},
                   servers=servers)
    results = finish(procs)
    for rc, _, se in results[:servers]:
        assert rc == 0, se[-3000:]
    (rc0, _, se0), (rc1, _, _) = results[servers:]
    assert rc1 == -9
    assert rc0 == 0, se0[-3000:]
    ck = CheckpointManager(str(tmp_path / "ckpt"))
    assert ck.load_version() == EPOCHS
    stats = [json.loads(line) for line in open(ck.stats_file())]
    for e in range(EPOCHS):
        got = sorted(tuple(b["bucket"]) for b in stats if b["kind"] == "bucket" and b["epoch"] == e)
        assert got == sorted((l, r) for l in range(4) for r in range(4)), (e, got)
    assert abs(mrr(test_raw, str(tmp_path / "ckpt")) - single) < 0.03


@pytest.mark.parametrize("victim", [0, 1])
def test_a_dead_server_stops_every_rank_and_the_same_command_resumes(graphs, tmp_path, victim):
    """Partitions served by the trainers: a killed trainer takes its partitions with it (or,
    rank 0, the lock server), so the others stop with one clear error, exit 2, nothing
    half-written; the same command then resumes from the last committed version."""
    d, train_raw, test_raw, single = graphs[4]
    cfg = dist_config(train_raw, 2, checkpoint_path=str(tmp_path / "ckpt"),
                      distributed_lease=3, distributed_timeout=20)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    # Killed in its first bucket of the third epoch: version 1 is committed by then (a commit
    # overlaps the next iteration, and is joined before the one after it ends), version 2 may
    # be in flight.
    results = finish(launch(path, 2, env_for={victim: {"PBG_FAST_KILL_AT": "dist.bucket.epoch2"}}))
    assert results[victim][0] == -9
    rc, _, se = results[1 - victim]
    assert rc == 2, se[-3000:]
    lines = [l for l in se.splitlines() if l.startswith("pbg-fast: error:")]
    assert len(lines) == 1 and "trainer" in lines[0], se[-3000:]
    assert "Traceback" not in se
    ck = CheckpointManager(str(tmp_path / "ckpt"))
    before = ck.load_version()
    assert 1 <= before < EPOCHS
    # Anything besides version `before` is an uncommitted version's file, or a write cut by
    # the kill (a commit overlaps the next iteration, on either rank's partition server): the
    # restart below removes them all. Nothing committed is touched.
    import re
    for f in Path(tmp_path / "ckpt").iterdir():
        m = re.search(r"\.v(\d+)\.", f.name)
        assert m is None or int(m.group(1)) >= before, f.name
    assert ck.load_version() == before
    # The same command again, on both machines.
    for rc, so, se in finish(launch(path, 2)):
        assert rc == 0, se[-3000:]
    assert ck.load_version() == EPOCHS
    assert not [f for f in Path(tmp_path / "ckpt").iterdir()
                if ".v" in f.name and f".v{EPOCHS}." not in f.name]
    assert mrr(test_raw, str(tmp_path / "ckpt")) > single - 0.05


def test_bad_distributed_setups_are_refused(graphs, tmp_path):
    d, train_raw, _, _ = graphs[4]
    cfg = dist_config(train_raw, 2, checkpoint_path=str(tmp_path / "ckpt"))
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(dict(cfg, distributed_init_method=None)))
    p = subprocess.run([sys.executable, "-m", "pbg_fast", "train", str(path), "--rank", "0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "distributed_init_method" in p.stderr
    path.write_text(json.dumps(cfg))
    p = subprocess.run([sys.executable, "-m", "pbg_fast", "train", str(path), "--rank", "5"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--rank" in p.stderr
    p = subprocess.run([sys.executable, "-m", "pbg_fast", "train", str(path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--rank" in p.stderr
    # A rank whose peers never come: the rendezvous gives up after distributed_timeout.
    path.write_text(json.dumps(dict(cfg, distributed_timeout=3)))
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "pbg_fast", "train", str(path), "--rank", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "rendezvous" in p.stderr and time.monotonic() - t0 < 60
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").glob("*.h5"))


def _netns_available():
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("ss"):
        return "needs root, ip and ss"
    probe = f"pbgfprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _listeners(ns, pid):
    """Local addresses of the TCP sockets `pid` listens on inside namespace `ns`."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltnpH"], capture_output=True,
                         text=True).stdout
    return {line.split()[3] for line in out.splitlines() if f"pid={pid}," in line}


def test_two_machines_in_network_namespaces_bind_only_their_address(graphs, tmp_path):
    """Two "machines": network namespaces joined by a veth pair, each trainer serving only on
    its own address (--bind-address). Torch's rendezvous store (c10d TCPStore, hosted by rank
    0 on the distributed_init_method port) is the one listener torch binds to every address
    of rank 0's namespace; everything pbg_fast serves is on the given addresses."""
    why = _netns_available()
    if why:
        pytest.skip(why)
    d, train_raw, test_raw, single = graphs[4]
    tag = f"{os.getpid() % 100000}"
    ns = [f"pbgf{tag}a", f"pbgf{tag}b"]
    veth = [f"pbgf{tag}x", f"pbgf{tag}y"]
    net = 10 + os.getpid() % 200
    addr = [f"10.231.{net}.1", f"10.231.{net}.2"]

    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True)

    try:
        for n in ns:
            ip("netns", "add", n)
        ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for n, v, a in zip(ns, veth, addr):
            ip("link", "set", v, "netns", n)
            ip("-n", n, "addr", "add", f"{a}/24", "dev", v)
            ip("-n", n, "link", "set", v, "up")
            ip("-n", n, "link", "set", "lo", "up")
        port = 29500 + os.getpid() % 1000
        cfg = dist_config(train_raw, 2, checkpoint_path=str(tmp_path / "ckpt"), num_epochs=8,
                          distributed_init_method=f"tcp://{addr[0]}:{port}")
        path = tmp_path / "cfg.json"
        path.write_text(json.dumps(cfg))
        procs = [subprocess.Popen(
            ["ip", "netns", "exec", ns[r], sys.executable, "-m", "pbg_fast", "train", str(path),
             "--rank", str(r), "--quiet", "--bind-address", addr[r]], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
        seen = [set(), set()]
        deadline = time.monotonic() + 240
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            for r in range(2):
                if procs[r].poll() is None:
                    seen[r] |= _listeners(ns[r], procs[r].pid)
            time.sleep(0.1)
        results = finish(procs)
        for r, (rc, _, se) in enumerate(results):
            assert rc == 0, f"rank {r}: {se[-3000:]}"
        store = f"0.0.0.0:{port}", f"*:{port}", f"[::]:{port}", f"{addr[0]}:{port}"
        served = [{s for s in seen[0] if s not in store}, seen[1]]
        for r in range(2):
            assert served[r], f"rank {r}: no listening socket seen"
            assert all(s.rsplit(":", 1)[0] == addr[r] for s in served[r]), (r, served[r])
        assert CheckpointManager(str(tmp_path / "ckpt")).load_version() == 8
    finally:
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
