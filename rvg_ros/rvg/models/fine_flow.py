"""Fine (structured-latent) flow: a transformer over the active voxels of the coarse structure.

Tokens are the active voxels: the noisy latent (``fine_data``: sub-voxel SDF + colour), Fourier
features of the voxel's position, and what the coarse stage knows about the voxel (evidence
state, inside/outside the binarised occupancy). Every block has adaLN-Zero time conditioning
(as the sparse-structure DiT), self-attention over the set (a key padding mask lets items with
different voxel counts share a batch), and cross-attention to **each** view's per-view
condition tokens, fused with per-view weights (``view_fusion.ViewFusion``, ReconViaGen's PVC
fusion). Nothing depends on token order, so the model is equivariant to permuting voxels.
It predicts the rectified-flow velocity v = eps - x0 of the latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from rvg_ros.rvg.models.layers import MLP, Attention, timestep_embedding
from rvg_ros.rvg.models.ss_flow import modulate
from rvg_ros.rvg.models.view_fusion import ViewFusion, ViewFusionConfig

VOXEL_FEATURES = 4  # evidence one-hot (unknown, free, surface) + coarse "inside" flag


@dataclass(frozen=True)
class FineFlowConfig:
    channels: int = 67  # latent width (fine_data.LatentConfig.channels)
    resolution: int = 32  # coarse grid the voxel coordinates index
    dim: int = 128
    depth: int = 4
    heads: int = 4
    context_dim: int = 96  # per-view condition token width
    # Frequencies pi * 2^0 .. pi * 2^(bands-1) on unit-cube positions: the highest resolves
    # neighbouring coarse voxels (period 1/32 at 2^6 with 32^3).
    fourier_bands: int = 7
    fusion_per_token: bool = True


class FourierPosition(nn.Module):
    """Integer voxel coordinates (B, N, 3) -> (B, N, dim): [p, sin, cos of p pi 2^k] -> Linear."""

    def __init__(self, resolution: int, bands: int, dim: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.register_buffer(
            "freqs", math.pi * 2.0 ** torch.arange(bands, dtype=torch.float32), persistent=False
        )
        self.proj = nn.Linear(3 + 6 * bands, dim)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        p = (coords.float() + 0.5) / self.resolution - 0.5
        args = (p[..., None] * self.freqs).flatten(-2)  # (B, N, 3 bands)
        return self.proj(torch.cat([p, torch.sin(args), torch.cos(args)], dim=-1))


class FineBlock(nn.Module):
    def __init__(self, config: FineFlowConfig) -> None:
        super().__init__()
        dim = config.dim
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = Attention(dim, config.heads)
        self.norm_cross = nn.LayerNorm(dim)
        self.fusion = ViewFusion(
            ViewFusionConfig(
                dim=dim,
                context_dim=config.context_dim,
                heads=config.heads,
                per_token=config.fusion_per_token,
            )
        )
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = MLP(dim)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        contexts: torch.Tensor,
        token_padding: torch.Tensor | None,
        view_padding: torch.Tensor | None,
    ) -> torch.Tensor:
        s1, g1, b1, s2, g2, b2 = self.ada(c).chunk(6, dim=-1)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), b1, s1), key_padding=token_padding)
        fused, _ = self.fusion(self.norm_cross(x), contexts, view_padding)
        x = x + fused
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), b2, s2))


class FineFlow(nn.Module):
    def __init__(self, config: FineFlowConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.embed = nn.Linear(config.channels + VOXEL_FEATURES, dim)
        self.position = FourierPosition(config.resolution, config.fourier_bands, dim)
        self.time = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(FineBlock(config) for _ in range(config.depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, config.channels)
        for layer in (self.ada_out[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        coords: torch.Tensor,
        voxel_features: torch.Tensor,
        contexts: torch.Tensor,
        token_padding: torch.Tensor | None = None,
        view_padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_t (B, N, C), t (B,), coords (B, N, 3) int, voxel_features (B, N, 4), contexts
        (B, V, M, Dc) per-view condition tokens; ``token_padding`` (B, N) and ``view_padding``
        (B, V) True = absent. Returns v (B, N, C); padded tokens' outputs are meaningless."""
        h = self.embed(torch.cat([x_t, voxel_features], dim=-1)) + self.position(coords)
        c = self.time(timestep_embedding(t, 256))
        for block in self.blocks:
            h = block(h, c, contexts, token_padding, view_padding)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        return self.out(modulate(self.norm_out(h), shift, scale))
