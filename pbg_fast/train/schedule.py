"""Bucket orders, after PBG's BucketOrder: each yields every (lhs_part, rhs_part) once. And
`count_loads`: how many partition loads an order costs a buffer of c partitions.

`buffer` is for a partition buffer of capacity c (after Marius's BETA, OSDI'21): fill the
buffer, train every bucket among its partitions, then swap one partition at a time, always
the swap that makes the most untrained buckets trainable (evicting the partition with the
fewest untrained buckets left among those kept), so each load brings in up to c - 1 new
partition pairs (2(c-1) + 1 buckets).
"""

import random
from typing import Dict, List, Optional, Sequence, Set, Tuple

Bucket = Tuple[int, int]


def bucket_order(order: str, nparts_lhs: int, nparts_rhs: int, seed: int,
                 capacity: Optional[int] = None) -> List[Bucket]:
    rng = random.Random(seed)
    buckets = [(l, r) for l in range(nparts_lhs) for r in range(nparts_rhs)]
    if order == "buffer":
        return _buffer_order(nparts_lhs, nparts_rhs, capacity or 2, rng)
    if order == "random":
        rng.shuffle(buckets)
        return buckets
    if order in ("inside_out", "outside_in"):
        # Layers by max(l, r): inside-out grows from (0, 0) outwards, each new layer sharing a
        # partition with what is already trained; outside-in is the reverse. Shuffled in a layer.
        layers = {}
        for b in buckets:
            layers.setdefault(max(b), []).append(b)
        keys = sorted(layers, reverse=(order == "outside_in"))
        out = []
        for k in keys:
            layer = layers[k]
            rng.shuffle(layer)
            out += layer
        return out
    if order == "affinity":
        # Greedy: the next bucket shares as many partitions as possible with the last one,
        # so as few partitions as possible are swapped.
        remaining = set(buckets)
        current = rng.choice(sorted(remaining))
        out = [current]
        remaining.remove(current)
        while remaining:
            def shared(b):
                return (b[0] == current[0]) + (b[1] == current[1])
            best = max(shared(b) for b in remaining)
            current = rng.choice(sorted(b for b in remaining if shared(b) == best))
            out.append(current)
            remaining.remove(current)
        return out
    raise ValueError(f"bucket_order: unknown {order!r}")


def _buffer_order(nl: int, nr: int, capacity: int, rng: random.Random) -> List[Bucket]:
    if nl != nr or nl <= capacity:
        # One side unpartitioned (each partition is needed once), or everything fits: any
        # order costing one load per partition; partition-major keeps it so for c >= 2.
        order = [(l, r) for l in range(nl) for r in range(nr)]
        return order
    p, c = nl, max(2, capacity)
    perm = list(range(p))
    rng.shuffle(perm)  # which partitions start together varies by seed, the cost does not
    todo: Set[Tuple[int, int]] = {(i, j) for i in range(p) for j in range(i, p)}
    left = [0] * p  # untrained pairs per partition
    for i, j in todo:
        left[i] += 1
        left[j] += i != j
    groups: List[List[Tuple[int, int]]] = [[]]  # the pairs trained after each load
    victims: List[int] = []  # the partition each load after the first fill evicts

    def train_pair(i: int, j: int) -> None:
        todo.discard((min(i, j), max(i, j)))
        left[i] -= 1
        if i != j:
            left[j] -= 1
        groups[-1].append((i, j))

    resident = perm[:c]
    for a in range(c):
        for b in range(a, c):
            train_pair(resident[a], resident[b])
    while todo:
        best = None
        for n in perm:
            if n in resident:
                continue
            for v in resident:
                keep = [r for r in resident if r != v]
                gain = sum((min(n, r), max(n, r)) in todo for r in keep) + ((n, n) in todo)
                key = (gain, -left[v], left[n])
                if best is None or key > best[0]:
                    best = (key, n, v)
        _, n, v = best
        victims.append(v)
        groups.append([])
        resident = [r for r in resident if r != v] + [n]
        if (n, n) in todo:
            train_pair(n, n)
        for r in resident[:-1]:
            if (min(n, r), max(n, r)) in todo:
                train_pair(r, n)
    # In each group, the pairs of the partition the next load evicts go first: it is free
    # early, and the buffer loads its replacement while the rest of the group trains. In the
    # last group, the partitions retire one at a time (the one with the fewest pairs left
    # first), so each is written back while the others train, not all at the commit.
    out: List[Bucket] = []
    for g, pairs in enumerate(groups):
        if g < len(victims):
            nxt = victims[g]
            pairs.sort(key=lambda pr: nxt not in pr)
        else:
            pairs[:] = _retiring_order(pairs)
        for i, j in pairs:
            out.extend([(i, j), (j, i)] if i != j else [(i, i)])
    return out


def _retiring_order(pairs: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """The pairs, so that partitions see their last use one after another."""
    left = list(pairs)
    out = []
    while left:
        count: Dict[int, int] = {}
        for i, j in left:
            count[i] = count.get(i, 0) + 1
            if j != i:
                count[j] = count.get(j, 0) + 1
        first = min(count, key=lambda q: (count[q], q))
        out += [pr for pr in left if first in pr]
        left = [pr for pr in left if first not in pr]
    return out


def count_loads(buckets: Sequence[Bucket], capacity: int, lhs_partitioned: bool = True,
                rhs_partitioned: bool = True) -> int:
    """Partition loads a buffer of `capacity` partitions makes over `buckets`, evicting the
    partition whose next use is farthest (Belady's rule, what PartitionBuffer does)."""
    need = [{p for p, on in ((l, lhs_partitioned), (r, rhs_partitioned)) if on}
            for l, r in buckets]
    uses: Dict[int, List[int]] = {}
    for i, parts in enumerate(need):
        for q in parts:
            uses.setdefault(q, []).append(i)
    resident: Set[int] = set()
    pos = {q: 0 for q in uses}
    loads = 0
    for i, parts in enumerate(need):
        for q in parts:
            while pos[q] < len(uses[q]) and uses[q][pos[q]] < i:
                pos[q] += 1
        for q in sorted(parts):
            if q in resident:
                continue
            if len(resident) >= max(capacity, len(parts)):
                def next_use(x: int) -> int:
                    k = pos[x]
                    while k < len(uses[x]) and uses[x][k] < i:
                        k += 1
                    return uses[x][k] if k < len(uses[x]) else len(need)
                victim = max((x for x in resident if x not in parts), key=next_use)
                resident.discard(victim)
            resident.add(q)
            loads += 1
    return loads


def pair_rounds(nparts: int) -> List[List[Tuple[int, ...]]]:
    """Rounds of disjoint partition pairs covering every pair once (the circle method of a
    round-robin tournament): nparts - 1 rounds of nparts / 2 pairs (an odd count gets a bye:
    the partition left over sits out, and appears as a 1-tuple). With one trainer per pair,
    a round's trainers never want the same partition, and going from one round to the next
    each trainer keeps one of its two partitions."""
    q = nparts + (nparts & 1)
    rounds = []
    for k in range(q - 1):
        pairs = [(k, q - 1)] + [((k + i) % (q - 1), (k - i) % (q - 1)) for i in range(1, q // 2)]
        rounds.append([tuple(sorted(p for p in pair if p < nparts)) for pair in pairs])
    return rounds
