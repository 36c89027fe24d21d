"""Refine given camera poses (TF) against each other on the depth: pairwise ICP started from
the given relative poses, a pose graph over the pairs, and the result put back where the given
poses were on average (the graph only knows relative poses). A pair is trusted when its views
overlap and neither view saw through the other's aligned surface (free space). Frames that no
trusted pair joins form separate groups, each refined and placed on its own. A frame whose
correction exceeds the bound, or whose depth agrees with no other frame near its given pose, is
rejected.

A constant camera offset (a hand-eye calibration that is off: every TF pose is the true one
times the same error ``X``) is not averaged away by that. It is estimated instead: the motions
between TF poses ``A`` and the registered ones ``B`` obey ``A Y = Y B`` with ``Y = X^-1``
(hand-eye calibration, Park and Martin 1994), solved linearised about the identity with a
little damping, so motions the views do not excite (turns about a single axis) stay
uncorrected. It is applied only when it explains most of the disagreement between the TF and
the registered motions (random per-frame TF errors fit no constant offset) and stays within
the correction bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.transform import Rotation

from rvg_ros.core.geometry import invert_rigid
from rvg_ros.core.poses.align import align_cameras, apply_similarity, pose_difference
from rvg_ros.core.poses.depth_registration import (
    PairResult,
    _pair,
    optimise_pose_graph,
    prepare_cloud,
    spanning_tree_poses,
    voxel_size_for,
)
from rvg_ros.core.types import Frame


@dataclass
class Refinement:
    poses: dict[int, np.ndarray]  # refined camera-to-world of the frames kept
    corrections: dict[int, tuple[float, float]]  # metres, degrees (every frame with a result)
    rejected: dict[int, str]
    pairs: list[PairResult]
    # The constant camera offset found and removed (camera-frame error of every TF pose), or
    # None when the TF errors are not explained by one.
    hand_eye: np.ndarray | None = None
    # Groups of two or more frames refined together; between groups only the TF relates them.
    groups: int = 0


# Hand-eye estimation: damping (share of the largest eigenvalue of the normal equations), the
# share of the TF-vs-registered motion disagreement it must remove (both in rotation and
# translation), and Gauss-Newton steps.
HAND_EYE_DAMPING = 1e-4
HAND_EYE_MIN_EXPLAINED = 0.6
HAND_EYE_STEPS = 3


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def _damped_solve(m: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    normal = m.T @ m
    damping = HAND_EYE_DAMPING * max(float(np.linalg.eigvalsh(normal).max()), 1e-12)
    return np.linalg.solve(normal + damping * np.eye(normal.shape[0]), m.T @ rhs)


def motion_disagreement(
    tf_motions: list[np.ndarray], measured: list[np.ndarray], y: np.ndarray
) -> tuple[float, float]:
    """RMS (metres, degrees) of ``A Y`` vs ``Y B`` over the motion pairs."""
    errors = np.array(
        [pose_difference(a @ y, y @ b) for a, b in zip(tf_motions, measured, strict=True)]
    )
    return float(np.sqrt(np.mean(errors[:, 0] ** 2))), float(np.sqrt(np.mean(errors[:, 1] ** 2)))


def estimate_hand_eye(tf_motions: list[np.ndarray], measured: list[np.ndarray]) -> np.ndarray:
    """``Y`` (4x4) with ``A_k Y = Y B_k`` for the TF motions ``A`` and the registered ``B``,
    damped towards the identity."""
    y = np.eye(4)
    for _ in range(HAND_EYE_STEPS):
        # Rotation: log(R_A) = R_Y log(R_B); linearised, R_Y = exp(d) R0:
        # a - R0 b = d x (R0 b) = -[R0 b]x d.
        rows, rhs = [], []
        for a, b in zip(tf_motions, measured, strict=True):
            alpha = Rotation.from_matrix(a[:3, :3]).as_rotvec()
            beta = y[:3, :3] @ Rotation.from_matrix(b[:3, :3]).as_rotvec()
            rows.append(-_skew(beta))
            rhs.append(alpha - beta)
        d = _damped_solve(np.concatenate(rows), np.concatenate(rhs))
        y[:3, :3] = Rotation.from_rotvec(d).as_matrix() @ y[:3, :3]
    # Translation: (R_A - I) t_Y = R_Y t_B - t_A.
    m = np.concatenate([a[:3, :3] - np.eye(3) for a in tf_motions])
    pairs = zip(tf_motions, measured, strict=True)
    rhs = np.concatenate([y[:3, :3] @ b[:3, 3] - a[:3, 3] for a, b in pairs])
    y[:3, 3] = _damped_solve(m, rhs)
    return y


def _hand_eye_offset(
    initial: dict[int, np.ndarray],
    optimised: dict[int, np.ndarray],
    nodes: list[int],
    max_correction_m: float,
    max_correction_deg: float,
) -> np.ndarray | None:
    """``Y`` when a constant camera offset explains the TF errors (see module), else None."""
    if len(nodes) < 3:
        return None
    tf_motions, measured = [], []
    for a, i in enumerate(nodes):
        for j in nodes[a + 1 :]:
            tf_motions.append(invert_rigid(initial[i]) @ initial[j])
            measured.append(invert_rigid(optimised[i]) @ optimised[j])
    y = estimate_hand_eye(tf_motions, measured)
    before = motion_disagreement(tf_motions, measured, np.eye(4))
    after = motion_disagreement(tf_motions, measured, y)
    metres, degrees = pose_difference(np.eye(4), y)
    explained = all(
        b > 0 and (b - a) / b >= HAND_EYE_MIN_EXPLAINED for b, a in zip(before, after, strict=True)
    )
    if not explained or metres > max_correction_m or degrees > max_correction_deg:
        return None
    return y


# A pair disagrees with poses when its alignment is further from them than this many
# registration voxels (or degrees): it is then left out of the tree's graph, and it does not
# count as support (``consistent_graph``).
MAX_EDGE_DISAGREEMENT_VOXELS = 3.0
MAX_EDGE_DISAGREEMENT_DEG = 2.0


def consistent_graph(
    n: int,
    pairs: list[PairResult],
    initial: dict[int, np.ndarray],
    voxel: float,
    reference: int,
) -> dict[int, np.ndarray]:
    """Optimised poses of the nodes in ``initial`` (a group joined by trusted pairs): of the
    graph over all its trusted pairs and the graph over those that agree with the
    best-overlapping ones, the one more trusted pairs agree with.

    Pairwise ICP from TF poses a few centimetres off can settle on a wrong alignment that free
    space does not reveal: on 8 views orbiting the pitcher, the pairs 90 degrees apart were
    10-75 mm off, turned about the body (their only disagreement with the other view is the
    spout and the handle; overlap 0.37-0.64), while the neighbouring pairs (45 degrees apart,
    overlap 0.76-0.88) were right to a few millimetres. Optimised together, the graph followed
    the wrong ones (they then disagreed least), and Open3D's line process kept them. So a second
    graph is built from the spanning tree of the pairs with the most overlap, taken as it is,
    plus every other pair that agrees with the poses the tree gives; of the two, the one more
    trusted pairs agree with is kept (as RANSAC keeps the hypothesis with the most inliers). On
    a plain bowl, whose turn nothing shows, the best-overlapping pairs are the slid ones (55 mm
    at 0.98 overlap), and then the graph over all pairs has more support (17 vs 13 of 20).
    """
    active = [p for p in pairs if p.ok and p.source in initial and p.target in initial]
    chained, tree = spanning_tree_poses(active, n, reference, lambda p: p.fitness)
    kept = [
        p for p in active if (p.target, p.source) in tree or _disagreement(p, chained, voxel) <= 1.0
    ]
    from_all = optimise_pose_graph(n, active, initial, voxel, reference=reference)
    if len(kept) == len(active):  # every pair agrees with the tree: the same graph
        return from_all
    from_tree = optimise_pose_graph(n, kept, initial, voxel, reference=reference)

    def support(poses: dict[int, np.ndarray]) -> int:
        return sum(_disagreement(p, poses, voxel) <= 1.0 for p in active)

    return from_tree if support(from_tree) > support(from_all) else from_all


def _disagreement(p: PairResult, poses: dict[int, np.ndarray], voxel: float) -> float:
    """How far a pair's alignment is from the given poses; 1 = at the limit."""
    implied = invert_rigid(poses[p.target]) @ poses[p.source]
    metres, degrees = pose_difference(implied, p.transformation)
    return max(metres / (MAX_EDGE_DISAGREEMENT_VOXELS * voxel), degrees / MAX_EDGE_DISAGREEMENT_DEG)


