"""Process-wide tuning that the `gifd` command line opts into (the library never applies it itself).

`reuse_large_allocations` changes glibc's malloc for the whole process, which a library imported
into someone else's program has no business doing. The CLI turns it on once at start-up
(`gifd.cli.main`); a program that embeds gifd and wants the same speed calls it explicitly.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: glibc mallopt parameters and the threshold `reuse_large_allocations` gives both.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MALLOC_KEEP_BYTES = 1 << 30
_malloc_tuned = False


def large_allocations_reused() -> bool:
    """Whether `reuse_large_allocations` has set glibc's thresholds in this process."""
    return _malloc_tuned


def reuse_large_allocations() -> bool:
    """Let glibc's malloc keep freed large blocks for reuse: mmap and trim thresholds of 1 GiB.

    Why: an attack step on a CPU allocates and frees the same large buffers every step. glibc
    serves blocks above its mmap threshold (adaptive, at most 32 MB) with a fresh mmap whose pages
    fault in again on every step; batched restarts make R x parameter-sized buffers, so without
    reuse they can be slower than the sequential loop (bench/README.md has the measurements).
    Process-wide and opt-in: the `gifd` CLI calls it at start-up; the library never does. Freed
    memory then stays with the process (peak RSS is unchanged; RSS does not shrink after an
    attack). Skipped where the C library is not glibc or the user set the thresholds already
    (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES). Idempotent. Returns whether
    the thresholds are set.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (
        not sys.platform.startswith("linux")
        or "MALLOC_MMAP_THRESHOLD_" in os.environ
        or "MALLOC_TRIM_THRESHOLD_" in os.environ
        or "mmap_threshold" in tunables
        or "trim_threshold" in tunables
    ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (or no C library symbols): leave malloc alone
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _malloc_tuned = (
        mallopt(_M_MMAP_THRESHOLD, MALLOC_KEEP_BYTES) == 1
        and mallopt(_M_TRIM_THRESHOLD, MALLOC_KEEP_BYTES) == 1
    )
    return _malloc_tuned
