"""The fine (structured-latent) stage: targets, decoder, per-view condition, fine flow, training."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from rvg_ros.core.types import Intrinsics, TargetCube
from rvg_ros.rvg.fine_data import MeshQuery, fine_targets
from rvg_ros.rvg.fine_decode import decode_mesh, fine_field, rvc_decoder
from rvg_ros.rvg.fine_latent import LatentConfig, active_voxels, sub_voxel_centres
from rvg_ros.rvg.fine_model import FineModel, FineModelConfig, voxel_features
from rvg_ros.rvg.fine_sample import FineSampleConfig, fine_velocity_fn, sample_fine
from rvg_ros.rvg.fine_train import (
    FineTrainConfig,
    collate_fine,
    loss_weight,
    paired_files,
    rotate_fine_z,
    sample_latents,
    train_fine,
)
from rvg_ros.rvg.flow import flow_matching_loss
from rvg_ros.rvg.model import WeightsError
from rvg_ros.rvg.models.fine_flow import FineFlow, patchify
from rvg_ros.rvg.models.pvc import PerViewCondition
from rvg_ros.rvg.render import RenderConfig, camera_in_cube, render_views
from rvg_ros.rvg.render_loss import View
from rvg_ros.rvg.rvc import RVCConfig, compensate
from rvg_ros.rvg.train import rotate_z

CENTRE = np.array([0.3, -0.2, 0.5])
SIDE = 0.2  # metres: targets must come out in fine voxels whatever the cube's size
RADIUS = 0.06
COLOUR = (200, 40, 90)
TINY_LATENT = LatentConfig(resolution=16, sub=2)
TINY = FineModelConfig(
    latent=TINY_LATENT,
    view_size=32,
    cond_dim=32,
    encoder_depth=2,
    pvc_depth=1,
    pvc_tokens=4,
    flow_dim=32,
    flow_depth=2,
    heads=2,
)


@pytest.fixture(scope="module")
def sphere() -> tuple[MeshQuery, TargetCube, np.ndarray]:
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=RADIUS)
    mesh.apply_translation(CENTRE)
    mesh.visual = trimesh.visual.ColorVisuals(
        mesh, vertex_colors=np.tile([*COLOUR, 255], (len(mesh.vertices), 1)).astype(np.uint8)
    )
    cube = TargetCube(center=CENTRE + np.array([0.01, 0.0, -0.005]), side=SIDE)
    # Coarse occupancy as the dataset makes it: fraction of 2^3 sub-samples inside.
    r, s = 32, 2
    axis = (np.arange(r * s) + 0.5) / (r * s) - 0.5
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    inside = np.linalg.norm(cube.to_world(grid) - CENTRE, axis=-1) < RADIUS
    occupancy = inside.reshape(r, s, r, s, r, s).mean(axis=(1, 3, 5)).astype(np.float32)
    return MeshQuery(mesh), cube, occupancy


@pytest.fixture(scope="module")
def sphere_targets(sphere) -> tuple[np.ndarray, np.ndarray]:
    query, cube, occupancy = sphere
    return fine_targets(query, cube, occupancy, LatentConfig())


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world looking from ``eye`` at ``target`` with world z up."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    pose[:3, 3] = eye
    return pose


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Zero-initialised outputs (adaLN-Zero) would make every invariance test trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


# ----------------------------------------------------------------------------------- targets
def test_sphere_targets_have_the_right_sign_scale_and_cover_the_surface(
    sphere, sphere_targets
) -> None:
    _, cube, occupancy = sphere
    config = LatentConfig()
    coords, latent = sphere_targets
    assert latent.shape == (len(coords), 67) and 300 < len(coords) < 4000
    # Sub-voxel centres in cube units, the analytic SDF in fine voxels.
    k, fine = config.sub, config.fine_resolution
    sub = np.stack(np.meshgrid(*(np.arange(k),) * 3, indexing="ij"), -1).reshape(-1, 3)
    unit = ((coords[:, None] * k + sub) + 0.5) / fine - 0.5
    exact = (np.linalg.norm(cube.to_world(unit) - CENTRE, axis=-1) - RADIUS) / SIDE * fine
    expected = np.clip(exact / config.clip_voxels, -1, 1)
    # The icosphere's facets sit at most ~0.02 fine voxels inside the sphere.
    np.testing.assert_allclose(latent[:, :64], expected, atol=0.03)
    assert (latent[:, :64] < 0).any() and (latent[:, :64] > 0).any()
    np.testing.assert_allclose(
        latent[:, 64:], np.broadcast_to(2 * np.array(COLOUR) / 255 - 1, (len(latent), 3)), atol=0.01
    )
    # Every coarse voxel the surface passes through is active.
    centres = (np.argwhere(np.ones((32,) * 3)) + 0.5) / 32 - 0.5
    dist = np.abs(np.linalg.norm(cube.to_world(centres) - CENTRE, axis=-1) - RADIUS) / SIDE
    crossed = {tuple(c) for c in np.argwhere((dist < 0.5 / 32).reshape((32,) * 3))}
    assert crossed and crossed <= {tuple(c) for c in coords}
    assert np.array_equal(active_voxels(occupancy), coords)


def test_thin_parts_below_half_a_voxel_stay_active() -> None:
    occupancy = np.zeros((8, 8, 8), np.float32)
    occupancy[2:6, 2:6, 4] = 0.3  # a plate thinner than a voxel: nothing is >= 0.5
    active = {tuple(c) for c in active_voxels(occupancy)}
    assert {(i, j, 4) for i in range(2, 6) for j in range(2, 6)} <= active


# ----------------------------------------------------------------------------------- decoder
def test_decoded_targets_reproduce_the_sphere(sphere, sphere_targets) -> None:
    _, cube, occupancy = sphere
    coords, latent = sphere_targets
    mesh = decode_mesh(coords, latent, occupancy, cube, LatentConfig())
    fine_voxel = SIDE / 128
    radial = np.abs(np.linalg.norm(mesh.vertices - CENTRE, axis=1) - RADIUS)
    assert len(mesh.vertices) > 1000
    # Metric, in the world frame. Where the surface clips the corner of an inactive voxel
    # (diagonal to the shell) the fill (-+1 coarse voxel) bends it by under half a fine voxel.
    assert np.percentile(radial, 99) < 0.05 * fine_voxel
    assert radial.max() < 0.5 * fine_voxel
    # Closed and complete: the sphere's points all have a vertex nearby (Chamfer both ways).
    from scipy.spatial import cKDTree

    points = trimesh.creation.icosphere(subdivisions=4, radius=RADIUS).vertices + CENTRE
    assert cKDTree(mesh.vertices).query(points)[0].max() < fine_voxel
    assert mesh.is_watertight
    assert np.abs(mesh.visual.vertex_colors[:, :3].astype(int) - COLOUR).max() <= 3
    # The fine field beats the coarse grid's resolution: 4x finer voxels.
    assert LatentConfig().fine_resolution == 4 * 32


def test_fine_field_is_differentiable(sphere, sphere_targets) -> None:
    _, _, occupancy = sphere
    config = LatentConfig()
    coords, latent = (torch.from_numpy(a) for a in sphere_targets)
    x = latent.clone().requires_grad_()
    field = fine_field(coords, x, torch.from_numpy(occupancy), config)
    assert field.sdf.shape == (128,) * 3 and field.colour.shape == (3, 128, 128, 128)
    (field.sdf.square().sum() + field.colour.sum()).backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).any()


RVC_RENDER = RenderConfig(coarse_samples=64)


@pytest.fixture(scope="module")
def sphere_views(sphere, sphere_targets) -> list[View]:
    """Two 32 px views of the decoded targets: what RVC pulls an offset latent back to."""
    _, cube, occupancy = sphere
    coords, latent = (torch.from_numpy(a) for a in sphere_targets)
    k = Intrinsics(40.0, 40.0, 15.5, 15.5, 32, 32)
    cams = [
        camera_in_cube(
            k, look_at(cube.center + 0.4 * np.array([np.cos(a), np.sin(a), 0.5]), cube.center), cube
        )
        for a in (0.0, 2.0)
    ]
    field = fine_field(coords, latent, torch.from_numpy(occupancy), LatentConfig())
    with torch.no_grad():
        renders = render_views(field, cams, RVC_RENDER)
    return [
        View(c, r.silhouette, r.depth * (r.silhouette > 0.5), r.colour)
        for c, r in zip(cams, renders, strict=True)
    ]


@pytest.mark.parametrize("offset", [0.3, 0.6, -0.3])
def test_rvc_at_the_papers_lambda_lowers_the_loss_on_the_sparse_fine_latent(
    sphere, sphere_targets, sphere_views, offset
) -> None:
    """One compensation step through the fine decoder: the gradient reaches ~8 % of the
    latent's entries and is heavy-tailed (0.03 % carry half its energy). The default "peak"
    normalisation lowers every view's loss at lambda 0.1 (and at 0.3); rescaling the whole
    gradient to rms(v) ("rms") overshoots on those few entries and raises it."""
    _, _, occupancy = sphere
    coords, latent = (torch.from_numpy(a) for a in sphere_targets)
    decode = rvc_decoder([coords], [torch.from_numpy(occupancy)], LatentConfig())
    shifted = latent.clone()
    shifted[:, :64] += offset  # 0.3 = the surface moved by ~1.2 fine voxels
    v = torch.randn(1, len(coords), 67, generator=torch.Generator().manual_seed(0))
    t = 0.3
    x_t = shifted[None] + t * v  # so x0_hat = x_t - t v = shifted

    def step(**kw):
        _, s = compensate(x_t, t, v, decode, sphere_views, RVCConfig(render=RVC_RENDER, **kw))
        assert s is not None and s.kept.all()
        return s

    default = step()  # lambda 0.1, "peak"
    assert (default.after < 0.985 * default.before).all(), (default.before, default.after)
    assert (step(strength=0.3).after < default.before).all()
    rms = step(normalise="rms")
    assert (rms.after > rms.before).any()


def gaussian_latent_velocity(mean: torch.Tensor, sigma: float):
    """The exact rectified-flow velocity for data N(mean, sigma^2): a "model" that believes in
    ``mean`` (here an offset sphere) as firmly as sigma says."""

    def velocity(x: torch.Tensor, t: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        tt = t.view(-1, *([1] * (x.dim() - 1)))
        c = (1 - tt) * sigma**2 / ((1 - tt) ** 2 * sigma**2 + tt**2)
        x0 = mean + c * (x - (1 - tt) * mean)
        return (x - (1 - tt) * x0) / tt - x0

    return velocity


def test_rvc_sampling_at_the_papers_lambda_pulls_the_fine_latent_onto_the_views(
    sphere, sphere_targets, sphere_views
) -> None:
    from rvg_ros.rvg.flow import sample_flow
    from rvg_ros.rvg.rvc import sample_flow_rvc, view_losses

    _, _, occupancy = sphere
    coords, latent = (torch.from_numpy(a) for a in sphere_targets)
    decode = rvc_decoder([coords], [torch.from_numpy(occupancy)], LatentConfig())
    believed = latent.clone()
    believed[:, :64] += 0.3
    velocity = gaussian_latent_velocity(believed[None], sigma=0.1)
    shape = (1, len(coords), 67)
    config = RVCConfig(render=RVC_RENDER, measure_after=False)
    plain = sample_flow(velocity, shape, 8, 1.0, torch.Generator().manual_seed(0))
    x, steps = sample_flow_rvc(
        velocity, shape, 8, 1.0, torch.Generator().manual_seed(0), decode, sphere_views, config
    )
    with torch.no_grad():
        before = view_losses(decode(plain), sphere_views, config)
        after = view_losses(decode(x), sphere_views, config)
    assert len(steps) == 3  # t = 0.375, 0.25, 0.125 of an 8-step grid are below 0.5
    assert (after < 0.97 * before).all(), (before, after)


def test_rotation_augmentation_rotates_the_dense_field(sphere, sphere_targets) -> None:
    _, _, occupancy = sphere
    config = LatentConfig()
    coords, latent = sphere_targets
    occ = torch.from_numpy(occupancy)
    dense = fine_field(torch.from_numpy(coords), torch.from_numpy(latent), occ, config).sdf
    for k in (1, 3):
        rc, rl = rotate_fine_z(coords, latent, k, config)
        rocc = torch.from_numpy(rotate_z(occupancy, k))
        rotated = fine_field(torch.from_numpy(rc), torch.from_numpy(rl), rocc, config).sdf
        assert torch.equal(rotated, torch.from_numpy(rotate_z(dense.numpy(), k)))


# ------------------------------------------------------------------------------------ models
def _flow_inputs(n: int = 40, b: int = 2, v: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = TINY.flow_config()
    x = torch.randn(b, n, cfg.channels, generator=g)
    t = torch.rand(b, generator=g)
    # Distinct voxels per item (active voxels are), from a 6^3 corner so that cells share
    # voxels and the patch tokens are more than one voxel each.
    flat = torch.stack([torch.randperm(6**3, generator=g)[:n] for _ in range(b)])
    coords = torch.stack([flat // 36, (flat // 6) % 6, flat % 6], dim=-1)
    feats = torch.rand(b, n, 4, generator=g)
    ctx = torch.randn(b, v, TINY.pvc_tokens, cfg.context_dim, generator=g)
    return x, t, coords, feats, ctx


def test_pvc_gives_one_token_list_per_view_from_that_view_alone() -> None:
    torch.manual_seed(0)
    pvc = PerViewCondition(dim=32, depth=2, heads=2, num_tokens=4)
    tokens = torch.randn(2, 3, 16, 32)
    out = pvc(tokens)
    assert out.shape == (2, 3, 4, 32)
    changed = tokens.clone()
    changed[0, 1] += 1.0  # only view 1 of item 0
    diff = (pvc(changed) - out).abs().amax(dim=(2, 3))
    assert diff[0, 1] > 1e-3 and diff[0, 0] == 0 and diff[0, 2] == 0 and diff[1].max() == 0


@pytest.mark.parametrize("patch", [2, 1])
def test_fine_flow_shapes_padding_and_permutation(patch: int) -> None:
    torch.manual_seed(0)
    flow = FineFlow(replace(TINY.flow_config(), patch=patch))
    _randomise(flow)
    flow.eval()
    x, t, coords, feats, ctx = _flow_inputs()
    with torch.no_grad():
        v = flow(x, t, coords, feats, ctx)
        assert v.shape == x.shape and v.abs().mean() > 1e-3
        # Padded tokens (any content) leave the real tokens' outputs unchanged.
        extra = 7
        g = torch.Generator().manual_seed(1)

        def pad(a: torch.Tensor) -> torch.Tensor:
            junk = 5 * torch.randn(a.shape[0], extra, *a.shape[2:], generator=g)
            return torch.cat([a, junk.to(a.dtype)], dim=1)

        token_padding = torch.zeros(2, 40 + extra, dtype=torch.bool)
        token_padding[:, 40:] = True
        v_pad = flow(
            pad(x),
            t,
            pad(coords.float()).long().clamp(0, 15),
            pad(feats),
            ctx,
            token_padding=token_padding,
        )
        torch.testing.assert_close(v_pad[:, :40], v, atol=1e-5, rtol=1e-5)
        # An absent view (any content) changes nothing either.
        ctx_pad = torch.cat([ctx, torch.randn(2, 1, *ctx.shape[2:], generator=g)], dim=1)
        view_padding = torch.zeros(2, 4, dtype=torch.bool)
        view_padding[:, 3] = True
        v_view = flow(x, t, coords, feats, ctx_pad, view_padding=view_padding)
        torch.testing.assert_close(v_view, v, atol=1e-5, rtol=1e-5)
        # Permuting the voxels permutes the outputs: the set has no order (the cells, i.e. the
        # tokens, are formed and ordered from the coordinates, not from the voxel order).
        perm = torch.randperm(40, generator=g)
        v_perm = flow(x[:, perm], t, coords[:, perm], feats[:, perm], ctx)
        torch.testing.assert_close(v_perm, v[:, perm], atol=1e-5, rtol=1e-5)
        # The views matter.
        assert (flow(x, t, coords, feats, ctx + 1.0) - v).abs().max() > 1e-3


def test_patchify_groups_voxels_into_cells_whatever_their_order() -> None:
    coords = torch.tensor(
        [
            [[0, 0, 0], [1, 1, 0], [2, 0, 0], [5, 5, 5], [3, 1, 1]],
            [[4, 4, 4], [7, 7, 7], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
        ]
    )
    padding = torch.tensor([[False] * 5, [False, False, True, True, True]])
    cells = patchify(coords, padding, patch=2, span=4)
    # Item 0: cells (0,0,0) (with 2 voxels), (1,0,0) (with 2), (2,2,2); item 1: 2 cells.
    assert cells.coords.shape == (2, 3, 3)
    assert cells.coords[0].tolist() == [[0, 0, 0], [1, 0, 0], [2, 2, 2]]
    assert cells.coords[1, :2].tolist() == [[2, 2, 2], [3, 3, 3]]
    assert cells.padding.tolist() == [[False, False, False], [False, False, True]]
    assert cells.cell[0].tolist() == [0, 0, 1, 2, 1]
    assert cells.cell[1].tolist() == [0, 1, 3, 3, 3]  # padded voxels -> the spare slot
    # Cell and place give the voxel back.
    b = torch.arange(2)[:, None].expand(2, 5)
    sub = torch.stack([cells.place // 4, (cells.place // 2) % 2, cells.place % 2], dim=-1)
    real = ~padding
    rebuilt = 2 * cells.coords[b, cells.cell.clamp(max=2)] + sub
    assert torch.equal(rebuilt[real], coords[real])
    # Another voxel order: the same cells, and every voxel in the same cell and place.
    perm = torch.tensor([4, 2, 0, 3, 1])
    again = patchify(coords[:1, perm], None, patch=2, span=4)
    assert torch.equal(again.coords, cells.coords[:1])
    assert torch.equal(again.cell, cells.cell[:1, perm])
    assert torch.equal(again.place, cells.place[:1, perm])


def test_patch_tokens_are_fewer_than_voxels_on_a_real_shell(sphere) -> None:
    _, _, occupancy = sphere
    coords = torch.from_numpy(active_voxels(occupancy))[None]
    cells = patchify(coords, None, patch=2, span=16)
    ratio = coords.shape[1] / cells.coords.shape[1]
    assert ratio > 3.5, ratio  # 4.5 on average over procedural objects


def _tiny_batch(seed: int = 0, n: tuple[int, ...] = (30, 22)) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    r, c = TINY_LATENT.resolution, TINY_LATENT.channels
    items = []
    for m in n:
        # Part of the shell of a box, as active voxels come: cells hold several voxels.
        box = np.zeros((r,) * 3, np.float32)
        lo = rng.integers(2, 5, 3)
        box[lo[0] : lo[0] + 6, lo[1] : lo[1] + 6, lo[2] : lo[2] + 6] = 1.0
        coords = active_voxels(box)[:m]
        # A learnable target: the latent is a smooth function of the position.
        p = (coords + 0.5) / r - 0.5
        latent = np.tanh(np.concatenate([p @ rng.normal(size=(3, c - 3)) * 2, p], 1))
        items.append(
            {
                "coords": coords,
                "latent": latent.astype(np.float32),
                "evidence": rng.integers(0, 3, (r,) * 3).astype(np.uint8),
                "occupancy": rng.random((r,) * 3).astype(np.float32),
                "views": rng.normal(size=(3, 12, 32, 32)).astype(np.float32),
            }
        )
    return collate_fine(items)


def test_model_velocity_and_sampling_are_deterministic_and_padding_safe() -> None:
    torch.manual_seed(0)
    model = FineModel(TINY)
    _randomise(model)
    batch = _tiny_batch()
    assert batch["token_mask"].sum(1).tolist() == [30, 22]
    a = sample_latents(model, batch, steps=3, cfg=2.0, seed=5)
    b = sample_latents(model, batch, steps=3, cfg=2.0, seed=5)
    c = sample_latents(model, batch, steps=3, cfg=2.0, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # The second item alone gives the same velocity as in the padded batch.
    cond = model.per_view_condition(batch["views"], batch["view_mask"])
    x = torch.randn(batch["latent"].shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 0.4)
    with torch.no_grad():
        v = fine_velocity_fn(model, batch, cond)(x, t, torch.zeros(2, dtype=torch.bool))
        alone = {k: val[1:2] for k, val in batch.items()}
        alone = {
            k: val[:, :22] if k in ("latent", "coords", "features", "token_mask") else val
            for k, val in alone.items()
        }
        v1 = fine_velocity_fn(model, alone, cond[1:2])(
            x[1:2, :22], t[:1], torch.zeros(1, dtype=torch.bool)
        )
        torch.testing.assert_close(v1, v[1:2, :22], atol=1e-5, rtol=1e-5)
        dropped = fine_velocity_fn(model, batch, cond)(x, t, torch.ones(2, dtype=torch.bool))
        assert (dropped - v).abs().max() > 1e-4  # the null condition is a different condition


def _tiny_object() -> tuple[FineModel, np.ndarray, np.ndarray, np.ndarray]:
    """A randomised tiny fine model and a box-shaped coarse object with three random views."""
    torch.manual_seed(0)
    model = FineModel(TINY)
    _randomise(model)
    model.eval()
    r = TINY_LATENT.resolution
    occupancy = np.zeros((r,) * 3, np.float32)
    occupancy[5:11, 5:11, 4:12] = 1.0
    evidence = np.zeros((r,) * 3, np.uint8)
    views = np.random.default_rng(0).normal(size=(3, 12, 32, 32)).astype(np.float32)
    return model, occupancy, evidence, views


def test_sample_fine_for_one_object_with_and_without_rvc() -> None:
    model, occupancy, evidence, views = _tiny_object()
    plain = FineSampleConfig(steps=6, cfg_scale=3.0, seed=1)  # t < 0.5 twice
    a = sample_fine(model, occupancy, evidence, views, plain)
    assert a.latent.shape == (len(a.coords), TINY_LATENT.channels) and len(a.coords) > 50
    assert torch.equal(a.latent, sample_fine(model, occupancy, evidence, views, plain).latent)
    # RVC at strength 0 is plain sampling, exactly; at 0.1 it reports per-view losses.
    cube = TargetCube(np.zeros(3), 1.0)
    k = Intrinsics(30.0, 30.0, 11.5, 11.5, 24, 24)
    cams = [
        camera_in_cube(k, look_at(np.array([1.5, 0.3 * i, 0.8]), np.zeros(3)), cube)
        for i in range(2)
    ]
    mask = torch.zeros(24, 24)
    mask[6:18, 6:18] = 1.0  # a box-like silhouette: a loss with a gradient
    views_r = [View(c, mask) for c in cams]
    off = replace(plain, rvc=RVCConfig(strength=0.0, render=RenderConfig(coarse_samples=32)))
    b = sample_fine(model, occupancy, evidence, views, off, views_r)
    assert torch.equal(a.latent, b.latent) and not b.rvc_steps
    on = replace(off, rvc=replace(off.rvc, strength=0.1, max_view_loss=10.0))
    c = sample_fine(model, occupancy, evidence, views, on, views_r)
    assert len(c.rvc_steps) == 2 and c.rvc_steps[0].before.shape == (1, 2)
    assert not torch.equal(a.latent, c.latent)


def test_measured_entries_are_fixed_and_steer_the_rest_of_the_sample() -> None:
    """``known_sdf`` (inpainting by replacement): the known SDF entries end exactly on their
    values, with and without RVC; the others are generated from them (they change), and no
    known entry at all is plain sampling, exactly."""
    model, occupancy, evidence, views = _tiny_object()
    config = FineSampleConfig(steps=6, cfg_scale=3.0, seed=1)
    plain = sample_fine(model, occupancy, evidence, views, config)
    m, sdf = len(plain.coords), TINY_LATENT.sdf_channels
    rng = np.random.default_rng(2)
    mask = rng.random((m, sdf)) < 0.4
    values = rng.uniform(-1.0, 1.0, (m, sdf)).astype(np.float32)
    none = sample_fine(
        model, occupancy, evidence, views, config, known_sdf=(np.zeros_like(mask), values)
    )
    assert torch.equal(none.latent, plain.latent) and none.known_entries == 0
    fixed = sample_fine(model, occupancy, evidence, views, config, known_sdf=(mask, values))
    assert fixed.known_entries == int(mask.sum())
    latent = fixed.latent.numpy()
    np.testing.assert_allclose(latent[:, :sdf][mask], values[mask], atol=1e-6)
    free = np.ones_like(latent, dtype=bool)
    free[:, :sdf] = ~mask
    change = np.abs(latent - plain.latent.numpy())[free]
    assert change.mean() > 1e-3  # the network saw the known entries
    again = sample_fine(model, occupancy, evidence, views, config, known_sdf=(mask, values))
    assert torch.equal(again.latent, fixed.latent)
    # Under RVC too: the compensation moves the generated entries only.
    cube = TargetCube(np.zeros(3), 1.0)
    k = Intrinsics(30.0, 30.0, 11.5, 11.5, 24, 24)
    cams = [camera_in_cube(k, look_at(np.array([1.5, 0.0, 0.8]), np.zeros(3)), cube)]
    silhouette = torch.zeros(24, 24)
    silhouette[6:18, 6:18] = 1.0
    rvc = replace(
        config,
        rvc=RVCConfig(strength=0.1, max_view_loss=10.0, render=RenderConfig(coarse_samples=32)),
    )
    target = [View(cams[0], silhouette)]
    compensated = sample_fine(
        model, occupancy, evidence, views, rvc, target, known_sdf=(mask, values)
    )
    assert compensated.rvc_steps
    np.testing.assert_allclose(compensated.latent.numpy()[:, :sdf][mask], values[mask], atol=1e-6)


@pytest.mark.parametrize("truncation_voxels", [4.0, 2.0])
def test_measured_latent_is_the_tsdf_where_decode_trusts_it(truncation_voxels: float) -> None:
    """A plane measured over half the cube: the known entries are its SDF in latent units
    (trilinear reads of a linear TSDF are exact), truncated ones +1 when the truncation
    reaches the clip distance and unknown when it falls well short; nothing is known where no
    view measured, or deeper behind the surface than the wall decode trusts."""
    from rvg_ros.rvg.decode import lattice, lattice_points
    from rvg_ros.rvg.fine_measured import LatticeTSDF, measured_sdf_latent

    config = LatentConfig()
    cube = TargetCube(center=CENTRE, side=SIDE)
    voxel = 0.0015  # decode's lattice, near the fine voxel (1.5625 mm) as on YCB
    truncation = truncation_voxels * voxel
    origin, size = lattice(cube, voxel)
    points = lattice_points(origin, size, voxel).reshape(size, size, size, 3)
    z0 = CENTRE[2] + 0.013
    tsdf = np.clip((points[..., 2] - z0) / truncation, -1.0, 1.0).astype(np.float32)
    weight = (points[..., 0] > CENTRE[0]).astype(np.float32)
    measured = LatticeTSDF(tsdf, weight, origin, voxel, truncation)
    axis = (np.arange(config.resolution) + 0.5) / config.resolution - 0.5
    # Every voxel within three coarse voxels of the plane (wider than the shell, to reach
    # past the truncation).
    height = cube.to_world(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1))[..., 2] - z0
    coords = np.argwhere(np.abs(height) < 3 * cube.side / config.resolution)
    min_wall = 0.5  # of the truncation: decode's wall in lattice voxels below
    wall_voxels = min_wall * truncation_voxels
    mask, values = measured_sdf_latent(coords, config, cube, measured, wall_voxels)
    assert mask.shape == values.shape == (len(coords), config.sdf_channels)
    centres = cube.to_world(sub_voxel_centres(coords, config))
    height, x = centres[..., 2] - z0, centres[..., 0] - CENTRE[0]
    assert not mask[x < -voxel].any()
    assert not mask[height < -min_wall * truncation - voxel].any()
    trusted_band = (x > 2 * voxel) & (height > -min_wall * truncation + voxel)
    linear = trusted_band & (height < truncation - voxel)
    assert linear.sum() > 1000 and mask[linear].all()
    clip = config.sdf_scale * cube.side
    np.testing.assert_allclose(values[linear], np.clip(height[linear] / clip, -1, 1), atol=1e-5)
    far = trusted_band & (height > truncation + voxel)
    assert far.sum() > 1000
    if truncation / clip >= 0.75:
        assert mask[far].all() and np.all(values[far] == 1.0)
    else:
        assert not mask[far].any()


def test_voxel_features_read_the_coarse_grids() -> None:
    evidence = torch.zeros(4, 4, 4, dtype=torch.uint8)
    occupancy = torch.zeros(4, 4, 4)
    evidence[1, 2, 3], occupancy[1, 2, 3] = 2, 0.7
    f = voxel_features(torch.tensor([[1, 2, 3], [0, 0, 0]]), evidence, occupancy)
    assert f.tolist() == [[0, 0, 1, 1], [1, 0, 0, 0]]


def test_fine_flow_loss_falls_on_a_tiny_overfit() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = FineModel(TINY)
    batch = _tiny_batch()
    config = FineTrainConfig(colour_weight=1.0)
    weight = loss_weight(batch, config, TINY_LATENT.sdf_channels)
    no_drop = torch.zeros(2, dtype=torch.bool)

    def loss(seed: int) -> torch.Tensor:
        cond = model.per_view_condition(batch["views"], batch["view_mask"])
        return flow_matching_loss(
            fine_velocity_fn(model, batch, cond),
            batch["latent"],
            no_drop,
            weight,
            torch.Generator().manual_seed(seed),
        )

    with torch.no_grad():
        before = np.mean([loss(1000 + i).item() for i in range(4)])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(50):
        opt.zero_grad()
        loss(step).backward()
        opt.step()
    with torch.no_grad():
        after = np.mean([loss(1000 + i).item() for i in range(4)])
    assert after < 0.6 * before, (before, after)


def test_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FineModel(TINY)
    _randomise(model)
    model.save(tmp_path / "w.safetensors")
    loaded = FineModel.load(tmp_path / "w.safetensors")
    assert loaded.config == TINY
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    FineModel(replace(TINY, flow_depth=1)).save(tmp_path / "other.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsError):
        FineModel.load(tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError):
        FineModel.load(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------- training
def _write_pair(coarse: Path, fine: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    r = TINY_LATENT.resolution
    occupancy = np.zeros((r,) * 3, np.float32)
    lo, hi = rng.integers(3, 6), rng.integers(10, 13)
    occupancy[lo:hi, lo:hi, lo:hi] = 1.0
    coords = active_voxels(occupancy)
    p = (coords + 0.5) / r - 0.5
    latent = np.tanh(np.concatenate([np.repeat(p, 3, axis=1)[:, :8] * 3, p], 1))
    arrays = {"seed": np.array(seed)}
    fine_arrays = {"seed": np.array(seed), "sub": np.array(TINY_LATENT.sub)}
    for m in ("rgbd", "rgb"):
        arrays[f"{m}_evidence"] = rng.integers(0, 3, (r,) * 3).astype(np.uint8)
        arrays[f"{m}_occupancy"] = occupancy
        arrays[f"{m}_views"] = rng.normal(size=(3, 12, 32, 32)).astype(np.float16)
        fine_arrays[f"{m}_coords"] = coords.astype(np.int16)
        fine_arrays[f"{m}_latent"] = latent.astype(np.float16)
    np.savez(coarse / f"{seed:08d}.npz", **arrays)
    np.savez(fine / f"{seed:08d}.npz", **fine_arrays)


def test_training_runs_resumes_exactly_and_validates(tmp_path: Path) -> None:
    for split in ("train", "val"):
        (tmp_path / "coarse" / split).mkdir(parents=True)
        (tmp_path / "fine" / split).mkdir(parents=True)
        for seed in range(3 if split == "train" else 1):
            _write_pair(tmp_path / "coarse" / split, tmp_path / "fine" / split, seed)
    config = FineTrainConfig(
        steps=4,
        batch=2,
        warmup=1,
        log_every=2,
        checkpoint_every=2,
        validate_every=4,
        val_samples=1,
        val_steps=2,
        init_encoder="",
    )
    args = (tmp_path / "coarse", tmp_path / "fine")
    whole = train_fine(*args, tmp_path / "whole", config, TINY)
    # Stopped after step 3 (not a checkpoint step) by stop_at, which keeps the schedule, then
    # resumed by the same command without it.
    stopped = train_fine(*args, tmp_path / "split", config, TINY, stop_at=3)
    assert FineModel.load(stopped) is not None
    resumed = train_fine(*args, tmp_path / "split", config, TINY)
    a, b = FineModel.load(whole), FineModel.load(resumed)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5, msg=k)
    assert (tmp_path / "whole" / "loss.csv").read_text().count("\n") == 3
    assert "sdf_mae_voxels" in (tmp_path / "whole" / "val.csv").read_text()
    assert (tmp_path / "whole" / "curves.png").stat().st_size > 0


def test_validation_scores_each_modality_on_its_own_views(tmp_path: Path) -> None:
    from rvg_ros.rvg.fine_train import validate, validate_modalities

    (tmp_path / "coarse").mkdir()
    (tmp_path / "fine").mkdir()
    _write_pair(tmp_path / "coarse", tmp_path / "fine", 0)
    pairs = paired_files(tmp_path / "coarse", tmp_path / "fine")
    config = FineTrainConfig(val_steps=2, val_modalities="rgbd,rgb")
    torch.manual_seed(0)
    model = FineModel(TINY)
    _randomise(model)  # zero-initialised outputs would ignore the views
    model.eval()
    lc = TINY.latent
    scores = validate_modalities(model, pairs, config, lc)
    assert scores == {
        **validate(model, pairs, config, lc, "rgbd"),
        **{f"rgb_{k}": v for k, v in validate(model, pairs, config, lc, "rgb").items()},
    }
    # The two modalities' samples differ (other views, other targets), so do their scores.
    assert scores["sdf_mae_voxels"] != scores["rgb_sdf_mae_voxels"]
    # A wrong modality is refused when the run is configured, not at its first validation.
    with pytest.raises(ValueError, match="unknown modality 'depth'"):
        replace(config, val_modalities="rgbd,depth")


def test_fine_samples_extend_part1_samples_deterministically(tmp_path: Path) -> None:
    from rvg_ros.rvg.dataset import occupancy_grid
    from rvg_ros.rvg.fine_data import generate_fine
    from rvg_ros.sim.objects import make_object

    # A part-1 sample needs only its seed, cubes and occupancies here (no renders).
    seed = 1_000_003
    obj = make_object(None, seed)
    cube = TargetCube(center=obj.bounds.mean(axis=0), side=1.4 * obj.extent)
    occupancy = occupancy_grid(obj, cube, 32, 2)
    arrays = {"seed": np.array(seed)}
    for m in ("rgbd", "rgb"):
        arrays[f"{m}_cube"] = np.array([*cube.center, cube.side])
        arrays[f"{m}_occupancy"] = occupancy
    (tmp_path / "coarse").mkdir()
    np.savez(tmp_path / "coarse" / f"{seed:08d}.npz", **arrays)
    assert generate_fine(tmp_path / "coarse", tmp_path / "a", LatentConfig()) == 1
    assert generate_fine(tmp_path / "coarse", tmp_path / "a", LatentConfig()) == 0  # resumes
    generate_fine(tmp_path / "coarse", tmp_path / "b", LatentConfig())
    name = f"{seed:08d}.npz"
    with np.load(tmp_path / "a" / name) as a, np.load(tmp_path / "b" / name) as b:
        assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
        coords, latent = a["rgbd_coords"], a["rgbd_latent"]
    assert coords.dtype == np.int16 and latent.dtype == np.float16
    assert latent.shape == (len(coords), 67) and np.abs(latent).max() <= 1.0
    # Decoded, the stored targets lie on the object's mesh (exact distances, fine voxels).
    mesh = decode_mesh(coords, latent.astype(np.float32), occupancy, cube, LatentConfig())
    dist = np.abs(MeshQuery(obj.mesh).signed_distance(mesh.vertices)) / cube.side * 128
    assert np.percentile(dist, 99) < 0.5 and np.mean(dist) < 0.1


def test_view_encoder_starts_from_the_shipped_part1_encoder() -> None:
    from safetensors.torch import load_file

    from rvg_ros.rvg.fine_train import init_encoder

    model = FineModel(FineModelConfig())
    shipped = Path(__file__).resolve().parents[1] / "rvg_ros" / "weights" / "rvg_ss.safetensors"
    if not shipped.is_file():
        pytest.skip("no shipped part-1 weights")
    assert init_encoder(model, "shipped")
    tensors = load_file(str(shipped))
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, tensors[f"encoder.{k}"]), k
    assert not init_encoder(FineModel(TINY), "shipped")  # another shape: left as it is
    assert not init_encoder(model, "")


def test_predicted_occupancy_samples_keep_the_occupancy_their_targets_sit_on(
    tmp_path: Path,
) -> None:
    from rvg_ros.rvg.dataset import occupancy_grid
    from rvg_ros.rvg.fine_data import make_fine_sample, predicted_occupancy
    from rvg_ros.rvg.fine_train import load_fine_item
    from rvg_ros.rvg.model import ModelConfig, RVGModel
    from rvg_ros.sim.objects import make_object

    coarse_model = RVGModel(
        ModelConfig(
            resolution=16,
            view_size=32,
            cond_dim=32,
            encoder_depth=1,
            condition_depth=1,
            condition_tokens=8,
            flow_dim=32,
            flow_depth=1,
            heads=2,
        )
    ).eval()
    _randomise(coarse_model)
    seed = 1_000_005
    obj = make_object(None, seed)
    cube = TargetCube(center=obj.bounds.mean(axis=0), side=1.4 * obj.extent)
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {"seed": np.array(seed)}
    for m in ("rgbd", "rgb"):
        arrays[f"{m}_cube"] = np.array([*cube.center, cube.side])
        arrays[f"{m}_occupancy"] = occupancy_grid(obj, cube, 16, 2)
        arrays[f"{m}_evidence"] = rng.integers(0, 3, (16,) * 3).astype(np.uint8)
        arrays[f"{m}_views"] = rng.normal(size=(3, 12, 32, 32)).astype(np.float16)
    coarse_path = tmp_path / f"{seed:08d}.npz"
    np.savez(coarse_path, **arrays)
    sample = make_fine_sample(coarse_path, TINY_LATENT, coarse_model)
    fine_path = tmp_path / "fine.npz"
    np.savez(fine_path, **sample)
    for m in ("rgbd", "rgb"):
        expected = predicted_occupancy(
            coarse_model, cube, arrays[f"{m}_evidence"], arrays[f"{m}_views"], m == "rgbd", seed
        )
        stored = sample[f"{m}_occupancy"].astype(np.float32)
        np.testing.assert_allclose(stored, expected, atol=1e-3)  # float16, seeded: the same
        np.testing.assert_array_equal(sample[f"{m}_coords"], active_voxels(stored))
        # Training reads the predicted occupancy, not the sample's true one.
        item = load_fine_item(
            coarse_path, fine_path, rng, FineTrainConfig(), TINY_LATENT, m, augment=False
        )
        np.testing.assert_array_equal(item["occupancy"], stored)
        assert not np.array_equal(item["occupancy"], arrays[f"{m}_occupancy"])


def test_fine_tuning_starts_from_the_given_weights(tmp_path: Path) -> None:
    for split in ("train", "val"):
        (tmp_path / "coarse" / split).mkdir(parents=True)
        (tmp_path / "fine" / split).mkdir(parents=True)
        _write_pair(tmp_path / "coarse" / split, tmp_path / "fine" / split, 0)
    start = FineModel(TINY)
    _randomise(start, seed=3)
    start.save(tmp_path / "start.safetensors", {})
    args = (tmp_path / "coarse", tmp_path / "fine")
    # Learning rate 0: the run's weights are the ones it started from, exactly.
    config = FineTrainConfig(
        steps=2, batch=1, lr=0.0, warmup=1, val_samples=0, init=str(tmp_path / "start.safetensors")
    )
    tuned = FineModel.load(train_fine(*args, tmp_path / "run", config, TINY))
    for (k, x), (_, y) in zip(tuned.state_dict().items(), start.state_dict().items(), strict=True):
        assert torch.equal(x, y), k
    with pytest.raises(ValueError, match="model config differs"):
        train_fine(*args, tmp_path / "other", config, replace(TINY, flow_depth=1))
