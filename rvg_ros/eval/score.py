"""Every number for one (object, backend) pair, as one flat dict (a CSV row)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import trimesh

from rvg_ros.core.export import observed_vertices
from rvg_ros.core.metrics import evaluate
from rvg_ros.core.render import MeshRenderer, RenderedView
from rvg_ros.core.surface import sample_cloud
from rvg_ros.core.types import Mesh, Reconstruction
from rvg_ros.eval.calibration import confidence_calibration
from rvg_ros.eval.images import image_metrics, render_views
from rvg_ros.eval.scenes import RenderedCapture
from rvg_ros.eval.visibility import gt_scene, outward_sign, seen_by_views

# Metric-scale radii (grasping) and unit-cube radii (the paper's), as in core.metrics.
METRIC_RADII = (0.005, 0.01)
UNIT_RADII = (0.05, 0.1)


def canonical_mesh(mesh: Mesh) -> Mesh:
    """The same surface with vertices sorted lexicographically and triangles remapped and
    sorted. Open3D's TSDF extraction returns a run-dependent order; seeded surface sampling
    (and so every metric) is only deterministic on a canonical order."""
    if mesh.is_empty:
        return mesh
    order = np.lexsort(mesh.vertices.T[::-1])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    tri = rank[mesh.triangles]
    # Rotate each triangle to start at its smallest index (keeps the winding), then sort rows.
    shift = np.argmin(tri, axis=1)
    tri = np.stack([tri[np.arange(len(tri)), (shift + k) % 3] for k in range(3)], axis=1)
    tri = tri[np.lexsort(tri.T[::-1])]
    return Mesh(
        mesh.vertices[order],
        tri.astype(np.int32),
        mesh.vertex_colors[order],
        mesh.vertex_confidence[order],
    )


class GroundTruth:
    """What scoring needs of one object, built once and reused for every backend."""

    def __init__(self, capture: RenderedCapture, visibility: str = "front") -> None:
        self.capture = capture
        self.mesh = trimesh.load(capture.gt_path, force="mesh", process=False)
        self.scene = gt_scene(self.mesh)
        # The seen/unseen split's side test (eval/visibility.py): front-facing unless the GT's
        # winding cannot say which side is out, then either side (recorded per object).
        if visibility == "front" and outward_sign(self.mesh) is None:
            visibility = "either"
        self.visibility = visibility
        self.seen = seen_by_views(
            self.mesh, capture.true_poses, capture.intrinsics, sides=visibility
        )
        self.holdout_views: list[RenderedView] = render_views(
            MeshRenderer(self.mesh), capture.intrinsics, capture.holdout_poses
        )


def _visible_in_inputs(
    mesh: Mesh, capture: RenderedCapture
) -> Callable[[np.ndarray], np.ndarray] | None:
    """Which points of the predicted surface an input camera (true pose) sees, by the same
    test as the GT's seen split, run against the prediction itself; on either side, since a
    prediction may be an open surface with no outward side (fusion's)."""
    if mesh.is_empty:
        return None
    surface = trimesh.Trimesh(mesh.vertices, mesh.triangles, process=False)
    return seen_by_views(surface, capture.true_poses, capture.intrinsics, sides="either")


def score_reconstruction(
    result: Reconstruction, truth: GroundTruth, n_points: int, seed: int
) -> dict[str, float]:
    """Surface metrics (metric + unit cube, seen/unseen split), image consistency on held-out
    views, and confidence calibration."""
    mesh = canonical_mesh(result.mesh)
    row: dict[str, float] = {}
    row.update(
        evaluate(
            mesh,
            truth.mesh,
            n_points=n_points,
            seed=seed,
            metric_radii=METRIC_RADII,
            unit_radii=UNIT_RADII,
            gt_seen=truth.seen,
            pred_visible=_visible_in_inputs(mesh, truth.capture),
        )
    )
    row.update(
        image_metrics(
            mesh,
            truth.holdout_views,
            truth.capture.intrinsics,
            truth.capture.holdout_poses,
        )
    )
    # The backend's own cloud is sampled from its mesh in the backend's vertex order; resample
    # it the same way (``sample_cloud``) from the canonical mesh so the numbers repeat exactly.
    cloud = sample_cloud(mesh, max(len(result.cloud.points), 1), seed)
    row.update(confidence_calibration(cloud, truth.scene))
    row["seconds"] = float(sum(result.stage_seconds.values()))
    row["observed_share"] = (
        float(np.mean(observed_vertices(result))) if len(result.mesh.vertices) else 0.0
    )
    return row
