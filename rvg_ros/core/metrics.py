"""Surface metrics between a predicted and a ground-truth shape.

Both surfaces are sampled (seeded, area-weighted) and compared by nearest-neighbour distances:

- ``chamfer_l2`` = mean_p min_g |p-g|^2 + mean_g min_p |g-p|^2 (the paper's formula: the *sum*
  of the two directional means of squared distances); ``chamfer_l1`` is the same with plain
  distances. The directional means are also reported (``accuracy`` = prediction -> GT,
  ``completeness_distance`` = GT -> prediction), so other conventions (e.g. the half-sum) can be
  derived without recomputing.
- precision / recall / F-score at each radius: the share of predicted points within r of the
  GT, the share of GT points within r of the prediction, and their harmonic mean.
- ``completeness``: the share of the GT surface within ``completeness_radius`` of the
  prediction (= recall at that radius).

The paper's numbers are in a unit cube: ``normalise_to_unit_cube(gt)`` gives the transform
(GT bounding box centred at the origin, longest side 1) applied to *both* shapes before
``unit_cube_metrics``. Metric numbers (5 mm, 10 mm) are for grasping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

Shape = Any  # trimesh.Trimesh, types.Mesh, (vertices, triangles) or an (N, 3) point array


@dataclass
class SurfaceMetrics:
    chamfer_l2: float
    chamfer_l1: float
    accuracy: float  # mean prediction -> GT distance
    completeness_distance: float  # mean GT -> prediction distance
    completeness: float  # share of GT points within completeness_radius of the prediction
    completeness_radius: float
    fscore: dict[float, float] = field(default_factory=dict)
    precision: dict[float, float] = field(default_factory=dict)
    recall: dict[float, float] = field(default_factory=dict)
    num_pred_points: int = 0
    num_gt_points: int = 0
    # Split by GT surface some input view saw vs surface no view saw (when a mask is given).
    completeness_seen: float | None = None
    completeness_unseen: float | None = None
    accuracy_seen: float | None = None
    accuracy_unseen: float | None = None
    # Split of the *prediction* by what an input camera sees of it (when a test is given):
    # the accuracy of the reconstructed surface the cameras could check, which excludes
    # generated surface that merely lies near seen GT (that counts in ``accuracy_seen``).
    accuracy_visible: float | None = None
    accuracy_hidden: float | None = None

    def to_dict(self, suffix: str = "") -> dict[str, float]:
        """Flat ``name -> float`` (radii folded into names, e.g. ``f@0.005``), for CSV rows."""
        out: dict[str, float] = {}
        for key, value in asdict(self).items():
            if isinstance(value, dict):
                short = "f" if key == "fscore" else key
                for radius, v in value.items():
                    out[f"{short}@{radius:g}{suffix}"] = float(v)
            elif value is not None:
                out[f"{key}{suffix}"] = float(value)
        return out


# ----------------------------------------------------------------------------- geometry input


def as_arrays(shape: Shape) -> tuple[np.ndarray, np.ndarray | None]:
    """(vertices (N,3) float64, triangles (M,3) int64 or None for a point cloud)."""
    if isinstance(shape, np.ndarray):
        return np.asarray(shape, dtype=np.float64).reshape(-1, 3), None
    if isinstance(shape, tuple | list) and len(shape) == 2:
        v, t = shape
        return np.asarray(v, dtype=np.float64).reshape(-1, 3), np.asarray(t, np.int64).reshape(
            -1, 3
        )
    vertices = np.asarray(shape.vertices, dtype=np.float64).reshape(-1, 3)
    faces = getattr(shape, "faces", None)  # trimesh ``triangles`` are corner coordinates
    index = faces if faces is not None else getattr(shape, "triangles", None)
    if index is None:
        return vertices, None
    return vertices, np.asarray(index, dtype=np.int64).reshape(-1, 3)


def sample_surface(shape: Shape, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points uniformly on the surface (area-weighted), deterministic given ``seed``.

    A point cloud input is returned as-is when it has at most ``n`` points, else a seeded
    subset of ``n``. Empty input gives an empty (0, 3) array.
    """
    vertices, triangles = as_arrays(shape)
    rng = np.random.default_rng(seed)
    if triangles is None:
        if len(vertices) <= n:
            return vertices
        return vertices[np.sort(rng.choice(len(vertices), n, replace=False))]
    if len(triangles) == 0 or len(vertices) == 0:
        return np.zeros((0, 3))
    corners = vertices[triangles]  # (M, 3, 3)
    areas = 0.5 * np.linalg.norm(
        np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1
    )
    total = areas.sum()
    if not np.isfinite(total) or total <= 0:
        return np.zeros((0, 3))
    face = rng.choice(len(triangles), size=n, p=areas / total)
    r1, r2 = rng.random(n), rng.random(n)
    # Uniform barycentric sampling (Osada et al. 2002).
    s1 = np.sqrt(r1)
    w0, w1, w2 = 1.0 - s1, s1 * (1.0 - r2), s1 * r2
    c = corners[face]
    return w0[:, None] * c[:, 0] + w1[:, None] * c[:, 1] + w2[:, None] * c[:, 2]


