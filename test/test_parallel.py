"""Work sharing on the CPU path (core.parallel, flow.in_two_threads) and the exact speed-ups
that came with it: each must give what the one-by-one code gave."""

from __future__ import annotations

import threading

import numpy as np
import open3d as o3d
import pytest
import torch
import trimesh
from scipy.ndimage import binary_dilation, gaussian_filter

from rvg_ros.core.backends.symmetry import EvidenceJudge, Symmetry, _evaluate_many
from rvg_ros.core.geometry import backproject_depth, lookup_pixels, project
from rvg_ros.core.parallel import map_shared
from rvg_ros.core.surface import triangle_components
from rvg_ros.core.types import TargetCube
from rvg_ros.rvg.flow import in_two_threads


def test_map_shared_keeps_input_order_and_uses_a_second_thread() -> None:
    threads: set[str] = set()
    barrier = threading.Barrier(2, timeout=10)

    def work(i: int) -> int:
        threads.add(threading.current_thread().name)
        if i < 2:
            barrier.wait()  # both first items must run at the same time, or this times out
        return i * i

    assert map_shared(work, range(7)) == [i * i for i in range(7)]
    assert len(threads) == 2


def test_map_shared_propagates_a_worker_error() -> None:
    def fail(i: int) -> int:
        if i == 3:
            raise ValueError("item 3")
        return i

    with pytest.raises(ValueError, match="item 3"):
        map_shared(fail, range(5))


