"""The lock server's promises over random schedules: trainers that come, go, release early,
wait and die (their leases expiring on a fake clock). After every call: no partition is held by
two live trainers, every bucket is in exactly one of todo / active / pending / done, a done
bucket is never granted again; a bucket is granted again only after its trainer expired. At the
end of each schedule the survivors (or a newcomer) finish the iteration, and every bucket is
done exactly once."""

import random

import pytest

from pbg_fast.distributed.lock_server import LockServer


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def check_invariants(ls: LockServer, buckets, granted, expired_buckets):
    live = ls.trainers
    seen = {}
    for rank, t in live.items():
        for p in t.held:
            assert p not in seen, f"partition {p} held by ranks {seen[p]} and {rank}"
            seen[p] = rank
            assert ls.holder[p] == rank
        if t.active is not None:
            assert ls.parts(t.active) <= t.held
    assert set(ls.holder) == set(seen)
    where = {}
    for b in buckets:
        places = [b in ls.todo, b in ls.done]
        places += [t.active == b for t in live.values()]
        places += [b in t.pending for t in live.values()]
        assert sum(places) == 1, f"bucket {b} is in {sum(places)} places"
        where[b] = places
    for b, n in granted.items():
        assert n <= 1 + expired_buckets.get(b, 0), f"bucket {b} granted {n} times"


def run_schedule(seed: int):
    rng = random.Random(seed)
    nl = rng.choice([1, 2, 3, 4, 5, 8])
    nr = rng.choice([1, nl, nl, rng.randint(1, 6)])
    clock = Clock()
    lease = 10.0
    ls = LockServer(nl, nr, lease_seconds=lease, clock=clock)
    buckets = [(l, r) for l in range(nl) for r in range(nr)]
    rng.shuffle(buckets)
    ls.start_iteration(0, buckets)
    alive = {}  # rank -> simulated trainer state: "idle" | "training"
    dead = set()
    next_rank = 0
    granted = {}
    expired_buckets = {}
    done_before = set()

    def spawn():
        nonlocal next_rank
        r = next_rank
        next_rank += 1
        ls.join(r)
        alive[r] = "idle"
        return r

    for _ in range(rng.randint(1, 5)):
        spawn()

    def step(rank, finishing=False):
        t = ls.trainers[rank]
        trained = t.active if alive[rank] == "training" else None
        if trained is None and t.held and not finishing and rng.random() < 0.3:
            ls.release(rank, sorted(t.held))  # write back, give up
            return
        g = ls.acquire(rank, 0, trained=trained)
        if g.kind == "bucket":
            b = g.bucket
            assert b not in ls.done and b not in done_before
            granted[b] = granted.get(b, 0) + 1
            assert [p for p, _ in g.tokens] == sorted(ls.parts(b))
            alive[rank] = "training"
            assert ls.parts(b) <= set(g.keep)  # b belongs to the group it may keep
            # Partitions not needed by b go back now (as the trainer writes them back): all of
            # them, or (as the trainer does) all but its group's.
            extra = ls.trainers[rank].held - ls.parts(b)
            if finishing or rng.random() < 0.5:
                extra -= set(g.keep)
            if extra and rng.random() < 0.7:
                ls.release(rank, sorted(extra))
        elif g.kind == "wait":
            alive[rank] = "idle"
            # A waiter releases all but what it may keep (as the trainer does; always while
            # finishing, so that the survivors' progress relies on `keep` never deadlocking),
            # or everything.
            keep = set(g.keep) if finishing or rng.random() < 0.8 else set()
            out = ls.trainers[rank].held - keep
            assert set(g.keep) <= ls.trainers[rank].held
            if out:
                ls.release(rank, sorted(out))
        elif g.kind == "done":
            alive[rank] = "idle"
        else:
            raise AssertionError(g)

    for _ in range(rng.randint(5, 120)):
        action = rng.random()
        live = sorted(alive)
        if action < 0.7 and live:
            step(rng.choice(live))
        elif action < 0.78 and live:  # a trainer dies: silent from now on
            r = rng.choice(live)
            t = ls.trainers[r]
            for b in t.pending + ([t.active] if t.active else []):
                expired_buckets[b] = expired_buckets.get(b, 0) + 1
            del alive[r]
            dead.add(r)
            # Everyone else keeps heartbeating while the dead one's lease runs out.
            for _ in range(3):
                clock.now += lease / 2
                for o in alive:
                    assert ls.heartbeat(o)
        elif action < 0.85:
            spawn()
        else:
            clock.now += rng.random()
            for o in alive:
                ls.heartbeat(o)
        done_before |= set(ls.done)
        for r in dead:
            assert ls.acquire(r, 0).kind == "expired"
            assert not ls.heartbeat(r)
        check_invariants(ls, buckets, granted, expired_buckets)

    # The survivors finish the iteration (a newcomer if none is left).
    if not alive:
        spawn()
    for _ in range(20 * len(buckets) + 50):
        if len(ls.done) == len(buckets):
            break
        for r in sorted(alive):
            step(r, finishing=True)
            check_invariants(ls, buckets, granted, expired_buckets)
    assert ls.done == set(buckets), f"seed {seed}: stuck with {ls.status()}"
    for r in sorted(alive):
        step(r, finishing=True)
        assert ls.acquire(r, 0).kind == "done"
    for b in buckets:  # once, plus once more for each trainer that died holding it
        assert 1 <= granted.get(b, 0) <= 1 + expired_buckets.get(b, 0)
    return len(dead)


