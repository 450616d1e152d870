"""The lock server's schedules, simulated (issue #9): how close T trainers at P x P buckets come
to the ideal P^2 / T bucket-times per iteration, and how many partitions they move.

    python benchmarks/bench_schedule.py [--epochs 3 --seeds 5 --transfer 0.15 --jitter 0.1]

Discrete-event simulation of trainers that follow the distributed trainer's protocol against
the real `LockServer` (no processes, no network): a bucket takes 1 time unit (+-jitter,
uniform), each partition load or write-back `--transfer` units, a "wait" answer a poll of
0.02 units. Deterministic for given seeds, so figures from two commits compare exactly (a
commit before `Grant.keep` releases everything on "wait", as its trainer did).
Reports, per (P, T): time over the ideal (1.00 = no waits or transfers at all), partitions
moved per iteration, and the time trainers spent waiting. JSON lines.
"""

import argparse
import heapq
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import emit  # noqa: E402
from pbg_fast.distributed.lock_server import LockServer  # noqa: E402
from pbg_fast.train.schedule import bucket_order  # noqa: E402

POLL = 0.02


def simulate(nparts: int, ntrainers: int, epochs: int, seed: int, transfer: float,
             jitter: float) -> dict:
    rng = random.Random(seed)
    now = [0.0]
    ls = LockServer(nparts, nparts, lease_seconds=1e18, clock=lambda: now[0])
    moved = 0
    idle = 0.0
    for ep in range(epochs):
        ls.start_iteration(ep, bucket_order("inside_out", nparts, nparts, seed * 31 + ep, 2))
        held = {r: set() for r in range(ntrainers)}
        events = [(now[0], r, None) for r in range(ntrainers)]
        heapq.heapify(events)
        end = now[0]
        while events:
            t, r, trained = heapq.heappop(events)
            now[0] = t
            g = ls.acquire(r, ep, trained=trained)
            if g.kind == "done":
                if held[r]:  # written back for the commit
                    ls.release(r, sorted(held[r]))
                    moved += len(held[r])
                    t += transfer * len(held[r])
                    held[r] = set()
                end = max(end, t)
                continue
            if g.kind == "wait":
                out = held[r] - set(getattr(g, "keep", ()))
                if out:
                    ls.release(r, sorted(out))
                    held[r] -= out
                    moved += len(out)
                idle += POLL
                heapq.heappush(events, (t + transfer * len(out) + POLL, r, None))
                continue
            need = ls.parts(g.bucket)
            out = held[r] - need - set(getattr(g, "keep", ()))
            if out:
                ls.release(r, sorted(out))
                held[r] -= out
            loads = need - held[r]
            held[r] |= need
            moved += len(out) + len(loads)
            took = transfer * (len(out) + len(loads)) + 1.0 + rng.uniform(-jitter, jitter)
            heapq.heappush(events, (t + took, r, g.bucket))
        now[0] = end
    return dict(time=now[0], moved=moved, idle=idle)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--transfer", type=float, default=0.15,
                    help="a partition transfer, in bucket-times (bench_distributed's graph: "
                         "~20 ms against ~135 ms)")
    ap.add_argument("--jitter", type=float, default=0.1)
    a = ap.parse_args()
    for nparts, ntrainers in [(4, 2), (8, 2), (8, 4), (16, 4), (16, 8), (5, 2), (6, 3)]:
        runs = [simulate(nparts, ntrainers, a.epochs, s, a.transfer, a.jitter)
                for s in range(a.seeds)]
        ideal = a.epochs * nparts * nparts / ntrainers
        emit(dict(what="schedule_sim", parts=nparts, trainers=ntrainers, epochs=a.epochs,
                  seeds=a.seeds, transfer=a.transfer, jitter=a.jitter,
                  time_vs_ideal=statistics.mean(r["time"] for r in runs) / ideal,
                  moved_per_iteration=statistics.mean(r["moved"] for r in runs) / a.epochs,
                  idle_per_trainer_iteration=statistics.mean(r["idle"] for r in runs)
                  / (a.epochs * ntrainers)))


if __name__ == "__main__":
    main()
