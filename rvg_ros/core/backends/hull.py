"""``hull``: silhouette carving (visual hull) on a voxel grid, then marching cubes.

A voxel survives when every view that sees it (projects inside the image, in front of the
camera) has it inside the object mask. With depth, pixels the sensor saw *behind* a voxel
also carve it (observed free space), which tightens the hull considerably.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from rvg_ros.core.backends.base import (
    BackendOptions,
    ProgressFn,
    StageTimer,
    no_progress,
    peak_rss_mb,
)
from rvg_ros.core.geometry import lookup_pixels, project
from rvg_ros.core.surface import finish_mesh, mesh_from_field, sample_cloud
from rvg_ros.core.types import CaptureSet, Frame, Reconstruction, ReconstructionError, TargetCube

_STAGES = {"carve": 3.0, "surface": 1.0, "colour": 2.0, "sample": 0.5}


def voxel_centres(target: TargetCube, resolution: int) -> np.ndarray:
    """World coordinates of the voxel centres, (res^3, 3), index order (x, y, z)."""
    axis = (np.arange(resolution) + 0.5) / resolution - 0.5
    unit = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    return target.to_world(unit)


def carve(
    frames: list[Frame], points: np.ndarray, free_margin: float | None, sub: ProgressFn
) -> np.ndarray:
    """Boolean occupancy of ``points`` consistent with every silhouette.

    With ``free_margin`` (metres) set, depth also carves: a point more than ``free_margin``
    in front of the measured surface along its pixel's ray was seen as free space.
    """
    occupied = np.ones(len(points), dtype=bool)
    for i, frame in enumerate(frames):
        if frame.mask is None:
            raise ReconstructionError("silhouette carving needs a mask in every view")
        uv, z = project(points, frame.intrinsics, frame.camera_to_world)
        inside_mask, seen = lookup_pixels(frame.mask, uv, z > 0)
        occupied &= ~seen | inside_mask
        if free_margin is not None and frame.depth is not None:
            depth, _ = lookup_pixels(frame.depth, uv, seen)
            occupied &= ~(seen & (depth > 0) & (z < depth - free_margin))
        sub((i + 1) / len(frames))
    return occupied


class HullBackend:
    name = "hull"

    def __init__(self, options: BackendOptions | None = None) -> None:
        self.options = options or BackendOptions(resolution=96)

    def reconstruct(
        self, capture: CaptureSet, progress: ProgressFn = no_progress
    ) -> Reconstruction:
        if not capture.has_masks:
            raise ReconstructionError("hull needs an object mask in every view")
        timer = StageTimer(progress, _STAGES)
        res = self.options.resolution
        with timer.stage("carve") as sub:
            occupied = carve(capture.frames, voxel_centres(capture.target, res), None, sub)
            field = gaussian_filter(occupied.reshape(res, res, res).astype(np.float32), 0.7)
        with timer.stage("surface"):
            vertices, triangles = mesh_from_field(field, capture.target, 0.5)
        if len(triangles) == 0:
            raise ReconstructionError("silhouette carving left nothing: masks disagree")
        voxel = capture.target.side / res
        with timer.stage("colour"):
            mesh = finish_mesh(vertices, triangles, capture.frames, 3.0 * voxel)
        with timer.stage("sample"):
            cloud = sample_cloud(mesh, self.options.cloud_points, capture.seed)
        progress("done", 1.0)
        return Reconstruction(
            mesh=mesh,
            cloud=cloud,
            backend=self.name,
            num_views=len(capture.frames),
            metric_scale=True,
            stage_seconds=timer.seconds,
            peak_memory_mb=peak_rss_mb(),
            extras={"method": "silhouette carving", "voxel_size": voxel},
        )
