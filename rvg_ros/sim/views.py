"""Camera view samplers for simulation and evaluation.

Every sampler returns camera-to-world poses, ``(n, 4, 4)`` float64, in the OpenCV camera
convention (x right, y down, z forward) with the camera looking at ``target``. Azimuth is
measured in the world xy-plane from +x towards +y; elevation is the angle above the xy-plane
(objects rest on z = 0, so positive elevations look down at them, as a robot does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rvg_ros.core.types import Intrinsics

ArrayLike = Sequence[float] | np.ndarray
RngLike = np.random.Generator | int | None


def _rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def look_at(eye: ArrayLike, target: ArrayLike, up: ArrayLike = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world 4x4 (OpenCV convention) for a camera at ``eye`` looking at ``target``.

    Image "up" (-y) is as close to ``up`` as possible. When the view direction is parallel to
    ``up`` (looking straight down), world +y is used instead so the result stays defined.
    """
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    norm = np.linalg.norm(forward)
    if norm < 1e-12:
        raise ValueError("look_at: eye and target coincide")
    z = forward / norm
    up_v = np.asarray(up, dtype=np.float64)
    up_v = up_v / np.linalg.norm(up_v)
    if abs(float(z @ up_v)) > 1.0 - 1e-9:
        up_v = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    # y points "down" in the image: the component of -up orthogonal to the view direction.
    y = -up_v + (up_v @ z) * z
    y /= np.linalg.norm(y)
    x = np.cross(y, z)  # right-handed: x = y cross z
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def spherical_eye(
    radius: float, azimuth_deg: float, elevation_deg: float, target: ArrayLike = (0, 0, 0)
) -> np.ndarray:
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    offset = radius * np.array(
        [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]
    )
    return np.asarray(target, dtype=np.float64) + offset


def _poses(
    radius: float | np.ndarray,
    azimuths: np.ndarray,
    elevations: np.ndarray,
    target: ArrayLike,
) -> np.ndarray:
    radii = np.broadcast_to(np.asarray(radius, dtype=np.float64), azimuths.shape)
    return np.stack(
        [
            look_at(spherical_eye(r, a, e, target), target)
            for r, a, e in zip(radii, azimuths, elevations, strict=True)
        ]
    ).reshape(-1, 4, 4)


def orbit(
    n: int,
    radius: float,
    elevation_deg: float = 30.0,
    target: ArrayLike = (0.0, 0.0, 0.0),
    start_azimuth_deg: float = 0.0,
) -> np.ndarray:
    """``n`` views at even azimuths around ``target`` at one elevation."""
    azimuths = start_azimuth_deg + np.arange(n) * 360.0 / max(n, 1)
    return _poses(radius, azimuths, np.full(n, float(elevation_deg)), target)


def one_sided(
    n: int,
    radius: float,
    rng: RngLike = None,
    target: ArrayLike = (0.0, 0.0, 0.0),
    arc_deg: float = 120.0,
    elevation_range_deg: tuple[float, float] = (15.0, 50.0),
    center_azimuth_deg: float | None = None,
) -> np.ndarray:
    """The wrist-camera case: azimuths within one ``arc_deg`` arc, so the back is never seen.

    Azimuths are stratified over the arc (one per equal sub-arc, jittered) so that views do not
    bunch up; elevations are uniform in ``elevation_range_deg``. The arc centre is random unless
    given.
    """
    g = _rng(rng)
    center = g.uniform(0.0, 360.0) if center_azimuth_deg is None else center_azimuth_deg
    edges = np.linspace(-arc_deg / 2.0, arc_deg / 2.0, n + 1)
    azimuths = center + edges[:-1] + g.uniform(0.0, 1.0, n) * np.diff(edges)
    elevations = g.uniform(*elevation_range_deg, n)
    return _poses(radius, azimuths, elevations, target)


def random_views(
    n: int,
    radius: float,
    rng: RngLike = None,
    target: ArrayLike = (0.0, 0.0, 0.0),
    elevation_range_deg: tuple[float, float] = (5.0, 80.0),
) -> np.ndarray:
    """Views spread uniformly over the spherical zone between the given elevations."""
    g = _rng(rng)
    azimuths = g.uniform(0.0, 360.0, n)
    # Uniform in sin(elevation) is uniform in area on the sphere.
    lo, hi = (math.sin(math.radians(e)) for e in elevation_range_deg)
    elevations = np.degrees(np.arcsin(g.uniform(lo, hi, n)))
    return _poses(radius, azimuths, elevations, target)


SAMPLERS = ("orbit", "one-sided", "random")


def sample_views(
    sampler: str,
    n: int,
    radius: float,
    rng: RngLike = None,
    target: ArrayLike = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Dispatch by name (``orbit`` | ``one-sided`` | ``random``), for CLIs and configs."""
    name = sampler.replace("_", "-")
    if name == "orbit":
        return orbit(n, radius, 30.0, target, start_azimuth_deg=_rng(rng).uniform(0.0, 360.0))
    if name == "one-sided":
        return one_sided(n, radius, rng, target)
    if name == "random":
        return random_views(n, radius, rng, target)
    raise ValueError(f"unknown view sampler {sampler!r}; expected one of {SAMPLERS}")


def perturb_poses(
    poses: np.ndarray, rng: RngLike, rotation_deg: float = 1.0, translation_m: float = 0.005
) -> np.ndarray:
    """Pose noise: each pose rotated about a random axis by N(0, rotation_deg) degrees and
    shifted by N(0, translation_m) per axis (what a slightly miscalibrated arm gives)."""
    from scipy.spatial.transform import Rotation

    g = _rng(rng)
    out = np.array(poses, dtype=np.float64, copy=True).reshape(-1, 4, 4)
    for pose in out:
        axis = g.normal(size=3)
        axis /= np.linalg.norm(axis)
        rot = Rotation.from_rotvec(axis * math.radians(g.normal(0.0, rotation_deg)))
        pose[:3, :3] = rot.as_matrix() @ pose[:3, :3]
        pose[:3, 3] += g.normal(0.0, translation_m, 3)
    return out


def default_intrinsics(width: int = 256, height: int = 256, fov_deg: float = 50.0) -> Intrinsics:
    """A centred pinhole with the given *horizontal* field of view and square pixels."""
    fx = 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)
    # Pixel centres are at integer coordinates (OpenCV/ROS), so the image centre is (W-1)/2.
    return Intrinsics(
        fx=fx, fy=fx, cx=(width - 1) / 2.0, cy=(height - 1) / 2.0, width=width, height=height
    )


def fit_radius(extent: float, intrinsics: Intrinsics, fill: float = 0.6) -> float:
    """Camera distance at which an object of diameter ``extent`` spans ``fill`` of the
    image's smaller side (bounding-sphere argument, so every view angle fits)."""
    half_fov = math.atan(
        0.5 * min(intrinsics.width / intrinsics.fx, intrinsics.height / intrinsics.fy)
    )
    r = 0.5 * extent
    return float(r / math.sin(fill * half_fov))
