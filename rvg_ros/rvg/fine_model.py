"""The fine-stage generator: view encoder + Local Per-View Condition + fine latent flow.

Like ``model.RVGModel`` the configuration is a dataclass stored in the safetensors metadata, so
a weights file rebuilds the network it was trained as. The view encoder has the part-1
encoder's shape (``ModelConfig`` defaults), so training can start from the part-1 weights
(``fine_train.init_encoder``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rvg_ros.rvg.fine_latent import LatentConfig
from rvg_ros.rvg.model import WeightsError, load_checked, read_weights, save_weights
from rvg_ros.rvg.models.encoder import MultiViewEncoder
from rvg_ros.rvg.models.fine_flow import FineFlow, FineFlowConfig
from rvg_ros.rvg.models.pvc import PerViewCondition
from rvg_ros.rvg.prior import VIEW_CHANNELS, VIEW_SIZE

FINE_WEIGHTS_NAME = "rvg_fine.safetensors"


@dataclass(frozen=True)
class FineModelConfig:
    latent: LatentConfig = field(default_factory=LatentConfig)
    view_size: int = VIEW_SIZE
    view_channels: int = VIEW_CHANNELS
    view_patch: int = 8
    cond_dim: int = 96
    encoder_depth: int = 4
    pvc_depth: int = 2
    pvc_tokens: int = 16
    flow_dim: int = 128
    flow_depth: int = 4
    heads: int = 4
    # Voxels per flow token and axis (2: 2^3 cells, ~4.5 active voxels per token; see
    # models/fine_flow.py); 1 is the first version's one token per voxel.
    flow_patch: int = 2
    flow_voxel_dim: int = 128

    @classmethod
    def from_dict(cls, d: dict) -> FineModelConfig:
        d = dict(d)
        d["latent"] = LatentConfig(**d.get("latent", {}))
        return cls(**d)

    def flow_config(self) -> FineFlowConfig:
        return FineFlowConfig(
            channels=self.latent.channels,
            resolution=self.latent.resolution,
            dim=self.flow_dim,
            depth=self.flow_depth,
            heads=self.heads,
            context_dim=self.cond_dim,
            patch=self.flow_patch,
            voxel_dim=self.flow_voxel_dim,
        )


def voxel_features(
    coords: torch.Tensor, evidence: torch.Tensor, occupancy: torch.Tensor
) -> torch.Tensor:
    """What the coarse stage knows per active voxel: (M, 4) = evidence one-hot (unknown, free,
    surface) and whether the coarse occupancy puts the voxel inside (>= 0.5)."""
    i, j, k = coords.long().unbind(-1)
    state = F.one_hot(evidence[i, j, k].long(), 3).float()
    inside = (occupancy[i, j, k] >= 0.5).float()[:, None]
    return torch.cat([state, inside], dim=-1)


class FineModel(nn.Module):
    def __init__(self, config: FineModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = MultiViewEncoder(
            c.view_channels, c.cond_dim, c.encoder_depth, c.heads, c.view_size, c.view_patch
        )
        self.pvc = PerViewCondition(c.cond_dim, c.pvc_depth, c.heads, c.pvc_tokens)
        # CFG's "unconditional" branch: every view's PVC tokens replaced by these.
        self.null_condition = nn.Parameter(torch.zeros(1, 1, c.pvc_tokens, c.cond_dim))
        self.flow = FineFlow(c.flow_config())

    def per_view_condition(self, views: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
        """views (B, V, C, H, W), view_mask (B, V) True = real -> PVC tokens (B, V, N, D)."""
        return self.pvc(self.encoder(views, view_mask))

    def velocity(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        coords: torch.Tensor,
        features: torch.Tensor,
        condition: torch.Tensor,
        view_mask: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """v = eps - x0 for x_t (B, N, C). ``token_mask`` (B, N) True = real voxel; ``drop``
        (B,) True replaces the PVC tokens by the null condition."""
        if drop is not None:
            null = self.null_condition.expand_as(condition)
            condition = torch.where(drop[:, None, None, None], null, condition)
        padding = None if token_mask is None else ~token_mask
        return self.flow(x_t, t, coords, features, condition, padding, ~view_mask)

    def parameter_counts(self) -> dict[str, int]:
        return {
            name: sum(p.numel() for p in part.parameters())
            for name, part in (("encoder", self.encoder), ("pvc", self.pvc), ("flow", self.flow))
        }

    # ------------------------------------------------------------------ weights
    def save(self, path: Path, metadata: dict[str, str] | None = None) -> None:
        save_weights(self, self.config, path, metadata)

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> FineModel:
        """Build the model a weights file describes; WeightsError with the reason otherwise."""
        meta, tensors = read_weights(path, device)
        try:
            config = FineModelConfig.from_dict(json.loads(meta["config"]))
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise WeightsError(f"{path} has no valid fine model config: {exc}") from exc
        return load_checked(cls(config), tensors, path, device)
