"""Per-view weighted fusion: cross-attention to each view's condition tokens separately.

ReconViaGen's fine (structured-latent) flow attends to every view's Local Per-View Condition on
its own and fuses the results with weights from a small MLP, one scalar in [0, 1] per view. Here
the weight is per view *and per query token*: the queries are active voxels, and which view sees
a voxel differs from voxel to voxel (``per_token=False`` pools the tokens first and gives the
paper's single scalar per view).

Fusion is the weighted mean, sum_v w_v a_v / (sum_v w_v + eps):
- dividing by the weight sum makes the result independent of the number of views (train on 4,
  run on 2 or 8, as the views sweep does) and keeps it on the scale of one attention result;
- only the weights' ratios matter, so a view is down-weighted relative to the others, never
  silenced for all at once (the residual stream and self-attention carry the query on alone);
- absent views (``view_padding``) get weight 0, and the result does not depend on view order.
eps (1e-6) only guards the all-absent case, where the result is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rvg_ros.rvg.models.layers import Attention


@dataclass(frozen=True)
class ViewFusionConfig:
    dim: int  # query token width
    context_dim: int  # per-view condition token width
    heads: int = 4
    weight_hidden: int = 64  # hidden width of the weight MLP
    per_token: bool = True  # one weight per (view, token); False: one per view


class ViewFusion(nn.Module):
    """x (B, N, D) attends to contexts (B, V, M, C) view by view; returns (fused, weights)."""

    def __init__(self, config: ViewFusionConfig) -> None:
        super().__init__()
        self.config = config
        self.attn = Attention(config.dim, config.heads, config.context_dim)
        self.weight = nn.Sequential(
            nn.LayerNorm(config.dim),
            nn.Linear(config.dim, config.weight_hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.weight_hidden, 1),
        )

    def forward(
        self,
        x: torch.Tensor,
        contexts: torch.Tensor,
        view_padding: torch.Tensor | None = None,
        context_padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``view_padding`` (B, V) True = view absent; ``context_padding`` (B, V, M) True =
        token ignored. Returns fused (B, N, D) and weights (B, V, N) in [0, 1] (0 if absent)."""
        b, n, d = x.shape
        nv, m = contexts.shape[1], contexts.shape[2]
        # Every view in one batched attention call: fold views into the batch.
        xq = x[:, None].expand(b, nv, n, d).reshape(b * nv, n, d)
        ctx = contexts.reshape(b * nv, m, -1)
        pad = None if context_padding is None else context_padding.reshape(b * nv, m)
        if pad is not None:
            # A view with every token padded would make attention NaN; its weight is zeroed
            # below anyway (it must be marked absent in view_padding), so let it see its tokens.
            pad = pad & ~pad.all(dim=1, keepdim=True)
        per_view = self.attn(xq, ctx, pad).view(b, nv, n, d)
        if self.config.per_token:
            logits = self.weight(per_view)[..., 0]  # (B, V, N)
        else:
            logits = self.weight(per_view.mean(dim=2))[..., 0, None].expand(b, nv, n)
        weights = torch.sigmoid(logits)
        if view_padding is not None:
            weights = weights.masked_fill(view_padding[..., None], 0.0)
        fused = (weights[..., None] * per_view).sum(dim=1) / (weights.sum(dim=1)[..., None] + 1e-6)
        return fused, weights
