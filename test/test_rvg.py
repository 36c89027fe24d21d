"""The learned backend's parts: prior, modules, flow matching, sampler, weights files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from rvg_ros.core.backends.hull import carve
from rvg_ros.core.target import make_capture_set
from rvg_ros.core.types import Intrinsics
from rvg_ros.rvg.decode import (
    carve_seen_free,
    decode_surface,
    explain_silhouettes,
    hidden_gaps,
    measure,
    measured_holes,
    measured_over,
)
from rvg_ros.rvg.flow import flow_matching_loss, sample_flow
from rvg_ros.rvg.model import ModelConfig, RVGModel, WeightsError
from rvg_ros.rvg.prior import (
    FREE,
    SURFACE,
    UNKNOWN,
    completion_cube,
    evidence_grid,
    view_inputs,
    voxel_centres,
)
from rvg_ros.rvg.train import rotate_views_z, rotate_z, velocity_fn
from rvg_ros.sim.capture import render_frames
from rvg_ros.sim.views import look_at

TINY = ModelConfig(
    resolution=16,
    view_size=32,
    cond_dim=32,
    encoder_depth=2,
    condition_depth=2,
    condition_tokens=8,
    flow_dim=32,
    flow_depth=2,
    heads=2,
)


def _inputs(config: ModelConfig, batch: int = 2, views: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    r = config.resolution
    evidence = torch.randint(0, 3, (batch, r, r, r), generator=g)
    view_tensor = torch.randn(
        batch, views, config.view_channels, config.view_size, config.view_size, generator=g
    )
    mask = torch.ones(batch, views, dtype=torch.bool)
    mask[0, -1] = False  # padded view
    return evidence, view_tensor, mask


# ------------------------------------------------------------------------------------ prior
def test_evidence_grid_marks_sphere_surface_free_space_and_unknown_interior(sphere_views) -> None:
    frames, centre, radius = sphere_views
    capture = make_capture_set(frames[:4])
    cube = completion_cube(capture)
    assert np.all(np.abs(cube.to_unit(centre[None])) < 0.2)
    assert cube.side > 2 * radius
    grid = evidence_grid(capture, cube, 32, use_depth=True)
    dist = np.linalg.norm(voxel_centres(cube, 32) - centre, axis=1).reshape(grid.shape)
    voxel = cube.side / 32
    assert np.all(np.abs(dist[grid == SURFACE] - radius) < voxel)
    assert np.all(dist[grid == FREE] > radius - voxel)
    # The sphere's core is never seen: unknown, not free.
    assert np.all(grid[dist < radius - 2 * voxel] == UNKNOWN)
    assert (grid == FREE).mean() > 0.5


def test_view_inputs_shapes_and_unit_ray_directions(sphere_views) -> None:
    frames, _, _ = sphere_views
    capture = make_capture_set(frames[:3])
    cube = completion_cube(capture)
    views = view_inputs(capture, cube, use_depth=True, size=32)
    assert views.shape == (3, 12, 32, 32) and views.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(views[:, 6:9], axis=1), 1.0, atol=1e-5)
    # The centre ray of each view points at the object, which sits near the cube centre.
    centre_dirs = views[:, 6:9, 16, 16]
    origins = np.stack([cube.to_unit(f.camera_to_world[:3, 3][None])[0] for f in capture.frames])
    to_centre = -origins / np.linalg.norm(origins, axis=1, keepdims=True)
    assert np.all(np.einsum("ij,ij->i", centre_dirs, to_centre) > 0.99)
    assert (
        views[:, 5].any() and not view_inputs(capture, cube, use_depth=False, size=32)[:, 5].any()
    )


def test_rotate_z_moves_voxels_and_rays_consistently() -> None:
    grid = np.zeros((4, 4, 4))
    grid[3, 1, 2] = 1  # x index 3 (x > 0), y index 1 (y < 0)
    rotated = rotate_z(grid, 1)  # (x, y) -> (-y, x)
    assert rotated[2, 3, 2] == 1 and rotated.sum() == 1
    views = np.zeros((1, 12, 1, 1), np.float32)
    views[0, 6:9, 0, 0] = [1.0, 0.0, 0.0]
    assert np.allclose(rotate_views_z(views, 1)[0, 6:9, 0, 0], [0.0, 1.0, 0.0])
    assert np.allclose(rotate_z(rotate_z(grid, 3), 1), grid)


# ---------------------------------------------------------------------------------- modules
def test_modules_shapes_and_determinism() -> None:
    torch.manual_seed(0)
    model = RVGModel(TINY).eval()
    evidence, views, mask = _inputs(TINY)
    onehot = model.onehot(evidence)
    assert onehot.shape == (2, 3, 16, 16, 16)
    tokens = model.encoder(views, mask)
    assert tokens.shape == (2, 3, (32 // 8) ** 2, 32)
    condition = model.global_condition(onehot, views, mask)
    assert condition.shape == (2, 8, 32)
    x = torch.randn(2, 1, 16, 16, 16)
    t = torch.tensor([0.3, 0.9])
    v1 = model.velocity(x, t, onehot, condition)
    v2 = model.velocity(x, t, onehot, model.global_condition(onehot, views, mask))
    assert v1.shape == x.shape
    torch.testing.assert_close(v1, v2)


def test_padded_views_do_not_change_the_condition() -> None:
    torch.manual_seed(0)
    model = RVGModel(TINY).eval()
    evidence, views, mask = _inputs(TINY, batch=1)
    mask[:] = True
    onehot = model.onehot(evidence)
    base = model.global_condition(onehot, views, mask)
    padded_views = torch.cat([views, torch.randn_like(views[:, :1])], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 1, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(
        model.global_condition(onehot, padded_views, padded_mask), base, atol=1e-5, rtol=1e-4
    )


def test_flow_matching_loss_decreases_on_a_tiny_overfit_set() -> None:
    torch.manual_seed(0)
    model = RVGModel(TINY)
    evidence, views, mask = _inputs(TINY)
    occupancy = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.7
    x0 = occupancy.float() * 2 - 1
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    drop = torch.zeros(2, dtype=torch.bool)
    losses = []
    for _ in range(30):
        onehot = model.onehot(evidence)
        condition = model.global_condition(onehot, views, mask)
        g = torch.Generator().manual_seed(0)  # one fixed (t, noise) draw: pure regression
        loss = flow_matching_loss(
            velocity_fn(model, onehot, condition), x0, drop, torch.ones_like(x0), g
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses


# ---------------------------------------------------------------------------------- sampler
def _toy_velocity(x: torch.Tensor, t: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """Conditional branch pulls towards +1, unconditional towards -1 (v = eps - x0)."""
    target = torch.where(drop[:, None, None, None, None], -1.0, 1.0)
    return (x - target) / t.clamp(min=1e-3)[:, None, None, None, None]


def test_sampler_is_deterministic_by_seed() -> None:
    def velocity(x: torch.Tensor, t: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        return 0.3 * x + torch.where(drop[:, None, None, None, None], -1.0, 1.0)

    def run(seed: int) -> torch.Tensor:
        return sample_flow(velocity, (1, 1, 4, 4, 4), 8, 3.0, torch.Generator().manual_seed(seed))

    torch.testing.assert_close(run(1), run(1))
    assert not torch.allclose(run(1), run(2))


def test_cfg_scale_one_equals_the_conditional_prediction() -> None:
    shape = (2, 1, 4, 4, 4)
    guided = sample_flow(_toy_velocity, shape, 10, 1.0, torch.Generator().manual_seed(0))
    # Plain Euler with the conditional velocity only.
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    times = torch.linspace(1.0, 0.0, 11)
    keep = torch.zeros(2, dtype=torch.bool)
    for i in range(10):
        x = x + (times[i + 1] - times[i]) * _toy_velocity(
            x, torch.full((2,), float(times[i])), keep
        )
    torch.testing.assert_close(guided, x)
    assert torch.allclose(guided, torch.ones_like(guided), atol=1e-4)
    # Scale 0 is the unconditional branch; > 1 extrapolates past the conditional target.
    unconditional = sample_flow(_toy_velocity, shape, 10, 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(unconditional, -torch.ones_like(unconditional), atol=1e-4)


def test_sampling_can_start_from_a_noised_prior() -> None:
    shape = (1, 1, 4, 4, 4)
    prior = torch.full(shape, -1.0)

    def still(x: torch.Tensor, t: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    # Without motion the sample is exactly the SDEdit start: (1 - t) prior + t noise.
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    start = sample_flow(
        still, shape, 5, 1.0, torch.Generator().manual_seed(3), x_start=prior, t_start=0.25
    )
    torch.testing.assert_close(start, 0.75 * prior + 0.25 * noise)
    # t_start = 1 is the paper's sampler, whatever the prior.
    plain = sample_flow(_toy_velocity, shape, 6, 1.0, torch.Generator().manual_seed(3))
    ignored = sample_flow(
        _toy_velocity, shape, 6, 1.0, torch.Generator().manual_seed(3), x_start=prior
    )
    torch.testing.assert_close(plain, ignored)
    # The exact velocity still reaches its target from a prior that disagrees with it.
    moved = sample_flow(
        _toy_velocity, shape, 6, 1.0, torch.Generator().manual_seed(3), x_start=prior, t_start=0.5
    )
    assert torch.allclose(moved, torch.ones_like(moved), atol=1e-4)
    with pytest.raises(ValueError, match="t_start"):
        sample_flow(still, shape, 5, 1.0, torch.Generator(), x_start=prior, t_start=0.0)


def test_model_sampling_is_deterministic_end_to_end() -> None:
    torch.manual_seed(0)
    model = RVGModel(TINY).eval()
    evidence, views, mask = _inputs(TINY, batch=1, views=2)
    mask[:] = True
    onehot = model.onehot(evidence)
    condition = model.global_condition(onehot, views, mask)

    def run() -> torch.Tensor:
        return sample_flow(
            velocity_fn(model, onehot, condition),
            (1, 1, 16, 16, 16),
            4,
            7.5,
            torch.Generator().manual_seed(3),
        )

    torch.testing.assert_close(run(), run())


# ---------------------------------------------------------------------------------- weights
def test_weights_round_trip_and_clear_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = RVGModel(TINY)
    path = tmp_path / "w.safetensors"
    model.save(path)
    loaded = RVGModel.load(path)
    assert loaded.config == TINY
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="corrupt or unreadable"):
        RVGModel.load(corrupt)
    with pytest.raises(WeightsError, match="not found"):
        RVGModel.load(tmp_path / "missing.safetensors")

    other = RVGModel(replace(TINY, flow_dim=48))
    tensors_path = tmp_path / "other.safetensors"
    other.save(tensors_path)
    # A file whose config says one thing and whose tensors say another.
    from safetensors.torch import load_file, save_file

    save_file(
        load_file(str(tensors_path)),
        str(tensors_path),
        metadata={"config": __import__("json").dumps(TINY.__dict__)},
    )
    with pytest.raises(WeightsError, match="does not match"):
        RVGModel.load(tensors_path)


def test_measured_surface_gets_a_thin_wall_then_the_generator_decides() -> None:
    # One row of voxels along a camera ray: free in front of the surface (tsdf > 0), the TSDF
    # band behind it (tsdf < 0, 4 voxels), then nothing measured. The generator says "empty"
    # everywhere (a thin wall), or "full" (a solid).
    tsdf = np.array([1.0, 0.75, 0.5, 0.25, 0.0, -0.25, -0.5, -0.75, -1.0, 1.0, 1.0])
    weight = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=np.float32)
    empty, full = np.full(11, 0.8), np.full(11, -0.8)
    wall = measured_over(tsdf, weight, empty, min_wall=0.5)  # 2 of the 4 band voxels
    assert list(wall[:4]) == list(tsdf[:4])  # in front: the measurement, whatever is generated
    # The back of the wall is 2 voxels behind the surface, then the generated "empty".
    assert np.all(wall[4:6] <= 0) and np.all(wall[6:] > 0)
    assert list(wall[4:6]) == list(tsdf[4:6])  # measured values: the crossing stays put
    solid = measured_over(tsdf, weight, full, min_wall=0.5)
    assert np.all(solid[4:] <= 0)
    band = measured_over(tsdf, weight, empty, min_wall=1.0)  # the whole band (the old rule)
    assert band[4] == 0 and np.all(band[5:8] < 0) and np.all(band[8:] > 0)


def test_seen_free_space_carves_but_leaves_the_measured_front_alone() -> None:
    # The row of the test above, after measured_over: free in front of the surface (tsdf > 0),
    # the band behind it, then the generated solid. Another view saw the whole row empty
    # except the surface's own voxel (smoothed: 0.6 next to it).
    tsdf = np.array([1.0, 0.75, 0.5, 0.25, 0.0, -0.25, -0.5, -0.75, -1.0, 1.0, 1.0])
    weight = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=np.float32)
    sdf = measured_over(tsdf, weight, np.full(11, -0.8), min_wall=1.0)
    seen_free = np.array([1.0, 1.0, 1.0, 0.6, -1.0, 0.6, 1.0, 1.0, 1.0, 1.0, 1.0])
    carved = carve_seen_free(sdf, tsdf, weight, seen_free)
    # In front: the measured values, so the crossing between voxels 3 and 4 stays put (with
    # the plain maximum voxel 3 would read 0.6 and the crossing would move 0.6 voxel inwards).
    assert list(carved[:5]) == list(tsdf[:5])
    # Behind the surface and where nothing was measured, what the other view saw wins.
    assert list(carved[5:]) == list(seen_free[5:])
    assert np.all(carve_seen_free(sdf, tsdf, weight, np.full(11, -1.0)) == sdf)


def test_a_thin_wall_seen_from_both_sides_is_carved_to_its_faces() -> None:
    # A 1.5 mm plate, each face seen by two cameras; the generator says "a slab 24 mm thick".
    # Behind each face the TSDF band (4 voxels, 3.5 mm here) reaches through the plate and out
    # past the other face, where that face's cameras saw free space: how far in front of their
    # measured depth that free space starts (free_margin_voxels) sets how far the band bulges.
    plate = trimesh.creation.box(extents=(0.0015, 0.06, 0.06))
    plate.apply_translation([0.0, 0.0, 0.03])
    centre = np.array([0.0, 0.0, 0.03])
    k = Intrinsics(200.0, 200.0, 95.5, 95.5, 192, 192)
    eyes = [
        centre + 0.25 * np.array([np.cos(a), np.sin(a), 0.5])
        for a in np.radians([-30.0, 20.0, 160.0, 210.0])
    ]
    frames = render_frames(plate, [look_at(eye, centre) for eye in eyes], k)
    cube = completion_cube(make_capture_set(frames))
    slab = np.abs(voxel_centres(cube, 16)[:, 0]) < 0.012
    coarse = slab.reshape((16,) * 3).astype(np.float32)

    def face_error(margin: float) -> float:
        """Mean distance (voxels) of the surface from the plate's faces, away from its rim."""
        vertices, _, voxel = decode_surface(
            coarse, cube, frames, 96, use_depth=True, free_margin_voxels=margin
        )
        middle = (np.abs(vertices[:, 1]) < 0.02) & (np.abs(vertices[:, 2] - 0.03) < 0.02)
        return float(np.mean(np.abs(np.abs(vertices[middle, 0]) - 0.00075)) / voxel)

    # Measured: 0.49 voxel with a 1-voxel margin, 1.33 with the whole band (the old margin).
    assert face_error(1.0) < 0.7
    assert face_error(4.0) > 1.0


