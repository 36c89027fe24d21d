"""Fine (structured-latent) flow: a transformer over the active voxels of the coarse structure.

Tokens are patches of active voxels, as TRELLIS patchifies its structured latent: the active
voxels in each ``patch``^3 cell of the coarse grid (2^3 by default) form one token, which
carries their noisy latents (``fine_data``: sub-voxel SDF + colour), what the coarse stage knows
about each (evidence state, inside/outside the binarised occupancy) and which of the cell's
voxels are active, plus Fourier features of the cell's position; the output layer gives the
velocity of every voxel of the cell back. Why: attention over the voxels themselves (2-4.5k per
object) cost most of the forward pass on a CPU; a shell of active voxels fills ~4.5 of a 2^3
cell's 8 places on average (60 procedural validation objects), so tokens fall ~4.5x and
attention ~20x, while the latents, the decoder and so the representation's ceiling stay
exactly as they are. ``patch = 1`` is one
token per voxel (the first version). Every block has adaLN-Zero time conditioning
(as the sparse-structure DiT), self-attention over the set (a key padding mask lets items with
different voxel counts share a batch), and cross-attention to **each** view's per-view
condition tokens, fused with per-view weights (``view_fusion.ViewFusion``, ReconViaGen's PVC
fusion). Nothing depends on token or voxel order (cells are formed from the coordinates), so
the model is equivariant to permuting voxels. It predicts the rectified-flow velocity
v = eps - x0 of the latents.
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
    channels: int = 67  # latent width (fine_latent.LatentConfig.channels)
    resolution: int = 32  # coarse grid the voxel coordinates index
    dim: int = 128
    depth: int = 4
    heads: int = 4
    context_dim: int = 96  # per-view condition token width
    # Frequencies pi * 2^0 .. pi * 2^(bands-1) on unit-cube positions: the highest resolves
    # neighbouring coarse voxels (period 1/32 at 2^6 with 32^3).
    fourier_bands: int = 7
    fusion_per_token: bool = True
    patch: int = 2  # voxels per token and axis (module docstring); 1 = one token per voxel
    voxel_dim: int = 128  # width of the per-voxel output head (see FineFlow)

    @property
    def cells(self) -> int:
        """Patch cells per axis of the coarse grid."""
        return -(-self.resolution // self.patch)


class FourierPosition(nn.Module):
    """Integer cell coordinates (B, N, 3) on a ``resolution``^3 grid -> (B, N, dim):
    [p, sin, cos of p pi 2^k] of the cell centre p in the unit cube -> Linear."""

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


@dataclass
class Patches:
    """Which token (cell) and which place in it each voxel has, for a padded batch."""

    cell: torch.Tensor  # (B, N) token index of each voxel; padded voxels -> G (a spare slot)
    place: torch.Tensor  # (B, N) place of the voxel in its cell, 0 .. patch^3 - 1
    coords: torch.Tensor  # (B, G, 3) cell coordinates
    padding: torch.Tensor  # (B, G) True = no such cell in this item


def patchify(
    coords: torch.Tensor, voxel_padding: torch.Tensor | None, patch: int, span: int
) -> Patches:
    """Group each item's active voxels by ``patch``^3 cell (``span`` cells per axis). Cells are
    numbered in the order of their coordinates, so the result does not depend on the order of
    the voxels. Real voxels must be distinct (active voxels are)."""
    b, n, _ = coords.shape
    coords = coords.long()
    cell_xyz, sub = coords.div(patch, rounding_mode="floor"), coords.remainder(patch)
    key = (cell_xyz[..., 0] * span + cell_xyz[..., 1]) * span + cell_xyz[..., 2]
    key = key + torch.arange(b, device=coords.device)[:, None] * span**3
    if voxel_padding is not None:
        key = torch.where(voxel_padding, b * span**3, key)  # sorts after every real cell
    unique, inverse = torch.unique(key.flatten(), return_inverse=True)
    real = unique < b * span**3
    unique = unique[real]
    item = unique // span**3
    counts = torch.bincount(item, minlength=b)
    g = max(int(counts.max().item()) if len(counts) else 0, 1)
    start = torch.cumsum(counts, 0) - counts
    index = torch.arange(len(unique), device=coords.device) - start[item]
    # Padded voxels map past the real cells (``inverse`` of the sentinel) -> the spare slot g.
    index_of = torch.cat([index, torch.full((int((~real).sum()),), g, device=coords.device)])
    cell = index_of[inverse].view(b, n)
    local = unique % span**3
    cell_coords = torch.zeros(b, g, 3, dtype=torch.long, device=coords.device)
    cell_coords[item, index] = torch.stack(
        [local // span**2, (local // span) % span, local % span], dim=-1
    )
    padding = torch.arange(g, device=coords.device)[None] >= counts[:, None]
    place = (sub[..., 0] * patch + sub[..., 1]) * patch + sub[..., 2]
    return Patches(cell, place, cell_coords, padding)


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
        places = config.patch**3
        # Per place in the cell: latent, voxel features and an "active" flag.
        self.embed = nn.Linear(places * (config.channels + VOXEL_FEATURES + 1), dim)
        self.position = FourierPosition(config.cells, config.fourier_bands, dim)
        self.time = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(FineBlock(config) for _ in range(config.depth))
        # Per-voxel output head. A token of 2^3 voxels holds up to 8 x 67 noisy latent values in
        # ``dim`` (128) numbers, too few to hand each voxel's noise back (v = eps - x0 needs
        # it), so every voxel gets its own input again (a skip connection, as TRELLIS's flow has
        # around its patchified transformer): its place's share of the token (``unpatch``) plus
        # a projection of its own latent and features and the Fourier features of its own
        # position (the cell's are too coarse); then the DiT final layer (LayerNorm, time
        # modulation, zero-initialised Linear). Measured (overfitting one object, 120 steps):
        # a plain Linear(dim -> 8 x 67) output fits to 2.0 fine voxels; with a hidden GELU
        # layer in the head 1.9; this form 0.78, as well as one token per voxel did.
        vd = config.voxel_dim
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * vd))
        self.unpatch = nn.Linear(dim, places * vd)
        self.skip = nn.Linear(config.channels + VOXEL_FEATURES, vd)
        self.voxel_position = FourierPosition(config.resolution, config.fourier_bands, vd)
        self.norm_out = nn.LayerNorm(vd, elementwise_affine=False)
        self.out = nn.Linear(vd, config.channels)
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
        (B, V) True = absent. Returns v (B, N, C); padded voxels' outputs are meaningless."""
        b, n, c = x_t.shape
        cfg = self.config
        places = cfg.patch**3
        cells = patchify(coords, token_padding, cfg.patch, cfg.cells)
        g = cells.coords.shape[1]
        batch = torch.arange(b, device=x_t.device)[:, None].expand(b, n)
        per_voxel = torch.cat([x_t, voxel_features, torch.ones_like(x_t[..., :1])], dim=-1)
        grid = x_t.new_zeros(b, g + 1, places, per_voxel.shape[-1])  # +1: padded voxels' slot
        grid[batch, cells.cell, cells.place] = per_voxel
        h = self.embed(grid[:, :g].flatten(2)) + self.position(cells.coords)
        c_t = self.time(timestep_embedding(t, 256))
        # No mask when no cell is padded (one object at inference): the unmasked attention
        # kernel is faster, and masking nothing changes nothing.
        padding = cells.padding if bool(cells.padding.any()) else None
        for block in self.blocks:
            h = block(h, c_t, contexts, padding, view_padding)
        shared = self.unpatch(h).view(b, g, places, -1)[
            batch, cells.cell.clamp(max=g - 1), cells.place
        ]
        z = shared + self.skip(torch.cat([x_t, voxel_features], dim=-1))
        z = z + self.voxel_position(coords)
        shift, scale = self.ada_out(c_t).chunk(2, dim=-1)
        return self.out(modulate(self.norm_out(z), shift, scale))
