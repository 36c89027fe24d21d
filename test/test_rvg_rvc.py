"""Rendering-aware velocity compensation and per-view weighted fusion (part 2 building blocks)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from rvg_ros.core.types import Intrinsics, TargetCube
from rvg_ros.rvg.flow import sample_flow
from rvg_ros.rvg.models.view_fusion import ViewFusion, ViewFusionConfig
from rvg_ros.rvg.render import RenderConfig, SDFField, camera_in_cube, render
from rvg_ros.rvg.render_loss import View
from rvg_ros.rvg.rvc import RVCConfig, RVCVelocity, compensate, sample_flow_rvc, view_losses

RES = 16
UNIT = TargetCube(center=np.zeros(3), side=1.0)
K = Intrinsics(fx=40.0, fy=40.0, cx=15.5, cy=15.5, width=32, height=32)
# A soft, coarse render: a toy that runs in milliseconds and has gradients a voxel or two out.
CONFIG = RVCConfig(render=RenderConfig(samples=32, softness_voxels=1.0))
TRUE = (0.0, 0.0, 0.0, 0.3)  # sphere centre and radius
OFFSET = (0.07, -0.03, 0.0, 0.3)  # what the "model" believes: deliberately shifted


def look_at(eye: np.ndarray) -> np.ndarray:
    z = -eye / np.linalg.norm(eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x = x / np.linalg.norm(x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, np.cross(z, x), z, eye
    return m


def cameras(n: int = 4):
    for i in range(n):
        a = 2 * math.pi * i / n + 0.3
        yield camera_in_cube(
            K, look_at(np.array([1.8 * math.cos(a), 1.8 * math.sin(a), 0.9])), UNIT
        )


def sphere_field(params) -> SDFField:
    """Differentiable decoder of the toy 4-number latent: a sphere's SDF on the grid."""
    axis = (torch.arange(RES, dtype=torch.float32) + 0.5) / RES - 0.5
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    params = torch.as_tensor(params, dtype=torch.float32)
    sdf = (grid - params[:3]).norm(dim=-1) - params[3]
    colour = torch.stack([0.5 + grid[..., 0], 0.5 + grid[..., 1], 0.5 - grid[..., 2]])
    return SDFField(sdf, colour.clamp(0, 1))


def decode_params(x0: torch.Tensor) -> list[SDFField]:
    return [sphere_field(p) for p in x0]


def decode_grid(x0: torch.Tensor) -> list[SDFField]:
    """A latent that is the SDF grid itself."""
    return [SDFField(x) for x in x0]


def target_views(n: int = 4) -> list[View]:
    field = sphere_field(TRUE)
    views = []
    for cam in cameras(n):
        r = render(field, cam, CONFIG.render)
        hit = r.silhouette > 0.5
        views.append(View(cam, r.silhouette.detach(), r.depth * hit, r.colour.detach()))
    return views


VIEWS = target_views()


# Data spread of the toy "model": 0.05 cube units in the centre, 0.02 in the radius.
SIGMA = (0.05, 0.05, 0.05, 0.02)