def test_a_tsdf_fused_before_the_fine_stage_decodes_as_decode_would_fuse_it() -> None:
    """``measure`` fuses the real views on decode's lattice once (the fine stage reads it);
    decode given it makes the same surface as fusing them itself, and refuses one fused on
    another lattice."""
    box = trimesh.creation.box(extents=(0.04, 0.05, 0.03))
    box.apply_translation([0.0, 0.0, 0.015])
    centre = np.array([0.0, 0.0, 0.015])
    k = Intrinsics(200.0, 200.0, 79.5, 79.5, 160, 160)
    eyes = [centre + 0.3 * np.array([np.cos(a), np.sin(a), 0.6]) for a in np.radians([0, 70])]
    frames = render_frames(box, [look_at(eye, centre) for eye in eyes], k)
    cube = completion_cube(make_capture_set(frames))
    coarse = (np.linalg.norm(voxel_centres(cube, 16), axis=1) < 0.03).reshape((16,) * 3)
    coarse = coarse.astype(np.float32)
    measured = measure(frames, cube, 64, "cpu")
    assert measured.tsdf.shape == measured.weight.shape and (measured.weight > 0).mean() > 0.01
    assert measured.truncation == 4 * measured.voxel and measured.voxel == cube.side / 64
    own = decode_surface(coarse, cube, frames, 64, use_depth=True)
    given = decode_surface(coarse, cube, frames, 64, use_depth=True, measured=measured)
    assert np.array_equal(own[0], given[0]) and np.array_equal(own[1], given[1])
    with pytest.raises(ValueError, match="not on this lattice"):
        decode_surface(coarse, cube, frames, 48, use_depth=True, measured=measured)


