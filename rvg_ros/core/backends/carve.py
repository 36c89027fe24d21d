"""``fusion+carve``: the convex hull of the fused surface minus observed free space.

Measured to be the strongest purely geometric completion on YCB (NOTES.md): the hull fills
the unseen back, and every voxel some camera ray passed through on its way to the measured
depth (or that a ray missed the object through) is removed again, which restores concavities
that any view looked into.
"""

from __future__ import annotations

import numpy as np

from rvg_ros.core.backends.base import BackendOptions, ProgressFn, StageTimer, no_progress
from rvg_ros.core.backends.completion import (
    evidence_fields,
    fused_points,
    hull_field,
    hull_without_depth,
    surface_reconstruction,
)
from rvg_ros.core.types import CaptureSet, Reconstruction

_STAGES = {"fuse": 2.0, "free_space": 2.0, "hull": 2.0, "surface": 0.5, "colour": 2.0}


class CarveBackend:
    name = "fusion+carve"

    def __init__(self, options: BackendOptions | None = None) -> None:
        self.options = options or BackendOptions(resolution=96)

    def reconstruct(
        self, capture: CaptureSet, progress: ProgressFn = no_progress
    ) -> Reconstruction:
        if not capture.has_depth:
            return hull_without_depth(self.name, capture, self.options, progress)
        timer = StageTimer(progress, _STAGES)
        points = fused_points(capture, self.options, timer)
        with timer.stage("free_space"):
            centres, free, voxel = evidence_fields(capture, self.options.resolution, self.options)
        with timer.stage("hull"):
            field = np.maximum(hull_field(points, centres, voxel), free)
        return surface_reconstruction(
            self.name,
            field,
            capture,
            self.options,
            timer,
            progress,
            {"method": "convex hull minus observed free space"},
        )