def gaussian_velocity(mean, sigma=SIGMA):
    """The exact rectified-flow velocity when the data are N(mean, diag(sigma^2)): a "model"
    that believes in ``mean`` and follows x_t as much as that belief allows. The null branch
    (CFG) believes in 0.8 * mean."""
    m = torch.as_tensor(mean, dtype=torch.float32)
    s2 = torch.as_tensor(sigma, dtype=torch.float32) ** 2

    def velocity(x: torch.Tensor, t: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        tt = t.view(-1, *([1] * (x.dim() - 1)))
        centre = torch.where(drop.view_as(tt), 0.8 * m, m)
        c = (1 - tt) * s2 / ((1 - tt) ** 2 * s2 + tt**2)  # E[x0 | x_t] = centre + c (...)
        x0 = centre + c * (x - (1 - tt) * centre)
        eps = (x - (1 - tt) * x0) / tt
        return eps - x0

    return velocity


# --- one compensation step -------------------------------------------------------------------


def offset_step(t: float = 0.3):
    """x_t and v such that x0_hat = x_t - t v is the offset sphere's SDF grid."""
    g = torch.Generator().manual_seed(0)
    x0_hat = sphere_field(OFFSET).sdf[None]
    v = torch.randn(x0_hat.shape, generator=g)
    return x0_hat + t * v, v


@pytest.mark.parametrize("normalise, strength", [("peak", 0.1), ("rms", 0.1), ("none", 1e-3)])
def test_compensation_lowers_every_views_loss(normalise, strength):
    x_t, v = offset_step()
    cfg = RVCConfig(strength=strength, normalise=normalise, render=CONFIG.render)
    _, step = compensate(x_t, 0.3, v, decode_grid, VIEWS, cfg)
    assert step.kept.all()
    assert (step.after < step.before).all(), (step.before, step.after)
    # And the opposite sign raises it: the test can tell the directions apart.
    bad = RVCConfig(strength=-strength, normalise=normalise, render=CONFIG.render)
    _, worse = compensate(x_t, 0.3, v, decode_grid, VIEWS, bad)
    assert (worse.after > worse.before).all()


def test_raw_dv_is_the_gradient_with_respect_to_x0_hat():
    x_t, v = offset_step()
    cfg = RVCConfig(strength=1.0, normalise="none", measure_after=False, render=CONFIG.render)
    v_new, _ = compensate(x_t, 0.3, v, decode_grid, VIEWS, cfg)
    x0 = (x_t - 0.3 * v).requires_grad_(True)
    (grad,) = torch.autograd.grad(view_losses(decode_grid(x0), VIEWS, cfg).sum(), x0)
    assert torch.allclose(v_new - v, grad, atol=1e-6)


def test_rms_normalised_dv_has_the_rms_of_v():
    x_t, v = offset_step()
    cfg = RVCConfig(strength=1.0, normalise="rms", measure_after=False, render=CONFIG.render)
    v_new, _ = compensate(x_t, 0.3, v, decode_grid, VIEWS, cfg)
    assert (v_new - v).pow(2).mean().sqrt().item() == pytest.approx(v.pow(2).mean().sqrt().item())


@pytest.mark.parametrize("t, strength", [(0.5, 0.1), (0.7, 0.1), (0.3, 0.0)])
def test_no_compensation_at_or_after_t_start_or_with_zero_strength(t, strength):
    x_t, v = offset_step(t)
    v_new, step = compensate(x_t, t, v, decode_grid, VIEWS, RVCConfig(strength=strength))
    assert v_new is v and step is None


def test_views_above_the_threshold_are_dropped():
    """A view whose pose is wrong (the camera 0.3 cube sides off to its right) disagrees with
    the rest and is ignored."""
    x_t, v = offset_step()
    cam = VIEWS[0].camera
    shifted = cam.camera_to_cube.clone()
    shifted[:3, 3] += 0.3 * shifted[:3, 0]
    wrong = View(
        replace(cam, camera_to_cube=shifted), VIEWS[0].mask, VIEWS[0].depth, VIEWS[0].colour
    )
    views = [*VIEWS, wrong]
    cfg = RVCConfig(render=CONFIG.render)
    v_all, step = compensate(x_t, 0.3, v, decode_grid, views, cfg)
    assert step.geometry[0, -1] > cfg.max_view_loss > step.geometry[0, :-1].max()
    assert step.kept[0].tolist() == [True] * 4 + [False]
    v_good, _ = compensate(x_t, 0.3, v, decode_grid, VIEWS, cfg)
    assert torch.allclose(v_all, v_good, atol=1e-6)


def test_every_view_dropped_leaves_v_unchanged():
    x_t, v = offset_step()
    cfg = RVCConfig(max_view_loss=-1.0, render=CONFIG.render)
    v_new, step = compensate(x_t, 0.3, v, decode_grid, VIEWS, cfg)
    assert not step.kept.any()
    assert torch.equal(v_new, v)


# --- sampling with RVC ------------------------------------------------------------------------


def net_velocity():
    """A small untrained network as the velocity: what matters is that it is not linear."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(RES + 1, 32), torch.nn.Tanh(), torch.nn.Linear(32, RES)
    )

    def velocity(x: torch.Tensor, t: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        tt = t.view(-1, 1, 1, 1).expand(*x.shape[:-1], 1)
        out = net(torch.cat([x, tt], dim=-1))
        return torch.where(drop.view(-1, 1, 1, 1), 0.5 * out, out)

    return velocity


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
@pytest.mark.parametrize("config", [RVCConfig(strength=0.0), RVCConfig(t_start=0.0)])
def test_without_compensation_sampling_is_exactly_sample_flow(cfg_scale, config):
    velocity = net_velocity()
    shape = (2, RES, RES, RES)
    plain = sample_flow(velocity, shape, 6, cfg_scale, torch.Generator().manual_seed(3))
    x, steps = sample_flow_rvc(
        velocity, shape, 6, cfg_scale, torch.Generator().manual_seed(3), decode_grid, VIEWS, config
    )
    assert torch.equal(x, plain)
    assert steps == []


def test_guided_batch_gets_guided_v_plus_dv():
    """In a CFG batch the wrapper adds dv to both halves: the sampler's combination is then
    the guided velocity plus lambda dv, computed from the guided velocity's x0_hat."""
    velocity = gaussian_velocity(OFFSET)
    config = replace(CONFIG, max_view_loss=3.0)  # this test is about the arithmetic alone
    wrapped = RVCVelocity(velocity, decode_params, VIEWS, 3.0, config)
    g = torch.Generator().manual_seed(0)
    x = 0.7 * torch.tensor([OFFSET]) + 0.3 * torch.randn(1, 4, generator=g)
    t = torch.full((2,), 0.3)
    drop = torch.tensor([False, True])
    both = wrapped(torch.cat([x, x]), t, drop)
    combined = both[1:] + 3.0 * (both[:1] - both[1:])
    plain = velocity(torch.cat([x, x]), t, drop)
    guided = plain[1:] + 3.0 * (plain[:1] - plain[1:])
    expected, _ = compensate(x, 0.3, guided, decode_params, VIEWS, config)
    assert torch.allclose(combined, expected, atol=1e-5)
    assert not torch.allclose(combined, guided, atol=1e-3)


def final_loss(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return view_losses(decode_params(x), VIEWS, CONFIG)


def test_rvc_sampling_pulls_an_offset_generation_onto_the_views():
    velocity = gaussian_velocity(OFFSET)
    shape = (3, 4)  # three samples of the toy 4-number latent
    plain = sample_flow(velocity, shape, 10, 1.0, torch.Generator().manual_seed(0))

    def rvc(strength: float):
        g = torch.Generator().manual_seed(0)
        config = replace(CONFIG, strength=strength)
        return sample_flow_rvc(velocity, shape, 10, 1.0, g, decode_params, VIEWS, config)

    x, steps = rvc(0.1)  # the paper's lambda
    before, after = final_loss(plain).mean(dim=1), final_loss(x).mean(dim=1)
    # Measured: 0.46-0.77 -> 0.33-0.56 per sample; lambda 0.3 pulls harder (0.07-0.23).
    assert (after < 0.9 * before).all(), (before, after)
    assert (final_loss(rvc(0.3)[0]).mean(dim=1) < after).all()
    # The samples moved towards the true centre.
    assert (x[:, :3].norm(dim=1) < plain[:, :3].norm(dim=1)).all()
    # One report per step with t < t_start, as the sampler's time grid has them.
    times = torch.linspace(1.0, 0.0, 11)[:-1]
    assert [s.t for s in steps] == [float(t) for t in times if float(t) < 0.5]
    assert all(s.before.shape == (3, 4) and s.after.shape == (3, 4) for s in steps)
    assert all((s.after <= s.before + 1e-6).all() for s in steps)


def test_rvc_sampling_is_deterministic_by_seed():
    velocity = gaussian_velocity(OFFSET)

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return sample_flow_rvc(velocity, (1, 4), 8, 1.0, g, decode_params, VIEWS, CONFIG)[0]

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


# --- per-view weighted fusion -----------------------------------------------------------------


def fusion(per_token: bool = True) -> ViewFusion:
    torch.manual_seed(0)
    return ViewFusion(ViewFusionConfig(dim=32, context_dim=24, heads=4, per_token=per_token))


def fusion_inputs(views: int = 4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 10, 32, generator=g), torch.randn(2, views, 7, 24, generator=g)


@pytest.mark.parametrize("per_token", [True, False])
def test_fusion_weights_in_unit_interval_and_view_order_invariant(per_token):
    module = fusion(per_token)
    x, ctx = fusion_inputs()
    fused, w = module(x, ctx)
    assert w.shape == (2, 4, 10) and ((w >= 0) & (w <= 1)).all()
    if not per_token:
        assert torch.allclose(w, w[..., :1].expand_as(w))
    perm = torch.tensor([2, 0, 3, 1])
    fused_p, w_p = module(x, ctx[:, perm])
    assert torch.allclose(fused, fused_p, atol=1e-5)
    assert torch.allclose(w[:, perm], w_p, atol=1e-6)


def test_fusion_is_the_weighted_mean_of_per_view_attention():
    module = fusion()
    x, ctx = fusion_inputs()
    fused, w = module(x, ctx)
    per_view = torch.stack([module.attn(x, ctx[:, v]) for v in range(4)], dim=1)
    expected = (w[..., None] * per_view).sum(1) / w.sum(1)[..., None]
    assert torch.allclose(fused, expected, atol=1e-5)
    # Identical views: the mean of equal things is that thing, whatever the number of views.
    same = ctx[:, :1].expand(-1, 3, -1, -1)
    assert torch.allclose(module(x, same)[0], module.attn(x, ctx[:, 0]), atol=1e-5)


def test_absent_views_get_zero_weight_and_change_nothing():
    module = fusion()
    x, ctx = fusion_inputs()
    padding = torch.tensor([[False, False, True, True], [False, True, False, True]])
    fused, w = module(x, ctx, view_padding=padding)
    assert (w[padding] == 0).all()
    alone = module(x[:1], ctx[:1, :2])[0]
    assert torch.allclose(fused[:1], alone, atol=1e-5)
    # A view whose tokens are all padded (and that is marked absent) does not make NaNs.
    tokens = torch.zeros(2, 4, 7, dtype=torch.bool)
    tokens[padding] = True
    fused_t, _ = module(x, ctx, view_padding=padding, context_padding=tokens)
    assert torch.isfinite(fused_t).all() and torch.allclose(fused_t, fused, atol=1e-5)


def test_fusion_trains_its_weights():
    module = fusion()
    x, ctx = fusion_inputs()
    fused, w = module(x, ctx)
    (fused.sum() + w.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())
    assert module.weight[-1].weight.grad.abs().sum() > 0