def test_a_hole_in_a_measured_wall_is_closed_but_not_a_lone_measurement() -> None:
    # Two cameras measure a 0.3 mm plate (x = 0) densely (0.5 mm pixels). The field on a 1 mm
    # lattice has it as a sheet of solid voxels with a 10 mm hole punched in it: what carving a
    # wall thinner than a voxel from both sides leaves.
    plate = trimesh.creation.box(extents=(0.0003, 0.06, 0.06))
    centre = np.array([0.0, 0.0, 0.0])
    k = Intrinsics(500.0, 500.0, 191.5, 191.5, 384, 384)
    eyes = [centre + [0.25, 0.03, 0.02], centre + [0.25, -0.03, -0.02]]
    frames = render_frames(plate, [look_at(eye, centre) for eye in eyes], k)
    voxel, size = 0.001, 80
    origin = np.array([-0.010, -0.040, -0.040])
    sdf = np.ones((size,) * 3, np.float32)
    sdf[10] = -0.1  # the plate's voxel plane, x index 10 = 0 m
    sdf[10, 35:45, 35:45] = 1.0  # the hole, around the plate's centre
    holes = measured_holes(sdf, frames, origin, voxel)
    assert holes[10, 35:45, 35:45].all()  # every voxel of the hole
    assert holes.sum() == holes[10, 35:45, 35:45].sum()  # and nothing else
    # Nothing solid within reach: a lone measurement, not a hole in a wall.
    assert not measured_holes(np.ones_like(sdf), frames, origin, voxel).any()
    # One view alone off the surface is not enough: a noisy point is not a hole.
    assert not measured_holes(sdf, frames[:1], origin, voxel).any()


