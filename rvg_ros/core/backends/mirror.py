"""``fusion+mirror``: complete the unseen side by the object's own symmetry.

Many household objects are mirror-symmetric or round. The best symmetry of the fused surface
is searched for (``symmetry.find_symmetry``: a plane or an axis, judged against the views'
depth and free space); the observed surface *and the observed free space* are then copied
through it, and the result is carved like ``fusion+carve``: the convex hull of the observed and
mirrored surface, minus observed and mirrored free space. When no symmetry is consistent with
the observations the result is exactly ``fusion+carve``.
"""

from __future__ import annotations

import json

import numpy as np
from scipy.ndimage import map_coordinates

from rvg_ros.core.backends.base import BackendOptions, ProgressFn, StageTimer, no_progress
from rvg_ros.core.backends.completion import (
    TRUNCATION_VOXELS,
    evidence_fields,
    fused_points,
    hull_field,
    hull_without_depth,
    support_points,
    surface_reconstruction,
)
from rvg_ros.core.backends.symmetry import Symmetry, find_symmetry
from rvg_ros.core.types import CaptureSet, Reconstruction, TargetCube

_STAGES = {
    "fuse": 2.0,
    "symmetry": 4.0,
    "free_space": 2.0,
    "mirror": 2.0,
    "hull": 2.0,
    "surface": 0.5,
    "colour": 2.0,
}


def mirrored_free_space(
    free: np.ndarray, centres: np.ndarray, target: TargetCube, symmetry: Symmetry, floor: float
) -> np.ndarray:
    """Free space carried through every transform of ``symmetry``, applied only where the
    views themselves know nothing (``free <= floor``): a slightly wrong symmetry must not
    carve into surface that was actually measured."""
    res = round(len(centres) ** (1.0 / 3.0))
    grid = free.reshape(res, res, res)
    unknown = np.nonzero(free <= floor + 1e-9)[0]
    carried = np.full(len(unknown), floor, dtype=free.dtype)
    for transform in symmetry.transforms():
        inverse = np.linalg.inv(transform)
        source = centres[unknown] @ inverse[:3, :3].T + inverse[:3, 3]
        # World -> fractional voxel index (voxel j's centre sits at (j + 0.5) / res - 0.5).
        index = (target.to_unit(source) + 0.5) * res - 0.5
        moved = map_coordinates(grid, index.T, order=1, mode="constant", cval=floor)
        np.maximum(carried, moved, out=carried)
    out = free.copy()
    out[unknown] = carried
    return out


class MirrorBackend:
    name = "fusion+mirror"

    def __init__(self, options: BackendOptions | None = None) -> None:
        self.options = options or BackendOptions(resolution=96)

    def reconstruct(
        self, capture: CaptureSet, progress: ProgressFn = no_progress
    ) -> Reconstruction:
        if not capture.has_depth:
            # Without depth nothing tells a wrong symmetry from a right one (silhouettes of
            # the unseen side do not exist), so do not guess.
            return hull_without_depth(self.name, capture, self.options, progress)
        timer = StageTimer(progress, _STAGES)
        points = fused_points(capture, self.options, timer)
        res = self.options.resolution
        voxel = capture.target.side / res
        with timer.stage("symmetry"):
            symmetry, _ = find_symmetry(
                points, capture.frames, capture.target, voxel, seed=capture.seed
            )
        with timer.stage("free_space"):
            centres, free, voxel = evidence_fields(capture, res, self.options)
        with timer.stage("mirror"):
            if symmetry is not None:
                free = mirrored_free_space(
                    free, centres, capture.target, symmetry, -TRUNCATION_VOXELS * voxel
                )
                # The hull of a rigidly moved set is the moved hull: only extreme points matter.
                points = support_points(points)
                points = np.concatenate(
                    [points] + [points @ t[:3, :3].T + t[:3, 3] for t in symmetry.transforms()]
                )
        with timer.stage("hull"):
            field = np.maximum(hull_field(points, centres, voxel), free)
        # Scalars only: result.json keeps scalar extras.
        extras: dict[str, object] = {
            "method": "symmetry completion (mirrored surface and free space, carved)",
            "symmetry": symmetry.kind if symmetry is not None else "none",
        }
        if symmetry is not None:
            extras["symmetry_detail"] = json.dumps(symmetry.describe())
        return surface_reconstruction(
            self.name, field, capture, self.options, timer, progress, extras
        )
