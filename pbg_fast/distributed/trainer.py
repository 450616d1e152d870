"""Distributed training: `num_machines` trainers, one process each, on torch.distributed.rpc
(TensorPipe; the rendezvous is torch's c10d store: `env://` under torchrun, or
`distributed_init_method` with `--rank`, as PBG launches).

Every trainer runs the single-machine trainer's bucket step (the native bucket op, unchanged)
on the buckets the lock server grants it. Rank 0 also runs the lock server and commits each
iteration. Partitions move between trainers through a tier of the PartitionBuffer:
  num_partition_servers = -1  each trainer also serves P/M of the partitions from memory
                              (PartitionServerTier: a swap is a network transfer);
  num_partition_servers =  S  S standalone servers (`pbg-fast partitionserver --rank R`,
                              ranks M .. M+S-1 of the RPC world), the same tier;
  num_partition_servers =  0  through the shared checkpoint_path (SharedDiskTier: a swap is a
                              write and a read of the pending version's file).
Shared parameters (relation operators, global embeddings, unpartitioned entity types, and
their Adagrad states) live on parameter shards (on the partition servers; on rank 0 with the
shared disk) and are synced by a background thread on each trainer.

Faults: every call has the distributed_timeout, and every wait gives up after it passes with
no progress of the run. A trainer that stops heartbeating for distributed_lease loses its
unfinished buckets to the others (with standalone servers or the shared disk; with partition
servers on the trainers its partitions die with it, and every rank stops with an error), and
its later writes are refused (fencing tokens). A dead rank 0 or partition server stops every
rank with an error. A restart with the same command resumes from the last committed version:
nothing is committed but whole iterations.
"""

import contextlib
import logging
import os
import socket
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch
import torch.distributed.rpc as rpc

from .. import faults
from ..config import ConfigSchema
from ..errors import ConfigError
from ..io.checkpoint import CheckpointManager
from ..io.files import load_edges
from ..train.partition_buffer import CheckpointTier, PartitionBuffer
from ..train.schedule import bucket_order
from ..train.trainer import Model, Trainer
from .lock_server import LockServer, most_at_once
from .servers import (ROLES, SELF, DistributedError, ParamClient, ParameterShard,
                      PartitionServer, call)

logger = logging.getLogger("pbg_fast")
Key = Tuple[str, int]
LOCK = "trainer0"
# The longest sleep between two polls of the lock server (for a bucket, for an iteration to
# open or close): a poll is one small RPC, and a trainer idle for longer wastes its cores.
POLL_MAX = 0.02


def trainer_name(rank: int) -> str:
    return f"trainer{rank}"


# ---- tiers: where a trainer's buffer loads partitions from and writes them to -----------------
class PartitionServerTier:
    """Partitions on the partition servers (partition p on server p mod S), fenced by the lock
    server's tokens; unpartitioned types come from the checkpoint (then shared as parameters)."""

    def __init__(self, servers: Sequence[str], disk: CheckpointTier, partitioned: Set[str],
                 timeout: float):
        self.servers, self.disk, self.partitioned = list(servers), disk, partitioned
        self.timeout = timeout
        self.tokens: Dict[int, int] = {}

    def server(self, k: Key) -> str:
        return self.servers[k[1] % len(self.servers)]

    def fill(self, k, emb, state, version, written) -> int:
        if k[0] not in self.partitioned:
            return self.disk.fill(k, emb, state, version, written)
        e, s = call(self.server(k), "parts", "get", k, self.tokens[k[1]], timeout=self.timeout)
        emb.copy_(e)
        state.copy_(s)
        return emb.nbytes + state.nbytes

    def save(self, k, emb, state, version, meta, durable) -> int:
        return call(self.server(k), "parts", "put", k, self.tokens[k[1]], emb, state,
                    timeout=self.timeout)

    def sync(self, k, version) -> None:
        pass  # in memory: nothing to make durable until the iteration's commit