def test_narrow_hidden_gaps_are_filled_but_not_seen_free_space_or_wide_openings() -> None:
    def block_with(cut: tuple[slice, ...]) -> np.ndarray:
        solid = np.zeros((30, 30, 30), dtype=bool)
        solid[5:25, 5:25, 5:25] = True
        solid[cut] = False
        return solid

    nothing_free = np.zeros((30, 30, 30), dtype=bool)
    # A slit 2 voxels high and 5 wide, open to the +x face: a tunnel into a bubble.
    slit = (slice(8, 25), slice(8, 13), slice(10, 12))
    gaps = hidden_gaps(block_with(slit), nothing_free, radius=2)
    assert gaps[8:21, 8:13, 10:12].all()  # filled up to its mouth, where the ball gets in
    assert not (gaps & block_with(slit)).any()
    assert not gaps[:4].any() and not gaps[:, :, 26:].any()  # nothing away from the solid
    # A view saw into the slit: it stays open.
    assert not hidden_gaps(block_with(slit), ~block_with(slit), radius=2)[slit].any()
    assert not hidden_gaps(block_with(slit), nothing_free, radius=0).any()
    # A notch 8 voxels on a side cut into the -x face: the ball fits, it stays open.
    notch = (slice(5, 12), slice(11, 19), slice(14, 22))
    assert not hidden_gaps(block_with(notch), nothing_free, radius=2)[5:10, 13:17, 16:20].any()
    # A slit 4 voxels high: a ball of radius 1 (3 voxels across) fits, one of radius 2 does not.
    high = (slice(8, 25), slice(8, 13), slice(10, 14))
    assert not hidden_gaps(block_with(high), nothing_free, radius=1)[10:21, 10, 11:13].any()
    assert hidden_gaps(block_with(high), nothing_free, radius=2)[8:21, 10, 10:14].all()


