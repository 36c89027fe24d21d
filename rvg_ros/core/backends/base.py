"""The interface every reconstruction backend implements, and the stage timer they share."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from rvg_ros.core.types import CaptureSet, Reconstruction

# progress(stage, fraction_of_whole_job). A callback may raise ``Cancelled`` to stop the job.
ProgressFn = Callable[[str, float], None]


def no_progress(stage: str, fraction: float) -> None:
    """The default progress callback: does nothing."""


class Backend(Protocol):
    name: str

    def reconstruct(
        self, capture: CaptureSet, progress: ProgressFn = no_progress
    ) -> Reconstruction: ...


@dataclass
class BackendOptions:
    """Options common to all backends; each backend reads the ones it understands."""

    device: str = "auto"  # auto | cpu | cuda
    voxel_size: float | None = None  # metres; None = target side / resolution
    resolution: int = 128  # voxels along the target cube side
    cloud_points: int = 50_000
    weights_dir: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


class StageTimer:
    """Times named stages and reports progress as each stage starts.

    ``weights`` gives each stage's share of the whole job so the progress fraction moves
    roughly in proportion to time; unknown stages get no share.
    """

    def __init__(self, progress: ProgressFn, weights: dict[str, float]) -> None:
        self._progress = progress
        total = sum(weights.values()) or 1.0
        self._weights = {k: v / total for k, v in weights.items()}
        self._done = 0.0
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[Callable[..., None]]:
        """Context for one stage; yields ``sub(fraction, label=None)`` to report progress inside
        it (``label`` refines the stage name, e.g. "sampling 3/30")."""
        start_fraction = self._done
        share = self._weights.get(name, 0.0)
        self._progress(name, start_fraction)

        def sub(fraction: float, label: str | None = None) -> None:
            fraction = start_fraction + share * min(max(fraction, 0.0), 1.0)
            self._progress(label or name, fraction)

        t0 = time.perf_counter()
        try:
            yield sub
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        self._done = start_fraction + share


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
