"""Local Per-View Condition (PVC): the Condition Net run on each view by itself.

ReconViaGen conditions its fine (structured-latent) flow on every view separately, so that a
voxel can take its detail from the views that see it (``view_fusion.py`` weighs them). The
Global Geometry Condition (``model.RVGModel.global_condition``) mixes all views into one token
list; here the same kind of net -- learnable tokens cross-attending over one view's encoder
tokens -- runs once per view, with views folded into the batch (one call for all views).
"""

from __future__ import annotations

import torch
from torch import nn

from rvg_ros.rvg.models.condition import ConditionNet


class PerViewCondition(nn.Module):
    """Encoder tokens (B, V, T, D) -> per-view condition tokens (B, V, N, D)."""

    def __init__(self, dim: int, depth: int, heads: int, num_tokens: int) -> None:
        super().__init__()
        self.net = ConditionNet(dim, depth, heads, num_tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, v, t, d = tokens.shape
        # A view's tokens attend only to that view: no padding needed. Absent views produce
        # tokens too; the fusion gives them weight 0 (``ViewFusion(view_padding=...)``).
        out = self.net(tokens.reshape(b * v, t, d))
        return out.view(b, v, out.shape[1], d)