def test_random_schedules():
    deaths = sum(run_schedule(seed) for seed in range(1200))
    assert deaths > 100  # the schedules did exercise dying trainers


def test_no_expiry_means_exactly_once():
    clock = Clock()
    ls = LockServer(4, 4, lease_seconds=5, clock=clock)
    buckets = [(l, r) for l in range(4) for r in range(4)]
    ls.start_iteration(0, buckets)
    granted = []
    active = {0: None, 1: None}
    most_at_once = 0
    while len(ls.done) < len(buckets):
        most_at_once = max(most_at_once, sum(t.active is not None for t in ls.trainers.values()))
        for r in (0, 1):
            g = ls.acquire(r, 0, trained=active[r])
            active[r] = None
            if g.kind == "bucket":
                granted.append(g.bucket)
                active[r] = g.bucket
                extra = sorted(ls.trainers[r].held - ls.parts(g.bucket))
                if extra:
                    ls.release(r, extra)
            elif g.kind == "wait" and ls.trainers[r].held:
                ls.release(r, sorted(ls.trainers[r].held))
        for r in (0, 1):
            if active[r] is None and ls.trainers[r].held:
                ls.release(r, sorted(ls.trainers[r].held))
    assert sorted(granted) == sorted(buckets)
    assert ls.grants == 16 and ls.regrants == 0
    assert most_at_once == 2  # at P=4 two trainers did train at the same time


def test_reuse_is_preferred():
    ls = LockServer(4, 4, lease_seconds=5, clock=Clock())
    ls.start_iteration(0, [(l, r) for l in range(4) for r in range(4)])
    g1 = ls.acquire(0, 0)
    assert g1.bucket == (0, 0)  # one load rather than two, then the order
    g2 = ls.acquire(0, 0, trained=g1.bucket)
    assert 0 in g2.bucket  # keeps partition 0: one load
    g3 = ls.acquire(0, 0, trained=g2.bucket)
    assert set(g3.bucket) == set(g2.bucket)  # the reverse bucket: no load at all
    assert dict(g3.tokens) == dict(g2.tokens)  # same holder, same tokens


def test_expiry_fences_the_dead_holder():
    """A trainer declared dead keeps no valid token: its writes are refused by the partition
    server even before the partitions' new holder fetched them."""
    import torch

    from pbg_fast.distributed.servers import PartitionServer, StaleToken
    clock = Clock()
    ls = LockServer(2, 2, lease_seconds=5, clock=clock)
    ls.start_iteration(0, [(0, 0), (0, 1), (1, 0), (1, 1)])
    server = PartitionServer(lambda k: (torch.zeros(3, 2), torch.zeros(3)),
                             validate=ls.check_token)
    ls.join(1)
    g = ls.acquire(0, 0)
    (part, token), = [t for t in g.tokens if t[0] == g.bucket[0]]
    server.get(("node", part), token)
    server.put(("node", part), token, torch.ones(3, 2), torch.ones(3))  # a live holder writes
    for _ in range(3):  # rank 0 falls silent; rank 1 keeps its lease
        clock.now += 3
        assert ls.heartbeat(1)
    assert not ls.check_token(part, token) and ls.is_expired(0)
    with pytest.raises(StaleToken):
        server.put(("node", part), token, torch.full((3, 2), 9.0), torch.ones(3))
    g1 = ls.acquire(1, 0)  # its bucket is back in the pool, with newer tokens
    assert g1.kind == "bucket" and ls.regrants == 1
    assert all(tok > token for p, tok in g1.tokens if p == part)
    emb, _ = server.get(("node", part), dict(g1.tokens)[part])
    assert bool((emb == 1).all())  # the dead trainer's last accepted write, not the zombie's


