"""Pose accuracy of a reconstruction whose poses were estimated or refined, and the result
moved into the ground-truth frame so that its surface can be scored.

Unposed captures come out in the first camera's frame (and up to scale without depth), so they
are aligned to the truth by the rigid transform (metric) or similarity (up to scale) that best
maps the estimated cameras onto the true ones, as is usual for pose-free methods. Refined poses
are in the world frame already: errors are taken as they are and nothing is moved.

The camera alignment spreads a pose error over all cameras. Where the poses are only known up
to a symmetry of the object (a plain bowl turned about its axis) it misplaces a right surface,
so metric unposed results are also scored as the user gets them: in the first registered
camera's frame, put into the world by that camera's true pose (``first_camera_score``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rvg_ros.core.geometry import invert_rigid, transform_points
from rvg_ros.core.metrics import evaluate
from rvg_ros.core.poses import PoseReport
from rvg_ros.core.poses.align import align_cameras, apply_similarity, pose_difference
from rvg_ros.core.types import Mesh, PointCloud, Reconstruction
from rvg_ros.eval.score import UNIT_RADII, canonical_mesh


def _moved(result: Reconstruction, sim: np.ndarray) -> Reconstruction:
    mesh = Mesh(
        transform_points(sim, result.mesh.vertices),
        result.mesh.triangles,
        result.mesh.vertex_colors,
        result.mesh.vertex_confidence,
    )
    cloud = PointCloud(
        transform_points(sim, result.cloud.points), result.cloud.colors, result.cloud.confidence
    )
    return dataclasses.replace(result, mesh=mesh, cloud=cloud)


def pose_scores(
    result: Reconstruction, true_poses: np.ndarray
) -> tuple[dict[str, object], Reconstruction]:
    """Registration share and median/max pose errors (after alignment where the frame is not
    the world's), and the result in the ground-truth frame."""
    report = result.extras.get("pose_report")
    if not isinstance(report, PoseReport) or report.method == "given":
        return {}, result  # poses used as given: nothing to score (and no extra columns)
    used = [i for i, f in enumerate(report.frames) if f.pose is not None and f.status != "dropped"]
    row: dict[str, object] = {
        "pose_method": report.method,
        "pose_registered": len(used) / len(report.frames),
        "pose_seconds": report.seconds,
    }
    if not used:
        return row, result
    estimated = [report.frames[i].pose for i in used]
    truth = [true_poses[i] for i in used]
    if report.frame != "world":
        sim = align_cameras(estimated, truth, with_scale=not report.metric_scale)
        estimated = [apply_similarity(sim, p) for p in estimated]
        result = _moved(result, sim)
        row["pose_alignment_scale"] = float(np.cbrt(np.linalg.det(sim[:3, :3])))
    errors = np.array([pose_difference(e, t) for e, t in zip(estimated, truth, strict=True)])
    row.update(
        {
            "pose_trans_err_m": float(np.median(errors[:, 0])),
            "pose_rot_err_deg": float(np.median(errors[:, 1])),
            "pose_trans_err_max_m": float(errors[:, 0].max()),
            "pose_rot_err_max_deg": float(errors[:, 1].max()),
        }
    )
    return row, result


def first_camera_score(
    result: Reconstruction, true_poses: np.ndarray, truth_mesh: object, n_points: int, seed: int
) -> dict[str, float]:
    """F-score@0.05 (unit cube) of a metric unposed ``result`` (still in the first registered
    camera's frame) moved into the world by that camera's true pose; {} otherwise."""
    report = result.extras.get("pose_report")
    if not isinstance(report, PoseReport) or report.frame == "world" or not report.metric_scale:
        return {}
    used = [i for i, f in enumerate(report.frames) if f.pose is not None and f.status != "dropped"]
    if not used or result.mesh.is_empty:
        return {}
    first = used[0]
    moved = _moved(result, true_poses[first] @ invert_rigid(report.frames[first].pose))
    scores = evaluate(
        canonical_mesh(moved.mesh), truth_mesh, n_points=n_points, seed=seed, unit_radii=UNIT_RADII
    )
    return {"f@0.05_unit_first_camera": float(scores["f@0.05_unit"])}
