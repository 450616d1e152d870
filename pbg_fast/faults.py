"""Fault injection for the crash-safety tests: named points in the trainer, the checkpoint
writer and the importer where a test can have the process killed (SIGKILL, as a power cut or
the OOM killer would).

``PBG_FAST_KILL_AT=<point>[:<n>]`` kills the process the n-th time (default: the first) it
reaches ``point``. Unset (always, outside tests), ``point()`` is one dict lookup.
"""

import os
import signal

_counts = {}


def point(name: str) -> None:
    spec = os.environ.get("PBG_FAST_KILL_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
