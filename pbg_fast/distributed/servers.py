"""What each process of a distributed run serves over torch.distributed.rpc, and the clients.

Roles live in a per-process registry (`ROLES`); a remote call names the role and the method
(`serve(role, method, *args)`, the one function RPC calls), so every request is a plain
request/response with the RPC agent's timeout. A call to a role in this very process skips RPC.

- "lock": the LockServer (rank 0).
- "parts": a PartitionServer, holding partitions in memory (one per trainer by default; or
  standalone processes). Fenced: a put or get carries the lock server's token for the
  partition, and a token older than the newest seen is refused, so a trainer that lost its
  lease cannot overwrite a newer copy.
- "params": a ParameterShard, holding some of the shared parameters (relation operators,
  global embeddings, unpartitioned entity types, and their Adagrad states); trainers push
  their local changes and pull the sum (ParamClient, from a background thread).
"""

import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed.rpc as rpc

from ..errors import UserError

Key = Tuple[str, int]
ROLES: Dict[str, object] = {}
SELF: Dict[str, str] = {"name": ""}  # this process's RPC worker name


class DistributedError(UserError):
    """A distributed run cannot go on (a peer unreachable, a lease lost)."""


def serve(role: str, method: str, *args):
    obj = ROLES.get(role)
    if obj is None:
        raise RuntimeError(f"{SELF['name']}: no {role!r} role here")
    return getattr(obj, method)(*args)


def call(worker: str, role: str, method: str, *args, timeout: float = -1.0):
    """role.method(*args) on `worker`: in this process directly, else a blocking RPC. A peer
    that is gone, or a fencing token refused, becomes a DistributedError naming the peer."""
    try:
        if worker == SELF["name"]:
            return serve(role, method, *args)
        return rpc.rpc_sync(worker, serve, args=(role, method) + args, timeout=timeout)
    except StaleToken as e:
        raise DistributedError(f"{worker}: {e}; this trainer lost its lease and stops") from None
    except RuntimeError as e:
        if worker == SELF["name"]:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DistributedError(f"{worker} ({role}.{method}) unreachable or failed: {msg}; "
                               f"restart the same command on every machine to resume from the "
                               f"last committed checkpoint") from None


class StaleToken(RuntimeError):
    pass


