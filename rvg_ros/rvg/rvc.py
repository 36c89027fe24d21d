"""Rendering-aware velocity compensation (RVC, ReconViaGen section 3.4), independent of the net.

At a late sampling step (t < ``t_start``) the model's velocity v gives a one-step estimate of the
data, x0_hat = x_t - t v. It is decoded to an SDF field, rendered into every input view, and
compared with the views (``render_loss.view_loss``). Views whose geometric loss (silhouette +
depth) exceeds ``max_view_loss`` are dropped (they disagree with the rest: a bad pose or mask).
The velocity is then corrected, v' = v + lambda dv with dv = dL/dx0_hat (the kept views'
summed loss).

Sign: x0_hat' = x_t - t v' = x0_hat - t lambda dL/dx0_hat, a gradient-descent step on the
rendering loss; and the Euler step x_{t'} = x_t + (t' - t) v' with t' < t moves x the same way.

``normalise`` sets the correction's scale. The raw gradient's size depends on the decoder, the
latent's scale and the image size, so lambda = 0.1 would mean nothing; normalised, lambda is the
correction's size relative to the velocity:

- ``"peak"`` (default): dv = g * rms(v) / g_typ with g_typ = sqrt(sum g^4 / sum g^2), the
  gradient-energy-weighted RMS of g -- the size of the entries that carry the gradient. Those
  entries move by about lambda * rms(v); entries with little gradient move proportionally less.
  Why not the RMS of g over the whole latent: a sparse latent (the fine stage's per-voxel
  sub-voxel SDF) gets gradient on a few entries only -- those the views see near a silhouette
  or surface. Measured on the fine sphere: 8 % of the entries are non-zero and 0.03 % carry
  half of the gradient's energy, so rescaling the *whole* gradient to rms(v) put steps of
  ~20 rms(v) on those few and lambda = 0.1 raised the loss (0.16 -> 0.29). The RMS over the
  non-zero entries has the same flaw (the gradient is heavy-tailed). g_typ equals |g| when all
  entries are alike and ignores entries with negligible gradient, so one lambda works on dense
  and sparse latents.
- ``"rms"``: the whole gradient rescaled to rms(v) (dense latents only; kept for comparison).
- ``"none"``: the raw gradient; lambda then carries the decoder's units.

rms(v) is over each sample's whole latent (padded tokens included: sample a single item or keep
padding small).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from rvg_ros.rvg.flow import VelocityFn, sample_flow
from rvg_ros.rvg.render import RenderConfig, SDFField, render_views
from rvg_ros.rvg.render_loss import LossConfig, View, photo_consistency, view_loss

# decode(x0_hat (B, ...)) -> one renderable field per batch item, differentiable in x0_hat.
Decoder = Callable[[torch.Tensor], Sequence[SDFField]]


@dataclass(frozen=True)
class RVCConfig:
    strength: float = 0.1  # lambda; 0 turns RVC off (sampling is then exactly sample_flow's)
    t_start: float = 0.5  # compensate only for t < t_start
    # Views whose geometric loss (silhouette + depth) is above this are dropped (a bad pose or
    # mask). Not the total: 1 - SSIM of a per-voxel-colour render against a textured photo is
    # 0.65-0.75 on YCB's mug for views that agree well in shape (silhouette 0.15, depth 0.19),
    # and with colour in the test every view was dropped, making RVC a no-op.
    max_view_loss: float = 0.8
    # How dv is scaled before lambda applies (module docstring): "peak", "rms" or "none".
    normalise: Literal["peak", "rms", "none"] = "peak"
    measure_after: bool = True  # also render x0_hat after the correction, for the report
    render: RenderConfig = field(default_factory=RenderConfig)
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class RVCStep:
    """One compensated step: per-view totals (B, V) at x0_hat before and after, views kept."""

    t: float
    before: torch.Tensor
    after: torch.Tensor | None
    kept: torch.Tensor
    geometry: torch.Tensor | None = None  # (B, V) silhouette + depth part of ``before``


def view_loss_terms(
    fields: Sequence[SDFField], views: Sequence[View], config: RVCConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view loss totals (B, V) of each field against every view, differentiable, and their
    geometric part (silhouette + depth, weighted), by which views are dropped."""
    cfg = config or RVCConfig()
    totals, geometry = [], []
    for f in fields:
        renders = render_views(f, [v.camera for v in views], cfg.render)
        terms = [view_loss(r, v, cfg.loss) for r, v in zip(renders, views, strict=True)]
        total = torch.stack([t.total for t in terms])
        if cfg.loss.photometric > 0.0 and len(views) > 1:
            total = total + cfg.loss.photometric * photo_consistency(renders, views, cfg.loss)
        totals.append(total)
        geometry.append(
            torch.stack(
                [cfg.loss.silhouette * t.silhouette + cfg.loss.depth * t.depth for t in terms]
            )
        )
    return torch.stack(totals), torch.stack(geometry)


