"""Backends by name. A plain dict: adding a backend is one import and one line."""

from __future__ import annotations

from collections.abc import Callable

from rvg_ros.core.backends.base import Backend, BackendOptions, ProgressFn, no_progress
from rvg_ros.core.backends.carve import CarveBackend
from rvg_ros.core.backends.convex import ConvexBackend
from rvg_ros.core.backends.fusion import FusionBackend
from rvg_ros.core.backends.hull import HullBackend
from rvg_ros.core.backends.mirror import MirrorBackend


def _rvg(options: BackendOptions) -> Backend:
    # Imported on use: torch is only needed by the learned backend.
    from rvg_ros.rvg.backend import RVGBackend

    return RVGBackend(options)


BACKENDS: dict[str, Callable[[BackendOptions], Backend]] = {
    "fusion": FusionBackend,
    "hull": HullBackend,
    # Reconstruction-only completion baselines (what a user would do instead of generation).
    "fusion+convex": ConvexBackend,
    "fusion+carve": CarveBackend,
    "fusion+mirror": MirrorBackend,
    "rvg": _rvg,
}


def make_backend(name: str, options: BackendOptions | None = None) -> Backend:
    """The backend called ``name``; ValueError naming the known ones otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](options or BackendOptions(resolution=96))


__all__ = ["BACKENDS", "Backend", "BackendOptions", "ProgressFn", "make_backend", "no_progress"]
