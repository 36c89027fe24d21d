"""Sparse-structure flow: a DiT that predicts the rectified-flow velocity of the coarse
occupancy of the object cube.

Input tokens are 3D patches of the noisy occupancy x_t concatenated with the evidence grid
(spatially aligned evidence is the strongest condition there is, so it enters where it lines
up); time enters by adaLN-Zero; the Global Geometry Condition enters by cross-attention in
every block, as in ReconViaGen. Dropping the GGC (learned null tokens) gives the
"unconditional" branch of classifier-free guidance.
"""

from __future__ import annotations

import torch
from torch import nn

from rvg_ros.rvg.models.layers import MLP, Attention, sincos_3d, timestep_embedding


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = Attention(dim, heads)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross = Attention(dim, heads, context_dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = MLP(dim)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        s1, g1, b1, s2, g2, b2 = self.ada(c).chunk(6, dim=-1)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), b1, s1))
        x = x + self.cross(self.norm_cross(x), context)
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), b2, s2))


class SparseStructureFlow(nn.Module):
    def __init__(
        self, resolution: int, patch: int, dim: int, depth: int, heads: int, context_dim: int
    ) -> None:
        super().__init__()
        self.resolution, self.patch = resolution, patch
        self.grid = resolution // patch
        # 1 channel of x_t + 3 channels of one-hot evidence.
        self.embed = nn.Conv3d(4, dim, kernel_size=patch, stride=patch)
        self.register_buffer("pos", sincos_3d(self.grid, dim)[None], persistent=False)
        self.time = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, context_dim) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, patch**3)
        for layer in (self.ada_out[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        evidence_onehot: torch.Tensor,
        context: torch.Tensor,
    ) -> torch.Tensor:
        """x_t (B, 1, R, R, R), t (B,), evidence (B, 3, R, R, R), context (B, N, Dc) -> v."""
        h = self.embed(torch.cat([x_t, evidence_onehot], dim=1)).flatten(2).transpose(1, 2)
        h = h + self.pos
        c = self.time(timestep_embedding(t, 256))
        for block in self.blocks:
            h = block(h, c, context)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        h = self.out(modulate(self.norm_out(h), shift, scale))  # (B, G^3, p^3)
        b, g, p = h.shape[0], self.grid, self.patch
        h = h.view(b, g, g, g, p, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return h.reshape(b, 1, g * p, g * p, g * p)
