"""The ray-casting renderer: geometry of depth, silhouettes, shading and determinism."""

from __future__ import annotations

import math

import numpy as np
import open3d as o3d
import pytest
import trimesh

from rvg_ros.core.render import MeshRenderer, backproject_depth, mesh_arrays, render_view
from rvg_ros.core.types import Intrinsics, Mesh
from rvg_ros.sim.objects import demo_object
from rvg_ros.sim.views import default_intrinsics, look_at, orbit


@pytest.fixture(scope="module")
def demo():
    return demo_object()


@pytest.fixture(scope="module")
def demo_renderer(demo):
    return MeshRenderer(demo.mesh)


def _surface_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(mesh.vertices.astype(np.float32)),
        o3d.core.Tensor(mesh.faces.astype(np.uint32)),
    )
    return scene.compute_distance(o3d.core.Tensor(points.astype(np.float32))).numpy()


def test_depth_backprojects_onto_the_surface(demo, demo_renderer):
    intr = default_intrinsics(160, 120, fov_deg=55.0)
    for pose in orbit(3, 0.35, 35.0, target=(0.0, 0.0, 0.05)):
        view = demo_renderer.render(intr, pose)
        assert view.mask.sum() > 1500, "the object should fill a good part of the image"
        points = backproject_depth(view.depth, intr, pose)
        assert len(points) == view.mask.sum()
        dist = _surface_distance(demo.mesh, points)
        # float32 ray casting at ~0.35 m: sub-0.1 mm.
        assert dist.max() < 1e-4, dist.max()


def test_pixel_convention_matches_core_geometry(demo_renderer):
    # Rendered surface points must project back onto their own pixel centres with the
    # project's camera model (integer pixel centres), or fusion would be half a pixel off.
    from rvg_ros.core.geometry import project

    intr = default_intrinsics(80, 60)
    pose = orbit(1, 0.35, 30.0, target=(0.0, 0.0, 0.05))[0]
    view = demo_renderer.render(intr, pose)
    points = backproject_depth(view.depth, intr, pose)
    uv, z = project(points, intr, pose)
    vs, us = np.nonzero(view.mask)
    np.testing.assert_allclose(uv, np.stack([us, vs], axis=1), atol=1e-3)
    np.testing.assert_allclose(z, view.depth[view.mask], rtol=1e-5)


def test_depth_is_z_depth_not_ray_length():
    # A big square 0.5 m in front of the camera: z-depth is 0.5 everywhere, while the ray
    # length grows towards the corners.
    square = trimesh.Trimesh(
        vertices=[[-1, -1, 0.5], [1, -1, 0.5], [1, 1, 0.5], [-1, 1, 0.5]],
        faces=[[0, 1, 2], [0, 2, 3]],
    )
    intr = default_intrinsics(64, 48, fov_deg=90.0)
    view = render_view(square, intr, np.eye(4))
    assert view.mask.all()
    np.testing.assert_allclose(view.depth, 0.5, atol=1e-6)
    assert view.depth.dtype == np.float32


def test_sphere_silhouette_matches_analytic_projection():
    radius, distance = 0.05, 0.3
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    intr = Intrinsics(fx=400.0, fy=400.0, cx=127.5, cy=127.5, width=256, height=256)
    pose = look_at((0.0, -distance, 0.0), (0.0, 0.0, 0.0))
    view = render_view(sphere, intr, pose)
    # On the optical axis the silhouette is a circle of radius f * R / sqrt(D^2 - R^2).
    r_img = intr.fx * radius / math.sqrt(distance**2 - radius**2)
    expected = math.pi * r_img**2
    assert abs(view.mask.sum() - expected) / expected < 0.02
    # Centred: the silhouette's centroid is the principal point (pixel centres at integers).
    vs, us = np.nonzero(view.mask)
    assert abs(us.mean() - intr.cx) < 0.1 and abs(vs.mean() - intr.cy) < 0.1
    # Depth at the centre is D - R.
    assert abs(view.depth[127:129, 127:129].mean() - (distance - radius)) < 2e-4


