"""The symmetry-aware parts of rvg's reconstruction prior: virtual views, the inside of an
object seen all round, the support plane, and fine free-space carving in decode."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import trimesh
from scipy.ndimage import binary_dilation

from rvg_ros.core.backends.hull import carve
from rvg_ros.core.backends.symmetry import Symmetry, symmetric_views
from rvg_ros.core.geometry import backproject_depth
from rvg_ros.core.target import make_capture_set
from rvg_ros.core.types import CaptureSet, TargetCube
from rvg_ros.rvg.decode import decode_surface
from rvg_ros.rvg.prior import (
    SURFACE,
    UNKNOWN,
    evidence_grid,
    hidden_everywhere,
    seen_through,
    support_plane,
    under_open_space,
    voxel_centres,
)
from rvg_ros.sim.capture import render_frames
from rvg_ros.sim.views import default_intrinsics, fit_radius, one_sided


def _box_capture(size: int = 96) -> tuple[trimesh.Trimesh, CaptureSet]:
    """A box on the floor (z = 0), 4 one-sided views from above, off-centre in x."""
    box = trimesh.creation.box(extents=(0.05, 0.12, 0.07))
    box.apply_translation([0.02, 0.0, 0.035])
    k = default_intrinsics(size, size)
    lo, hi = box.bounds
    poses = one_sided(
        4, fit_radius(float(np.linalg.norm(hi - lo)), k), 3, (lo + hi) / 2, 100.0, (20.0, 40.0)
    )
    return box, make_capture_set(render_frames(box, poses, k, depth=True, masks=True))


# The box's mirror plane x = 0.02 (normal along x, through its centre).
MIRROR = Symmetry("plane", np.array([1.0, 0.0, 0.0]), np.array([0.02, 0.0, 0.035]))


def test_mirrored_views_are_what_a_real_camera_would_see_from_the_mirrored_pose() -> None:
    box, capture = _box_capture()
    virtual = symmetric_views(capture.frames, MIRROR)
    assert len(virtual) == len(capture.frames)
    for view in virtual:
        pose = view.camera_to_world
        # A proper camera (right-handed), so every library can use it.
        assert np.isclose(np.linalg.det(pose[:3, :3]), 1.0)
        real = render_frames(box, [pose], view.intrinsics, depth=True, masks=True)[0]
        both = real.mask & view.mask
        # Same silhouette (up to edge pixels) and the same depth where both see the box.
        assert (real.mask ^ view.mask).sum() <= 0.03 * real.mask.sum()
        assert np.median(np.abs(real.depth[both] - view.depth[both])) < 1e-4


def test_a_rotation_keeps_the_image_and_moves_the_camera() -> None:
    _, capture = _box_capture()
    half_turn = Symmetry("axis", np.array([0.0, 0.0, 1.0]), np.array([0.02, 0.0, 0.0]))
    virtual = symmetric_views(capture.frames, half_turn, max_transforms=1)
    assert len(virtual) == len(capture.frames)
    for real, view in zip(capture.frames, virtual, strict=True):
        assert np.array_equal(real.rgb, view.rgb)
        # The furthest turn (180 deg) was kept: the camera moved to the far side.
        moved = view.camera_to_world[:3, 3] - [0.02, 0.0, 0.0]
        origin = real.camera_to_world[:3, 3] - [0.02, 0.0, 0.0]
        assert np.allclose(moved[:2], -origin[:2]) and np.isclose(moved[2], origin[2])
        # The virtual depth back-projects onto the rotated real points.
        turned = backproject_depth(real) * [-1.0, -1.0, 1.0] + [0.04, 0.0, 0.0]
        assert np.allclose(backproject_depth(view), turned, atol=1e-6)


def test_inside_of_an_object_seen_all_round_is_hidden_everywhere_and_nothing_else() -> None:
    box, capture = _box_capture()
    virtual = symmetric_views(capture.frames, MIRROR)
    cube = TargetCube(center=np.array([0.02, 0.0, 0.035]), side=0.2)
    res = 32
    hidden = hidden_everywhere(capture.frames, virtual, cube, res).reshape(-1)
    centres = voxel_centres(cube, res)
    lo, hi = box.bounds
    inside = np.all((centres > lo) & (centres < hi), axis=1)
    assert hidden.sum() > 0.3 * inside.sum()
    # Nothing outside the box -- except under the floor, which the support plane removes.
    assert not np.any(hidden & ~inside & (centres[:, 2] > 0.0))
    # Without the far side's views nothing is known to be inside.
    assert not hidden_everywhere(capture.frames, [], cube, res).any()


def test_under_open_space_is_what_lies_right_under_space_seen_into_with_no_surface_between() -> (
    None
):
    res = 16
    through = np.zeros((res,) * 3, dtype=bool)
    evidence = np.full((res,) * 3, UNKNOWN, np.uint8)
    through[4, 4, 10] = True  # seen into: an opening
    through[8, 8, 10] = True  # ... above a measured top one voxel lower
    evidence[8, 8, 9] = SURFACE
    under = under_open_space(through, evidence, 2)
    expected = np.zeros_like(under)
    expected[4, 4, 8:10] = True  # the two voxels right under the opening, nothing beside them
    expected[8, 8, 9] = True  # the measured top itself (never inside), but not below it
    assert np.array_equal(under, expected)
    one = under_open_space(through, evidence, 1)
    assert one[4, 4, 9] and one.sum() == 2 and one[8, 8, 9]  # the top's own voxel only
    assert not under_open_space(through, evidence, 0).any()


def test_space_seen_into_a_cup_is_seen_through_and_space_past_a_box_is_not() -> None:
    """Rays into a cup's opening cross its outline before its far inner wall; around a box
    they cross only space outside its outline, or in front of its measured faces."""
    box, capture = _box_capture()
    cube = TargetCube(center=np.array([0.02, 0.0, 0.035]), side=0.2)
    res = 32
    through = seen_through(capture.frames, cube, res).reshape(-1)
    centres = voxel_centres(cube, res)
    lo, hi = box.bounds
    # Straight above the box's top (within its footprint): seen in front of the measured top.
    footprint = np.all((centres[:, :2] > lo[:2]) & (centres[:, :2] < hi[:2]), axis=1)
    assert through[footprint & (centres[:, 2] > hi[2] + 0.015)].any()
    # Never inside the box, and the measured top blocks the column: no box voxel is "under
    # open space" with a 2-voxel reach.
    inside = np.all((centres > lo) & (centres < hi), axis=1)
    assert not through[inside].any()
    evidence = evidence_grid(capture, cube, res, use_depth=True)
    under = under_open_space(through.reshape((res,) * 3), evidence, 2).reshape(-1)
    deep = np.all((centres > lo + 0.01) & (centres < hi - 0.01), axis=1)
    assert not under[deep].any()


def test_support_plane_is_the_lowest_measured_height_when_cameras_look_down() -> None:
    _, capture = _box_capture()
    plane = support_plane(capture)
    assert plane is not None and np.allclose(plane[:3], [0.0, 0.0, 1.0])
    assert -plane[3] < 0.004  # the box stands at z = 0; its side views reach down to it
    assert support_plane(CaptureSet(capture.frames, capture.target, support_plane=None)) is not None
    no_depth = [f.__class__(rgb=f.rgb, intrinsics=f.intrinsics, camera_to_world=f.camera_to_world,
                            mask=f.mask) for f in capture.frames]  # fmt: skip
    assert support_plane(CaptureSet(no_depth, capture.target)) is None
    given = np.array([0.0, 0.0, 1.0, 0.01])
    assert np.array_equal(
        support_plane(CaptureSet(capture.frames, capture.target, 0, given)), given
    )


def test_decode_keeps_generated_volume_inside_the_silhouettes_and_above_the_support() -> None:
    """A generated occupancy that is far too big (the whole cube): the fine free-space carving
    trims it to the views' silhouettes, and the support plane cuts it flat at the floor."""
    box, capture = _box_capture()
    cube = TargetCube(center=np.array([0.02, 0.0, 0.035]), side=0.2)
    everything = np.ones((32, 32, 32), np.float32)
    vertices, _, voxel = decode_surface(
        everything, cube, capture.frames, 64, True, support_plane=np.array([0.0, 0.0, 1.0, 0.0])
    )
    assert vertices[:, 2].min() > -voxel
    # Every vertex lies inside every silhouette (up to the smoothing of its edge): the cube's
    # corners that some view saw past the box are gone.
    lenient = [replace(f, mask=binary_dilation(f.mask, iterations=4)) for f in capture.frames]
    assert carve(lenient, vertices, None, lambda fraction: None).mean() > 0.98