def refine_given(
    frames: list[Frame],
    initial: dict[int, np.ndarray],
    max_correction_m: float,
    max_correction_deg: float,
    seed: int = 0,
) -> Refinement:
    """Refine the ``initial`` camera-to-world poses (indices into ``frames``, with depth)."""
    del seed  # ICP from given poses is deterministic
    nodes = sorted(initial)
    subset = [frames[i] for i in nodes]
    voxel = voxel_size_for(subset)
    clouds = {i: prepare_cloud(frames[i], voxel) for i in nodes}
    cloud_list = [clouds.get(i) for i in range(len(frames))]
    # ICP reaches as far as the largest correction allowed (a point moves by the translation
    # plus the rotation times its distance), but no further than a few centimetres.
    reach = float(
        np.clip(max_correction_m + np.radians(max_correction_deg) * 0.3, 3 * voxel, 12 * voxel)
    )
    pairs = []
    for a, i in enumerate(nodes):
        for j in nodes[a + 1 :]:
            init = invert_rigid(initial[i]) @ initial[j]
            # Started from the given poses, a flip is out of reach: overlap alone decides.
            pairs.append(
                _pair(
                    i,
                    j,
                    cloud_list,
                    [init],
                    voxel,
                    reach,  # type: ignore[arg-type]
                    check_colour=False,
                    max_change=(2 * max_correction_m, 2 * max_correction_deg),
                )  # fmt: skip
            )
    n = len(frames)
    weight = np.zeros((n, n))
    for p in pairs:
        if p.ok:
            weight[p.source, p.target] = weight[p.target, p.source] = 1.0
    _, labels = connected_components(csr_matrix(weight), directed=False)
    # Groups of frames tied together by trusted pairs, largest first. With views far apart
    # (an orbit) the frames can fall into groups that no trusted pair joins, e.g. the two
    # halves of an orbit around a box; each group is refined on its own and placed by its own
    # TF poses, rather than keeping only the largest one.
    groups = sorted(
        ([i for i in nodes if labels[i] == label] for label in set(labels[nodes].tolist())),
        key=lambda g: (-len(g), g[0]),
    )
    rejected: dict[int, str] = {}
    for group in groups:
        if len(group) == 1:
            rejected[group[0]] = (
                "its depth agrees with no other frame near the given pose (the pose is off by "
                f"more than {max_correction_m:g} m / {max_correction_deg:g} deg, or the view "
                "overlaps no other)"
            )
    corrections: dict[int, tuple[float, float]] = {}
    poses: dict[int, np.ndarray] = {}
    hand_eye: np.ndarray | None = None
    groups = [g for g in groups if len(g) >= 2]
    for k, group in enumerate(groups):
        # Express the graph relative to the group's first camera, optimise, then put the
        # cameras back where the given poses are on average.
        ref = group[0]
        rel = {i: invert_rigid(initial[ref]) @ initial[i] for i in group}
        optimised = consistent_graph(n, pairs, rel, voxel, ref)
        if k == 0:
            # A constant camera offset is one for all frames: found on the largest group.
            hand_eye = _hand_eye_offset(
                initial, optimised, group, max_correction_m, max_correction_deg
            )
        anchors = {i: initial[i] @ (hand_eye if hand_eye is not None else np.eye(4)) for i in group}
        back = align_cameras(
            [optimised[i] for i in group], [anchors[i] for i in group], with_scale=False
        )
        for i in group:
            refined = apply_similarity(back, optimised[i])
            corrections[i] = pose_difference(initial[i], refined)
            if corrections[i][0] > max_correction_m or corrections[i][1] > max_correction_deg:
                rejected[i] = (
                    f"refinement would move it by {corrections[i][0] * 1000:.0f} mm / "
                    f"{corrections[i][1]:.1f} deg, more than the maximum correction "
                    f"({max_correction_m * 1000:.0f} mm / {max_correction_deg:g} deg)"
                )
            else:
                poses[i] = refined
    return Refinement(
        poses=poses,
        corrections=corrections,
        rejected=rejected,
        pairs=pairs,
        hand_eye=invert_rigid(hand_eye) if hand_eye is not None else None,
        groups=len(groups),
    )