def test_a_generated_shape_that_leaves_a_mask_empty_gets_the_hull_back(sphere_views) -> None:
    frames, centre, radius = sphere_views
    frames = frames[:4]
    axis = np.linspace(-1.3 * radius, 1.3 * radius, 56)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    points = points + centre
    hull = carve(frames, points, None, lambda fraction: None)
    # The generator dropped a slab of the sphere that every view sees.
    dropped = np.abs(points[:, 0] - centre[0]) < 0.3 * radius
    solid = hull & ~dropped
    restore = explain_silhouettes(solid, hull, points, frames)
    assert restore.any() and not np.any(restore & ~hull)
    assert restore[hull & dropped].mean() > 0.5  # most of the slab comes back
    assert restore[hull & ~dropped & (np.abs(points[:, 0] - centre[0]) > 0.8 * radius)].mean() < 0.2
    # Afterwards every view's mask is covered again.
    for frame in frames:
        again = explain_silhouettes(solid | restore, hull, points, [frame])
        assert again.sum() <= 0.01 * restore.sum()
    # A shape that already explains the masks gets nothing added.
    assert not explain_silhouettes(hull, hull, points, frames).any()


def test_fine_sdf_is_the_generated_shape_where_nothing_was_measured(sphere_views) -> None:
    # One camera sees the front of the sphere. The coarse stage says "a big box"; the fine
    # stage says "the sphere". The unseen back must follow the fine SDF, the seen front the
    # measurement either way.
    frames, centre, radius = sphere_views
    frames = frames[:1]
    capture = make_capture_set(frames)
    cube = completion_cube(capture)
    res, fine_res = 16, 64
    unit_centre = cube.to_unit(centre[None])[0]
    coarse = np.zeros((res,) * 3, np.float32)
    box = np.abs(voxel_centres(cube, res) - centre).max(axis=-1) < 1.6 * radius
    coarse[box.reshape((res,) * 3)] = 1.0
    axis = (np.arange(fine_res) + 0.5) / fine_res - 0.5
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    fine_sdf = np.linalg.norm(grid - unit_centre, axis=-1) - radius / cube.side

    def back_error(fine: np.ndarray | None, weight: float = 1.0) -> tuple[float, float]:
        vertices, _, voxel = decode_surface(
            coarse, cube, frames, 96, use_depth=True, fine_sdf=fine, fine_weight=weight
        )
        r = np.linalg.norm(vertices - centre, axis=1)
        eye = frames[0].camera_to_world[:3, 3]
        facing = (vertices - centre) @ (eye - centre) / (r * np.linalg.norm(eye - centre))
        return float(np.median(np.abs(r[facing < -0.5] - radius)) / voxel), float(
            np.median(np.abs(r[facing > 0.8] - radius)) / voxel
        )

    back_fine, front_fine = back_error(fine_sdf)
    back_coarse, front_coarse = back_error(None)
    # Measured: back 0.01 voxel from the sphere with the fine SDF, 14.7 with the coarse box.
    assert back_fine < 0.5, back_fine  # the back is the fine stage's sphere
    assert back_coarse > 3.0, back_coarse  # ...where the coarse box would have put it
    assert front_fine < 0.5 and front_coarse < 0.5  # the measured front: fusion's, both times
    # Weighed half and half with the coarse box, the back lies between the two shapes, nearer
    # the sphere: the box's distance saturates at half a coarse voxel (measured: 3.0 voxels
    # out, against 14.7 for the box alone); weight 0 is the coarse shape exactly.
    back_half, front_half = back_error(fine_sdf, 0.5)
    assert back_fine < back_half < back_coarse and front_half < 0.5, back_half
    assert back_error(fine_sdf, 0.0) == (back_coarse, front_coarse)


