"""The partition buffer: the entity partitions in memory, at most `capacity` partitions per
partitioned entity type, with the buckets of the iteration known in advance.

- Memory: `capacity` preallocated slots per partitioned entity type (each sized for its
  largest partition: embeddings [rows, D] and Adagrad state [rows]); partitions are read into
  and written out of the slots directly (checkpoint.read_partition_into / save_partition, with
  the GIL released), never copied. Unpartitioned types are held whole, always.
- Order of loads: `acquire(i)` makes bucket i's partitions resident, evicting the one whose next
  use in the plan is farthest (Belady); then it schedules the next bucket's loads (prefetch).
- Writes: a partition written for the last time in this iteration is written back to the
  pending version at once (it stays resident, clean), so the commit has almost nothing left to
  write; an evicted dirty partition is written before its slot is reused. Only a partition's
  last write of the iteration is made durable (fsync, on a second thread, so that loads do not
  queue behind disk flushes): an eviction's copy is read back and rewritten later in the same
  iteration, so it goes to the page cache only (its file is replaced, often before the kernel
  flushes it). Anything still written that way at the end is synced before the commit.
- I/O: a thread runs the loads in order, another the writes (`io="async"`), while training
  holds the GIL released in the bucket op; a load waits only for the write of its slot's last
  occupant (and for its own partition's earlier write). With `io="sync"` the same tasks run
  inline, in the training thread (what pbg_fast did before, for comparison). Results do not
  depend on the mode: only timing.
- Errors on the I/O thread (an unreadable file, a full disk) surface in the training thread,
  naming the file; the pending version is never committed then.

Seam: a partition server or a GPU tier stands behind the same calls (acquire / release /
finish_iteration), with its own load and write tasks.
"""

import logging
import os
import queue
import threading
import time
import zlib
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch

from .. import faults
from ..config import ConfigSchema
from ..errors import DataError
from ..io.checkpoint import CheckpointManager
from ..io.files import load_entity_count
from ..memory import empty_table

logger = logging.getLogger("pbg_fast")

Key = Tuple[str, int]  # (entity type, partition)


