"""How well a set of camera poses explains the depth: the quality measure that picks between
pose estimates of one capture (structure from motion vs depth registration)."""

from __future__ import annotations

import numpy as np

from rvg_ros.core.geometry import invert_rigid, transform_points
from rvg_ros.core.poses.depth_registration import camera_points, object_pixels
from rvg_ros.core.types import Frame

# Points per frame used for the check (subsampled, seeded).
SAMPLES = 2000
# Chromaticity (r, g, b over their sum) differences below this count as the same colour.
CHROMA_TOLERANCE = 0.12


def _chroma(rgb: np.ndarray) -> np.ndarray:
    """Shading-invariant colour: the same surface under a headlight differs in brightness."""
    return rgb / (rgb.sum(axis=1, keepdims=True) + 0.05)


def depth_consistency(
    frames: list[Frame], poses: dict[int, np.ndarray], tolerance: float, seed: int = 0
) -> float:
    """Share of cross-view depth tests that agree, 0..1 (NaN with nothing to test).

    Every frame's depth points are projected into every other posed frame. Where that frame
    measured depth at the pixel, a point within ``tolerance`` of it agrees; a point clearly in
    front of it disagrees (the other camera would have seen it there: free-space violation).
    Points behind are occluded and not counted. Wrong poses (a flipped bowl) violate free space
    even where the shapes match; a point only agrees when its chromaticity matches too, which
    tells apart poses that a symmetric shape cannot (a bowl turned about its axis).
    """
    rng = np.random.default_rng(seed)
    agree = tested = 0
    for j, pose_j in poses.items():
        points, colours = camera_points(frames[j], object_pixels(frames[j]))
        if len(points) > SAMPLES:
            keep = rng.choice(len(points), SAMPLES, replace=False)
            points, colours = points[keep], colours[keep]
        for i, pose_i in poses.items():
            if i == j:
                continue
            cam = transform_points(invert_rigid(pose_i) @ pose_j, points)
            k = frames[i].intrinsics
            front = cam[:, 2] > 1e-6
            cam, col = cam[front], colours[front]
            u = np.round(k.fx * cam[:, 0] / cam[:, 2] + k.cx).astype(int)
            v = np.round(k.fy * cam[:, 1] / cam[:, 2] + k.cy).astype(int)
            inside = (u >= 0) & (u < k.width) & (v >= 0) & (v < k.height)
            measured = np.zeros(len(cam))
            measured[inside] = frames[i].depth[v[inside], u[inside]]
            valid = measured > 0
            diff = cam[:, 2] - measured
            seen = np.zeros((len(cam), 3))
            seen[inside] = frames[i].rgb[v[inside], u[inside]] / 255.0
            same_colour = np.abs(_chroma(col) - _chroma(seen)).sum(axis=1) < CHROMA_TOLERANCE
            agree += int(np.sum(valid & (np.abs(diff) <= tolerance) & same_colour))
            tested += int(np.sum(valid & (diff >= -tolerance)))
            # Points projecting onto background (no depth) in front of the scene also violate
            # free space when the frame is segmented; without a mask the background is unknown.
            tested += int(np.sum(inside & ~valid)) if frames[i].mask is not None else 0
    return agree / tested if tested else float("nan")
