"""Confidence calibration: are the points a backend marks as unobserved farther from the truth?

A backend's point cloud carries a per-point confidence (1 = backed by a view, lower = inferred).
A calibrated backend puts its errors where its confidence is low; a grasp planner can then
trust the high-confidence surface.
"""

from __future__ import annotations

import numpy as np
import open3d as o3d

from rvg_ros.core.types import PointCloud

# Points at or above this confidence count as "high" (observed).
HIGH_CONFIDENCE = 0.5


def confidence_calibration(
    cloud: PointCloud, gt_scene: o3d.t.geometry.RaycastingScene
) -> dict[str, float]:
    """Mean distance (metres) to the GT surface of high- and low-confidence points, and the
    share of low-confidence points. NaN where a group is empty."""
    if len(cloud.points) == 0:
        return {"conf_high_dist": np.nan, "conf_low_dist": np.nan, "conf_low_share": np.nan}
    query = o3d.core.Tensor(cloud.points.astype(np.float32))
    distance = gt_scene.compute_distance(query).numpy().astype(np.float64)
    high = cloud.confidence >= HIGH_CONFIDENCE
    return {
        "conf_high_dist": float(distance[high].mean()) if high.any() else np.nan,
        "conf_low_dist": float(distance[~high].mean()) if (~high).any() else np.nan,
        "conf_low_share": float((~high).mean()),
    }
