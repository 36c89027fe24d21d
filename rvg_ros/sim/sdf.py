"""Signed-distance primitives and operators (numpy, vectorised over (N, 3) points, metres).

Negative inside. Most primitives are exact distances (after Inigo Quilez's formulas); the
ellipsoid, superquadric and tapered shapes are bounds with the correct sign, which is all
marching cubes and occupancy need. Each function returns a closure ``points -> distances`` so
objects are plain compositions of closures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

SDF = Callable[[np.ndarray], np.ndarray]


def _len2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.sqrt(x * x + y * y)


# ----------------------------------------------------------------------------- primitives


def sphere(radius: float, center: Sequence[float] = (0.0, 0.0, 0.0)) -> SDF:
    c = np.asarray(center, dtype=np.float64)
    return lambda p: np.linalg.norm(p - c, axis=1) - radius


def rounded_box(half_extents: Sequence[float], rounding: float = 0.0) -> SDF:
    """Box centred at the origin; ``rounding`` rounds edges without changing the extents."""
    b = np.asarray(half_extents, dtype=np.float64) - rounding

    def f(p: np.ndarray) -> np.ndarray:
        q = np.abs(p) - b
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
        inside = np.minimum(q.max(axis=1), 0.0)
        return outside + inside - rounding

    return f


def cylinder(radius: float, z0: float, z1: float, rounding: float = 0.0) -> SDF:
    """Capped cylinder on the z axis from ``z0`` to ``z1``, edges rounded by ``rounding``."""
    zc, h = 0.5 * (z0 + z1), 0.5 * (z1 - z0)

    def f(p: np.ndarray) -> np.ndarray:
        dx = _len2(p[:, 0], p[:, 1]) - (radius - rounding)
        dz = np.abs(p[:, 2] - zc) - (h - rounding)
        outside = _len2(np.maximum(dx, 0.0), np.maximum(dz, 0.0))
        return np.minimum(np.maximum(dx, dz), 0.0) + outside - rounding

    return f


def cone(r0: float, r1: float, z0: float, z1: float) -> SDF:
    """Capped cone (frustum) on the z axis: radius ``r0`` at ``z0``, ``r1`` at ``z1``. Exact."""
    zc, h = 0.5 * (z0 + z1), 0.5 * (z1 - z0)
    k1 = np.array([r1, h])
    k2 = np.array([r1 - r0, 2.0 * h])
    k2_len2 = float(k2 @ k2)

    def f(p: np.ndarray) -> np.ndarray:
        qx = _len2(p[:, 0], p[:, 1])
        qy = p[:, 2] - zc
        ca_x = qx - np.minimum(qx, np.where(qy < 0.0, r0, r1))
        ca_y = np.abs(qy) - h
        t = np.clip(((k1[0] - qx) * k2[0] + (k1[1] - qy) * k2[1]) / k2_len2, 0.0, 1.0)
        cb_x = qx - k1[0] + k2[0] * t
        cb_y = qy - k1[1] + k2[1] * t
        sign = np.where((cb_x < 0.0) & (ca_y < 0.0), -1.0, 1.0)
        return sign * np.sqrt(np.minimum(ca_x**2 + ca_y**2, cb_x**2 + cb_y**2))

    return f


def torus(major: float, minor: float) -> SDF:
    """Torus in the xy-plane around the z axis."""
    return lambda p: _len2(_len2(p[:, 0], p[:, 1]) - major, p[:, 2]) - minor


def ellipsoid(semi_axes: Sequence[float]) -> SDF:
    """Ellipsoid centred at the origin (a distance bound, correct sign)."""
    r = np.asarray(semi_axes, dtype=np.float64)

    def f(p: np.ndarray) -> np.ndarray:
        k0 = np.linalg.norm(p / r, axis=1)
        k1 = np.linalg.norm(p / (r * r), axis=1)
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)

    return f


def capsule(a: Sequence[float], b: Sequence[float], radius: float) -> SDF:
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ab = b_ - a_
    ab2 = float(ab @ ab)

    def f(p: np.ndarray) -> np.ndarray:
        pa = p - a_
        t = np.clip(pa @ ab / ab2, 0.0, 1.0)
        return np.linalg.norm(pa - t[:, None] * ab, axis=1) - radius

    return f


def superquadric(semi_axes: Sequence[float], e1: float, e2: float) -> SDF:
    """Superellipsoid (e1: north-south roundness, e2: east-west). Sign-exact, scaled so the
    value is a rough distance near the surface."""
    r = np.asarray(semi_axes, dtype=np.float64)
    scale = float(r.min())

    def f(p: np.ndarray) -> np.ndarray:
        q = np.abs(p / r) + 1e-12
        xy = (q[:, 0] ** (2.0 / e2) + q[:, 1] ** (2.0 / e2)) ** (e2 / e1)
        inside_outside = xy + q[:, 2] ** (2.0 / e1)
        return (inside_outside ** (e1 / 2.0) - 1.0) * scale

    return f


def bent_capsule(bend_radius: float, arc_deg: float, radius: float, taper: float = 0.4) -> SDF:
    """A capsule bent along a circular arc in the xy-plane (a banana). The arc is centred on
    the origin with its middle at +x (point ``(bend_radius, 0, 0)``); the tube radius shrinks
    towards the ends by ``taper`` (0 = none)."""
    half = np.radians(arc_deg) / 2.0

    def f(p: np.ndarray) -> np.ndarray:
        theta = np.clip(np.arctan2(p[:, 1], p[:, 0]), -half, half)
        cx, cy = bend_radius * np.cos(theta), bend_radius * np.sin(theta)
        dist = np.sqrt((p[:, 0] - cx) ** 2 + (p[:, 1] - cy) ** 2 + p[:, 2] ** 2)
        along = np.abs(theta) / half  # 0 in the middle, 1 at the tips
        return dist - radius * (1.0 - taper * along**2)

    return f


# ----------------------------------------------------------------------------- operators


def union(*parts: SDF) -> SDF:
    return lambda p: np.min(np.stack([s(p) for s in parts]), axis=0)


def smooth_union(a: SDF, b: SDF, k: float) -> SDF:
    """Polynomial smooth minimum: blends the two surfaces over a fillet of size ``k``."""

    def f(p: np.ndarray) -> np.ndarray:
        da, db = a(p), b(p)
        h = np.clip(0.5 + 0.5 * (db - da) / k, 0.0, 1.0)
        return db * (1.0 - h) + da * h - k * h * (1.0 - h)

    return f


def subtract(a: SDF, b: SDF) -> SDF:
    """``a`` minus ``b``."""
    return lambda p: np.maximum(a(p), -b(p))


def intersect(a: SDF, b: SDF) -> SDF:
    return lambda p: np.maximum(a(p), b(p))


def shell(a: SDF, thickness: float) -> SDF:
    """A hollow skin of the given thickness centred on ``a``'s surface."""
    return lambda p: np.abs(a(p)) - 0.5 * thickness


