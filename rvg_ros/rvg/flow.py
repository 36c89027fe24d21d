"""Rectified flow: the training loss and the Euler sampler with classifier-free guidance.

Convention (ReconViaGen / TRELLIS): x_t = (1 - t) x0 + t eps, the network predicts
v = eps - x0, sampling integrates from t = 1 (noise) to t = 0 (data).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# velocity(x_t, t, drop) -> v ; drop (B,) bool selects the null condition per item.
VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def flow_matching_loss(
    velocity: VelocityFn,
    x0: torch.Tensor,
    drop: torch.Tensor,
    weight: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Conditional flow matching: weighted MSE between predicted and true velocity."""
    b = x0.shape[0]
    t = torch.rand(b, generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    tt = t.view(b, *([1] * (x0.dim() - 1)))
    x_t = (1 - tt) * x0 + tt * eps
    v = velocity(x_t, t, drop)
    return (weight * (v - (eps - x0)) ** 2).sum() / weight.sum()


@torch.no_grad()
def sample_flow(
    velocity: VelocityFn,
    shape: tuple[int, ...],
    steps: int,
    cfg_scale: float,
    generator: torch.Generator,
    device: str = "cpu",
    on_step: Callable[[int, int], None] | None = None,
    x_start: torch.Tensor | None = None,
    t_start: float = 1.0,
) -> torch.Tensor:
    """Euler integration from t=1 to t=0 with CFG: v = v_u + s (v_c - v_u).

    With ``cfg_scale == 1`` only the conditional branch runs (same result, half the cost).
    With ``x_start`` and ``t_start < 1`` the integration starts at ``t_start`` from
    ``(1 - t_start) x_start + t_start eps`` (SDEdit): the sample stays near ``x_start`` where
    the model is unsure, and ``steps`` then counts the steps actually taken.
    """
    if not 0.0 < t_start <= 1.0:
        raise ValueError(f"t_start must be in (0, 1], got {t_start}")
    x = torch.randn(shape, generator=generator, device="cpu").to(device)
    if x_start is not None and t_start < 1.0:
        x = (1.0 - t_start) * x_start.to(device) + t_start * x
    b = shape[0]
    times = torch.linspace(t_start, 0.0, steps + 1)
    keep = torch.zeros(b, dtype=torch.bool, device=device)
    for i in range(steps):
        t, t_next = float(times[i]), float(times[i + 1])
        tb = torch.full((b,), t, device=device)
        if cfg_scale == 1.0:
            v = velocity(x, tb, keep)
        else:
            both = velocity(torch.cat([x, x]), torch.cat([tb, tb]), torch.cat([keep, ~keep]))
            v_cond, v_uncond = both[:b], both[b:]
            v = v_uncond + cfg_scale * (v_cond - v_uncond)
        x = x + (t_next - t) * v
        if on_step is not None:
            on_step(i + 1, steps)
    return x
