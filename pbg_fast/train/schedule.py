"""Bucket orders, after PBG's BucketOrder: each yields every (lhs_part, rhs_part) once."""

import random
from typing import List, Tuple

Bucket = Tuple[int, int]


def bucket_order(order: str, nparts_lhs: int, nparts_rhs: int, seed: int) -> List[Bucket]:
    rng = random.Random(seed)
    buckets = [(l, r) for l in range(nparts_lhs) for r in range(nparts_rhs)]
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
