"""The lock server: which trainer trains which bucket, so that no partition is ever held by two
trainers, every bucket is trained once per iteration, and a dead trainer costs only its
unfinished work. A plain state machine (no I/O, an injectable clock): the distributed trainer
serves it over torch.distributed.rpc from rank 0, and tests drive it directly.

A trainer's life in an iteration:

    acquire(rank, it)            -> Grant("bucket", b, tokens, keep) | Grant("wait", keep)
                                    | Grant("done")
    ... release what it holds beyond b's partitions and `keep`, fetch b's partitions it does
        not hold yet, train b ...
    release(rank, parts)          after writing `parts` back (to a partition server or disk)
    acquire(rank, it, trained=b)  reports b trained and asks for the next one

- Partitions: bucket (l, r) locks partition l (if the lhs side is partitioned) and r (if the
  rhs side is), one namespace for both sides (the same index on both sides may be the same
  entity type's partition). A trainer keeps its partitions between buckets until it releases
  them (which it does for those outside the next bucket and `keep`).
- Done: a trained bucket is *pending* while any of its partitions is still held by its trainer
  (its updates live only in that trainer's memory) and *done* once they were all released
  (written back). The iteration ends when every bucket is done.
- Leases: every call renews the caller's lease (trainers also heartbeat while a bucket trains).
  A trainer silent for `lease_seconds` is expired: its active and pending buckets go back to
  the pool and its partitions are freed; the copies on the servers are those of its last
  release, so only work not yet written back is lost. An expired trainer's later calls get
  Grant("expired"), and each grant carries per-partition fencing tokens (increasing each time
  a partition changes holder) that partition servers check, so a trainer that only seemed dead
  cannot overwrite a newer copy.
- Groups: the buckets are grouped by the partitions they lock, and a trainer claims a group
  and trains all of it before the next. With P x P buckets over one namespace the groups are
  the rounds of disjoint partition pairs of a round-robin tournament (`pair_rounds`): group
  {a, b} of round k holds (a, b) and (b, a), round 0's groups the diagonals (a, a) and (b, b)
  too. With one trainer per pair, the trainers of a round never want the same partition, and
  the next group keeps one of the two partitions: two trainers at P = 4 move 16 partitions an
  iteration (8 loads, 8 write-backs), where bucket-by-bucket grants that preferred reuse moved
  about 23. A new claim prefers a group that is grantable now (and wants nothing a waiting
  trainer waits for), then the fewest loads, then the earliest round.
- Waiting: with no bucket grantable, a trainer claims the group it would take next (when
  there is one left unclaimed), which stays its claim while it waits unless another group
  becomes grantable first, and gets "wait" with `keep`: the partitions of that group it
  holds and no other waiting trainer's claim needs, recomputed at each of its polls. It must
  release everything else. So waiters give way to each other: once every waiter has polled,
  each one's claim is held by itself, by nobody, or by a trainer still training (which will
  ask again), and the next waiter to poll gets its bucket: no cycle of waiters forms.
"""

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

from ..train.schedule import pair_rounds

Bucket = Tuple[int, int]
Group = Tuple[int, ...]  # the sorted partitions a group's buckets lock


def most_at_once(nparts_lhs: int, nparts_rhs: int) -> int:
    """How many trainers the group schedule keeps busy at once: one per group of a round (a
    pair) when both sides are partitioned, one per partition when one side is, one when
    neither is. Approximate: a diagonal bucket locks one partition, so a few more may train
    at times, and fewer do while some wait."""
    lhs, rhs = nparts_lhs > 1, nparts_rhs > 1
    if lhs and rhs:
        return (max(nparts_lhs, nparts_rhs) + 1) // 2
    return nparts_lhs if lhs else nparts_rhs if rhs else 1


@dataclass(frozen=True)
class Grant:
    kind: str  # "bucket" | "wait" | "done" | "expired"
    bucket: Optional[Bucket] = None
    tokens: Tuple[Tuple[int, int], ...] = ()  # (partition, fencing token) of the bucket
    progress: int = 0  # grows whenever any trainer gets or finishes a bucket (for deadlines)
    # the partitions the trainer may keep besides the bucket's (those of the group it trains or
    # waits for); it releases the rest
    keep: Tuple[int, ...] = ()


