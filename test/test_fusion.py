"""The geometric backends against an analytic sphere."""

from __future__ import annotations

from pathlib import Path

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


def _add_table(frame: Frame, table_z: float) -> Frame:
    """Same view with a horizontal table at z = table_z filling the background (no mask)."""
    k, pose = frame.intrinsics, frame.camera_to_world
    v, u = np.mgrid[0 : k.height, 0 : k.width].astype(np.float64)
    rays = np.stack([(u - k.cx) / k.fx, (v - k.cy) / k.fy, np.ones_like(u)], -1) @ pose[:3, :3].T
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (table_z - pose[2, 3]) / rays[..., 2]  # z-depth, since the camera-frame ray has z = 1
    table = np.where((t > 0) & np.isfinite(t), t, 0.0).astype(np.float32)
    depth = np.where(
        frame.depth > 0, np.minimum(frame.depth, np.where(table > 0, table, np.inf)), table
    ).astype(np.float32)
    rgb = frame.rgb.copy()
    rgb[(frame.depth == 0) & (table > 0)] = (90, 90, 90)
    return Frame(rgb=rgb, intrinsics=k, camera_to_world=pose, depth=depth)


def test_support_plane_is_removed_and_only_the_object_is_fused(sphere_views) -> None:
    frames, centre, radius = sphere_views
    table_z = centre[2] - radius  # the sphere rests on the table
    above = [_add_table(f, table_z) for f in frames if f.camera_to_world[2, 3] > centre[2]]
    assert len(above) >= 3
    capture = make_capture_set(above)
    assert np.linalg.norm(capture.target.center[:2] - centre[:2]) < 0.005
    assert capture.target.side < 4 * radius  # not the whole table
    result = make_backend("fusion", BackendOptions(resolution=64, cloud_points=2000)).reconstruct(
        capture
    )
    dist = np.linalg.norm(result.mesh.vertices - centre, axis=1)
    # Nothing of the table survives beyond the sphere's contact patch.
    assert np.percentile(np.abs(dist - radius), 99) < 0.004


def test_backend_spec_options_reach_the_backend() -> None:
    from rvg_ros.core.backends import is_known_backend, parse_backend_spec

    assert parse_backend_spec("rvg@cfg_scale=1@steps=10@use_condition=false") == (
        "rvg",
        {"cfg_scale": 1, "steps": 10, "use_condition": False},
    )
    backend = make_backend("fusion@voxel=2", BackendOptions())
    assert backend.options.extra == {"voxel": 2}
    assert is_known_backend("rvg@steps=3") and not is_known_backend("nope@x=1")
    with pytest.raises(ValueError, match="key=value"):
        make_backend("fusion@oops")


def test_marching_cubes_surfaces_face_outwards() -> None:
    """Visibility, colour and confidence rely on outward normals."""
    import open3d as o3d

    from rvg_ros.core.surface import mesh_from_field
    from rvg_ros.core.types import TargetCube

    axis = (np.arange(24) + 0.5) / 24 - 0.5
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    ball = (x**2 + y**2 + z**2 < 0.3**2).astype(np.float32)
    vertices, triangles = mesh_from_field(ball, TargetCube(np.zeros(3), 1.0), 0.5)
    mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(triangles)
    )
    mesh.compute_vertex_normals()
    assert np.all(np.einsum("ij,ij->i", np.asarray(mesh.vertex_normals), vertices) > 0)


def test_a_flat_patch_of_the_object_is_not_taken_for_the_support() -> None:
    """The soak run's capture (docs/reliability.md): a mug without a floor. Its flat band
    must not be removed as a "support plane" (that cut the target cube to a third), and the
    answer must not depend on Open3D's global random state."""
    import open3d as o3d

    from rvg_ros.core.session import CaptureSession
    from rvg_ros.core.target import estimate_target

    root = Path(__file__).resolve().parents[1]
    frames = CaptureSession(root / "docs/reliability/soak-failure-capture", create=False).frames()
    sides = set()
    for seed in range(3):
        o3d.utility.random.seed(seed)
        cube, plane = estimate_target(frames)
        assert plane is None
        sides.add(round(cube.side, 6))
    assert len(sides) == 1 and sides.pop() > 0.1
