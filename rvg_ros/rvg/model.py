"""The part-1 generator: prior encoders + Condition Net (GGC) + sparse-structure flow.

Configuration is a plain dataclass stored inside the weights file, so a checkpoint always
rebuilds the network it was trained as. Weights are safetensors (never pickle).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from rvg_ros.rvg.models.condition import ConditionNet, EvidenceTokens
from rvg_ros.rvg.models.encoder import MultiViewEncoder
from rvg_ros.rvg.models.ss_flow import SparseStructureFlow
from rvg_ros.rvg.prior import VIEW_CHANNELS, VIEW_SIZE

ModuleT = TypeVar("ModuleT", bound=nn.Module)

WEIGHTS_NAME = "rvg_ss.safetensors"


@dataclass(frozen=True)
class ModelConfig:
    resolution: int = 32  # coarse occupancy grid
    view_size: int = VIEW_SIZE
    view_channels: int = VIEW_CHANNELS
    view_patch: int = 8
    cond_dim: int = 96
    encoder_depth: int = 4
    condition_depth: int = 4
    condition_tokens: int = 32
    evidence_patch: int = 4
    flow_patch: int = 4
    flow_dim: int = 128
    flow_depth: int = 4
    heads: int = 4


class WeightsError(RuntimeError):
    """A weights file that cannot be used, with the reason."""


class RVGModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = MultiViewEncoder(
            c.view_channels, c.cond_dim, c.encoder_depth, c.heads, c.view_size, c.view_patch
        )
        self.evidence_tokens = EvidenceTokens(c.cond_dim, c.resolution, c.evidence_patch)
        self.condition = ConditionNet(c.cond_dim, c.condition_depth, c.heads, c.condition_tokens)
        self.null_condition = nn.Parameter(torch.zeros(1, c.condition_tokens, c.cond_dim))
        self.flow = SparseStructureFlow(
            c.resolution, c.flow_patch, c.flow_dim, c.flow_depth, c.heads, c.cond_dim
        )

    @staticmethod
    def onehot(evidence: torch.Tensor) -> torch.Tensor:
        """(B, R, R, R) uint8 states -> (B, 3, R, R, R) float."""
        return F.one_hot(evidence.long(), 3).permute(0, 4, 1, 2, 3).float()

    def global_condition(
        self, evidence_onehot: torch.Tensor, views: torch.Tensor, view_mask: torch.Tensor
    ) -> torch.Tensor:
        """The GGC: Condition Net over all views' tokens and the evidence tokens."""
        tokens = self.encoder(views, view_mask)  # (B, V, T, D)
        b, v, t, d = tokens.shape
        padding = (~view_mask)[:, :, None].expand(b, v, t).reshape(b, v * t)
        ev = self.evidence_tokens(evidence_onehot)
        context = torch.cat([tokens.reshape(b, v * t, d), ev], dim=1)
        padding = torch.cat(
            [padding, torch.zeros(b, ev.shape[1], dtype=torch.bool, device=padding.device)], dim=1
        )
        return self.condition(context, padding)

    def velocity(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        evidence_onehot: torch.Tensor,
        condition: torch.Tensor,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity v = eps - x0. ``drop`` (B,) True replaces the GGC by the null condition."""
        if drop is not None:
            null = self.null_condition.expand(condition.shape[0], -1, -1)
            condition = torch.where(drop[:, None, None], null, condition)
        return self.flow(x_t, t, evidence_onehot, condition)

    # ------------------------------------------------------------------ weights
    def save(self, path: Path, metadata: dict[str, str] | None = None) -> None:
        save_weights(self, self.config, path, metadata)

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> RVGModel:
        """Build the model a weights file describes; WeightsError with the reason otherwise."""
        meta, tensors = read_weights(path, device)
        try:
            config = ModelConfig(**json.loads(meta["config"]))
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise WeightsError(f"{path} has no valid model config in its metadata: {exc}") from exc
        return load_checked(cls(config), tensors, path, device)


# ---------------------------------------------------------------------- weights files
# Shared by every model of the backend (part 1 here, the fine stage in fine_model.py):
# safetensors only, the config as JSON in the metadata, shapes checked before loading.
def save_weights(
    model: nn.Module, config: object, path: Path, metadata: dict[str, str] | None = None
) -> None:
    meta = {"config": json.dumps(asdict(config)), **(metadata or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=meta)


def read_weights(path: Path, device: str = "cpu") -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a weights file; WeightsError when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"corrupt or unreadable weights file {path}: {exc}") from exc
    return meta, tensors


def load_checked(
    model: ModuleT, tensors: dict[str, torch.Tensor], path: Path, device: str = "cpu"
) -> ModuleT:
    """``model`` with ``tensors`` loaded, in eval mode on ``device``; WeightsError naming the
    first mismatching names and shapes otherwise."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise WeightsError(
            f"{path} does not match the model: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shapes {wrong[:3]}"
        )
    model.load_state_dict(tensors)
    return model.to(device).eval()
