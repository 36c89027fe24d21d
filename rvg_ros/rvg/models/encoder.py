"""Multi-view encoder in the style of VGGT: patch tokens of every view, alternating frame-wise
and global self-attention. Posed views carry their camera as Plücker rays in the input."""

from __future__ import annotations

import torch
from torch import nn

from rvg_ros.rvg.models.layers import Block


class MultiViewEncoder(nn.Module):
    def __init__(
        self, in_channels: int, dim: int, depth: int, heads: int, image_size: int, patch: int
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.tokens_per_view = (image_size // patch) ** 2
        self.pos = nn.Parameter(torch.zeros(1, self.tokens_per_view, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        # Even blocks attend within a frame, odd blocks across all frames (VGGT's alternation).
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, views: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
        """views (B, V, C, H, W), view_mask (B, V) True = real view -> tokens (B, V, T, D)."""
        b, v = views.shape[:2]
        x = self.patch_embed(views.flatten(0, 1)).flatten(2).transpose(1, 2) + self.pos
        t, d = x.shape[1:]
        padding = (~view_mask)[:, :, None].expand(b, v, t).reshape(b, v * t)
        for i, block in enumerate(self.blocks):
            if i % 2 == 0:
                x = block(x)  # frame attention: (B*V, T, D)
            else:
                x = block(x.reshape(b, v * t, d), self_padding=padding).reshape(b * v, t, d)
        return self.norm(x).reshape(b, v, t, d)
