"""Transformer building blocks shared by the encoder, the condition nets and the flow DiT."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, else cross-attention.

    ``key_padding`` (B, Nk) marks keys to ignore (absent views in a padded batch).
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n, d = x.shape
        ctx = x if context is None else context
        q = self.q(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, d // self.heads).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        mask = None
        if key_padding is not None:
            mask = ~key_padding[:, None, None, :]  # True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Sequential):
    def __init__(self, dim: int, ratio: float = 4.0) -> None:
        hidden = int(dim * ratio)
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )


class Block(nn.Module):
    """Pre-norm transformer block: optional cross-attention, self-attention, MLP."""

    def __init__(self, dim: int, heads: int, cross: bool = False) -> None:
        super().__init__()
        self.cross = Attention(dim, heads) if cross else None
        self.norm_cross = nn.LayerNorm(dim) if cross else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_padding: torch.Tensor | None = None,
        self_padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), context, context_padding)
        x = x + self.attn(self.norm1(x), key_padding=self_padding)
        return x + self.mlp(self.norm2(x))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of flow time t in [0, 1] (scaled to DiT's 0..1000 range)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_3d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 3D sin-cos positional embedding for grid^3 tokens, (grid^3, dim)."""
    per_axis = (dim // 6) * 2
    coords = torch.stack(
        torch.meshgrid(*(torch.arange(grid, dtype=torch.float32),) * 3, indexing="ij"), -1
    ).reshape(-1, 3)
    freqs = 1.0 / (10_000 ** (torch.arange(per_axis // 2, dtype=torch.float32) / (per_axis // 2)))
    parts = []
    for axis in range(3):
        args = coords[:, axis : axis + 1] * freqs[None]
        parts += [torch.sin(args), torch.cos(args)]
    emb = torch.cat(parts, dim=-1)
    return F.pad(emb, (0, dim - emb.shape[1]))