class SharedDiskTier(CheckpointTier):
    """Partitions through the shared checkpoint_path: a partition another trainer already
    wrote in this iteration (its version + 1 file exists: files appear whole, by rename) is
    read from there. Writes are durable, and refused once the lease is lost or the partition's
    fencing token is no longer current (checked with the lock server just before each write;
    a trainer that stalls between that check and its rename is not fenced)."""

    def __init__(self, config, ckpt, seed, check_lease, token_valid):
        super().__init__(config, ckpt, seed)
        self.check_lease = check_lease
        self.token_valid = token_valid
        self.tokens: Dict[int, int] = {}

    def fill(self, k, emb, state, version, written) -> int:
        return super().fill(k, emb, state, version,
                            written or self.ckpt.has_partition(k[0], k[1], version + 1))

    def save(self, k, emb, state, version, meta, durable) -> int:
        self.check_lease()
        if k[1] in self.tokens and not self.token_valid(k[1], self.tokens[k[1]]):
            raise DistributedError(f"partition {k[1]}: the lock server gave it to another "
                                   f"trainer (this one was declared dead); not writing it")
        return super().save(k, emb, state, version, meta, durable=True)


# ---- launch ----------------------------------------------------------------------------------
def resolve_rank(config: ConfigSchema, rank: Optional[int]) -> Tuple[int, str]:
    """(rank, init_method): torchrun's environment, or --rank with distributed_init_method."""
    env_rank = os.environ.get("RANK")
    if env_rank is not None and os.environ.get("WORLD_SIZE") is not None and rank is None:
        world = int(os.environ["WORLD_SIZE"])
        if config.num_partition_servers > 0:
            raise ConfigError("num_partition_servers: standalone partition servers are launched "
                              "with --rank and distributed_init_method, not by torchrun; use "
                              "-1 (the trainers serve) or 0 (the shared disk) under torchrun")
        if world != config.num_machines:
            raise ConfigError(f"num_machines: the config says {config.num_machines}, torchrun "
                              f"started {world} processes (--nnodes x --nproc-per-node)")
        return int(env_rank), "env://"
    if rank is None:
        raise ConfigError("num_machines: a distributed run needs --rank R (with "
                          "distributed_init_method) or to be launched by torchrun")
    if not 0 <= rank < config.num_machines:
        raise ConfigError(f"--rank: must be in [0, num_machines = {config.num_machines}), "
                          f"got {rank}")
    if not config.distributed_init_method:
        raise ConfigError("distributed_init_method: required with --rank (e.g. "
                          "tcp://HOST:PORT, the address rank 0 listens on)")
    return rank, config.distributed_init_method


def interface_of(address: str) -> str:
    """The network interface holding an IPv4 address (TensorPipe binds by interface name)."""
    import fcntl
    import struct
    want = socket.inet_aton(socket.gethostbyname(address))
    for _, name in socket.if_nameindex():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            req = struct.pack("256s", name.encode()[:15])
            got = fcntl.ioctl(s.fileno(), 0x8915, req)[20:24]  # SIOCGIFADDR
        except OSError:
            continue
        finally:
            s.close()
        if got == want:
            return name
    raise ConfigError(f"--bind-address: no network interface here has the address {address}")


