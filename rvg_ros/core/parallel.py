"""Two-core work sharing for the CPU path: one small thread pool, shared by the whole process.

The CPU path runs torch with one intra-op thread (``rvg`` backend: an OpenMP team stalls
whenever a sibling core is busy, as it is on a robot running drivers and planners), so a second
core helps only if the work itself is split. NumPy, Open3D and torch release the GIL inside
their kernels, so independent pieces (a symmetry candidate's refinement, the two branches of
classifier-free guidance) run on two cores at once in plain threads, and on a busy machine they
merely take turns. Tasks must not submit to the pool themselves (two workers: that could wait
forever).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

WORKERS = 2
_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def can_share() -> bool:
    """Whether there is a second core to share work with."""
    return (os.cpu_count() or 1) > 1


def pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="rvg-worker")
        return _pool


def map_shared(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]``, on two cores when there are two (results in input order)."""
    items = list(items)
    if len(items) < 2 or not can_share():
        return [fn(x) for x in items]
    return list(pool().map(fn, items))
