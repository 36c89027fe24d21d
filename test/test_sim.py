"""Procedural objects, mesh loading, view samplers and rendered capture folders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh

from rvg_ros.core.types import check_rigid
from rvg_ros.sim import views
from rvg_ros.sim.capture import DepthNoise, render_frames
from rvg_ros.sim.objects import (
    FAMILY_NAMES,
    demo_object,
    family_for_seed,
    load_mesh_object,
    make_object,
)

# Coarse grids keep the determinism checks fast; the full-resolution object is checked once.
COARSE = 0.004


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family_object(request):
    return make_object(request.param, seed=0)


def test_family_object_is_watertight_sized_and_resting(family_object):
    obj = family_object
    mesh = obj.mesh
    assert mesh.is_watertight, f"{obj.name} is not watertight"
    assert mesh.volume > 0, "faces must wind outwards"
    assert 0.02 <= obj.extent <= 0.30, f"{obj.name}: extent {obj.extent:.3f} m"
    lo, hi = mesh.bounds
    assert abs(lo[2]) < 1e-9, "rests on z = 0"
    np.testing.assert_allclose((lo[:2] + hi[:2]) / 2.0, 0.0, atol=1e-9)
    np.testing.assert_allclose(obj.bounds, mesh.bounds)
    colors = mesh.visual.vertex_colors
    assert colors.shape == (len(mesh.vertices), 4) and len(np.unique(colors[:, :3], axis=0)) > 10


def test_family_sdf_agrees_with_mesh(family_object):
    obj = family_object
    rng = np.random.default_rng(0)
    on_surface = obj.mesh.vertices[rng.choice(len(obj.mesh.vertices), 2000)]
    # Marching-cubes vertices lie on the zero level set up to interpolation error (< 1 voxel).
    assert np.abs(obj.sdf(on_surface)).max() < 0.002
    # Points pushed out along the normals are outside, pushed in are inside.
    idx = rng.choice(len(obj.mesh.vertices), 500)
    v, n = obj.mesh.vertices[idx], obj.mesh.vertex_normals[idx]
    assert (obj.sdf(v + 0.0015 * n) > 0).mean() > 0.97
    assert (obj.sdf(v - 0.0008 * n) < 0).mean() > 0.9
    far = np.array([[1.0, 1.0, 1.0], [-1.0, 0.0, 0.5]])
    assert np.all(obj.sdf(far) > 0.5)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_family_is_deterministic_and_seed_dependent(family):
    a = make_object(family, seed=3, voxel_size=COARSE)
    b = make_object(family, seed=3, voxel_size=COARSE)
    c = make_object(family, seed=4, voxel_size=COARSE)
    np.testing.assert_array_equal(a.mesh.vertices, b.mesh.vertices)
    np.testing.assert_array_equal(a.mesh.faces, b.mesh.faces)
    np.testing.assert_array_equal(a.mesh.visual.vertex_colors, b.mesh.visual.vertex_colors)
    assert a.params == b.params
    assert a.params != c.params
    assert a.mesh.vertices.shape != c.mesh.vertices.shape or not np.allclose(
        a.mesh.vertices, c.mesh.vertices
    )


def test_unnamed_family_comes_from_the_seed():
    for seed in (0, 1, 2):
        obj = make_object(None, seed, voxel_size=COARSE)
        assert obj.family == family_for_seed(seed)
        same = make_object(obj.family, seed, voxel_size=COARSE)
        np.testing.assert_array_equal(obj.mesh.vertices, same.mesh.vertices)
    with pytest.raises(ValueError, match="unknown object family"):
        make_object("spaceship", 0)


def test_overrides_do_not_shift_other_parameters():
    base = make_object("bottle", seed=5, voxel_size=COARSE)
    tall = make_object("bottle", seed=5, voxel_size=COARSE, params={"neck_height": 0.05})
    assert tall.params["neck_height"] == 0.05
    for key in ("radius", "body_height", "shoulder_height", "yaw_deg"):
        assert tall.params[key] == base.params[key]


def test_lying_can_rests_on_its_side():
    can = make_object("can", seed=1, voxel_size=COARSE, lying=True, params={"height": 0.15})
    lo, hi = can.bounds
    assert hi[2] - lo[2] < 0.125  # diameter at most 12 cm, the 15 cm axis is horizontal
    assert np.max(hi[:2] - lo[:2]) > 0.14


def test_demo_object_is_a_mug_of_about_ten_centimetres():
    obj = demo_object()
    assert obj.family == "mug" and obj.mesh.is_watertight
    assert 0.095 <= obj.extent <= 0.125
    # It has a cavity: a point inside the cup (above the floor, inside the wall) is empty.
    assert not obj.occupancy(np.array([[0.0, 0.0, 0.06]]))[0]
    assert obj.occupancy(np.array([[0.0, 0.0, 0.004]]))[0]


def test_load_mesh_object_drops_slivers_recenters_and_textures(tmp_path):
    box = trimesh.creation.box(extents=(0.1, 0.06, 0.04))
    box.apply_translation((0.3, -0.2, 0.5))
    sliver = trimesh.Trimesh(
        vertices=[[1.0, 1.0, 1.0], [1.01, 1.0, 1.0], [1.0, 1.01, 1.0]], faces=[[0, 1, 2]]
    )
    path = tmp_path / "thing.stl"
    trimesh.util.concatenate([box, sliver]).export(path)

    obj = load_mesh_object(path)
    assert obj.name == "thing" and len(obj.mesh.faces) == 12 and obj.mesh.is_watertight
    np.testing.assert_allclose(obj.bounds, [[-0.05, -0.03, 0.0], [0.05, 0.03, 0.04]], atol=1e-6)
    colors = obj.mesh.visual.vertex_colors
    assert colors.shape == (8, 4)
    again = load_mesh_object(path)
    np.testing.assert_array_equal(colors, again.mesh.visual.vertex_colors)
    sd = obj.sdf(np.array([[0.0, 0.0, 0.02], [0.0, 0.0, 0.2]]))
    assert sd[0] < 0 < sd[1]


# ----------------------------------------------------------------------------- views


def test_look_at_is_opencv_convention():
    pose = views.look_at((1.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    check_rigid(pose)
    np.testing.assert_allclose(pose[:3, 2], [-1.0, 0.0, 0.0], atol=1e-12)  # z forward
    np.testing.assert_allclose(pose[:3, 1], [0.0, 0.0, -1.0], atol=1e-12)  # y down
    np.testing.assert_allclose(pose[:3, 0], [0.0, 1.0, 0.0], atol=1e-12)  # x right (+y)
    straight_down = views.look_at((0.0, 0.0, 1.0), (0.0, 0.0, 0.0))
    check_rigid(straight_down)
    np.testing.assert_allclose(straight_down[:3, 2], [0.0, 0.0, -1.0], atol=1e-12)


def _az_el(poses: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    offsets = poses[:, :3, 3] - target
    r = np.linalg.norm(offsets, axis=1)
    az = np.degrees(np.arctan2(offsets[:, 1], offsets[:, 0]))
    el = np.degrees(np.arcsin(offsets[:, 2] / r))
    return r, az, el


def test_samplers_look_at_the_target_from_the_right_places():
    target = np.array([0.1, -0.2, 0.05])
    poses = views.orbit(6, 0.4, 30.0, target)
    r, az, el = _az_el(poses, target)
    np.testing.assert_allclose(r, 0.4)
    np.testing.assert_allclose(el, 30.0)
    np.testing.assert_allclose(np.diff(np.unwrap(np.radians(az))), math.radians(60.0))
    for pose in poses:
        check_rigid(pose)
        to_target = (target - pose[:3, 3]) / np.linalg.norm(target - pose[:3, 3])
        np.testing.assert_allclose(pose[:3, 2], to_target, atol=1e-12)

    one = views.one_sided(8, 0.5, np.random.default_rng(1), target)
    _, az, el = _az_el(one, target)
    spread = np.degrees(np.ptp(np.unwrap(np.radians(az - az[0]))))
    assert spread <= 120.0 and spread > 60.0
    assert el.min() >= 15.0 and el.max() <= 50.0

    rnd = views.random_views(20, 0.5, 7, target)
    np.testing.assert_array_equal(rnd, views.random_views(20, 0.5, 7, target))
    _, _, el = _az_el(rnd, target)
    assert el.min() >= 5.0 and el.max() <= 80.0
    assert views.sample_views("one-sided", 4, 0.5, 3).shape == (4, 4, 4)


def test_default_intrinsics_and_fit_radius():
    intr = views.default_intrinsics(320, 240, fov_deg=60.0)
    assert intr.cx == 159.5 and intr.cy == 119.5  # pixel centres at integer coordinates
    assert abs(2 * math.degrees(math.atan(160.0 / intr.fx)) - 60.0) < 1e-9
    radius = views.fit_radius(0.2, intr, fill=0.5)
    assert radius > 0.2


# ----------------------------------------------------------------------------- capture


def test_render_frames_and_depth_noise():
    obj = make_object("can", seed=2, voxel_size=0.002, lying=False)
    intr = views.default_intrinsics(96, 96)
    poses = views.orbit(2, 0.45, 35.0, (0.0, 0.0, 0.05))
    clean = render_frames(obj.mesh, poses, intr)
    assert len(clean) == 2
    for frame in clean:
        frame.validate()
        assert frame.mask.any() and np.all((frame.depth > 0) == frame.mask)
    noise = DepthNoise(dropout=0.05)
    noisy = render_frames(obj.mesh, poses, intr, depth_noise=noise, seed=1)
    again = render_frames(obj.mesh, poses, intr, depth_noise=noise, seed=1)
    np.testing.assert_array_equal(noisy[0].depth, again[0].depth)
    kept = noisy[0].depth > 0
    assert kept.sum() < clean[0].mask.sum()  # dropout happened
    assert not (kept & ~clean[0].mask).any()  # but never outside the object
    err = np.abs(noisy[0].depth[kept] - clean[0].depth[kept])
    assert 0 < err.mean() < 0.003
    no_masks = render_frames(obj.mesh, poses[:1], intr, depth=False, masks=False)
    assert no_masks[0].depth is None and no_masks[0].mask is None


def test_render_capture_writes_a_readable_folder(tmp_path):
    session_mod = pytest.importorskip("rvg_ros.core.session")
    from rvg_ros.sim.capture import GT_MESH_NAME, render_capture

    obj = make_object("mug", seed=1, voxel_size=0.002)
    intr = views.default_intrinsics(64, 64)
    poses = views.one_sided(3, 0.45, 0, (0.0, 0.0, 0.05))
    out = render_capture(obj.mesh, poses, intr, tmp_path / "cap")
    frames = session_mod.CaptureSession(out).frames()
    assert len(frames) == 3
    np.testing.assert_allclose(frames[1].camera_to_world, poses[1], atol=1e-6)
    assert frames[0].depth is not None and frames[0].mask is not None
    gt = trimesh.load(out / GT_MESH_NAME, force="mesh")
    assert len(gt.faces) == len(obj.mesh.faces)
