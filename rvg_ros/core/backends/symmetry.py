"""Search for a symmetry of a partially observed object: a mirror plane or a rotation axis.

A candidate symmetry ``T`` is judged by where it sends the observed surface points ``P``, using
the views' depth and masks:

- *agree*: ``T(p)`` lands on a measured surface (some view's depth within a tolerance);
- *violate*: ``T(p)`` lands where some view saw free space (outside its mask, or clearly in
  front of its measured depth) or outside the target cube;
- otherwise it lands where nobody looked (*unknown*) -- which is what completion is for.

The search runs coarse candidates (plane normals on a hemisphere x offsets; axis directions with
the axis placed by a circle fit), refines a few of them locally by pattern search on
``agree - VIOLATION_WEIGHT * violate`` (the best-agreeing ones and the most informative plausible
ones), and then keeps the *most informative consistent* one: among candidates whose decidable
points nearly all agree, the one sending the most points into unknown space. (The most
*agreeing* symmetry is usually a left-right mirror of what the cameras saw, which is consistent
but completes nothing.) Unseen space cannot refute a symmetry, so a consistent wrong one is
possible -- a mug's handle mirrored to the back, say; requiring MIN_AGREE keeps such guesses
anchored to evidence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import binary_dilation, minimum_filter
from scipy.spatial.transform import Rotation

from rvg_ros.core.backends.completion import fibonacci_sphere
from rvg_ros.core.geometry import invert_rigid
from rvg_ros.core.parallel import map_shared
from rvg_ros.core.types import Frame, TargetCube

VIOLATION_WEIGHT = 4.0
# A symmetry is accepted when at least this share of the reflected points that land somewhere
# observed agree with the observation, and at least MIN_AGREE of all of them agree.
MIN_CONSISTENCY = 0.95
MIN_AGREE = 0.3
# Candidates sending at least this share of the best one's points into unknown space count as
# equally informative; agreement decides among them.
INFORMATIVE_SHARE = 0.75
# Coarse candidates this consistent are worth refining for their informativeness.
COARSE_CONSISTENCY = 0.9
# Rotations tried for an axis of revolution (besides the identity).
AXIS_STEPS = 8
SCORE_POINTS = 800
# Local refinement: step halvings, and moves allowed per step size.
REFINE_LEVELS = 4
MOVES_PER_LEVEL = 3
# Mask dilation (pixels) and depth neighbourhood (pixels) that absorb silhouette and
# depth-edge discretisation when judging a reflected point.
MASK_SLACK_PX = 3
DEPTH_WINDOW_PX = 5


@dataclass
class Symmetry:
    """``kind`` "plane": ``direction`` is the plane normal, ``point`` a point on it.
    ``kind`` "axis": a continuous rotational symmetry about the line (``point``, ``direction``)."""

    kind: str
    direction: np.ndarray
    point: np.ndarray
    agree: float = 0.0
    violate: float = 0.0
    unknown: float = 0.0

    def transforms(self) -> list[np.ndarray]:
        """4x4 transforms mapping the object onto itself (the identity excluded)."""
        n = self.direction / np.linalg.norm(self.direction)
        if self.kind == "plane":
            t = np.eye(4)
            t[:3, :3] -= 2.0 * np.outer(n, n)
            t[:3, 3] = 2.0 * (self.point @ n) * n
            return [t]
        out = []
        for k in range(1, AXIS_STEPS):
            r = Rotation.from_rotvec(n * 2.0 * np.pi * k / AXIS_STEPS).as_matrix()
            t = np.eye(4)
            t[:3, :3] = r
            t[:3, 3] = self.point - r @ self.point
            out.append(t)
        return out

    @property
    def consistency(self) -> float:
        decided = self.agree + self.violate
        return self.agree / decided if decided > 0 else 0.0

    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "direction": np.round(self.direction, 4).tolist(),
            "point": np.round(self.point, 5).tolist(),
            "agree": round(self.agree, 4),
            "violate": round(self.violate, 4),
            "unknown": round(self.unknown, 4),
        }


class EvidenceJudge:
    """Classifies points against the views' observations (see the module docstring)."""

    def __init__(self, frames: list[Frame], target: TargetCube, tolerance: float) -> None:
        self.target = target
        self.tolerance = tolerance
        # All views at once: the thousands of candidate evaluations of a search are otherwise
        # dominated by per-view numpy call overhead. Per view, world -> camera and one image of
        # what a point is judged against (dilated mask, measured depth, nearest depth in the
        # window), flattened into one table that a single gather reads.
        rotations, translations, tables, offsets, sizes, lenses = [], [], [], [], [], []
        start = 0
        for frame in frames:
            if frame.depth is None or frame.mask is None:
                raise ValueError("symmetry search needs depth and a mask in every view")
            depth = frame.depth.astype(np.float32)
            nearest = minimum_filter(np.where(depth > 0, depth, np.inf), size=DEPTH_WINDOW_PX)
            planes = np.stack(
                [
                    binary_dilation(frame.mask, iterations=MASK_SLACK_PX).astype(np.float32),
                    depth,
                    np.where(np.isfinite(nearest), nearest, 0.0).astype(np.float32),
                ],
                axis=-1,
            )
            world_to_camera = invert_rigid(frame.camera_to_world)[:3]
            rotations.append(world_to_camera[:, :3].T)
            translations.append(world_to_camera[:, 3])
            tables.append(planes.reshape(-1, 3))
            offsets.append(start)
            start += planes.shape[0] * planes.shape[1]
            sizes.append(planes.shape[:2])
            k = frame.intrinsics
            lenses.append((k.fx, k.fy, k.cx, k.cy))
        self.rotation = np.concatenate(rotations, axis=1)  # (3, 3V)
        self.translation = np.concatenate(translations)  # (3V,)
        self.table = np.concatenate(tables)  # (sum of H*W, 3)
        self.offset = np.asarray(offsets, dtype=np.int64)
        self.height, self.width = np.asarray(sizes, dtype=np.int64).T
        self.fx, self.fy, self.cx, self.cy = np.asarray(lenses, dtype=np.float64).T

    def classify(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(agree, violate) booleans per point."""
        violate = np.any(np.abs(points - self.target.center) > 0.5 * self.target.side, axis=1)
        cam = (points @ self.rotation + self.translation).reshape(len(points), -1, 3)  # (N, V, 3)
        z = cam[..., 2]
        safe = np.where(z > 1e-9, z, 1e-9)
        # Nearest pixel, as core.geometry.lookup_pixels rounds.
        ui = np.floor(self.fx * cam[..., 0] / safe + self.cx + 0.5).astype(np.int64)
        vi = np.floor(self.fy * cam[..., 1] / safe + self.cy + 0.5).astype(np.int64)
        seen = (z > 0) & (ui >= 0) & (ui < self.width) & (vi >= 0) & (vi < self.height)
        values = self.table[np.where(seen, self.offset + vi * self.width + ui, 0)]
        on_object, measured, closest = values[..., 0] > 0.5, values[..., 1], values[..., 2]
        # Free: off the (dilated) silhouette, or in front of every nearby measurement.
        free = ~on_object | ((closest > 0) & (z < closest - self.tolerance))
        violate |= np.any(seen & free, axis=1)
        agree = np.any(seen & (measured > 0) & (np.abs(z - measured) < self.tolerance), axis=1)
        return agree, violate & ~agree

    def judge(self, points: np.ndarray, transforms: list[np.ndarray]) -> tuple[float, float]:
        """Mean (agree, violate) shares of the transformed points over all transforms."""
        agree, violate = self.classify(moved(points, transforms))
        return float(agree.mean()), float(violate.mean())


def moved(points: np.ndarray, transforms: list[np.ndarray]) -> np.ndarray:
    """``points`` under each transform in turn, concatenated."""
    return np.concatenate([points @ t[:3, :3].T + t[:3, 3] for t in transforms])


def _hemisphere(n: int) -> np.ndarray:
    d = fibonacci_sphere(2 * n)
    return d[d[:, 2] >= 0.0]


def _circle_centre(points: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Least-squares (Kasa) circle centre of the points projected along ``axis``, in 3D."""
    u = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    x, y = points @ u, points @ v
    a = np.stack([2.0 * x, 2.0 * y, np.ones_like(x)], axis=1)
    (cx, cy, _), *_ = np.linalg.lstsq(a, x**2 + y**2, rcond=None)
    base = points.mean(axis=0)
    return base - (base @ u) * u - (base @ v) * v + cx * u + cy * v


def _score(s: Symmetry) -> float:
    return s.agree - VIOLATION_WEIGHT * s.violate


def _evaluate(judge: EvidenceJudge, points: np.ndarray, s: Symmetry) -> Symmetry:
    return _evaluate_many(judge, points, [s])[0]


def _evaluate_many(
    judge: EvidenceJudge, points: np.ndarray, candidates: list[Symmetry]
) -> list[Symmetry]:
    """Scores every candidate (as ``judge.judge`` would, one by one) in one classification of
    all their moved points: a search evaluates about a thousand candidates, and one numpy pass
    per candidate spent most of its time in call overhead."""
    transforms = [candidate.transforms() for candidate in candidates]
    sizes = np.array([len(ts) * len(points) for ts in transforms])
    agree, violate = judge.classify(np.concatenate([moved(points, ts) for ts in transforms]))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    agree_counts = np.add.reduceat(agree, starts, dtype=np.int64)
    violate_counts = np.add.reduceat(violate, starts, dtype=np.int64)
    for candidate, a, v, n in zip(candidates, agree_counts, violate_counts, sizes, strict=True):
        candidate.agree, candidate.violate = float(a / n), float(v / n)
        candidate.unknown = max(0.0, 1.0 - candidate.agree - candidate.violate)
    return candidates


def _perturbed(s: Symmetry, angle: float, shift: float) -> list[Symmetry]:
    """Neighbours of ``s``: the direction tilted by ``angle`` about two axes, the point moved
    by ``shift`` (along the normal for a plane, across the axis for an axis)."""
    n = s.direction / np.linalg.norm(s.direction)
    u = np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    out = []
    for axis in (u, v):
        for sign in (-1.0, 1.0):
            r = Rotation.from_rotvec(axis * sign * angle).as_matrix()
            out.append(Symmetry(s.kind, r @ n, s.point.copy()))
    moves = [n] if s.kind == "plane" else [u, v]
    for m in moves:
        for sign in (-1.0, 1.0):
            out.append(Symmetry(s.kind, n.copy(), s.point + sign * shift * m))
    return out


def _refine(
    judge: EvidenceJudge, points: np.ndarray, s: Symmetry, angle: float, shift: float
) -> Symmetry:
    """Pattern search: move to the best neighbour while it improves (a few moves per step
    size, so a candidate stays near where it started), then halve the steps."""
    best = s
    for _ in range(REFINE_LEVELS):
        for _ in range(MOVES_PER_LEVEL):
            neighbours = _evaluate_many(judge, points, _perturbed(best, angle, shift))
            top = max(neighbours, key=_score)
            if _score(top) <= _score(best) + 1e-9:
                break
            best = top
        angle, shift = angle / 2.0, shift / 2.0
    return best


def _distinct(
    candidates: list[Symmetry],
    count: int,
    min_angle: float,
    key: Callable[[Symmetry], float] = _score,
) -> list[Symmetry]:
    """The best ``count`` candidates by ``key`` whose directions differ by ``min_angle``."""
    chosen: list[Symmetry] = []
    for c in sorted(candidates, key=key, reverse=True):
        if all(abs(c.direction @ k.direction) < np.cos(min_angle) for k in chosen):
            chosen.append(c)
        if len(chosen) == count:
            break
    return chosen


def find_symmetry(
    points: np.ndarray,
    frames: list[Frame],
    target: TargetCube,
    voxel: float,
    seed: int = 0,
) -> tuple[Symmetry | None, list[Symmetry]]:
    """The most informative consistent symmetry of the observed ``points`` (or None), and the
    refined candidates it was chosen from (for reports)."""
    rng = np.random.default_rng(seed)
    points = points[np.lexsort(points.T[::-1])]  # the caller's order must not matter
    # A random order, so that any prefix is a spatially uniform subsample.
    points = points[rng.permutation(len(points))[:SCORE_POINTS]]
    coarse = EvidenceJudge(frames, target, 4.0 * voxel)
    fine = EvidenceJudge(frames, target, 2.0 * voxel)
    subset = points[: max(len(points) // 3, 1)]  # the coarse pass needs fewer points

    candidates: list[Symmetry] = []
    for n in _hemisphere(60):
        s = points @ n
        lo, hi = float(s.min()), float(s.max())
        for d in np.linspace(lo, hi, 12)[1:-1]:
            candidates.append(Symmetry("plane", n, d * n))
        candidates.append(Symmetry("axis", n, _circle_centre(points, n)))
    # Candidates and refinements are independent: on two cores when there are two.
    half = len(candidates) // 2
    map_shared(
        lambda chunk: _evaluate_many(coarse, subset, chunk), [candidates[:half], candidates[half:]]
    )

    # Refine the best-agreeing candidates and the most informative plausible ones: on a shape
    # with many symmetries (a ball) the best-agreeing ones merely map the seen side onto itself.
    seeds: list[Symmetry] = []
    for kind in ("plane", "axis"):
        pool = [c for c in candidates if c.kind == kind]
        plausible = [
            c for c in pool if c.consistency >= COARSE_CONSISTENCY and c.agree >= 0.5 * MIN_AGREE
        ]
        seeds += _distinct(pool, 3 if kind == "plane" else 2, np.radians(20.0))
        seeds += _distinct(plausible, 2, np.radians(20.0), key=lambda c: c.unknown)

    def refine(c: Symmetry) -> Symmetry:
        start = _evaluate(fine, points, Symmetry(c.kind, c.direction, c.point))
        return _refine(fine, points, start, 0.1, 2.0 * voxel)

    refined = map_shared(refine, seeds)
    accepted = [s for s in refined if s.consistency >= MIN_CONSISTENCY and s.agree >= MIN_AGREE]
    if not accepted:
        return None, refined
    # Most informative first; but among nearly as informative candidates the best-agreeing one:
    # pushing a mirror plane outwards sends more points into unknown space and is refuted by
    # nothing, so informativeness alone drifts; agreement pins the plane where the data is.
    most = max(s.unknown for s in accepted)
    informative = [s for s in accepted if s.unknown >= INFORMATIVE_SHARE * most]
    return max(informative, key=lambda s: s.agree), refined


def symmetric_views(
    frames: list[Frame], symmetry: Symmetry, max_transforms: int | None = None
) -> list[Frame]:
    """Virtual views: what each real camera would have seen of the object moved by each
    transform of ``symmetry`` -- equivalently, the real image taken from the moved camera.

    A proper rotation ``T`` moves the camera to ``T @ pose`` and keeps the image. A reflection
    would make that camera left-handed, so its x axis is flipped back (``T @ pose @ diag(-1, 1,
    1, 1)``), which mirrors the image left-right and puts the principal point at
    ``width - 1 - cx``. ``max_transforms`` keeps that many transforms, the ones turning the
    object furthest first (an axis of revolution has many; the half turn shows the most).
    Frames with lens distortion are skipped: mirroring would change the distortion model.
    """
    transforms = symmetry.transforms()
    if max_transforms is not None and len(transforms) > max_transforms:
        # Rotation angle from the trace; reflections (one transform) never get here.
        cosine = [(np.trace(t[:3, :3]) - 1.0) / 2.0 for t in transforms]
        order = np.argsort(cosine, kind="stable")  # smallest cosine = largest angle
        transforms = [transforms[i] for i in order[:max_transforms]]
    flip_x = np.diag([-1.0, 1.0, 1.0, 1.0])
    out: list[Frame] = []
    for t in transforms:
        mirror = np.linalg.det(t[:3, :3]) < 0.0
        for frame in frames:
            if frame.camera_to_world is None or any(frame.intrinsics.distortion):
                continue
            pose = t @ frame.camera_to_world
            if not mirror:
                out.append(replace(frame, camera_to_world=pose, note="symmetric view"))
                continue
            k = frame.intrinsics
            out.append(
                replace(
                    frame,
                    rgb=_flip_columns(frame.rgb),
                    depth=None if frame.depth is None else _flip_columns(frame.depth),
                    mask=None if frame.mask is None else _flip_columns(frame.mask),
                    intrinsics=replace(k, cx=k.width - 1.0 - k.cx),
                    camera_to_world=pose @ flip_x,
                    note="symmetric view (mirrored)",
                )
            )
    return out


def _flip_columns(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])
