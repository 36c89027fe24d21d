"""``fusion+convex``: the convex hull of the fused surface.

The simplest completion a user would try: everything between the observed surfaces is filled.
It over-fills concavities (a mug's opening, a banana's bend) but never leaves a hole.
"""

from __future__ import annotations

from rvg_ros.core.backends.base import BackendOptions, ProgressFn, StageTimer, no_progress
from rvg_ros.core.backends.completion import (
    fused_points,
    hull_field,
    hull_without_depth,
    surface_reconstruction,
)
from rvg_ros.core.backends.hull import voxel_centres
from rvg_ros.core.types import CaptureSet, Reconstruction

_STAGES = {"fuse": 2.0, "hull": 2.0, "surface": 0.5, "colour": 2.0, "sample": 0.5}


class ConvexBackend:
    name = "fusion+convex"

    def __init__(self, options: BackendOptions | None = None) -> None:
        self.options = options or BackendOptions(resolution=96)

    def reconstruct(
        self, capture: CaptureSet, progress: ProgressFn = no_progress
    ) -> Reconstruction:
        if not capture.has_depth:
            return hull_without_depth(self.name, capture, self.options, progress)
        timer = StageTimer(progress, _STAGES)
        points = fused_points(capture, self.options, timer)
        res = self.options.resolution
        voxel = capture.target.side / res
        with timer.stage("hull"):
            field = hull_field(points, voxel_centres(capture.target, res), voxel)
        return surface_reconstruction(
            self.name, field, capture, self.options, timer, progress, {"method": "convex hull"}
        )
