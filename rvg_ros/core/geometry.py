"""Camera geometry on plain numpy: projection, back-projection, pose helpers."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from rvg_ros.core.types import Frame, Intrinsics


def invert_rigid(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rigid transform (cheaper and better conditioned than np.linalg.inv)."""
    out = np.eye(4)
    r = matrix[:3, :3]
    out[:3, :3] = r.T
    out[:3, 3] = -r.T @ matrix[:3, 3]
    return out


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def pose_from_quaternion(translation: np.ndarray, quaternion_xyzw: np.ndarray) -> np.ndarray:
    """4x4 from a translation and a ROS-order (x, y, z, w) quaternion."""
    out = np.eye(4)
    out[:3, :3] = Rotation.from_quat(quaternion_xyzw).as_matrix()
    out[:3, 3] = translation
    return out


def quaternion_from_pose(matrix: np.ndarray) -> np.ndarray:
    """ROS-order (x, y, z, w) quaternion of a 4x4 transform's rotation."""
    return Rotation.from_matrix(matrix[:3, :3]).as_quat()


def backproject_depth(frame: Frame, mask: np.ndarray | None = None) -> np.ndarray:
    """World-frame points (N, 3) of the valid depth pixels (optionally within ``mask``)."""
    if frame.depth is None or frame.camera_to_world is None:
        raise ValueError("back-projection needs depth and a pose")
    k = frame.intrinsics
    valid = frame.depth > 0
    if mask is not None:
        valid &= mask
    v, u = np.nonzero(valid)
    z = frame.depth[v, u].astype(np.float64)
    cam = np.stack([(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z], axis=1)
    return transform_points(frame.camera_to_world, cam)


def project(
    points_world: np.ndarray, intrinsics: Intrinsics, camera_to_world: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (N, 2) and camera-frame depth (N,) of world points."""
    cam = transform_points(invert_rigid(camera_to_world), points_world)
    z = cam[:, 2]
    safe = np.where(np.abs(z) < 1e-9, 1e-9, z)
    u = intrinsics.fx * cam[:, 0] / safe + intrinsics.cx
    v = intrinsics.fy * cam[:, 1] / safe + intrinsics.cy
    return np.stack([u, v], axis=1), z


def lookup_pixels(
    image: np.ndarray, uv: np.ndarray, in_front: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-pixel lookup; returns (values, inside_image). Values are 0 outside."""
    h, w = image.shape[:2]
    ui = np.floor(uv[:, 0] + 0.5).astype(np.int64)
    vi = np.floor(uv[:, 1] + 0.5).astype(np.int64)
    inside = in_front & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    values = np.zeros((len(uv),) + image.shape[2:], dtype=image.dtype)
    values[inside] = image[vi[inside], ui[inside]]
    return values, inside


def camera_centre(camera_to_world: np.ndarray) -> np.ndarray:
    return camera_to_world[:3, 3].copy()