def route_address(init_method: str) -> str:
    """The local address that reaches the rendezvous host (what binds by default)."""
    host = None
    if init_method.startswith("tcp://"):
        host = init_method[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    elif init_method == "env://":
        host = os.environ.get("MASTER_ADDR")
    if not host:
        return "127.0.0.1"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((socket.gethostbyname(host), 9))  # no packet is sent: a route lookup
        return s.getsockname()[0]
    finally:
        s.close()


def server_names(config: ConfigSchema) -> List[str]:
    """The partition servers: standalone processes, or the trainers themselves (-1)."""
    if config.num_partition_servers > 0:
        return [f"partserver{r}" for r in range(config.num_partition_servers)]
    if config.num_partition_servers == -1:
        return [trainer_name(r) for r in range(config.num_machines)]
    return []


def param_owners(config: ConfigSchema) -> List[str]:
    """Where the shared parameters live: with servers, on them; through the shared disk, on
    rank 0 alone (whose loss stops the run anyway), so that a dead trainer loses no shard."""
    if config.num_partition_servers == 0:
        return [trainer_name(0)]
    return server_names(config)


def world_size(config: ConfigSchema) -> int:
    """Trainers (ranks 0 .. M-1), then standalone partition servers (M .. M+S-1)."""
    return config.num_machines + max(config.num_partition_servers, 0)


def init_rpc(config: ConfigSchema, name: str, rank: int, init_method: str,
             bind_address: Optional[str]) -> str:
    address = bind_address or route_address(init_method)
    # TensorPipe (the RPC agent) and gloo (the process group RPC sets up for itself) bind to
    # an interface by name: the one holding the address.
    os.environ["TP_SOCKET_IFNAME"] = os.environ["GLOO_SOCKET_IFNAME"] = interface_of(address)
    SELF["name"] = name
    opts = rpc.TensorPipeRpcBackendOptions(
        init_method=init_method, rpc_timeout=config.distributed_timeout, num_worker_threads=16,
        # One TCP transport on the bound address; CPU tensors travel on its connections (no
        # shared-memory or multiplexed channels with listeners of their own).
        _transports=["uv"], _channels=["basic"])
    what = (f"distributed_init_method: rendezvous at {init_method} as {name} (rank {rank} "
            f"of {world_size(config)})")
    # torch's rendezvous waits up to 30 minutes for the store and the peers, whatever the RPC
    # timeout: a watchdog ends the process after distributed_timeout instead (nothing has been
    # written yet; the checkpoint lock goes with the process).
    done = threading.Event()

    def watchdog():
        if not done.wait(config.distributed_timeout):
            print(f"pbg-fast: error: {what} did not complete within distributed_timeout = "
                  f"{config.distributed_timeout:g} s (are all {world_size(config)} processes "
                  f"started with this address?)", file=sys.stderr, flush=True)
            os._exit(2)

    threading.Thread(target=watchdog, name="pbg_fast-rendezvous", daemon=True).start()
    try:
        with warnings.catch_warnings():  # torch's own use of a deprecated ProcessGroup form
            warnings.simplefilter("ignore", UserWarning)
            rpc.init_rpc(name, rank=rank, world_size=world_size(config),
                         rpc_backend_options=opts)
    except RuntimeError as e:
        raise DistributedError(f"{what} failed: "
                               f"{str(e).splitlines()[0] if str(e) else e}") from None
    finally:
        done.set()
    return address


# ---- the trainer -----------------------------------------------------------------------------
class DistributedTrainer(Trainer):
    def __init__(self, config: ConfigSchema, rank: int, init_method: str, seed: int = 0,
                 progress=None, bind_address: Optional[str] = None):
        super().__init__(config, seed=seed, progress=progress)
        self.rank, self.init_method, self.bind_address = rank, init_method, bind_address
        self.lease_lost = threading.Event()

    # -- entry ---------------------------------------------------------------------------------
    def train(self) -> List[dict]:
        self.check_inputs()
        if self.rank == 0:  # the one that commits
            return self._under_lock(f"pbg-fast train (distributed rank 0, seed {self.seed})",
                                    self._with_rpc)
        return self._with_rpc()

    def _with_rpc(self) -> List[dict]:
        c = self.config
        self.partitioned = {e for e, ec in c.entities.items() if ec.num_partitions > 1}
        self.disk = CheckpointTier(c, self.ckpt, self.seed)
        ROLES.clear()
        ROLES["parts_ckpt"] = c.checkpoint_path
        ROLES["params"] = ParameterShard()
        if c.num_partition_servers == -1:
            ROLES["parts"] = PartitionServer(self._load_for_server, validate=self._token_valid)
        if self.rank == 0:
            ROLES["lock"] = LockServer(c.side_partitions("lhs"), c.side_partitions("rhs"),
                                       c.distributed_lease)
        self._commit_thread: Optional[threading.Thread] = None
        self._commit_error: Optional[BaseException] = None
        self._commit_records: List[dict] = []
        init_rpc(c, trainer_name(self.rank), self.rank, self.init_method, self.bind_address)
        try:
            out = self._run()
            self._leave()
            return out
        finally:
            if "parts" in ROLES:
                ROLES["parts"].stop_preload()
            self._stop_heartbeat()
            # Never graceful: that is a barrier of every worker, which a dead one would hang.
            # _leave has made sure that nobody needs this process any more.
            rpc.shutdown(graceful=False)
            ROLES.clear()

    def _leave(self) -> None:
        """The run's end: a trainer stays (serving its partitions and parameters) until rank 0
        committed the last version; rank 0 until every live trainer has seen that."""
        total = self._total_iters
        if self.rank == 0:
            try:
                self._wait_for(lambda: ROLES["lock"].all_left(range(1, world_size(self.config))),
                               bool, "the other trainers and servers to see the last commit")
            except DistributedError as e:  # the run is committed: a late peer is not an error
                logger.warning("%s; stopping anyway, the last version is committed", e)
        else:
            self._wait_for(lambda: self._lock("status")["committed"], lambda v: v >= total,
                           "rank 0 to commit the last version")
            self._lock("leave", self.rank)

    def _token_valid(self, part: int, token: int) -> bool:
        return self._lock("check_token", part, token)

    def _load_for_server(self, k: Key) -> Tuple[torch.Tensor, torch.Tensor]:
        # A partition no server holds yet is untouched since the run (re)started: every
        # committed version since has the same copy of it (linked), so the newest one serves,
        # even while the previous iteration's commit is still being written.
        return self.disk.load(k, self._lock("status")["committed"])

    def _lock(self, method: str, *args, timeout: Optional[float] = None):
        return call(LOCK, "lock", method, *args,
                    timeout=timeout if timeout is not None else self.config.distributed_timeout)

    def _release(self, parts: List[int]) -> None:
        if not self._lock("release", self.rank, parts):
            self.lease_lost.set()
            self._check_lease()

    # -- heartbeat ------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._hb_stop = threading.Event()

        def run():
            lease = self.config.distributed_lease
            every = lease / 4
            last_ok = time.monotonic()
            while not self._hb_stop.wait(every):
                try:
                    if not self._lock("heartbeat", self.rank, timeout=max(every, 0.5)):
                        self.lease_lost.set()
                        return
                    last_ok = time.monotonic()
                except DistributedError:
                    # Retried at the next tick; past the lease the lock server has declared
                    # this trainer dead (or is gone): stop writing.
                    if time.monotonic() - last_ok > lease:
                        self.lease_lost.set()
                        return

        self._hb = threading.Thread(target=run, name="pbg_fast-heartbeat", daemon=True)
        self._hb.start()

    def _stop_heartbeat(self) -> None:
        if getattr(self, "_hb", None) is not None:
            self._hb_stop.set()
            self._hb.join()
            self._hb = None

    def _check_lease(self) -> None:
        if self.lease_lost.is_set():
            raise DistributedError(f"rank {self.rank}: the lock server declared this trainer "
                                   f"dead (silent over distributed_lease = "
                                   f"{self.config.distributed_lease:g} s); its unfinished "
                                   f"buckets went to the others. Nothing it wrote since was "
                                   f"kept")

    # -- the run --------------------------------------------------------------------------------
    def _run(self) -> List[dict]:
        c, ckpt = self.config, self.ckpt
        timeout = c.distributed_timeout
        version = ckpt.load_version()
        model = self._start_model(version)
        self._first_iteration = version
        n_chunks = self.num_edge_chunks()
        n_paths = len(c.edge_paths)
        total_iters = self._total_iters = c.num_epochs * n_paths * n_chunks
        nl, nr = c.side_partitions("lhs"), c.side_partitions("rhs")
        relation_lr = c.relation_lr if c.relation_lr is not None else c.lr
        if self.rank == 0:
            ROLES["lock"].set_committed(version)

        if c.num_partition_servers != 0:
            self.tier = PartitionServerTier(server_names(c), self.disk, self.partitioned,
                                            timeout)
        else:
            self.tier = SharedDiskTier(c, ckpt, self.seed, self._check_lease, self._token_valid)
        buffer = PartitionBuffer(c, ckpt, self.seed, capacity=2, io="sync", tier=self.tier)
        owners = param_owners(c)
        params = ParamClient(lambda name: owners[zlib.crc32(name.encode()) % len(owners)],
                             c.param_sync_interval, timeout)
        self._lock("join", self.rank)
        self._start_heartbeat()
        # Iterations: rank 0 opens each once the previous one is committed.
        if self.rank == 0:
            # Every trainer has read the committed version before rank 0 may replace it.
            self._wait_for(lambda: ROLES["lock"].all_joined(range(c.num_machines)), bool,
                           "every trainer to join")
            first = version
        else:
            st = self._wait_for(lambda: self._lock("status"),
                                lambda st: st["iteration"] >= 0 or st["committed"] >= total_iters,
                                "rank 0 to open the first iteration")
            first = max(st["iteration"], 0) if st["committed"] < total_iters else total_iters
        records = []
        shared_registered = False
        try:
            for it in range(first, total_iters):
                epoch, path_idx, chunk_idx, meta = self._iteration_meta(it, n_paths, n_chunks)
                if self.rank == 0:
                    ROLES["lock"].start_iteration(
                        it, bucket_order(c.bucket_order, nl, nr, self.seed * 7919 + it, 2))
                else:
                    self._wait_for(lambda: self._lock("status")["iteration"],
                                   lambda v: v >= it, f"rank 0 to open iteration {it}")
                buffer.start_iteration(it, [], meta)
                if it == first and "parts" in ROLES:  # this trainer's partitions, ahead
                    names = server_names(c)
                    ROLES["parts"].preload(
                        [(e, p) for e in sorted(self.partitioned)
                         for p in range(c.entities[e].num_partitions)
                         if names[p % len(names)] == trainer_name(self.rank)])
                if not shared_registered:
                    self._register_shared(params, model, buffer)
                    shared_registered = True
                params.start()
                t_iter = time.perf_counter()
                io_start = buffer.stats.snapshot()
                p_start = (params.bytes, params.syncs, params.seconds)
                recs = self._train_iteration(it, epoch, path_idx, chunk_idx, n_chunks, buffer,
                                             model, relation_lr)
                params.stop()
                io = buffer.stats.since(io_start)
                rec = dict(kind="iteration", rank=self.rank, epoch=epoch, edge_path=path_idx,
                           edge_chunk=chunk_idx, count=sum(r["count"] for r in recs),
                           loss=sum(r["loss"] for r in recs),
                           train_seconds=sum(r["seconds"] for r in recs),
                           buckets=len(recs), seconds=time.perf_counter() - t_iter,
                           partition_loads=io["loads"], partition_writes=io["writes"],
                           bytes_read=io["bytes_read"], bytes_written=io["bytes_written"],
                           io_seconds=io["io_seconds"], io_wait_seconds=io["wait_seconds"],
                           param_bytes=params.bytes - p_start[0],
                           param_syncs=params.syncs - p_start[1],
                           param_seconds=params.seconds - p_start[2],
                           idle_seconds=self.idle_seconds,
                           **{f"{k}_seconds": v for k, v in self.phase_seconds.items()})
                rec["edges_per_s"] = rec["count"] / max(rec["train_seconds"], 1e-9)
                self._lock("finish_iteration", self.rank, it, [rec])
                if self.rank == 0:
                    self._end_iteration(it, buffer, model, params, meta, t_iter, epoch,
                                        path_idx == n_paths - 1 and chunk_idx == n_chunks - 1,
                                        last=it == total_iters - 1)
                    continue
                if self.progress:
                    self.progress(rec)
                records.append(rec)
            if self.rank == 0:
                self._join_commit()
                records = self._commit_records
        finally:
            params.halt()  # no thread may call a peer once RPC shuts down
            if self._commit_thread is not None:  # a failure elsewhere: let it end first
                self._commit_thread.join()
            buffer.close()
        return records

    def _progress(self):
        st = self._lock("status")
        return st["progress"], st["committed"]

    def _wait_for(self, get, ok, what: str):
        """Polls get() until ok(its value). Gives up after distributed_timeout without any
        progress of the run (buckets granted or done, versions committed): waiting on others'
        long buckets is fine, a run that stands still is not."""
        deadline = time.monotonic() + self.config.distributed_timeout
        delay = 0.002
        seen = None
        while True:
            v = get()
            if ok(v):
                return v
            self._check_lease()
            if seen is None or time.monotonic() > deadline:
                now = self._progress()
                if now != seen:  # progress since the last look: wait on
                    seen, deadline = now, time.monotonic() + self.config.distributed_timeout
            if time.monotonic() > deadline:
                raise DistributedError(f"rank {self.rank}: waited distributed_timeout = "
                                       f"{self.config.distributed_timeout:g} s for {what}")
            time.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    def _register_shared(self, params: ParamClient, model: Model, buffer: PartitionBuffer):
        """Relation operators, global embeddings and unpartitioned types' tables (loaded whole by
        the buffer), with their Adagrad states, become shared parameters."""
        c = self.config
        # Dense parameters, which every trainer changes everywhere: their mean change (or sum).
        scale = 1.0
        if c.shared_param_merge == "mean":
            scale = 1.0 / min(c.num_machines, most_at_once(c.side_partitions("lhs"),
                                                            c.side_partitions("rhs")))
        for i, rp in enumerate(model.relations):
            for attr in ("rhs", "lhs"):
                params.register(f"relations/{i}/{attr}", getattr(rp, attr), scale)
                params.register(f"relations/{i}/{attr}_state", getattr(rp, f"{attr}_state"))
        for e, (v, s) in model.global_embs.items():
            params.register(f"global/{e}", v, scale)
            params.register(f"global/{e}/state", s)
        for e in c.entities:
            if e not in self.partitioned:
                key = (e, 0)
                if key not in buffer.resident:
                    buffer._load_whole(key)
                emb, state = buffer.get(e, 0)
                params.register(f"entities/{e}", emb)
                params.register(f"entities/{e}/state", state)

    def _lock_parts(self, keys) -> Set[int]:
        return {p for e, p in keys if e in self.partitioned}

    @contextlib.contextmanager
    def _phase(self, name: str):
        """Adds the block's seconds to phase_seconds[name]."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[name] += time.perf_counter() - t0

    def _give_back(self, buffer: PartitionBuffer, keep: Sequence[int], needed=()) -> None:
        """Writes back and releases the resident partitions that neither `needed` (the next
        bucket's) nor `keep` (the partitions the lock server lets this trainer keep for its
        group) holds."""
        out = [k for k in buffer.resident if k[0] in self.partitioned and k not in needed
               and k[1] not in keep]
        if not out:
            return
        with self._phase("write_back"):
            buffer.drop(out)
        free = self._lock_parts(out) - self._lock_parts(needed)
        if free:
            with self._phase("lock"):
                self._release(sorted(free))

    def _train_iteration(self, it, epoch, path_idx, chunk_idx, n_chunks, buffer, model,
                         relation_lr) -> List[dict]:
        c = self.config
        edge_path = c.edge_paths[path_idx]
        recs = []
        seen_progress = None
        self.idle_seconds = 0.0  # asleep between "wait" answers of the lock server
        # Where the iteration's time goes beside the bucket op (seconds): the lock server's
        # answers, partition write-backs and loads, edge reads, the numerics guard.
        self.phase_seconds = dict(lock=0.0, write_back=0.0, load=0.0, edges=0.0, check=0.0)
        trained = record = None
        deadline = time.monotonic() + c.distributed_timeout
        delay = 0.002
        while True:
            self._check_lease()
            with self._phase("lock"):
                g = self._lock("acquire", self.rank, it, trained, record)
            trained = record = None
            if g.kind == "expired":
                self.lease_lost.set()
                self._check_lease()
            if g.kind == "done":
                return recs
            if g.kind == "wait":
                # Give back all but what the lock server lets it keep for the group it waits
                # for, so that no two trainers wait on each other's partitions.
                self._give_back(buffer, g.keep)
                if g.progress != seen_progress:  # others train: waiting is fine
                    seen_progress = g.progress
                    deadline = time.monotonic() + c.distributed_timeout
                if time.monotonic() > deadline:
                    raise DistributedError(f"rank {self.rank}: no bucket for "
                                           f"distributed_timeout = {c.distributed_timeout:g} s "
                                           f"in iteration {it}: {self._lock('status')}")
                time.sleep(delay)
                self.idle_seconds += delay
                delay = min(delay * 2, POLL_MAX)
                continue
            deadline = time.monotonic() + c.distributed_timeout
            delay = 0.002
            lp, rp = g.bucket
            self.tier.tokens.update(dict(g.tokens))
            i = buffer.append((lp, rp))
            needed = buffer.plan[i]
            # What the bucket does not need goes back, but for the rest of its group's.
            self._give_back(buffer, g.keep, needed)
            io_before = buffer.stats.snapshot()
            with self._phase("load"):
                buffer.acquire(i)
            with self._phase("edges"):
                edges = load_edges(edge_path, lp, rp, chunk_idx, n_chunks)
            edges["path"] = str(Path(edge_path) / f"edges_{lp}_{rp}.h5")
            holdout_seed = zlib.crc32(f"{self.seed}:{path_idx}:{chunk_idx}:{lp}:{rp}".encode())
            faults.point("dist.bucket")
            faults.point(f"dist.bucket.epoch{epoch}")
            stats = self._train_bucket(buffer, model, edges, lp, rp, relation_lr,
                                       seed=self.seed * 1_000_003 + it * 1009 + lp * 131 + rp,
                                       holdout_seed=holdout_seed)
            with self._phase("check"):
                self._check_finite(buffer, model, needed, stats, epoch, edge_path, chunk_idx,
                                   (lp, rp), version=it, has_weights=edges["weight"] is not None)
            buffer.release(i)
            io = buffer.stats.since(io_before)
            rec = dict(kind="bucket", rank=self.rank, epoch=epoch, edge_path=path_idx,
                       edge_chunk=chunk_idx, bucket=[lp, rp], **stats,
                       edges_per_s=stats["count"] / max(stats["seconds"], 1e-9),
                       io_wait_seconds=io["wait_seconds"], bytes_read=io["bytes_read"],
                       bytes_written=io["bytes_written"], partition_loads=io["loads"])
            recs.append(rec)
            if self.progress:
                self.progress(rec)
            trained, record = (lp, rp), rec

    def _end_iteration(self, it: int, buffer: PartitionBuffer, model: Model,
                       params: ParamClient, meta, t_iter: float, epoch: int,
                       last_of_epoch: bool, last: bool) -> None:
        """Rank 0, once every live trainer finished iteration it: takes the state that becomes
        version it + 1 (the servers freeze their partitions by reference; the model and the
        unpartitioned tables are copied, both small), then commits it, on a background thread
        while the next iteration trains, when partitions live on servers. Through the shared
        disk (where the next iteration reads this one's files) and after the last iteration,
        the commit is done before going on. One commit at a time, in order."""
        c = self.config
        self._wait_for(lambda: ROLES["lock"].all_finished(it), bool,
                       f"every trainer to finish iteration {it}")
        params.sync()  # the other trainers' last pushes
        self._join_commit()
        servers = server_names(c) if c.num_partition_servers != 0 else []
        for n in servers:
            call(n, "parts", "freeze", timeout=c.distributed_timeout)
        tables = {e: tuple(t.clone() for t in buffer.get(e, 0))
                  for e in c.entities if e not in self.partitioned}
        mparams, mstates = model.to_checkpoint()
        snapshot = ({k: (name, t.clone()) for k, (name, t) in mparams.items()},
                    {k: t.clone() for k, t in mstates.items()})
        args = (it, servers, tables, snapshot, meta, t_iter, epoch, last_of_epoch)
        if last or not servers:
            self._commit(*args, t_open=None)
            return

        def run():
            try:
                self._commit(*args, t_open=time.perf_counter())
            except BaseException as e:  # noqa: BLE001 - raised by _join_commit
                self._commit_error = e

        self._commit_thread = threading.Thread(target=run, name="pbg_fast-commit", daemon=True)
        self._commit_thread.start()

    def _join_commit(self) -> None:
        if self._commit_thread is not None:
            self._commit_thread.join()
            self._commit_thread = None
        if self._commit_error is not None:
            raise self._commit_error

    def _commit(self, it: int, servers: List[str], tables, snapshot, meta, t_iter: float,
                epoch: int, last_of_epoch: bool, t_open: Optional[float]) -> None:
        """Version it + 1 written whole (the servers' frozen partitions, or the trainers' writes
        on the shared disk, untouched ones linked), then the model and unpartitioned tables as
        of the iteration's end, then the commit, then the iteration's stats."""
        c, ckpt = self.config, self.ckpt
        t_commit = time.perf_counter()
        nxt = it + 1
        served = set()
        futs = [rpc.rpc_async(n, _write_server_partitions, args=(nxt, meta),
                              timeout=c.distributed_timeout) for n in servers]
        for n, f in zip(servers, futs):
            try:
                keys = f.wait()
            except RuntimeError as e:
                raise DistributedError(f"{n}: could not write its partitions of version "
                                       f"{nxt}: {str(e).splitlines()[0]}") from None
            for e, p in keys:
                if not ckpt.has_partition(e, p, nxt):
                    raise DistributedError(
                        f"checkpoint_path: {n} wrote {ckpt.embeddings_file(e, p, nxt)} but "
                        f"rank 0 does not see it: checkpoint_path must be one directory "
                        f"shared by every machine")
                served.add((e, p))
        for e, (emb, state) in tables.items():
            ckpt.save_partition(e, 0, nxt, emb, state, meta)
        for e, ec in c.entities.items():
            for p in range(ec.num_partitions):
                if (e, p) not in served and not ckpt.has_partition(e, p, nxt):
                    self.disk.carry_over((e, p), it, meta)
        self._commit_version(it, None, meta, epoch, last_of_epoch, snapshot=snapshot)
        ROLES["lock"].set_committed(nxt)
        # Every trainer's bucket and iteration records, then the totals (rank None) on the
        # coordinator's wall clock: from the iteration's start to the next one's opening (its
        # commit overlaps that one), or to its commit.
        done = time.perf_counter()
        taken = ROLES["lock"].take_records(it)
        ranks = [r for r in taken if r["kind"] == "iteration"]
        buckets = [r for r in taken if r["kind"] == "bucket"]
        seconds = (t_open if t_open is not None else done) - t_iter
        total = dict(kind="iteration", rank=None, ranks=len(ranks), epoch=ranks[0]["epoch"],
                     edge_path=ranks[0]["edge_path"], edge_chunk=ranks[0]["edge_chunk"],
                     count=sum(b["count"] for b in buckets), loss=sum(b["loss"] for b in buckets),
                     buckets=len(buckets), seconds=seconds,
                     train_seconds=sum(b["seconds"] for b in buckets),
                     commit_seconds=done - t_commit, commit_overlapped=t_open is not None)
        total["wall_edges_per_s"] = total["count"] / max(seconds, 1e-9)
        total["edges_per_s"] = total["count"] / max(total["train_seconds"], 1e-9)
        for k in ("partition_loads", "partition_writes", "bytes_read", "bytes_written",
                  "io_seconds", "io_wait_seconds", "param_bytes", "param_syncs",
                  "param_seconds", "idle_seconds"):
            total[k] = sum(r[k] for r in ranks)
        ckpt.append_stats(buckets + ranks + [total])
        self._commit_records.append(total)
        if self.progress:
            self.progress(total)


def _write_server_partitions(version: int, meta) -> List[Key]:
    """On each partition server: the partitions it froze at the iteration's end, written into
    `version` of the shared checkpoint_path."""
    ckpt = CheckpointManager(ROLES["parts_ckpt"])
    return ROLES["parts"].write_frozen(
        lambda k, emb, state: ckpt.save_partition(k[0], k[1], version, emb, state, meta))


def serve_partitions(config: ConfigSchema, rank: Optional[int], seed: int = 0,
                     bind_address: Optional[str] = None) -> int:
    """`pbg-fast partitionserver --rank R`: a standalone partition server (rank M + R of the
    world) until rank 0 commits the run's last version. Returns the bytes it served."""
    c = config
    if c.num_machines < 2 or c.num_partition_servers < 1:
        raise ConfigError("num_partition_servers: a standalone partition server needs "
                          "num_machines > 1 and num_partition_servers > 0")
    if rank is None or not 0 <= rank < c.num_partition_servers:
        raise ConfigError(f"--rank: must be in [0, num_partition_servers = "
                          f"{c.num_partition_servers}), got {rank}")
    if not c.distributed_init_method:
        raise ConfigError("distributed_init_method: required (tcp://HOST:PORT of rank 0)")
    disk = CheckpointTier(c, CheckpointManager(c.checkpoint_path), seed)

    def lock(method, *args):
        return call(LOCK, "lock", method, *args, timeout=c.distributed_timeout)

    def loader(k: Key):
        return disk.load(k, lock("status")["committed"])

    total = c.num_epochs * len(c.edge_paths) * Trainer(c).num_edge_chunks()
    ROLES.clear()
    ROLES["parts"] = server = PartitionServer(
        loader, validate=lambda p, t: lock("check_token", p, t))
    ROLES["parts_ckpt"] = c.checkpoint_path
    ROLES["params"] = ParameterShard()
    init_rpc(c, f"partserver{rank}", c.num_machines + rank, c.distributed_init_method,
             bind_address)
    try:
        preloaded = False
        while True:
            st = lock("status")
            if st["committed"] >= total:
                break
            if not preloaded and st["iteration"] >= 0:  # the committed version is known
                preloaded = True
                server.preload([(e, p) for e in sorted(c.entities)
                                if c.entities[e].num_partitions > 1
                                for p in range(rank, c.entities[e].num_partitions,
                                               c.num_partition_servers)])
            time.sleep(0.05 if not preloaded else 0.5)
        lock("leave", c.num_machines + rank)
    finally:
        server.stop_preload()
        rpc.shutdown(graceful=False)
        ROLES.clear()
    return sum(server.traffic())


def train_distributed(config: ConfigSchema, rank: Optional[int], seed: int = 0, progress=None,
                      bind_address: Optional[str] = None) -> List[dict]:
    r, init_method = resolve_rank(config, rank)
    return DistributedTrainer(config, r, init_method, seed=seed, progress=progress,
                              bind_address=bind_address).train()