@dataclass
class _Trainer:
    last_seen: float
    active: Optional[Bucket] = None
    held: Set[int] = field(default_factory=set)
    pending: List[Bucket] = field(default_factory=list)
    pending_records: Dict[Bucket, dict] = field(default_factory=dict)
    finished: int = -1  # last iteration whose end this trainer reported (finish_iteration)
    claim: Optional[Group] = None  # the group it trains (or waits for)
    waiting: bool = False  # its last acquire was answered "wait"


class LockServer:
    def __init__(self, nparts_lhs: int, nparts_rhs: int, lease_seconds: float,
                 clock: Callable[[], float] = time.monotonic):
        self.lhs_locked = nparts_lhs > 1
        self.rhs_locked = nparts_rhs > 1
        self.lease = lease_seconds
        self.clock = clock
        self.mutex = threading.Lock()  # RPC calls arrive on several threads
        self.iteration = -1
        self.order: Dict[Bucket, int] = {}  # bucket -> position in the iteration's order
        self.group: Dict[Bucket, Group] = {}
        self.round: Dict[Group, int] = {}  # a group's round in the schedule of disjoint pairs
        self.members: Dict[Group, List[Bucket]] = {}
        self.todo: Set[Bucket] = set()
        self.done: Set[Bucket] = set()
        self.trainers: Dict[int, _Trainer] = {}
        self.expired: Set[int] = set()
        self.holder: Dict[int, int] = {}  # partition -> rank holding it
        self.token: Dict[int, int] = {}  # partition -> fencing token of its current holder
        self.records: Dict[int, List[dict]] = {}
        self.committed = -1  # the last version the coordinator committed
        self.left: Set[int] = set()  # trainers gone after the run's last commit
        self.grants = 0
        self.regrants = 0  # buckets back in the pool after their trainer expired

    # ---- the pieces --------------------------------------------------------------------------
    def parts(self, b: Bucket) -> FrozenSet[int]:
        out = set()
        if self.lhs_locked:
            out.add(b[0])
        if self.rhs_locked:
            out.add(b[1])
        return frozenset(out)

    def start_iteration(self, iteration: int, buckets: Sequence[Bucket]) -> None:
        """Opens `iteration` with these buckets (their order breaks ties between grants).
        Called by the coordinator once the previous iteration is committed."""
        with self.mutex:
            assert all(not t.held and t.active is None and not t.pending
                       for t in self.trainers.values()), "previous iteration not drained"
            self.iteration = iteration
            self.order = {b: i for i, b in enumerate(buckets)}
            self.todo = set(buckets)
            self.done = set()
            self._plan_groups(buckets)
            for t in self.trainers.values():
                t.claim, t.waiting = None, False

    # ---- trainer calls -----------------------------------------------------------------------
    def join(self, rank: int) -> None:
        with self.mutex:
            if rank in self.expired:
                return
            self.trainers.setdefault(rank, _Trainer(self.clock())).last_seen = self.clock()

    def heartbeat(self, rank: int) -> bool:
        """Renews rank's lease; False when it has expired already."""
        with self.mutex:
            return self._touch(rank) is not None

    def acquire(self, rank: int, iteration: int, trained: Optional[Bucket] = None,
                record: Optional[dict] = None) -> Grant:
        """The next bucket for rank; `trained` is the one it just finished, with its stats
        `record`, kept (take_records) once the bucket is done: one record per done bucket."""
        with self.mutex:
            t = self._touch(rank)
            if t is None:
                return Grant("expired")
            if trained is not None:
                if t.active != tuple(trained):
                    raise ValueError(f"rank {rank} reports bucket {trained} trained, but holds "
                                     f"{t.active}")
                t.pending.append(t.active)
                if record is not None:
                    t.pending_records[t.active] = record
                t.active = None
                self._confirm(t)
            if iteration < self.iteration or (iteration == self.iteration and
                                              len(self.done) == len(self.order)):
                return Grant("done")
            if iteration > self.iteration:  # the coordinator has not opened it yet
                return Grant("wait", progress=self.grants + len(self.done))
            if t.active is not None:
                raise ValueError(f"rank {rank} asks for a bucket while {t.active} is active")
            b = self._choose(rank, t)
            if b is None:
                t.waiting = True
                return Grant("wait", progress=self.grants + len(self.done),
                             keep=self._keep(rank, t))
            t.waiting = False
            self.todo.discard(b)
            t.active = b
            for p in self.parts(b):
                if self.holder.get(p) != rank:
                    self.holder[p] = rank
                    self.token[p] = self.token.get(p, 0) + 1
                    t.held.add(p)
            self.grants += 1
            return Grant("bucket", b, tuple(sorted((p, self.token[p]) for p in self.parts(b))),
                         keep=t.claim)

    def release(self, rank: int, parts: Sequence[int]) -> bool:
        """rank wrote `parts` back and gives them up. False (nothing done) if it had expired."""
        with self.mutex:
            t = self._touch(rank)
            if t is None:
                return False
            for p in parts:
                if p not in t.held:
                    raise ValueError(f"rank {rank} releases partition {p}, which it does not hold")
                if t.active is not None and p in self.parts(t.active):
                    raise ValueError(f"rank {rank} releases partition {p} of its active bucket")
                t.held.discard(p)
                del self.holder[p]
            self._confirm(t)
            return True

    def finish_iteration(self, rank: int, iteration: int, records: Sequence[dict] = ()) -> None:
        """rank is done with `iteration` (its last shared-parameter push included); `records`
        are its stats for the iteration, which the coordinator writes with the commit."""
        with self.mutex:
            t = self._touch(rank)
            if t is not None:
                t.finished = max(t.finished, iteration)
                self.records.setdefault(iteration, []).extend(records)

    def take_records(self, iteration: int) -> List[dict]:
        with self.mutex:
            return self.records.pop(iteration, [])

    def all_finished(self, iteration: int) -> bool:
        """Every live trainer reported the end of `iteration` (the coordinator may commit)."""
        with self.mutex:
            self._expire()
            return (len(self.done) == len(self.order) and
                    all(t.finished >= iteration for r, t in self.trainers.items()))

    def set_committed(self, version: int) -> None:
        with self.mutex:
            self.committed = version

    def leave(self, rank: int) -> None:
        """rank saw the run's last commit and stops serving."""
        with self.mutex:
            self.left.add(rank)
            self.trainers.pop(rank, None)

    def all_left(self, ranks: Sequence[int]) -> bool:
        """Every one of `ranks` left or expired (the coordinator may stop serving)."""
        with self.mutex:
            self._expire()
            return all(r in self.left or r in self.expired for r in ranks)

    def is_expired(self, rank: int) -> bool:
        with self.mutex:
            self._expire()
            return rank in self.expired

    def check_token(self, part: int, token: int) -> bool:
        """Whether `token` is still the current holder's token for `part` (a holder that
        expired has lost it: expiry bumps the tokens of what it held)."""
        with self.mutex:
            self._expire()
            return self.token.get(part) == token

    def all_joined(self, ranks: Sequence[int]) -> bool:
        """Every one of `ranks` joined (or already expired)."""
        with self.mutex:
            return all(r in self.trainers or r in self.expired or r in self.left for r in ranks)

    def status(self) -> dict:
        with self.mutex:
            return dict(iteration=self.iteration, committed=self.committed,
                        progress=self.grants + len(self.done),
                        todo=len(self.todo), done=len(self.done),
                        total=len(self.order), trainers=sorted(self.trainers),
                        expired=sorted(self.expired), grants=self.grants,
                        regrants=self.regrants)

    # ---- internals (mutex held) ----------------------------------------------------------------
    def _touch(self, rank: int) -> Optional[_Trainer]:
        """Renews rank's lease (after expiring those that ran out, rank's own included)."""
        self._expire()
        if rank in self.expired:
            return None
        t = self.trainers.get(rank)
        if t is None:
            t = self.trainers[rank] = _Trainer(self.clock())
        t.last_seen = self.clock()
        return t

    def _confirm(self, t: _Trainer) -> None:
        still = []
        for b in t.pending:
            if self.parts(b) & t.held:
                still.append(b)
            else:
                self.done.add(b)
                if b in t.pending_records:
                    self.records.setdefault(self.iteration, []).append(
                        t.pending_records.pop(b))
        t.pending = still

    def _expire(self) -> None:
        now = self.clock()
        for rank, t in list(self.trainers.items()):
            if now - t.last_seen <= self.lease:
                continue
            back = t.pending + ([t.active] if t.active is not None else [])
            self.todo.update(back)
            self.regrants += len(back)
            for p in t.held:
                del self.holder[p]
                self.token[p] = self.token.get(p, 0) + 1  # its writes are refused from now on
            del self.trainers[rank]  # and its claim with it
            self.expired.add(rank)

    def _plan_groups(self, buckets: Sequence[Bucket]) -> None:
        n = max((max(b) for b in buckets), default=-1) + 1
        square = (self.lhs_locked and self.rhs_locked and
                  set(buckets) == {(l, r) for l in range(n) for r in range(n)})
        pair_of, round_of = {}, {}
        if square:
            for k, pairs in enumerate(pair_rounds(n)):
                for pair in pairs:
                    round_of[pair] = k
                    for p in pair:
                        if k == 0:
                            pair_of[p] = pair
        self.group, self.round, self.members = {}, {}, {}
        for b in buckets:
            ps = tuple(sorted(self.parts(b)))
            if square and b[0] == b[1]:
                ps = pair_of[b[0]]  # the diagonals go with round 0's pairs
            self.group[b] = ps
            self.round[ps] = round_of.get(ps, 0)
            self.members.setdefault(ps, []).append(b)

    def _blocked(self, rank: int, ps) -> bool:
        return any(self.holder.get(p, rank) != rank for p in ps)

    def _next_group(self, rank: int, t: _Trainer) -> Optional[Group]:
        """The group rank trains next: its claim while that has buckets left and is grantable
        now; else the unclaimed group with buckets left that is grantable now and wants no
        partition a waiting trainer waits for, then needs the fewest loads, then is of the
        earliest round, then comes first in the order; else (nothing grantable) its claim while
        that has buckets left, so that a waiter's claim changes only to a group granted at
        once (it stops waiting)."""
        keep_claim = t.claim is not None and any(b in self.todo for b in self.members[t.claim])
        if keep_claim and not self._blocked(rank, t.claim):
            return t.claim
        claimed = {o.claim for r, o in self.trainers.items() if r != rank}
        wanted = self._wanted_by_waiters(rank)
        best, best_key = None, None
        for g, bs in self.members.items():
            left = [self.order[b] for b in bs if b in self.todo]
            if not left or g in claimed:
                continue
            key = (self._blocked(rank, g) or bool(wanted & set(g)), len(set(g) - t.held),
                   self.round[g], min(left))
            if best_key is None or key < best_key:
                best, best_key = g, key
        if keep_claim and (best is None or best_key[0]):
            return t.claim  # blocked, and nothing grantable now elsewhere: wait for it
        return best

    def _choose(self, rank: int, t: _Trainer) -> Optional[Bucket]:
        t.claim = self._next_group(rank, t)
        if t.claim is None or self._blocked(rank, t.claim):
            return None
        left = [b for b in self.members[t.claim] if b in self.todo]
        return min(left, key=lambda b: (len(self.parts(b) - t.held), self.order[b]),
                   default=None)  # fewest loads, then the order

    def _keep(self, rank: int, t: _Trainer) -> Tuple[int, ...]:
        """What a waiting rank may keep: its claim's partitions it holds, but none that another
        waiter's claim needs (the later waiter gives way, so no cycle of waiters forms)."""
        if t.claim is None:
            return ()
        return tuple(sorted(set(t.claim) & t.held - self._wanted_by_waiters(rank)))

    def _wanted_by_waiters(self, rank: int) -> Set[int]:
        out = set()
        for r, o in self.trainers.items():
            if r != rank and o.waiting and o.claim is not None:
                out.update(o.claim)
        return out