def translate(a: SDF, offset: Sequence[float]) -> SDF:
    o = np.asarray(offset, dtype=np.float64)
    return lambda p: a(p - o)


def transform(a: SDF, rotation: np.ndarray, offset: Sequence[float] = (0.0, 0.0, 0.0)) -> SDF:
    """``a`` rotated by ``rotation`` (3x3) and then moved by ``offset``. Rigid, so exact."""
    r = np.asarray(rotation, dtype=np.float64)
    o = np.asarray(offset, dtype=np.float64)
    # p_local = R^T (p - o); with row vectors that is (p - o) @ R.
    return lambda p: a((p - o) @ r)


def scale_z(a: SDF, factor: float) -> SDF:
    """Squash/stretch along z. Non-uniform scaling breaks exactness; multiplying by the
    smallest factor keeps the result a lower bound on distance."""
    s = np.array([1.0, 1.0, factor])
    return lambda p: a(p / s) * min(1.0, factor)


def displace(a: SDF, amplitude: float, frequencies: np.ndarray, phases: np.ndarray) -> SDF:
    """Add a smooth bump field (a sum of plane waves) to make shapes lumpy like fruit.

    ``frequencies`` is (K, 3) in radians per metre, ``phases`` (K,). The field is bounded by
    ``amplitude``.
    """
    freqs = np.asarray(frequencies, dtype=np.float64)
    ph = np.asarray(phases, dtype=np.float64)

    def f(p: np.ndarray) -> np.ndarray:
        waves = np.sin(p @ freqs.T + ph).mean(axis=1)
        return a(p) + amplitude * waves

    return f
