"""Pose accuracy of a reconstruction whose poses were estimated or refined, and the result
moved into the ground-truth frame so that its surface can be scored.

Unposed captures come out in the first camera's frame (and up to scale without depth), so they
are aligned to the truth by the rigid transform (metric) or similarity (up to scale) that best
maps the estimated cameras onto the true ones, as is usual for pose-free methods. Refined poses
are in the world frame already: errors are taken as they are and nothing is moved.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rvg_ros.core.geometry import transform_points
from rvg_ros.core.poses import PoseReport
from rvg_ros.core.poses.align import align_cameras, apply_similarity, pose_difference
from rvg_ros.core.types import Mesh, PointCloud, Reconstruction


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