def test_protocol_errors_are_refused():
    ls = LockServer(2, 2, lease_seconds=5, clock=Clock())
    ls.start_iteration(0, [(0, 0), (0, 1), (1, 0), (1, 1)])
    g = ls.acquire(0, 0)
    with pytest.raises(ValueError):
        ls.acquire(0, 0)  # asks again while a bucket is active
    with pytest.raises(ValueError):
        ls.release(0, [g.bucket[0]])  # a partition of the active bucket
    with pytest.raises(ValueError):
        ls.acquire(0, 0, trained=(9, 9))


def test_partition_server_refuses_stale_tokens():
    import torch

    from pbg_fast.distributed.servers import PartitionServer, StaleToken
    loads = []

    def loader(k):
        loads.append(k)
        return torch.zeros(3, 2), torch.zeros(3)

    s = PartitionServer(loader)
    emb, state = s.get(("node", 1), 1)
    assert loads == [("node", 1)] and emb.shape == (3, 2)
    s.put(("node", 1), 1, torch.ones(3, 2), torch.ones(3))
    emb, _ = s.get(("node", 1), 2)  # a new holder, with a newer token
    assert loads == [("node", 1)] and bool((emb == 1).all())
    with pytest.raises(StaleToken):  # the old holder, back from the dead, cannot write
        s.put(("node", 1), 1, torch.full((3, 2), 7.0), torch.ones(3))
    assert bool((s.get(("node", 1), 2)[0] == 1).all())


def test_partition_server_commits_a_frozen_state_while_puts_go_on():
    """freeze takes the iteration's end state by reference; a put before that partition is
    written replaces its tensors (the commit still writes the frozen values), a put after it
    writes in place again; preload and concurrent gets load each partition once."""
    import threading

    import torch

    from pbg_fast.distributed.servers import PartitionServer
    loads = []
    gate = threading.Event()

    def loader(k):
        loads.append(k)
        gate.wait(5)
        return torch.full((3, 2), float(k[1])), torch.zeros(3)

    s = PartitionServer(loader)
    keys = [("node", 0), ("node", 1)]
    s.preload(keys)
    got = []
    t = threading.Thread(target=lambda: got.append(s.get(("node", 1), 1)))
    t.start()
    gate.set()
    t.join(5)
    s.stop_preload()
    assert sorted(loads) == keys and float(got[0][0][0, 0]) == 1.0  # one load each
    s.get(("node", 0), 1)
    assert s.freeze() == keys
    with pytest.raises(RuntimeError):
        s.freeze()  # one commit at a time
    frozen0 = s.data[("node", 0)][0]
    written = {}

    def save(k, emb, state):
        written[k] = emb.clone()
        if k == ("node", 0):  # a trainer of the next iteration writes partition 1 meanwhile
            s.put(("node", 1), 2, torch.full((3, 2), 9.0), torch.ones(3))
        return emb.nbytes

    assert s.write_frozen(save) == keys
    assert float(written[("node", 0)][0, 0]) == 0.0
    assert float(written[("node", 1)][0, 0]) == 1.0  # the frozen value, not the later put
    assert float(s.get(("node", 1), 2)[0][0, 0]) == 9.0
    s.put(("node", 0), 2, torch.full((3, 2), 4.0), torch.ones(3))
    assert s.data[("node", 0)][0] is frozen0 and float(frozen0[0, 0]) == 4.0  # in place again
    assert s.freeze() == keys  # the previous commit is written: the next may freeze


def test_param_clients_add_up_their_changes():
    """Two trainers' clients on one shard: each pushes its own changes and ends with the sum,
    keeping changes made between a snapshot and the shard's answer."""
    import torch

    from pbg_fast.distributed import servers
    servers.ROLES.clear()
    servers.ROLES["params"] = servers.ParameterShard()
    servers.SELF["name"] = "w0"
    try:
        a, b = torch.zeros(4), torch.full((4,), 5.0)
        ca = servers.ParamClient(lambda n: "w0", interval=1, timeout=5)
        cb = servers.ParamClient(lambda n: "w0", interval=1, timeout=5)
        ca.register("x", a)
        cb.register("x", b)  # takes the first registrant's value
        assert torch.equal(b, torch.zeros(4))
        a += 1
        b += 2
        ca.sync()
        cb.sync()
        assert torch.equal(b, torch.full((4,), 3.0))
        ca.sync()
        assert torch.equal(a, torch.full((4,), 3.0))
        b += 1
        cb.sync()
        ca.sync()
        assert torch.equal(a, b) and torch.equal(a, torch.full((4,), 4.0))
    finally:
        servers.ROLES.clear()
        servers.SELF["name"] = ""