def view_losses(
    fields: Sequence[SDFField], views: Sequence[View], config: RVCConfig | None = None
) -> torch.Tensor:
    """Per-view loss totals (B, V) of each field against every view; differentiable."""
    return view_loss_terms(fields, views, config)[0]


def normalised_dv(
    grad: torch.Tensor, v: torch.Tensor, mode: Literal["peak", "rms", "none"]
) -> torch.Tensor:
    """dv from dL/dx0_hat, per sample (first dimension), as ``RVCConfig.normalise`` says."""
    if mode == "none":
        return grad
    dims = tuple(range(1, v.dim()))
    rms_v = v.pow(2).mean(dim=dims, keepdim=True).sqrt()
    if mode == "rms":
        scale = grad.pow(2).mean(dim=dims, keepdim=True).sqrt()
    elif mode == "peak":
        # sqrt(sum g^4 / sum g^2), computed on g / max|g| so that g^4 cannot underflow.
        top = grad.abs().amax(dim=dims, keepdim=True).clamp(min=1e-30)
        u2 = (grad / top).pow(2)
        ratio = u2.pow(2).sum(dim=dims, keepdim=True) / u2.sum(dim=dims, keepdim=True)
        scale = top * ratio.nan_to_num(0.0).sqrt()
    else:
        raise ValueError(f"unknown RVC normalisation {mode!r}")
    # A zero gradient (every view dropped) stays zero.
    return grad * rms_v / scale.clamp(min=1e-30)


def compensate(
    x_t: torch.Tensor,
    t: float,
    v: torch.Tensor,
    decode: Decoder,
    views: Sequence[View],
    config: RVCConfig | None = None,
) -> tuple[torch.Tensor, RVCStep | None]:
    """v + lambda dv at time t (or v itself when RVC does not apply), and the step's report."""
    cfg = config or RVCConfig()
    if cfg.strength == 0.0 or t >= cfg.t_start or not views:
        return v, None
    with torch.enable_grad():
        x0 = (x_t - t * v).detach().requires_grad_(True)
        losses, geometry = view_loss_terms(decode(x0), views, cfg)
        kept = geometry.detach() <= cfg.max_view_loss
        # A dropped view contributes nothing; with every view dropped dv is zero.
        (grad,) = torch.autograd.grad((losses * kept).sum(), x0)
    v_new = v + cfg.strength * normalised_dv(grad, v, cfg.normalise)
    after = None
    if cfg.measure_after:
        with torch.no_grad():
            after = view_losses(decode(x_t - t * v_new), views, cfg)
    return v_new, RVCStep(
        t=t, before=losses.detach(), after=after, kept=kept, geometry=geometry.detach()
    )


class RVCVelocity:
    """Wraps a velocity function so that ``flow.sample_flow`` samples with RVC.

    ``sample_flow`` runs classifier-free guidance by calling the velocity on a doubled batch
    (``drop`` False = conditional, True = null condition) and combining v_u + s (v_c - v_u).
    The wrapper forms that same guided v, compensates it, and adds the same dv to both halves,
    so the sampler's combination yields guided v + lambda dv. With strength 0 or t >= t_start
    it returns the wrapped function's output untouched, so sampling is exactly sample_flow's.
    """

    def __init__(
        self,
        velocity: VelocityFn,
        decode: Decoder,
        views: Sequence[View],
        cfg_scale: float,
        config: RVCConfig | None = None,
    ) -> None:
        self.velocity, self.decode, self.views = velocity, decode, list(views)
        self.cfg_scale = cfg_scale
        self.config = config or RVCConfig()
        self.steps: list[RVCStep] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        v = self.velocity(x, t, drop)
        time = float(t[0])
        if self.config.strength == 0.0 or time >= self.config.t_start:
            return v
        cond = ~drop
        if bool(drop.any()):  # a guided batch: conditional and null halves
            v_c, v_u = v[cond], v[drop]
            guided = v_u + self.cfg_scale * (v_c - v_u)
        else:
            guided = v[cond]
        new, step = compensate(x[cond], time, guided, self.decode, self.views, self.config)
        if step is not None:
            self.steps.append(step)
        dv = new - guided
        out = v.clone()
        out[cond] += dv
        if bool(drop.any()):
            out[drop] += dv
        return out


def sample_flow_rvc(
    velocity: VelocityFn,
    shape: tuple[int, ...],
    steps: int,
    cfg_scale: float,
    generator: torch.Generator,
    decode: Decoder,
    views: Sequence[View],
    config: RVCConfig | None = None,
    device: str = "cpu",
    on_step: Callable[[int, int], None] | None = None,
    **sample_options: Any,
) -> tuple[torch.Tensor, list[RVCStep]]:
    """``flow.sample_flow`` with RVC; returns the sample and one report per compensated step.

    ``sample_options`` go to ``sample_flow`` unchanged (whatever else it accepts)."""
    wrapped = RVCVelocity(velocity, decode, views, cfg_scale, config)
    x = sample_flow(
        wrapped,
        shape,
        steps,
        cfg_scale,
        generator,
        device=device,
        on_step=on_step,
        **sample_options,
    )
    return x, wrapped.steps