class PartitionServer:
    """Partitions in memory: key -> (embeddings, Adagrad state), with the newest fencing token
    seen for each partition index. A partition first asked for is loaded by `loader` (from the
    committed checkpoint, or initialised), once, by whoever asks first (or by `preload`).
    `validate(part, token)`, when given, asks the lock server whether a writer's token is still
    current, so that a trainer whose lease expired cannot write even before the partition's new
    holder has fetched it.

    Commits overlap the next iteration: `freeze` takes the iteration's end state by reference
    (no copy), `write_frozen` writes it while trainers go on; a put to a partition still frozen
    replaces its tensors instead of writing into them, so at most the partitions put during the
    write exist twice."""

    def __init__(self, loader: Callable[[Key], Tuple[torch.Tensor, torch.Tensor]],
                 validate: Optional[Callable[[int, int], bool]] = None):
        self.loader = loader
        self.validate = validate
        self.data: Dict[Key, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.frozen: Dict[Key, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.loading: Dict[Key, threading.Event] = {}
        self.tokens: Dict[int, int] = {}
        self.mutex = threading.Lock()
        self.bytes_in = 0
        self.bytes_out = 0
        self._preload: Optional[threading.Thread] = None
        self._preload_stop = threading.Event()

    def _fence(self, part: int, token: int) -> None:
        newest = self.tokens.get(part, 0)
        if token < newest:
            raise StaleToken(f"partition {part}: token {token} is older than {newest} (the "
                             f"lock server gave it to another trainer)")
        self.tokens[part] = token

    def _ensure(self, key: Key) -> None:
        """key in memory: loaded here (outside the mutex: the loader may itself make calls),
        or waited for when another thread loads it."""
        while True:
            with self.mutex:
                if key in self.data:
                    return
                ev = self.loading.get(key)
                mine = ev is None
                if mine:
                    ev = self.loading[key] = threading.Event()
            if not mine:
                ev.wait()  # then look again (a failed load is retried here, and raises here)
                continue
            try:
                loaded = self.loader(key)
                with self.mutex:
                    self.data.setdefault(key, loaded)
                return
            finally:
                with self.mutex:
                    del self.loading[key]
                ev.set()

    def preload(self, keys: List[Key]) -> None:
        """Loads `keys` on a background thread (the first iteration's loads, off the trainers'
        path); a failure is left for the trainer's own get to meet and report."""
        def run():
            for k in keys:
                if self._preload_stop.is_set():
                    return
                try:
                    self._ensure(k)
                except Exception:  # noqa: BLE001 - get() retries and raises it
                    return
        self._preload = threading.Thread(target=run, name="pbg_fast-preload", daemon=True)
        self._preload.start()

    def stop_preload(self) -> None:
        if self._preload is not None:
            self._preload_stop.set()
            self._preload.join()
            self._preload = None

    def get(self, key: Key, token: int) -> Tuple[torch.Tensor, torch.Tensor]:
        with self.mutex:
            self._fence(key[1], token)
        self._ensure(key)
        with self.mutex:
            emb, state = self.data[key]
            self.bytes_out += emb.nbytes + state.nbytes
            return emb, state

    def put(self, key: Key, token: int, emb: torch.Tensor, state: torch.Tensor) -> int:
        if self.validate is not None and not self.validate(key[1], token):
            raise StaleToken(f"partition {key[1]}: token {token} is no longer current (the "
                             f"lock server declared its holder dead)")
        with self.mutex:
            self._fence(key[1], token)
            cur = self.data.get(key)
            if (cur is not None and cur[0].shape == emb.shape
                    and self.frozen.get(key) is not cur):
                cur[0].copy_(emb)
                cur[1].copy_(state)
            else:  # new, or frozen for the commit being written: new tensors
                self.data[key] = (emb.clone(), state.clone())
            self.bytes_in += emb.nbytes + state.nbytes
            return emb.nbytes + state.nbytes

    def keys(self) -> List[Key]:
        with self.mutex:
            return sorted(self.data)

    def freeze(self) -> List[Key]:
        """The state to commit (at an iteration's end, when no trainer holds any partition):
        every partition held, by reference; returns their keys."""
        with self.mutex:
            if self.frozen:
                raise RuntimeError(f"{SELF['name']}: the previous commit's partitions are "
                                   f"still being written")
            self.frozen = dict(self.data)
            return sorted(self.frozen)

    def write_frozen(self, save: Callable[[Key, torch.Tensor, torch.Tensor], int]) -> List[Key]:
        """Writes what `freeze` took, one partition at a time while gets and puts go on;
        returns the keys written."""
        with self.mutex:
            keys = sorted(self.frozen)
        for k in keys:
            with self.mutex:
                emb, state = self.frozen[k]
            save(k, emb, state)
            with self.mutex:
                del self.frozen[k]
        return keys

    def traffic(self) -> Tuple[int, int]:
        with self.mutex:
            return self.bytes_in, self.bytes_out


class ParameterShard:
    """Some of the shared parameters: name -> the sum of every trainer's changes."""

    def __init__(self):
        self.values: Dict[str, torch.Tensor] = {}
        self.mutex = threading.Lock()

    def init(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """The first trainer to register `name` sets its value; everyone gets the stored one."""
        with self.mutex:
            if name not in self.values:
                self.values[name] = value.clone()
            return self.values[name].clone()

    def push_pull(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        with self.mutex:
            v = self.values[name]
            v.add_(delta.reshape(v.shape))
            return v.clone()

    def set(self, name: str, value: torch.Tensor) -> None:
        with self.mutex:
            self.values[name] = value.clone()


class ParamClient:
    """Keeps local tensors in sync with the parameter shards: each sync pushes what changed
    locally since the last one (scaled, for a mean over the trainers) and takes the shard's sum,
    keeping changes made meanwhile (the training threads update the tensors in place, HOGWILD,
    as PBG's do)."""

    def __init__(self, owner_of: Callable[[str], str], interval: float, timeout: float):
        self.owner_of = owner_of
        self.interval = interval
        self.timeout = timeout
        self.tensors: Dict[str, torch.Tensor] = {}
        self.scales: Dict[str, float] = {}
        self.last: Dict[str, torch.Tensor] = {}
        self.bytes = 0
        self.syncs = 0
        self.seconds = 0.0
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._mutex = threading.Lock()  # one sync at a time (thread and final sync)

    def register(self, name: str, t: torch.Tensor, scale: float = 1.0) -> None:
        """Shares `t` as `name`: takes the shard's value (the first registrant's). Each sync
        pushes the local change times `scale` (1 / the trainers training at once: the shard
        then moves by the trainers' mean change)."""
        if not t.numel():
            return
        v = call(self.owner_of(name), "params", "init", name, t, timeout=self.timeout)
        t.copy_(v.reshape(t.shape))
        self.tensors[name] = t
        self.scales[name] = scale
        self.last[name] = v.reshape(t.shape).clone()

    def sync(self) -> None:
        with self._mutex:
            t0 = time.perf_counter()
            for name, t in self.tensors.items():
                snap = t.clone()
                delta = snap - self.last[name]
                if self.scales[name] != 1.0:
                    delta.mul_(self.scales[name])
                new = call(self.owner_of(name), "params", "push_pull", name, delta,
                           timeout=self.timeout).reshape(t.shape)
                t.add_(new - snap)
                self.last[name] = new
                self.bytes += 2 * t.nbytes
            self.syncs += 1
            self.seconds += time.perf_counter() - t0

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pbg_fast-params", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync()
            except BaseException as e:  # noqa: BLE001 - re-raised by stop()
                self.error = e
                return

    def halt(self) -> None:
        """Stops the thread (after the sync it may be in), without a last sync."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def stop(self) -> None:
        """Stops the thread and makes a last sync; raises what the thread failed with."""
        self.halt()
        if self.error is not None:
            raise self.error
        self.sync()
