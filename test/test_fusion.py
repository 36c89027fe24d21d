"""The geometric backends against an analytic sphere."""

from __future__ import annotations

import numpy as np
import pytest

from rvg_ros.core.backends import BackendOptions, make_backend
from rvg_ros.core.target import make_capture_set
from rvg_ros.core.types import Frame, ReconstructionError


def _radial_error(vertices: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    return np.abs(np.linalg.norm(vertices - centre, axis=1) - radius)


def test_target_cube_contains_sphere(sphere_views) -> None:
    frames, centre, radius = sphere_views
    capture = make_capture_set(frames)
    assert np.linalg.norm(capture.target.center - centre) < 0.004
    assert 2 * radius <= capture.target.side < 2 * radius * 1.5


def test_fusion_reconstructs_sphere_within_tolerance(sphere_views) -> None:
    frames, centre, radius = sphere_views
    capture = make_capture_set(frames)
    stages: list[str] = []
    result = make_backend("fusion", BackendOptions(resolution=64, cloud_points=5000)).reconstruct(
        capture, lambda stage, fraction: stages.append(stage)
    )
    err = _radial_error(result.mesh.vertices, centre, radius)
    voxel = capture.target.side / 64
    assert np.median(err) < voxel, np.median(err)
    assert np.percentile(err, 95) < 2 * voxel
    # Surface area close to a sphere's: the fused mesh is complete from 8 views.
    tri = result.mesh.triangles
    a, b, c = (result.mesh.vertices[tri[:, i]] for i in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum()
    assert area == pytest.approx(4 * np.pi * radius**2, rel=0.08)
    assert result.metric_scale and result.num_views == 8
    assert len(result.cloud.points) == 5000
    # Everything fusion outputs was measured; only grazing rims may miss the depth check.
    assert np.mean(result.mesh.vertex_confidence == 1.0) > 0.95
    assert set(result.stage_seconds) == {"integrate", "extract", "colour", "sample"}
    assert stages[0] == "integrate" and stages[-1] == "done"
    # Colour comes from the views: the sphere is orange.
    assert np.allclose(
        result.mesh.vertex_colors.mean(axis=0), [200 / 255, 80 / 255, 40 / 255], atol=0.05
    )


def test_hull_reconstructs_sphere_from_masks(sphere_views) -> None:
    frames, centre, radius = sphere_views
    rgb_only = [
        Frame(rgb=f.rgb, intrinsics=f.intrinsics, camera_to_world=f.camera_to_world, mask=f.mask)
        for f in frames
    ]
    capture = make_capture_set(rgb_only)
    assert np.linalg.norm(capture.target.center - centre) < 0.01
    result = make_backend("hull", BackendOptions(resolution=64, cloud_points=2000)).reconstruct(
        capture
    )
    dist = np.linalg.norm(result.mesh.vertices - centre, axis=1)
    # A visual hull contains the object and, from 8 views, hugs it within ~10 %.
    assert np.percentile(dist, 5) > radius * 0.95
    assert np.median(dist) < radius * 1.1


def test_fusion_without_depth_or_masks_is_a_clear_error(sphere_views) -> None:
    frames, _, _ = sphere_views
    bare = [
        Frame(rgb=f.rgb, intrinsics=f.intrinsics, camera_to_world=f.camera_to_world) for f in frames
    ]
    with pytest.raises(ReconstructionError, match="neither depth nor masks"):
        make_capture_set(bare)


def test_unknown_backend_names_known_ones() -> None:
    with pytest.raises(ValueError, match="fusion"):
        make_backend("nope")