def test_outputs_shapes_types_and_background(demo_renderer):
    intr = default_intrinsics(96, 64)
    pose = orbit(1, 0.4, 30.0, target=(0.0, 0.0, 0.05))[0]
    view = demo_renderer.render(intr, pose, background=(10, 20, 30))
    assert view.rgb.shape == (64, 96, 3) and view.rgb.dtype == np.uint8
    assert view.depth.shape == (64, 96) and view.mask.dtype == bool
    assert view.normals.shape == (64, 96, 3) and view.triangle_ids.dtype == np.int64
    assert np.all(view.rgb[~view.mask] == (10, 20, 30))
    assert np.all(view.depth[~view.mask] == 0) and np.all(view.depth[view.mask] > 0)
    assert np.all(view.triangle_ids[~view.mask] == -1)
    np.testing.assert_allclose(np.linalg.norm(view.normals[view.mask], axis=1), 1.0, atol=1e-4)


def test_rendering_is_deterministic(demo, demo_renderer):
    intr = default_intrinsics(96, 96)
    pose = orbit(1, 0.4, 30.0, target=(0.0, 0.0, 0.05), start_azimuth_deg=45.0)[0]
    a = demo_renderer.render(intr, pose)
    b = MeshRenderer(demo.mesh).render(intr, pose)
    for field in ("rgb", "depth", "mask", "normals", "triangle_ids"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_shading_uses_vertex_colours_and_a_headlight():
    # A plane whose left half is red and right half is blue, seen head-on and obliquely.
    verts = np.array([[-1, -1, 0], [0, -1, 0], [1, -1, 0], [-1, 1, 0], [0, 1, 0], [1, 1, 0]], float)
    faces = np.array([[0, 1, 4], [0, 4, 3], [1, 2, 5], [1, 5, 4]])
    colors = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 0], [0, 0, 1]], float)
    mesh = Mesh(verts, faces.astype(np.int32), colors.astype(np.float32), np.ones(6, np.float32))
    intr = default_intrinsics(64, 64, fov_deg=40.0)
    head_on = MeshRenderer(mesh).render(intr, look_at((0, 0, 2.0), (0, 0, 0), up=(0, 1, 0)))
    left, right = head_on.rgb[32, 5], head_on.rgb[32, 60]
    assert left[0] > 200 and left[2] < 30  # red half, fully lit facing the light
    # Right of x = 0 the colour blends linearly from red to blue; shading is
    # ambient + (1 - ambient) * cos(angle to the headlight).
    x = (60 - intr.cx) / intr.fx * 2.0
    y = (32 - intr.cy) / intr.fy * 2.0
    shade = 0.35 + 0.65 * 2.0 / math.sqrt(x * x + y * y + 4.0)
    expected = shade * 255.0 * np.array([1.0 - x, 0.0, x])
    np.testing.assert_allclose(right, expected, atol=2.0)
    oblique = MeshRenderer(mesh).render(intr, look_at((0, -3.0, 1.0), (0, 0, 0)))
    lit = oblique.rgb[oblique.mask][:, 0].max()
    assert lit < left[0] - 30, "a surface seen at a slant must be darker under a headlight"


def test_mesh_arrays_accepts_trimesh_types_mesh_and_open3d(demo):
    v, t, c = mesh_arrays(demo.mesh)
    assert v.shape[1] == 3 and t.shape[1] == 3 and c.shape == v.shape
    assert c.dtype == np.float32 and 0.0 <= c.min() and c.max() <= 1.0
    o3d_mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(t.astype(np.int32))
    )
    v2, t2, c2 = mesh_arrays(o3d_mesh)
    np.testing.assert_array_equal(t2, t)
    assert np.allclose(c2, 0.7)  # no colours: neutral grey
    with pytest.raises(ValueError):
        MeshRenderer(trimesh.Trimesh())