def test_a_slit_in_the_hidden_inside_is_filled_by_decode(sphere_views) -> None:
    # One camera sees the front of the sphere; the generated (fine) sphere has a slit 2 fine
    # voxels thick through its hidden back half, open at the back: the kind of tunnel that
    # binary_fill_holes keeps. With hidden_gap_voxels it is filled; without, its walls are
    # surface deep inside the object.
    frames, centre, radius = sphere_views
    frames = frames[:1]
    cube = completion_cube(make_capture_set(frames))
    fine_res = 64
    unit_centre = cube.to_unit(centre[None])[0]
    axis = (np.arange(fine_res) + 0.5) / fine_res - 0.5
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    sphere = np.linalg.norm(grid - unit_centre, axis=-1) - radius / cube.side
    eye = cube.to_unit(frames[0].camera_to_world[:3, 3][None])[0] - unit_centre
    eye /= np.linalg.norm(eye)
    along = (grid - unit_centre) @ eye  # towards the camera
    # A slab through the centre, perpendicular to the image's vertical, behind the centre.
    up = np.cross(eye, [1.0, 0.0, 0.0] if abs(eye[0]) < 0.9 else [0.0, 1.0, 0.0])
    up /= np.linalg.norm(up)
    behind = along < -0.2 * radius / cube.side
    slit = (np.abs((grid - unit_centre) @ up) < 1.0 / fine_res) & behind
    fine_sdf = np.where(slit & (sphere < 0), 0.5 / fine_res, sphere)
    coarse = np.zeros((16,) * 3, np.float32)

    def deep_vertices(gap_voxels: int) -> float:
        vertices, _, voxel = decode_surface(
            coarse,
            cube,
            frames,
            96,
            use_depth=True,
            fine_sdf=fine_sdf,
            hidden_gap_voxels=gap_voxels,
        )
        r = np.linalg.norm(vertices - centre, axis=1)
        return float(np.mean(r < radius - 4 * voxel))

    assert deep_vertices(0) > 0.05  # the slit's walls (measured: 9 % of the vertices)
    assert deep_vertices(2) == 0.0  # measured: none