def init_embeddings_(out: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return out.normal_(generator=g).mul_(scale)


def default_capacity(config: ConfigSchema, slot_bytes: int, need: int, nparts: int) -> int:
    """partition_buffer_size if set; else as many partitions as fit in
    partition_buffer_memory_gb (default: half of the memory available now), at least what a
    bucket needs, at most all of them."""
    if config.partition_buffer_size is not None:
        return max(need, min(nparts, config.partition_buffer_size))
    budget = config.partition_buffer_memory_gb
    budget_bytes = budget * 2**30 if budget is not None else 0.5 * _mem_available()
    fit = int(budget_bytes // max(slot_bytes, 1))
    if fit < need:
        logger.warning("partition buffer: %.1f GiB holds %d partitions, fewer than a bucket "
                       "needs; using %d", budget_bytes / 2**30, fit, need)
    return max(need, min(nparts, fit))


def _mem_available() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024.0
    except (OSError, ValueError):
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


@dataclass
class _Resident:
    slot: int  # index into the type's slots (-1: an unpartitioned type's own tensors)
    emb: torch.Tensor
    state: torch.Tensor
    ready: Future  # done when loaded (and, after a write-back is scheduled, written)
    dirty: bool = False
    version: int = -1  # the pending version it was last written to (-1: not in this one)


@dataclass
class IOStats:
    loads: int = 0
    writes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    io_seconds: float = 0.0  # time the I/O tasks took
    wait_seconds: float = 0.0  # time training waited on them (the part not hidden)

    def snapshot(self) -> "IOStats":
        return IOStats(**self.__dict__)

    def since(self, before: "IOStats") -> dict:
        return {k: getattr(self, k) - getattr(before, k) for k in self.__dict__}


class _IOThread:
    """One thread running tasks in submission order; a failed task fails its future, and the
    error is re-raised in the training thread when it next waits or submits."""

    def __init__(self, asynchronous: bool):
        self.asynchronous = asynchronous
        self.error: Optional[BaseException] = None
        self.cancelled = False
        self.queue: "queue.Queue" = queue.Queue()
        self.thread = None
        if asynchronous:
            self.thread = threading.Thread(target=self._run, name="pbg_fast-io", daemon=True)
            self.thread.start()

    def submit(self, fn: Callable[[], None]) -> Future:
        self.raise_error()
        fut: Future = Future()
        if self.asynchronous:
            self.queue.put((fn, fut))
        else:
            self._execute(fn, fut)
        return fut

    def _execute(self, fn, fut: Future) -> None:
        if self.error is not None:  # a task after a failed one does not run
            fut.set_exception(self.error)
            return
        if self.cancelled:
            fut.cancel()
            return
        try:
            fn()
            fut.set_result(None)
        except BaseException as e:  # noqa: BLE001 - handed to the training thread
            self.error = e
            fut.set_exception(e)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            self._execute(*item)

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Skips the tasks not started (after an error or an interrupt there may be many
        queued), lets the running one finish, and stops the thread."""
        self.cancelled = True
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None


class CheckpointTier:
    """Where the buffer's partitions come from and go to: the checkpoint files (the default;
    the distributed trainer's partition servers are another tier with the same three calls)."""

    def __init__(self, config: ConfigSchema, ckpt: CheckpointManager, seed: int):
        self.config, self.ckpt, self.seed = config, ckpt, seed

    def fill(self, k: Key, emb: torch.Tensor, state: torch.Tensor, version: int,
             written: bool) -> int:
        """Reads k into emb / state: this iteration's write of it (`written`: version + 1), or
        the committed `version`, or init_path's checkpoint, or a fresh seeded initialisation.
        Returns the bytes read."""
        c, (e, p) = self.config, k
        nbytes = 0
        if written:
            _, nbytes = self.ckpt.read_partition_into(e, p, version + 1, emb, state)
        elif version > 0:  # every committed version holds every partition
            if not self.ckpt.has_partition(e, p, version):
                raise DataError(f"{self.ckpt.embeddings_file(e, p, version)}: missing from "
                                f"the committed version {version} (files removed by hand, or "
                                f"a checkpoint_path not shared by every machine?)")
            _, nbytes = self.ckpt.read_partition_into(e, p, version, emb, state)
        elif c.init_path and (init := CheckpointManager(c.init_path)).has_partition(
                e, p, init.load_version()):
            _, nbytes = init.read_partition_into(e, p, init.load_version(), emb, state)
            state.zero_()  # a warm start begins its optimizer afresh
        else:
            init_embeddings_(emb, c.init_scale, zlib.crc32(f"{self.seed}:{e}:{p}".encode()))
            state.zero_()
        return nbytes

    def load(self, k: Key, version: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """k in new tensors, as `fill` reads it from the committed `version`."""
        rows = load_entity_count(self.config.entity_path, *k)
        emb, state = empty_table(rows, self.config.dimension), torch.empty(rows)
        self.fill(k, emb, state, version, False)
        return emb, state

    def save(self, k: Key, emb: torch.Tensor, state: torch.Tensor, version: int,
             meta: Dict[str, object], durable: bool) -> int:
        """Writes k as part of `version`; returns the bytes written."""
        return self.ckpt.save_partition(k[0], k[1], version, emb, state, meta, durable=durable)

    def carry_over(self, k: Key, version: int, meta: Dict[str, object]) -> int:
        """k, untouched in the iteration after committed `version`, goes into version + 1:
        linked from `version` (a missing file fails, naming it) or, before any commit,
        initialised (or taken from init_path) and written. Returns the bytes written."""
        if version > 0:
            self.ckpt.link_partition(k[0], k[1], version, version + 1)
            return 0
        emb, state = self.load(k, version)
        return self.save(k, emb, state, version + 1, meta, durable=True)

    def sync(self, k: Key, version: int) -> None:
        """Makes a durable=False save of k durable."""
        self.ckpt.sync_partition(k[0], k[1], version)


class PartitionBuffer:
    def __init__(self, config: ConfigSchema, ckpt: CheckpointManager, seed: int,
                 capacity: Optional[int] = None, io: Optional[str] = None, tier=None,
                 pin_memory: bool = False):
        """pin_memory: page-locked slots (the GPU trainer's, so that its copies to the device
        run asynchronously on a side stream); only where CUDA is available."""
        self.config, self.ckpt, self.seed = config, ckpt, seed
        self.pin = pin_memory and torch.cuda.is_available()
        self.tier = tier if tier is not None else CheckpointTier(config, ckpt, seed)
        d = config.dimension
        self.counts: Dict[Key, int] = {}
        for e, ec in config.entities.items():
            for p in range(ec.num_partitions):
                self.counts[(e, p)] = load_entity_count(config.entity_path, e, p)
        self.partitioned = [e for e, ec in config.entities.items() if ec.num_partitions > 1]
        slot_rows = {e: max(self.counts[(e, p)] for p in range(config.entities[e].num_partitions))
                     for e in self.partitioned}
        slot_bytes = sum(r * (d + 1) * 4 for r in slot_rows.values())
        nparts = config.num_partitions
        need = 2 if nparts > 1 else 1
        self.capacity = capacity if capacity is not None else default_capacity(
            config, slot_bytes, need, nparts)
        self.capacity = max(need, min(nparts, self.capacity))
        mode = io or config.partition_io
        # Async: loads and writes on two threads, so a load waits only for the write of its
        # own slot's last occupant (and for its own partition's write earlier in the
        # iteration), not for every write queued before it.
        self.io = _IOThread(asynchronous=(mode == "async"))
        self.wio = _IOThread(asynchronous=True) if mode == "async" else self.io
        self.last_write: Dict[Key, Future] = {}
        self.eager_write = mode == "async"
        # Async: writes reach the page cache on the I/O thread, and their fsyncs run on a
        # second thread, so a load never queues behind a disk flush; the commit waits for both.
        self.sync_io = _IOThread(asynchronous=True) if mode == "async" else None
        self._stats_lock = threading.Lock()  # io_seconds grows on both threads
        # Slots are allocated on first use: a run that never needs the c-th does not pay for it.
        self.slot_rows = slot_rows
        self.slots: Dict[str, List[Optional[Tuple[torch.Tensor, torch.Tensor]]]] = {
            e: [None] * self.capacity for e in self.partitioned}
        self.resident: Dict[Key, _Resident] = {}
        self.stats = IOStats()
        self.version = 0  # the committed version partitions are read from
        self.plan: List[Set[Key]] = []
        self.meta: Dict[str, object] = {}
        self.written: Set[Key] = set()  # keys written to version + 1 in this iteration
        self.volatile: Set[Key] = set()  # ... whose latest write there is not yet durable
        self.touched: Set[Key] = set()
        self._closed = False

    # ---- the iteration ---------------------------------------------------------------------
    def bucket_keys(self, bucket: Tuple[int, int]) -> Set[Key]:
        c, (lp, rp) = self.config, bucket
        keys = set()
        for r in c.relations:
            keys.add((r.lhs, lp if c.entities[r.lhs].num_partitions > 1 else 0))
            keys.add((r.rhs, rp if c.entities[r.rhs].num_partitions > 1 else 0))
        return keys

    def start_iteration(self, version: int, buckets: Sequence[Tuple[int, int]],
                        meta: Dict[str, object]) -> None:
        """Iteration `version` (reading version `version`, writing `version` + 1) will train
        `buckets` in this order. Residents carry over: they equal what version `version` holds."""
        self.version, self.meta = version, meta
        self.plan = [self.bucket_keys(b) for b in buckets]
        self.written, self.touched, self.volatile = set(), set(), set()
        self.last_write = {}
        for r in self.resident.values():
            r.dirty, r.version = False, -1
        if self.plan:
            self._schedule_loads(0)

    def acquire(self, i: int) -> Dict[Key, Tuple[torch.Tensor, torch.Tensor]]:
        """Bucket i's partitions, resident and loaded; schedules bucket i + 1's loads."""
        keys = self.plan[i]
        self._schedule_loads(i)
        t0 = time.perf_counter()
        for k in keys:
            self._wait(self.resident[k].ready)
        self.stats.wait_seconds += time.perf_counter() - t0
        self._prefetch(i)
        for k in keys:
            self.touched.add(k)
        return {k: (self.resident[k].emb, self.resident[k].state) for k in keys}

    def append(self, bucket: Tuple[int, int]) -> int:
        """Adds a bucket at the end of the plan (for a trainer whose buckets are handed out one
        at a time: the distributed one); returns its index for acquire / release."""
        self.plan.append(self.bucket_keys(bucket))
        return len(self.plan) - 1

    def drop(self, keys: Sequence[Key]) -> None:
        """Writes back the dirty ones among `keys` and frees their slots; returns when every
        write is done (the caller may then hand the partitions to someone else)."""
        for k in sorted(keys):
            if self.resident[k].dirty:
                self._write_back(k)
        t0 = time.perf_counter()
        for k in sorted(keys):
            self._wait(self.resident.pop(k).ready)
        self.stats.wait_seconds += time.perf_counter() - t0

    def get(self, entity: str, part: int) -> Tuple[torch.Tensor, torch.Tensor]:
        r = self.resident[(entity, part)]
        self._wait(r.ready)
        return r.emb, r.state

    def release(self, i: int) -> None:
        """Bucket i was trained: its partitions are dirty; those it used for the last time in
        this iteration are written back now (asynchronously), staying resident."""
        for k in self.plan[i]:
            r = self.resident[k]
            r.dirty = True
            if self.eager_write and not any(k in later for later in self.plan[i + 1:]):
                self._write_back(k)

    def finish_iteration(self) -> None:
        """Every partition of version + 1 on disk: the dirty residents written, the untouched
        ones linked from version (or initialised and written one at a time), all writes done."""
        for k in sorted(self.resident):
            if self.resident[k].dirty:
                self._write_back(k)
        t0 = time.perf_counter()
        self._wait(self.io.submit(lambda: None))  # every load done (tasks run in order)
        self._wait(self.wio.submit(lambda: None))  # and every write
        if self.sync_io is not None:
            self._wait(self.sync_io.submit(lambda: None))  # and every fsync
        nxt = self.version + 1
        for k in sorted(self.volatile):  # none when the plan was followed: a safety net
            self.tier.sync(k, nxt)
        self.volatile.clear()
        self.stats.wait_seconds += time.perf_counter() - t0
        for k in sorted(self.counts):
            if k in self.written:
                continue
            t0 = time.perf_counter()
            written = self.tier.carry_over(k, self.version, self.meta)  # one at a time
            if written:  # initialised and written (not linked)
                self.stats.bytes_written += written
                self.stats.io_seconds += time.perf_counter() - t0
                self.stats.wait_seconds += time.perf_counter() - t0
                self.stats.writes += 1
            self.written.add(k)

    def close(self) -> None:
        """Stops the I/O thread. After finish_iteration every task is done and the residents
        stay valid; after an error, tasks not started are skipped (the pending version is never
        committed then)."""
        if not self._closed:
            self._closed = True
            self.io.close()
            self.wio.close()
            if self.sync_io is not None:
                self.sync_io.close()

    # ---- internals ---------------------------------------------------------------------------
    def _wait(self, fut: Future) -> None:
        fut.result()  # re-raises an I/O error in the training thread
        self.io.raise_error()
        self.wio.raise_error()
        if self.sync_io is not None:
            self.sync_io.raise_error()

    def _next_use(self, k: Key, after: int) -> int:
        for j in range(after, len(self.plan)):
            if k in self.plan[j]:
                return j
        return len(self.plan) + 1  # not again in this iteration

    def _prefetch(self, i: int) -> None:
        """While bucket i trains: the loads of the buckets after it, as far ahead as slots can
        be freed without evicting a partition needed sooner than the one loaded (Belady), so a
        load has several buckets' time to finish."""
        if not self.io.asynchronous:
            return
        for j in range(i + 1, len(self.plan)):
            busy = set().union(*self.plan[i:j + 1])  # needed before (or by) bucket j
            for k in sorted(self.plan[j]):
                if k not in self.resident and not self._place(k, j, busy):
                    return  # this load (and those after it) waits until a slot is free

    def _schedule_loads(self, i: int) -> None:
        """Makes bucket i's keys resident (their loads scheduled)."""
        for k in sorted(self.plan[i]):
            if k not in self.resident and not self._place(k, i, self.plan[i]):
                raise AssertionError("partition buffer smaller than a bucket's need")

    def _place(self, k: Key, j: int, busy: Set[Key]) -> bool:
        """Schedules k's load for bucket j into a free slot, or into the slot of the partition
        on-demand Belady would evict at bucket j (farthest next use, not needed by j). Returns
        False, doing nothing, when that victim is in `busy` (still needed before j): so loading
        early never costs an extra load."""
        e = k[0]
        if e not in self.slots:
            self._load_whole(k)
            return True
        free = [s for s, used in enumerate(self._used_slots(e)) if not used]
        if free:
            slot = free[0]
        else:
            victims = [v for v in self.resident if v[0] == e and v not in self.plan[j]]
            if not victims:
                return False
            victim = max(victims, key=lambda v: (self._next_use(v, j), v))
            if victim in busy:
                return False
            slot, freed = self._evict(victim, j)
        t = self._slot(e, slot)
        rows = self.counts[k]
        self._load(k, slot, t[0][:rows], t[1][:rows], after=freed if not free else None)
        return True

    def _load_whole(self, k: Key) -> None:
        """An unpartitioned type: its own tensors, held for the whole run."""
        emb, state = self._table(self.counts[k])
        self._load(k, -1, emb, state)

    def _used_slots(self, e: str) -> List[bool]:
        used = [False] * self.capacity
        for k, r in self.resident.items():
            if k[0] == e and r.slot >= 0:
                used[r.slot] = True
        return used

    def _slot(self, e: str, s: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.slots[e][s] is None:
            self.slots[e][s] = self._table(self.slot_rows[e])
        return self.slots[e][s]

    def _table(self, rows: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.pin:
            return (torch.empty(rows, self.config.dimension, pin_memory=True),
                    torch.empty(rows, pin_memory=True))
        return empty_table(rows, self.config.dimension), torch.empty(rows)

    def is_ready(self, k: Key) -> bool:
        """k is resident and loaded (get(k) would not wait)."""
        r = self.resident.get(k)
        return (r is not None and r.ready.done() and not r.ready.cancelled()
                and r.ready.exception() is None)

    def _evict(self, k: Key, j: int) -> Tuple[int, Future]:
        """Frees k's slot for bucket j's load; a dirty k is written first, durably only if this
        iteration will not load and write it again. Returns the slot and the future after which
        it may be overwritten."""
        r = self.resident[k]
        if r.dirty:
            self._write_back(k, durable=self._next_use(k, j) > len(self.plan))
        del self.resident[k]
        return r.slot, r.ready

    def _load(self, k: Key, slot: int, emb: torch.Tensor, state: torch.Tensor,
              after: Optional[Future] = None) -> None:
        """Schedules k's load into emb / state, after `after` (the slot's last occupant's
        write) and after k's own write earlier in this iteration (its file is then read)."""
        prev = self.resident.get(k)
        assert prev is None
        deps = [f for f in (after, self.last_write.get(k)) if f is not None]

        def task():
            for f in deps:  # not I/O time: the wait for another task
                f.result()
            self._timed(lambda: self._fill(k, emb, state), load=True)

        self.resident[k] = _Resident(slot, emb, state, self.io.submit(task))

    def _fill(self, k: Key, emb: torch.Tensor, state: torch.Tensor) -> None:
        self.stats.bytes_read += self.tier.fill(k, emb, state, self.version, k in self.written)

    def _write_back(self, k: Key, durable: bool = True) -> None:
        r = self.resident[k]
        nxt = self.version + 1
        r.dirty = False
        r.version = nxt
        self.written.add(k)
        if durable:
            self.volatile.discard(k)
        else:
            self.volatile.add(k)
        prev = r.ready
        emb, state, meta = r.emb, r.state, self.meta

        def task():
            faults.point("buffer.write_back")
            deferred = durable and self.sync_io is not None
            self.stats.bytes_written += self.tier.save(k, emb, state, nxt, meta,
                                                       durable=durable and not deferred)
            if deferred:
                self.sync_io.submit(lambda: self._timed(lambda: self.tier.sync(k, nxt),
                                                        load=None))

        def after_load():
            prev.result()  # the partition's load (or previous write): not I/O time
            self._timed(task, load=False)

        r.ready = self.last_write[k] = self.wio.submit(after_load)

    def _timed(self, fn: Callable[[], None], load: Optional[bool]) -> None:
        """Runs an I/O task, adding its time to io_seconds and counting it as a load (True), a
        write (False) or neither (None: a deferred fsync)."""
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        with self._stats_lock:
            self.stats.io_seconds += dt
        if not self.io.asynchronous:
            self.stats.wait_seconds += dt  # inline: training waited for all of it
        if load:
            self.stats.loads += 1
        elif load is not None:
            self.stats.writes += 1
