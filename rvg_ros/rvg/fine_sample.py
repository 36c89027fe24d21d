"""Sampling the fine stage for one object: what the backend calls after the coarse stage.

Coarse occupancy (the sparse-structure stage's output, evidence enforced) -> active voxels ->
per-view conditions -> rectified-flow sampling of the latents (Euler, CFG; paper: 12 steps,
CFG 3.0), optionally with rendering-aware velocity compensation (``rvc.sample_flow_rvc``
rendering ``fine_decode.rvc_decoder``'s field into the input views). ``fine_decode.decode_mesh``
turns the result into a mesh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from rvg_ros.rvg.fine_decode import rvc_decoder
from rvg_ros.rvg.fine_latent import active_voxels
from rvg_ros.rvg.fine_model import FineModel, voxel_features
from rvg_ros.rvg.flow import Known, VelocityFn, for_device, sample_flow
from rvg_ros.rvg.render_loss import View
from rvg_ros.rvg.rvc import RVCConfig, RVCStep, sample_flow_rvc


@dataclass(frozen=True)
class FineSampleConfig:
    steps: int = 12
    cfg_scale: float = 3.0
    seed: int = 0
    rvc: RVCConfig | None = None  # None: no compensation


@dataclass
class FineSample:
    coords: torch.Tensor  # (M, 3) active voxel indices
    latent: torch.Tensor  # (M, channels)
    rvc_steps: list[RVCStep] = field(default_factory=list)  # per-view losses before / after
    known_entries: int = 0  # SDF entries the measurement fixed (``known_sdf``)


def fine_velocity_fn(
    model: FineModel, batch: dict[str, torch.Tensor], condition: torch.Tensor
) -> VelocityFn:
    """Closure for the flow code over a (padded) batch with keys coords, features, view_mask,
    token_mask; repeats the conditions when CFG doubles the batch."""

    def velocity(x: torch.Tensor, t: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        reps = x.shape[0] // batch["coords"].shape[0]

        def rep(a: torch.Tensor) -> torch.Tensor:
            return a.repeat(reps, *([1] * (a.dim() - 1)))

        return model.velocity(
            x,
            t,
            rep(batch["coords"]),
            rep(batch["features"]),
            rep(condition),
            rep(batch["view_mask"]),
            rep(batch["token_mask"]),
            drop,
        )

    return velocity


@torch.no_grad()
def sample_fine(
    model: FineModel,
    occupancy: np.ndarray,
    evidence: np.ndarray,
    views: np.ndarray,
    config: FineSampleConfig | None = None,
    rvc_views: Sequence[View] = (),
    on_step: Callable[[int, int], None] | None = None,
    device: str = "cpu",
    known_sdf: tuple[np.ndarray, np.ndarray] | None = None,
) -> FineSample:
    """Fine latents for one object. ``occupancy`` / ``evidence`` (R, R, R) as the coarse stage
    has them, ``views`` (V, C, H, W) from ``prior.view_inputs``; ``rvc_views`` (render targets,
    ``render_loss.view_from_frame``, on ``device``) are needed only when ``config.rvc`` is set.
    ``device`` must hold the model; the noise is drawn on the CPU, so a seed gives the same
    start on every device. ``known_sdf``: (M, k^3) mask and values of SDF entries the
    measurement fixes (``fine_measured``), M the active voxels of ``occupancy`` in
    ``active_voxels``' order."""
    config = config or FineSampleConfig()
    lc = model.config.latent
    coords = torch.from_numpy(active_voxels(occupancy, lc.partial)).to(device)
    occ = torch.as_tensor(np.asarray(occupancy, dtype=np.float32)).to(device)
    batch = {
        "coords": coords[None],
        "features": voxel_features(coords, torch.as_tensor(evidence).to(device), occ)[None],
        "token_mask": torch.ones(1, len(coords), dtype=torch.bool, device=device),
        "views": torch.as_tensor(np.asarray(views, dtype=np.float32)).to(device)[None],
        "view_mask": torch.ones(1, len(views), dtype=torch.bool, device=device),
    }
    if len(coords) == 0:
        return FineSample(coords, torch.zeros(0, lc.channels, device=device))
    condition = model.per_view_condition(batch["views"], batch["view_mask"])
    velocity = for_device(fine_velocity_fn(model, batch, condition), device)
    shape = (1, len(coords), lc.channels)
    generator = torch.Generator().manual_seed(config.seed)
    known = None if known_sdf is None else known_entries(*known_sdf, lc.channels, device)
    n_known = 0 if known_sdf is None else int(np.count_nonzero(known_sdf[0]))
    if config.rvc is None:
        x = sample_flow(
            velocity,
            shape,
            config.steps,
            config.cfg_scale,
            generator,
            device,
            on_step=on_step,
            known=known,
        )
        return FineSample(coords, x[0], known_entries=n_known)
    x, steps = sample_flow_rvc(
        velocity,
        shape,
        config.steps,
        config.cfg_scale,
        generator,
        rvc_decoder([coords], [occ], lc),
        rvc_views,
        config.rvc,
        device=device,
        on_step=on_step,
        known=known,
    )
    return FineSample(coords, x[0], steps, n_known)


def known_entries(mask: np.ndarray, values: np.ndarray, channels: int, device: str) -> Known:
    """``flow.Known`` for a (1, M, channels) sample from (M, k^3) SDF entries (the first
    channels; the colour channels stay generated)."""
    m, sdf = mask.shape
    full_mask = torch.zeros(1, m, channels, dtype=torch.bool)
    full_values = torch.zeros(1, m, channels)
    full_mask[0, :, :sdf] = torch.from_numpy(np.asarray(mask, dtype=bool))
    full_values[0, :, :sdf] = torch.from_numpy(np.asarray(values, dtype=np.float32))
    return Known(full_mask.to(device), full_values.to(device))