# --------------------------------------------------------------------------------- training
def _write_training_samples(root: Path, config: ModelConfig, count: int) -> None:
    """Part-1 samples in the dataset's layout, at the TINY model's sizes (no renders)."""
    rng = np.random.default_rng(0)
    r, s = config.resolution, config.view_size
    for split, n in (("train", count), ("val", 1)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            arrays = {}
            for m in ("rgbd", "rgb"):
                arrays[f"{m}_evidence"] = rng.integers(0, 3, (r, r, r)).astype(np.uint8)
                arrays[f"{m}_occupancy"] = (rng.random((r, r, r)) > 0.7).astype(np.float32)
                views = rng.standard_normal((2 + i % 2, config.view_channels, s, s))
                arrays[f"{m}_views"] = views.astype(np.float16)
            np.savez(root / split / f"{i:08d}.npz", **arrays)


def test_training_is_deterministic_and_can_start_from_given_weights(tmp_path: Path) -> None:
    from rvg_ros.rvg.train import TrainConfig, train

    _write_training_samples(tmp_path / "data", TINY, 3)
    config = TrainConfig(
        steps=2,
        batch=2,
        warmup=1,
        log_every=1,
        checkpoint_every=1,
        validate_every=2,
        val_samples=1,
        threads=1,
    )
    a = RVGModel.load(train(tmp_path / "data", tmp_path / "a", config, TINY, progress=False))
    b = RVGModel.load(train(tmp_path / "data", tmp_path / "b", config, TINY, progress=False))
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, msg=k)
    assert (tmp_path / "a" / "val.csv").read_text().startswith("step,iou,iou_unknown")

    # --init: the run starts from the given weights (nothing trained: the same weights out).
    init = tmp_path / "a" / "rvg_ss.safetensors"
    start = replace(config, steps=0, init=str(init))
    c = RVGModel.load(train(tmp_path / "data", tmp_path / "c", start, TINY, progress=False))
    for (k, x), (_, y) in zip(a.state_dict().items(), c.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, msg=k)
    # ... and trains on from them: one more step moves them, but only a little.
    d = RVGModel.load(
        train(tmp_path / "data", tmp_path / "d", replace(start, steps=1), TINY, progress=False)
    )
    moved = [
        (x - y).abs().max().item() for x, y in zip(a.parameters(), d.parameters(), strict=True)
    ]
    assert 0 < max(moved) < 0.05
    with pytest.raises(ValueError, match="model config differs"):
        train(tmp_path / "data", tmp_path / "e", start, replace(TINY, flow_depth=1), progress=False)
