"""Refine given camera poses (TF) against each other on the depth: pairwise ICP started from
the given relative poses, a pose graph over the pairs, and the result put back where the given
poses were on average (the graph only knows relative poses). A frame whose correction exceeds
the bound, or whose depth agrees with no other frame near its given pose, is rejected."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from rvg_ros.core.geometry import invert_rigid
from rvg_ros.core.poses.align import align_cameras, apply_similarity, pose_difference
from rvg_ros.core.poses.depth_registration import (
    PairResult,
    _pair,
    optimise_pose_graph,
    prepare_cloud,
    voxel_size_for,
)
from rvg_ros.core.types import Frame


@dataclass
class Refinement:
    poses: dict[int, np.ndarray]  # refined camera-to-world of the frames kept
    corrections: dict[int, tuple[float, float]]  # metres, degrees (every frame with a result)
    rejected: dict[int, str]
    pairs: list[PairResult]


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
    counts = np.bincount(labels[nodes], minlength=labels.max() + 1)
    main = int(np.argmax(counts))
    rejected: dict[int, str] = {}
    connected = [i for i in nodes if labels[i] == main and counts[main] > 1]
    for i in nodes:
        if i not in connected:
            rejected[i] = (
                "its depth agrees with no other frame near the given pose (the pose is off by "
                f"more than {max_correction_m:g} m / {max_correction_deg:g} deg, or the view "
                "overlaps no other)"
            )
    corrections: dict[int, tuple[float, float]] = {}
    poses: dict[int, np.ndarray] = {}
    if len(connected) >= 2:
        # Express the graph relative to the first connected camera, optimise, then put the
        # cameras back where the given poses are on average.
        ref = connected[0]
        rel = {i: invert_rigid(initial[ref]) @ initial[i] for i in connected}
        optimised = optimise_pose_graph(n, pairs, rel, voxel, reference=ref)
        back = align_cameras(
            [optimised[i] for i in connected], [initial[i] for i in connected], with_scale=False
        )
        for i in connected:
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
    elif len(connected) == 1:
        poses[connected[0]] = initial[connected[0]]
    return Refinement(poses=poses, corrections=corrections, rejected=rejected, pairs=pairs)