def nn_distances(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Distance from each query point to its nearest reference point (inf if none)."""
    if len(query) == 0:
        return np.zeros(0)
    if len(reference) == 0:
        return np.full(len(query), np.inf)
    dist, _ = cKDTree(reference).query(query, k=1, workers=-1)
    return np.asarray(dist, dtype=np.float64)


# ----------------------------------------------------------------------------- metrics


def point_metrics(
    pred_points: np.ndarray,
    gt_points: np.ndarray,
    radii: Sequence[float] = (0.005, 0.01),
    completeness_radius: float = 0.005,
    gt_seen: np.ndarray | None = None,
    pred_visible: np.ndarray | None = None,
) -> SurfaceMetrics:
    """Metrics between two point samples. ``gt_seen`` (bool per GT point) adds the
    seen/unseen split: completeness over each part of the GT, and accuracy of the predicted
    points whose nearest GT point lies in each part. ``pred_visible`` (bool per predicted
    point) adds the accuracy of the predicted points an input camera sees, and of the rest."""
    pred = np.asarray(pred_points, dtype=np.float64).reshape(-1, 3)
    gt = np.asarray(gt_points, dtype=np.float64).reshape(-1, 3)
    if len(gt) == 0:
        raise ValueError("ground truth has no surface points")
    d_gt = nn_distances(gt, pred)  # GT -> prediction
    if len(pred):
        d_pred, nearest_gt = cKDTree(gt).query(pred, k=1, workers=-1)
    else:
        d_pred, nearest_gt = np.zeros(0), np.zeros(0, dtype=np.int64)

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if len(x) else float("inf")

    precision, recall, fscore = {}, {}, {}
    for r in radii:
        p = float((d_pred < r).mean()) if len(pred) else 0.0
        q = float((d_gt < r).mean())
        precision[float(r)], recall[float(r)] = p, q
        fscore[float(r)] = 2.0 * p * q / (p + q) if p + q > 0 else 0.0

    metrics = SurfaceMetrics(
        chamfer_l2=mean(d_pred**2) + mean(d_gt**2),
        chamfer_l1=mean(d_pred) + mean(d_gt),
        accuracy=mean(d_pred),
        completeness_distance=mean(d_gt),
        completeness=float((d_gt < completeness_radius).mean()),
        completeness_radius=float(completeness_radius),
        fscore=fscore,
        precision=precision,
        recall=recall,
        num_pred_points=len(pred),
        num_gt_points=len(gt),
    )
    if gt_seen is not None:
        seen = np.asarray(gt_seen, dtype=bool).reshape(-1)
        if seen.shape != (len(gt),):
            raise ValueError(f"gt_seen has {seen.shape[0]} entries for {len(gt)} GT points")
        close = d_gt < completeness_radius
        metrics.completeness_seen = _share(close[seen])
        metrics.completeness_unseen = _share(close[~seen])
        pred_seen = seen[nearest_gt] if len(pred) else np.zeros(0, dtype=bool)
        metrics.accuracy_seen = _mean_or_none(d_pred[pred_seen])
        metrics.accuracy_unseen = _mean_or_none(d_pred[~pred_seen])
    if pred_visible is not None:
        visible = np.asarray(pred_visible, dtype=bool).reshape(-1)
        if visible.shape != (len(pred),):
            raise ValueError(f"pred_visible has {visible.shape[0]} entries for {len(pred)} points")
        metrics.accuracy_visible = _mean_or_none(d_pred[visible])
        metrics.accuracy_hidden = _mean_or_none(d_pred[~visible])
    return metrics


def _share(x: np.ndarray) -> float | None:
    return float(x.mean()) if len(x) else None


def _mean_or_none(x: np.ndarray) -> float | None:
    return float(x.mean()) if len(x) else None


def mesh_metrics(
    pred: Shape,
    gt: Shape,
    radii: Sequence[float] = (0.005, 0.01),
    completeness_radius: float = 0.005,
    n_points: int = 100_000,
    seed: int = 0,
    gt_seen: Callable[[np.ndarray], np.ndarray] | None = None,
    pred_visible: Callable[[np.ndarray], np.ndarray] | None = None,
) -> SurfaceMetrics:
    """Metrics in the shapes' own units (metres for rvg_ros). ``gt_seen`` maps GT surface
    points to a bool "some input view saw this" mask (e.g. a visibility test against the
    input cameras); ``pred_visible`` does the same for points of the prediction (tested
    against the predicted surface)."""
    gt_pts = sample_surface(gt, n_points, seed)
    # A different stream for the prediction, so identical meshes are not sampled identically
    # (that would make every distance exactly zero and hide sampling effects).
    pred_pts = sample_surface(pred, n_points, seed + 1)
    seen = gt_seen(gt_pts) if gt_seen is not None else None
    visible = pred_visible(pred_pts) if pred_visible is not None and len(pred_pts) else None
    return point_metrics(pred_pts, gt_pts, radii, completeness_radius, seen, visible)


def normalise_to_unit_cube(gt: Shape) -> np.ndarray:
    """4x4 similarity that centres the GT bounding box at the origin and scales its longest
    side to 1. Apply the same matrix to the prediction."""
    vertices, _ = as_arrays(gt)
    if len(vertices) == 0:
        raise ValueError("cannot normalise an empty ground truth")
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    side = float(np.max(hi - lo))
    if side <= 0:
        raise ValueError("ground truth has zero extent")
    transform = np.eye(4)
    transform[:3, :3] *= 1.0 / side
    transform[:3, 3] = -(lo + hi) / 2.0 / side
    return transform


def transform_shape(
    shape: Shape, transform: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
    """Apply a 4x4 transform; returns (vertices, triangles) or a point array."""
    vertices, triangles = as_arrays(shape)
    moved = vertices @ transform[:3, :3].T + transform[:3, 3]
    return moved if triangles is None else (moved, triangles)


def unit_cube_metrics(
    pred: Shape,
    gt: Shape,
    radii: Sequence[float] = (0.05, 0.1),
    n_points: int = 100_000,
    seed: int = 0,
) -> SurfaceMetrics:
    """The paper's setting: both shapes normalised by the GT's unit-cube transform."""
    transform = normalise_to_unit_cube(gt)
    return mesh_metrics(
        transform_shape(pred, transform),
        transform_shape(gt, transform),
        radii=radii,
        completeness_radius=min(radii),
        n_points=n_points,
        seed=seed,
    )


def evaluate(
    pred: Shape,
    gt: Shape,
    n_points: int = 100_000,
    seed: int = 0,
    metric_radii: Sequence[float] = (0.005, 0.01),
    unit_radii: Sequence[float] = (0.05, 0.1),
    gt_seen: Callable[[np.ndarray], np.ndarray] | None = None,
    pred_visible: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, float]:
    """Both metric families in one flat dict: metre-scale keys as ``to_dict`` names them, and
    unit-cube keys with a ``_unit`` suffix (``chamfer_l2_unit``, ``f@0.1_unit``...)."""
    metric = mesh_metrics(
        pred,
        gt,
        metric_radii,
        min(metric_radii),
        n_points,
        seed,
        gt_seen=gt_seen,
        pred_visible=pred_visible,
    )
    unit = unit_cube_metrics(pred, gt, unit_radii, n_points, seed)
    out = metric.to_dict()
    out.update({k: v for k, v in unit.to_dict("_unit").items() if not k.startswith("num_")})
    return out
