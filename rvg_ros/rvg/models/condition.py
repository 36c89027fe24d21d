"""Condition Net: a learnable token list cross-attending over condition tokens.

Run over all views' tokens plus the evidence grid's tokens, it gives the Global Geometry
Condition (GGC) of the sparse-structure flow; run per view (part 2), the per-view conditions.
"""

from __future__ import annotations

import torch
from torch import nn

from rvg_ros.rvg.models.layers import Block, sincos_3d


class ConditionNet(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, num_tokens: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, num_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, cross=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, context: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        x = self.queries.expand(context.shape[0], -1, -1)
        for block in self.blocks:
            x = block(x, context, padding)
        return self.norm(x)


class EvidenceTokens(nn.Module):
    """Evidence grid (one-hot surface/free/unknown) -> patch tokens with 3D positions."""

    def __init__(self, dim: int, resolution: int, patch: int) -> None:
        super().__init__()
        self.embed = nn.Conv3d(3, dim, kernel_size=patch, stride=patch)
        self.register_buffer("pos", sincos_3d(resolution // patch, dim)[None], persistent=False)

    def forward(self, evidence_onehot: torch.Tensor) -> torch.Tensor:
        return self.embed(evidence_onehot).flatten(2).transpose(1, 2) + self.pos
