"""Surface metrics against analytic cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh

from rvg_ros.core.metrics import (
    evaluate,
    mesh_metrics,
    normalise_to_unit_cube,
    point_metrics,
    sample_surface,
    transform_shape,
    unit_cube_metrics,
)
from rvg_ros.core.types import Mesh

N = 50_000


def _sphere(radius: float, center=(0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    mesh.apply_translation(center)
    return mesh


def test_sampling_is_uniform_seeded_and_on_the_surface():
    sphere = _sphere(0.05)
    a = sample_surface(sphere, 20_000, seed=3)
    np.testing.assert_array_equal(a, sample_surface(sphere, 20_000, seed=3))
    assert not np.array_equal(a, sample_surface(sphere, 20_000, seed=4))
    # On the faces of the inscribed icosphere: within its ~20 um sagitta of the sphere.
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 0.05, atol=3e-5)
    # Uniform on a sphere: the mean is the centre and each hemisphere gets half.
    assert np.abs(a.mean(axis=0)).max() < 0.002
    assert abs((a[:, 2] > 0).mean() - 0.5) < 0.02


def test_concentric_spheres_give_the_known_chamfer_distance():
    r1, r2 = 0.05, 0.06
    m = mesh_metrics(_sphere(r1), _sphere(r2), radii=(0.005, 0.02), n_points=N)
    gap = r2 - r1
    # Every point of one sphere is exactly ``gap`` from the other, both ways.
    assert m.chamfer_l2 == pytest.approx(2 * gap**2, rel=0.03)
    assert m.chamfer_l1 == pytest.approx(2 * gap, rel=0.02)
    assert m.accuracy == pytest.approx(gap, rel=0.02)
    assert m.completeness_distance == pytest.approx(gap, rel=0.02)
    assert m.fscore[0.005] == 0.0 and m.completeness == 0.0
    assert m.fscore[0.02] == 1.0


def test_identical_meshes_score_perfectly():
    sphere = _sphere(0.05)
    m = mesh_metrics(sphere, sphere, radii=(0.002, 0.005, 0.01), n_points=N)
    assert m.fscore == {0.002: 1.0, 0.005: 1.0, 0.01: 1.0}
    assert m.completeness == 1.0
    # Not zero: the two samples differ, so nearest samples are ~half a spacing apart.
    assert 0 < m.accuracy < 0.001


def _shifted_sphere_fscore(radius: float, shift: float, r: float) -> float:
    """F-score between a sphere and its copy shifted by ``shift``, at radius ``r``.

    A point at polar angle theta on a sphere of radius R is
    | sqrt(R^2 - 2 R d cos(theta) + d^2) - R | from the same sphere shifted by d. With
    cos(theta) uniform in [-1, 1], the share within r is an interval length / 2; by symmetry
    precision = recall = F.
    """
    lo = (shift**2 - 2 * radius * r - r**2) / (2 * radius * shift)
    hi = (shift**2 + 2 * radius * r - r**2) / (2 * radius * shift)
    return (min(hi, 1.0) - max(lo, -1.0)) / 2.0


def test_shifted_copy_has_the_expected_fscore():
    radius, shift = 0.05, 0.01
    gt = _sphere(radius)
    pred = _sphere(radius, center=(shift, 0.0, 0.0))
    m = mesh_metrics(pred, gt, radii=(0.003, 0.005, 0.012), n_points=60_000)
    for r in (0.003, 0.005):
        expected = _shifted_sphere_fscore(radius, shift, r)
        assert m.precision[r] == pytest.approx(expected, abs=0.02)
        assert m.recall[r] == pytest.approx(expected, abs=0.02)
        assert m.fscore[r] == pytest.approx(expected, abs=0.02)
    assert _shifted_sphere_fscore(radius, shift, 0.005) == pytest.approx(0.5)
    assert m.fscore[0.012] == 1.0  # the radius exceeds the largest gap (= shift)


def test_unit_cube_normalisation():
    box = trimesh.creation.box(extents=(0.2, 0.1, 0.05))
    box.apply_translation((1.0, 2.0, 0.025))
    t = normalise_to_unit_cube(box)
    moved, _ = transform_shape(box, t)
    np.testing.assert_allclose(moved.min(axis=0), [-0.5, -0.25, -0.125])
    np.testing.assert_allclose(moved.max(axis=0), [0.5, 0.25, 0.125])

    # Unit-cube metrics do not depend on the objects' scale or position.
    gt, pred = _sphere(0.05), _sphere(0.05, center=(0.008, 0.0, 0.0))
    small = unit_cube_metrics(pred, gt, n_points=20_000)
    big_gt, big_pred = gt.copy(), pred.copy()
    for mesh in (big_gt, big_pred):
        mesh.apply_scale(7.0)
        mesh.apply_translation((3.0, -1.0, 2.0))
    big = unit_cube_metrics(big_pred, big_gt, n_points=20_000)
    assert big.chamfer_l2 == pytest.approx(small.chamfer_l2, rel=1e-6)
    assert big.fscore == pytest.approx(small.fscore)
    # In the unit cube the sphere has radius 0.5 and the shift is 0.08 (0.008 / 0.1 m).
    assert small.fscore[0.1] == 1.0
    assert small.fscore[0.05] == pytest.approx(_shifted_sphere_fscore(0.5, 0.08, 0.05), abs=0.03)


def test_inputs_types_mesh_tuples_and_point_clouds():
    sphere = _sphere(0.05)
    colours = np.zeros((len(sphere.vertices), 3), np.float32)
    ours = Mesh(
        sphere.vertices, sphere.faces.astype(np.int32), colours, np.ones(len(colours), np.float32)
    )
    cloud = sample_surface(sphere, 30_000, seed=9)
    a = mesh_metrics(ours, (sphere.vertices, sphere.faces), n_points=20_000)
    b = mesh_metrics(cloud, sphere, n_points=20_000)
    assert a.fscore[0.005] == 1.0 and b.fscore[0.005] == 1.0
    assert b.num_pred_points == 20_000  # a larger cloud is subsampled, seeded


def test_empty_prediction_scores_worst_not_crash():
    m = mesh_metrics(np.zeros((0, 3)), _sphere(0.05), n_points=1000)
    assert math.isinf(m.chamfer_l2) and math.isinf(m.accuracy)
    assert m.fscore[0.005] == 0.0 and m.completeness == 0.0
    with pytest.raises(ValueError):
        mesh_metrics(_sphere(0.05), np.zeros((0, 3)), n_points=1000)


def test_seen_unseen_split():
    gt = sample_surface(_sphere(0.05), 20_000, seed=0)
    seen = gt[:, 2] > 0
    pred = gt[seen] + np.array([0.0, 0.0, 0.001])  # only the seen half, 1 mm off
    m = point_metrics(pred, gt, radii=(0.005,), completeness_radius=0.005, gt_seen=seen)
    assert m.completeness_seen == 1.0
    assert m.completeness_unseen < 0.15  # only a band below the equator is within 5 mm
    assert m.accuracy_seen == pytest.approx(0.001, abs=3e-4)
    share = seen.mean()
    expected = share * m.completeness_seen + (1 - share) * m.completeness_unseen
    assert m.completeness == pytest.approx(expected)


def test_visible_split_of_the_prediction():
    # A seen cap reproduced exactly, plus a generated blob 4 mm off the seen surface: the
    # GT-side split counts the blob as seen-surface error, the prediction-side one does not.
    gt = sample_surface(_sphere(0.05), 20_000, seed=0)
    seen = gt[:, 2] > 0
    cap = gt[seen][:5000]
    blob = gt[seen][5000:6000] * (1.0 + 0.004 / 0.05)
    pred = np.concatenate([cap, blob])
    visible = np.arange(len(pred)) < len(cap)
    m = point_metrics(pred, gt, radii=(0.005,), gt_seen=seen, pred_visible=visible)
    assert m.accuracy_visible == pytest.approx(0.0, abs=1e-9)
    assert m.accuracy_hidden == pytest.approx(0.004, abs=2e-4)
    assert m.accuracy_seen == pytest.approx(0.004 / 6, abs=2e-4)
    with pytest.raises(ValueError):
        point_metrics(pred, gt, pred_visible=visible[:-1])


def test_evaluate_returns_both_metric_families():
    gt, pred = _sphere(0.05), _sphere(0.05, center=(0.008, 0.0, 0.0))
    out = evaluate(pred, gt, n_points=20_000)
    for key in ("chamfer_l2", "chamfer_l1", "accuracy", "completeness"):
        assert key in out and key + "_unit" in out
    for key in ("f@0.005", "f@0.01", "f@0.05_unit", "f@0.1_unit", "precision@0.005"):
        assert key in out
    assert out["f@0.01"] == 1.0
    assert out["f@0.005"] == pytest.approx(_shifted_sphere_fscore(0.05, 0.008, 0.005), abs=0.03)
    assert all(isinstance(v, float) for v in out.values())