def test_param_clients_take_the_mean_change_when_scaled():
    """shared_param_merge 'mean': each of two clients pushes half its change, so the shard moves
    by the mean of the two (a single trainer's step size, not twice it); an unscaled tensor
    beside it (an optimizer state) still gets the sum."""
    import torch

    from pbg_fast.distributed import servers
    servers.ROLES.clear()
    servers.ROLES["params"] = servers.ParameterShard()
    servers.SELF["name"] = "w0"
    try:
        clients = [servers.ParamClient(lambda n: "w0", interval=1, timeout=5) for _ in range(2)]
        xs = [torch.zeros(3) for _ in range(2)]
        states = [torch.zeros(3) for _ in range(2)]
        for c, x, st in zip(clients, xs, states):
            c.register("x", x, scale=0.5)
            c.register("x_state", st)
        xs[0] += 2.0
        xs[1] += 4.0
        states[0] += 1.0
        states[1] += 1.0
        for c in clients + clients:
            c.sync()
        for x, st in zip(xs, states):
            assert torch.equal(x, torch.full((3,), 3.0))  # (2 + 4) / 2
            assert torch.equal(st, torch.full((3,), 2.0))  # 1 + 1
    finally:
        servers.ROLES.clear()
        servers.SELF["name"] = ""


def test_most_at_once():
    from pbg_fast.distributed.lock_server import most_at_once
    assert most_at_once(4, 4) == 2 and most_at_once(5, 5) == 3 and most_at_once(8, 8) == 4
    assert most_at_once(4, 1) == 4 and most_at_once(1, 3) == 3 and most_at_once(1, 1) == 1


def lockstep(nparts: int, ntrainers: int):
    """Trainers that follow the distributed trainer's protocol (keep what `keep` allows,
    release the rest) and train one bucket per step, all at the same pace. Returns the loads
    (partitions fetched) and the buckets of each trainer, and the "wait" answers."""
    ls = LockServer(nparts, nparts, lease_seconds=5, clock=Clock())
    buckets = [(l, r) for l in range(nparts) for r in range(nparts)]
    ls.start_iteration(0, buckets)
    active = {r: None for r in range(ntrainers)}
    loads = {r: 0 for r in range(ntrainers)}
    waits = 0
    trained = {r: [] for r in range(ntrainers)}
    for _ in range(10 * len(buckets)):
        for r in range(ntrainers):
            before = set(ls.trainers[r].held) if r in ls.trainers else set()
            g = ls.acquire(r, 0, trained=active[r])
            active[r] = None
            held = ls.trainers[r].held
            if g.kind == "bucket":
                loads[r] += len(ls.parts(g.bucket) - before)
                out = held - ls.parts(g.bucket) - set(g.keep)
                active[r] = g.bucket
                trained[r].append(g.bucket)
            else:
                waits += g.kind == "wait"
                out = held - set(g.keep)
            if out:
                ls.release(r, sorted(out))
        if len(ls.done) == len(buckets):
            break
    assert ls.done == set(buckets) and ls.grants == len(buckets)
    return loads, waits, trained


def test_two_trainers_swap_one_partition_per_round():
    """At P = 4 two trainers at the same pace train the three rounds of disjoint pairs: each
    loads its first pair, then one partition per round change (8 loads in all, where greedy
    bucket-by-bucket grants made about 12), and each trains half of the buckets."""
    loads, waits, trained = lockstep(4, 2)
    assert loads == {0: 4, 1: 4}, loads  # 2 to start, 1 at each of the 2 round changes
    # In lockstep one trainer asks before the other gave its partition back: at most one
    # "wait" each per round change.
    assert waits <= 4, waits
    assert [len(bs) for bs in trained.values()] == [8, 8]


@pytest.mark.parametrize("nparts,ntrainers", [(8, 2), (8, 4), (5, 2), (6, 3), (3, 2)])
def test_group_schedules_finish_without_deadlock(nparts, ntrainers):
    loads, _, trained = lockstep(nparts, ntrainers)
    assert sum(map(len, trained.values())) == nparts * nparts
    # Fewer loads than buckets: groups keep their partitions between buckets.
    assert sum(loads.values()) < nparts * nparts
