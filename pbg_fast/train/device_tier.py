"""The device tier of the partition buffer: the GPU trainer's (num_gpus: 1) partitions and
Adagrad states in device memory, in front of the host PartitionBuffer, which keeps doing the
disk I/O (prefetch, write-back, commit) exactly as for the CPU trainer.

Per bucket i (the trainer calls, in this order):
  enter(i)     after the host's acquire(i): bucket i's partitions are copied to the device,
               except those still there from bucket i - 1 or prefetched during it; then the
               copies of bucket i + 1's new partitions whose host copies are loaded already
               start on a side stream (from page-locked host slots: they overlap bucket i's
               training, which runs on the current stream);
  get(e, p)    the device copies, for the bucket op and the numerics guard;
  leave(i)     before the host's release(i): the partitions bucket i + 1 does not use are
               copied back into their host slots and leave the device.
  flush()      before the host's finish_iteration(): everything back to the host.

Why this is safe: a partition stays on the device past bucket i only if bucket i + 1 uses it,
and the host writes a partition back only after its last use in the plan and evicts only
partitions the next bucket does not need, so a host copy that is stale (the device's is newer)
is never written or dropped. Every copy that leaves the device goes back before the host's
release() or finish_iteration() can write it. A prefetched partition is one bucket i does not
use and the device does not hold: its host copy is the latest and stays unchanged until bucket
i + 1 (the host neither trains, evicts nor reloads a partition of the next bucket).

`device` may be the CPU (tests: the same bookkeeping, with real copies, prefetch included).
"""

import time
from typing import Dict, Tuple

import torch

from .partition_buffer import Key, PartitionBuffer


class DeviceTier:
    def __init__(self, host: PartitionBuffer, device: torch.device):
        self.host = host
        self.device = torch.device(device)
        self.resident: Dict[Key, Tuple[torch.Tensor, torch.Tensor]] = {}
        # Prefetched for the next bucket: (emb, state, event the copy's stream recorded).
        self.pending: Dict[Key, Tuple[torch.Tensor, torch.Tensor, object]] = {}
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.bytes_to_device = 0
        self.bytes_to_host = 0
        self.copy_seconds = 0.0  # the training thread's time in copies (not the overlapped)
        self.copies = 0
        self.prefetched = 0

    def enter(self, i: int) -> None:
        t0 = time.perf_counter()
        for k in sorted(self.host.plan[i]):
            if k in self.resident:
                continue
            if k in self.pending:
                emb, state, event = self.pending.pop(k)
                if event is not None:
                    torch.cuda.current_stream(self.device).wait_event(event)
                self.resident[k] = (emb, state)
                continue
            emb, state = self.host.get(*k)
            self.resident[k] = (emb.to(self.device, copy=True), state.to(self.device, copy=True))
            self.bytes_to_device += emb.nbytes + state.nbytes
            self.copies += 1
        self._sync()
        self._prefetch(i + 1)
        self.copy_seconds += time.perf_counter() - t0

    def _prefetch(self, j: int) -> None:
        if j >= len(self.host.plan):
            return
        for k in sorted(self.host.plan[j]):
            if k in self.resident or k in self.pending or not self.host.is_ready(k):
                continue
            emb, state = self.host.get(*k)
            if self.stream is not None:
                with torch.cuda.stream(self.stream):
                    d_emb = emb.to(self.device, non_blocking=True, copy=True)
                    d_state = state.to(self.device, non_blocking=True, copy=True)
                    event = torch.cuda.Event()
                    event.record(self.stream)
                # The copies are made on the side stream and used on the current one.
                d_emb.record_stream(torch.cuda.current_stream(self.device))
                d_state.record_stream(torch.cuda.current_stream(self.device))
            else:
                d_emb, d_state, event = emb.to(self.device, copy=True), state.to(
                    self.device, copy=True), None
            self.pending[k] = (d_emb, d_state, event)
            self.bytes_to_device += emb.nbytes + state.nbytes
            self.copies += 1
            self.prefetched += 1

    def get(self, entity: str, part: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.resident[(entity, part)]

    def leave(self, i: int) -> None:
        nxt = self.host.plan[i + 1] if i + 1 < len(self.host.plan) else set()
        self._copy_back([k for k in self.resident if k not in nxt])

    def flush(self) -> None:
        self._copy_back(list(self.resident))
        self.pending.clear()  # unchanged copies of host data: nothing to write back

    def _copy_back(self, keys) -> None:
        t0 = time.perf_counter()
        for k in sorted(keys):
            emb, state = self.resident.pop(k)
            h_emb, h_state = self.host.get(*k)
            h_emb.copy_(emb)
            h_state.copy_(state)
            self.bytes_to_host += emb.nbytes + state.nbytes
            self.copies += 1
        self._sync()
        self.copy_seconds += time.perf_counter() - t0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def stats(self) -> dict:
        return dict(device_copies=self.copies, device_prefetched=self.prefetched,
                    device_bytes_in=self.bytes_to_device, device_bytes_out=self.bytes_to_host,
                    device_copy_seconds=self.copy_seconds)
