"""Similarity and rigid alignment of camera sets, and pose differences.

Sim(3) / rigid fits use pycolmap's estimators (Umeyama inside, LO-RANSAC for the robust one)
rather than hand-written least squares.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.transform import Rotation

from rvg_ros.core.geometry import invert_rigid


def similarity_matrix(scale: float, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = scale * np.asarray(rotation)
    m[:3, 3] = translation
    return m


def apply_similarity(sim: np.ndarray, camera_to_world: np.ndarray) -> np.ndarray:
    """A camera pose moved by a similarity: the centre is mapped, the axes only rotated (a
    camera stays a rigid transform whatever the scale)."""
    scale = float(np.cbrt(np.linalg.det(sim[:3, :3])))
    out = np.eye(4)
    out[:3, :3] = (sim[:3, :3] / scale) @ camera_to_world[:3, :3]
    out[:3, 3] = sim[:3, :3] @ camera_to_world[:3, 3] + sim[:3, 3]
    return out


def pose_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(distance between the camera centres in metres, rotation angle in degrees) of a vs b."""
    delta = invert_rigid(a) @ b
    angle = float(np.degrees(Rotation.from_matrix(delta[:3, :3]).magnitude()))
    return float(np.linalg.norm(a[:3, 3] - b[:3, 3])), angle


def _camera_points(poses: list[np.ndarray], arm: float) -> np.ndarray:
    """Each camera's centre and two points ``arm`` along its x and z axes: three points per
    camera pin down its orientation too, so even two cameras determine a transform."""
    pts = []
    for p in poses:
        c = p[:3, 3]
        pts += [c, c + arm * p[:3, 0], c + arm * p[:3, 2]]
    return np.array(pts)


def align_cameras(
    source: list[np.ndarray], target: list[np.ndarray], with_scale: bool
) -> np.ndarray:
    """The similarity (or rigid transform) that best maps the ``source`` cameras onto the
    ``target`` ones (least squares over centres and axes), as a 4x4 matrix."""
    import pycolmap

    if not source or len(source) != len(target):
        raise ValueError("align_cameras needs matching, non-empty camera lists")
    scale = 1.0
    if with_scale:
        if len(source) >= 2:
            src_c = np.array([p[:3, 3] for p in source])
            tgt_c = np.array([p[:3, 3] for p in target])
            src_spread = np.linalg.norm(src_c - src_c.mean(0), axis=1).sum()
            tgt_spread = np.linalg.norm(tgt_c - tgt_c.mean(0), axis=1).sum()
            scale = tgt_spread / src_spread if src_spread > 1e-12 else 1.0
    # Scale first (by the centres' spread), so that the axis arms mean the same in both sets.
    scaled = [apply_similarity(similarity_matrix(scale, np.eye(3), np.zeros(3)), p) for p in source]
    arm = float(np.mean([np.linalg.norm(t[:3, 3]) for t in target])) or 1.0
    rigid = pycolmap.estimate_rigid3d(_camera_points(scaled, arm), _camera_points(target, arm))
    if rigid is None:
        raise ValueError("camera alignment is degenerate")
    m = np.eye(4)
    m[:3, :4] = np.asarray(rigid.matrix())
    return m @ similarity_matrix(scale, np.eye(3), np.zeros(3))


def robust_scale(ratios: np.ndarray) -> float | None:
    """Median of positive, finite ratios (metric / model), or None with fewer than 10."""
    r = ratios[np.isfinite(ratios) & (ratios > 0)]
    if len(r) < 10:
        return None
    return float(np.median(r))


def degrees(rad: float) -> float:
    return math.degrees(rad)
