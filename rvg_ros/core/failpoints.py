"""Named fault-injection points, switched on by an environment variable (off by default).

Databases and storage engines test their error paths this way (FreeBSD fail points, TiKV's
``fail-rs``): the real code runs, and at a named point an error that is hard to cause on
demand is raised instead - a CUDA out-of-memory on a machine without a GPU, a disk error at
one exact write. The handling under test is the production handling.

    RVG_ROS_FAILPOINTS="backend.reconstruct=cuda_oom*1;export.write=enospc"

Each entry is ``NAME=ACTION[*COUNT]`` (COUNT = how many hits fire; default: every hit).
Actions: ``cuda_oom`` (torch's OutOfMemoryError, only when the call is on a non-CPU device, as
a real one), ``enospc`` (OSError ENOSPC), ``sleep:SECONDS``.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import Counter

ENV = "RVG_ROS_FAILPOINTS"
_hits: Counter[str] = Counter()
_lock = threading.Lock()


def _parse(spec: str) -> dict[str, tuple[str, int | None]]:
    points: dict[str, tuple[str, int | None]] = {}
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        name, _, action = item.partition("=")
        count: int | None = None
        if "*" in action:
            action, _, n = action.rpartition("*")
            count = int(n)
        points[name.strip()] = (action.strip(), count)
    return points


def hit(name: str, device: str = "cpu") -> None:
    """Run the fault configured for ``name``, if any (a no-op unless the variable is set)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point = _parse(spec).get(name)
    if point is None:
        return
    action, count = point
    if action == "cuda_oom" and device == "cpu":
        return  # a CPU run cannot run out of CUDA memory
    with _lock:
        if count is not None and _hits[name] >= count:
            return
        _hits[name] += 1
    if action == "cuda_oom":
        raise _cuda_oom(f"CUDA out of memory (injected at failpoint {name!r})")
    if action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at failpoint {name!r})")
    if action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))
        return
    raise ValueError(f"unknown failpoint action {action!r} in {ENV}")


def _cuda_oom(message: str) -> Exception:
    try:
        import torch

        return torch.OutOfMemoryError(message)
    except (ImportError, AttributeError):
        return RuntimeError(message)


__all__ = ["ENV", "hit"]