def _velocity() -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))

    def velocity(x: torch.Tensor, t: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        # The null branch differs from the conditional one, as under guidance.
        return net(x) * (1 + t[:, None]) + drop[:, None].float()

    return net, velocity


def test_two_thread_halves_equal_the_batched_call() -> None:
    _, velocity = _velocity()
    x = torch.randn(2, 8)
    t = torch.tensor([0.3, 0.3])
    drop = torch.tensor([False, True])
    with torch.no_grad():
        batched = velocity(x, t, drop)
        halves = in_two_threads(velocity)(x, t, drop)
        again = in_two_threads(velocity)(x, t, drop)
    assert torch.allclose(halves, batched, atol=1e-6)
    assert torch.equal(halves, again)  # deterministic
    assert not torch.equal(halves[0], halves[1])  # the rows were not swapped or repeated


def test_two_thread_halves_run_in_the_callers_grad_and_inference_mode() -> None:
    modes: list[tuple[bool, bool]] = []

    def velocity(x: torch.Tensor, t: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        modes.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return x * 2

    x, t, drop = torch.ones(2, 3), torch.zeros(2), torch.tensor([False, True])
    with torch.inference_mode():
        in_two_threads(velocity)(x, t, drop)
    assert modes == [(False, True)] * 2
    modes.clear()
    with torch.no_grad():
        in_two_threads(velocity)(x, t, drop)
    assert modes == [(False, False)] * 2


def test_triangle_components_match_open3d_edge_connectivity() -> None:
    # Two boxes apart, one small floater, and two triangles that share only a vertex (not an
    # edge: separate components by Open3D's rule).
    parts = [
        trimesh.creation.box(extents=(1, 1, 1)),
        trimesh.creation.icosphere(subdivisions=2).apply_translation([3, 0, 0]),
        trimesh.creation.box(extents=(0.1, 0.1, 0.1)).apply_translation([0, 3, 0]),
    ]
    mesh = trimesh.util.concatenate(parts)
    vertices = np.vstack([mesh.vertices, [[5, 5, 5], [6, 5, 5], [5, 6, 5], [4, 5, 5], [5, 4, 5]]])
    n = len(mesh.vertices)
    bowtie = [[n, n + 1, n + 2], [n, n + 3, n + 4]]
    triangles = np.vstack([mesh.faces, bowtie]).astype(np.int32)
    legacy = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(triangles)
    )
    expected, counts, _ = legacy.cluster_connected_triangles()
    expected, counts = np.asarray(expected), np.asarray(counts)
    labels = triangle_components(triangles)
    assert labels.max() + 1 == len(counts) == 5
    # The same partition (labels may be numbered differently).
    pairs = set(zip(expected.tolist(), labels.tolist(), strict=True))
    assert len(pairs) == len(counts)
    assert np.array_equal(np.sort(np.bincount(labels)), np.sort(counts))


def test_scoring_many_symmetries_at_once_equals_one_by_one() -> None:
    from test_rvg_symmetry import _box_capture  # the test directory is on the path

    _, capture = _box_capture()
    voxel = capture.target.side / 96
    judge = EvidenceJudge(capture.frames, capture.target, 2.0 * voxel)
    rng = np.random.default_rng(0)
    observed = np.concatenate([backproject_depth(f, f.mask) for f in capture.frames])
    points = observed[rng.permutation(len(observed))[:500]]
    candidates = [
        Symmetry("plane", np.array([1.0, 0.0, 0.0]), np.array([0.02, 0.0, 0.035])),
        Symmetry("axis", np.array([0.0, 0.0, 1.0]), np.array([0.02, 0.0, 0.0])),
    ] + [
        Symmetry(kind, d / np.linalg.norm(d), rng.normal(0, 0.02, 3))
        for kind, d in zip(["plane", "axis"] * 4, rng.normal(size=(8, 3)), strict=True)
    ]
    fresh = [Symmetry(c.kind, c.direction, c.point) for c in candidates]
    together = _evaluate_many(judge, points, fresh)
    for c, s in zip(candidates, together, strict=True):
        agree, violate = judge.judge(points, c.transforms())
        assert (s.agree, s.violate) == (agree, violate)
    # The box's true mirror plane agrees with what was seen and contradicts nothing.
    assert together[0].agree > 0.3 and together[0].violate < 0.01
    assert len({(s.agree, s.violate) for s in together}) > 5  # the candidates differ


def test_evidence_judge_classifies_like_a_per_view_projection() -> None:
    """All views in one gather (the judge) against the plain per-view rule: a point agrees
    when a view measured depth within the tolerance at its pixel, and violates when a view saw
    it off the (dilated) silhouette or clearly in front of the measurement."""
    from test_rvg_symmetry import _box_capture

    _, capture = _box_capture()
    tolerance = 2.0 * capture.target.side / 96
    judge = EvidenceJudge(capture.frames, capture.target, tolerance)
    rng = np.random.default_rng(1)
    points = capture.target.center + rng.uniform(-0.5, 0.5, (4000, 3)) * capture.target.side
    observed = np.concatenate([backproject_depth(f, f.mask) for f in capture.frames])
    points = np.vstack([points, observed[:: max(len(observed) // 2000, 1)]])
    agree, violate = judge.classify(points)
    want_agree = np.zeros(len(points), bool)
    want_violate = np.zeros(len(points), bool)
    for view, planes in zip(capture.frames, _planes(judge), strict=True):
        uv, z = project(points, view.intrinsics, view.camera_to_world)
        values, seen = lookup_pixels(planes, uv, z > 0)
        free = (values[:, 0] < 0.5) | ((values[:, 2] > 0) & (z < values[:, 2] - tolerance))
        want_violate |= seen & free
        want_agree |= seen & (values[:, 1] > 0) & (np.abs(z - values[:, 1]) < tolerance)
    outside = np.any(np.abs(points - capture.target.center) > 0.5 * capture.target.side, axis=1)
    want_violate = (want_violate | outside) & ~want_agree
    assert want_agree.sum() > 500 and want_violate.sum() > 500  # both cases exercised
    assert (agree == want_agree).mean() > 0.999
    assert (violate == want_violate).mean() > 0.999


def _planes(judge: EvidenceJudge) -> list[np.ndarray]:
    """Each view's (dilated mask, depth, nearest depth) image, cut back out of the judge's
    table."""
    out = []
    for start, h, w in zip(judge.offset, judge.height, judge.width, strict=True):
        out.append(judge.table[int(start) : int(start + h * w)].reshape(int(h), int(w), 3))
    return out


def test_seen_free_field_changes_no_surface_voxel_the_full_field_would_give() -> None:
    """The seen-free field is computed only near the inside of the surface; maxed with the
    SDF it must agree with the field computed everywhere on every voxel within one of the
    inside (all marching cubes reads), and elsewhere leave the SDF outside."""
    from test_rvg_symmetry import _box_capture

    from rvg_ros.core.backends.hull import carve
    from rvg_ros.rvg.decode import (
        FREE_MARGIN_VOXELS,
        SEEN_FREE_SIGMA,
        lattice,
        lattice_points,
        seen_free_field,
    )

    _, capture = _box_capture()
    cube = TargetCube(center=np.array([0.02, 0.0, 0.035]), side=0.2)
    voxel = cube.side / 48
    origin, size = lattice(cube, voxel)
    points = lattice_points(origin, size, voxel)
    # A generated shape far too big (a ball filling most of the cube) as the SDF.
    centre = cube.center + [0.0, 0.0, 0.01]
    sdf = np.clip((np.linalg.norm(points - centre, axis=1) - 0.07) / (4 * voxel), -1, 1)
    sdf = sdf.reshape((size,) * 3)
    consistent = carve(capture.frames, points, FREE_MARGIN_VOXELS * voxel, lambda f: None)
    smooth = gaussian_filter(consistent.reshape(sdf.shape).astype(np.float32), SEEN_FREE_SIGMA)
    full = np.maximum(sdf, np.clip(1.0 - 2.0 * smooth, -1.0, 1.0))
    fast = np.maximum(sdf, seen_free_field(sdf, capture.frames, points, voxel))
    near = binary_dilation(sdf <= 0, structure=np.ones((3, 3, 3), bool))
    assert np.array_equal(fast[near], full[near])
    assert np.all(fast[~near] > 0) and np.all(full[~near] > 0)
    assert (full > sdf).sum() > 1000  # the views really carved some of the ball


def test_distance_to_observed_queries_only_generated_vertices_with_the_same_result() -> None:
    from scipy.spatial import cKDTree

    from rvg_ros.rvg.confidence import distance_to_observed

    rng = np.random.default_rng(0)
    vertices = rng.normal(size=(5000, 3))
    observed = rng.random(5000) < 0.3
    want = cKDTree(vertices[observed]).query(vertices)[0] / 0.01  # every vertex, one thread
    got = distance_to_observed(vertices, observed, 0.01)
    assert np.array_equal(got, want)
    assert np.all(got[observed] == 0) and np.all(got[~observed] > 0)
    assert np.all(np.isinf(distance_to_observed(vertices, np.zeros(5000, bool), 0.01)))
