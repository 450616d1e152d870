"""Big embedding tables on transparent huge pages.

Training reads and updates rows of multi-GB tables at random: with 4 KiB pages nearly every row
access is also a TLB miss. Where the kernel's THP mode is `madvise`, asking for huge pages on
the table before it is first touched removes most of them. Best effort: anywhere it does not
apply (other OS, THP off, small tensors) this is a plain torch.empty.
"""

import ctypes
import sys

import torch

_MADV_HUGEPAGE = 14
_HUGE = 2 << 20
_libc = None


def _madvise_huge(t: torch.Tensor) -> bool:
    global _libc
    if not sys.platform.startswith("linux") or t.nbytes < 4 * _HUGE:
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        start = (t.data_ptr() + _HUGE - 1) // _HUGE * _HUGE
        end = (t.data_ptr() + t.nbytes) // _HUGE * _HUGE
        return end > start and _libc.madvise(start, end - start, _MADV_HUGEPAGE) == 0
    except (OSError, AttributeError):
        return False


def empty_table(*shape, dtype=torch.float32) -> torch.Tensor:
    """An uninitialised contiguous tensor, on huge pages where the OS allows."""
    t = torch.empty(*shape, dtype=dtype)
    _madvise_huge(t)
    return t
