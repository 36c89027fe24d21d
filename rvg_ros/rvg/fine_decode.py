"""Fine decoder: per-active-voxel latents -> dense fine SDF field -> metric coloured mesh.

The latent (``fine_data``) is explicit sub-voxel SDF samples plus a colour, so decoding is
assembly, not a network: the k^3 samples of every active voxel fill their block of the
(resolution * k)^3 grid, inactive voxels take the clipped value their side of the coarse
occupancy implies (+1 latent unit outside, -1 inside), and marching cubes extracts the zero
level set. The torch path (``fine_field``) is differentiable in the latents, so rendering-aware
velocity compensation (``rvc.py``) can render x0_hat through ``render.SDFField``
(``rvc_decoder``); the mesh path (``decode_mesh``) runs on numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import trimesh
from scipy.ndimage import distance_transform_edt
from skimage.measure import marching_cubes

from rvg_ros.core.types import TargetCube
from rvg_ros.rvg.fine_latent import LatentConfig
from rvg_ros.rvg.render import SDFField
from rvg_ros.rvg.rvc import Decoder


def coarse_fill(occupancy: torch.Tensor, config: LatentConfig) -> torch.Tensor:
    """SDF (cube units) for inactive voxels: -clip inside (occupancy >= 0.5), +clip outside."""
    inside = torch.as_tensor(occupancy) >= 0.5
    return torch.where(inside, -1.0, 1.0).to(torch.float32) * config.sdf_scale


def latent_blocks(latent: torch.Tensor, config: LatentConfig) -> torch.Tensor:
    """(M, channels) latents -> (M, 4, k, k, k) blocks: SDF in cube units, colour in [0, 1].

    The SDF is clamped to the latent's range [-1, 1] (a sample may overshoot it) so a decoded
    field never claims more than the targets could; colour is the voxel's, on every sub-voxel.
    """
    k, m = config.sub, latent.shape[0]
    sdf = latent[:, : config.sdf_channels].clamp(-1.0, 1.0) * config.sdf_scale
    colour = ((latent[:, config.sdf_channels :] + 1.0) / 2.0).clamp(0.0, 1.0)
    sdf = sdf.reshape(m, 1, k, k, k)
    colour = colour[:, :, None, None, None].expand(m, 3, k, k, k)
    return torch.cat([sdf, colour], dim=1)


def fine_field(
    coords: torch.Tensor, latent: torch.Tensor, occupancy: torch.Tensor, config: LatentConfig
) -> SDFField:
    """Dense (R k)^3 SDF field with colour, differentiable in ``latent`` (M, channels)."""
    fill = coarse_fill(occupancy, config).to(latent.device, latent.dtype)
    return SDFField.from_blocks(
        coords.to(latent.device), latent_blocks(latent, config), config.resolution, fill
    )


def rvc_decoder(
    coords: Sequence[torch.Tensor], occupancy: Sequence[torch.Tensor], config: LatentConfig
) -> Decoder:
    """``rvc.Decoder`` for a padded batch x0_hat (B, N, channels): item b uses its first
    len(coords[b]) tokens (the rest are padding)."""

    def decode(x0_hat: torch.Tensor) -> list[SDFField]:
        return [
            fine_field(c, x0_hat[b, : len(c)], occupancy[b], config) for b, c in enumerate(coords)
        ]

    return decode


def _voxel_colours(coords: np.ndarray, colours: np.ndarray, resolution: int) -> np.ndarray:
    """(R, R, R, 3): every coarse voxel takes the colour of the nearest active voxel."""
    grid = np.zeros((resolution,) * 3 + (3,), np.float32)
    missing = np.ones((resolution,) * 3, bool)
    if len(coords) == 0:
        return grid + 0.5
    i, j, k = coords.T
    grid[i, j, k] = colours
    missing[i, j, k] = False
    _, nearest = distance_transform_edt(missing, return_indices=True)
    return grid[nearest[0], nearest[1], nearest[2]]


def decode_mesh(
    coords: np.ndarray | torch.Tensor,
    latent: np.ndarray | torch.Tensor,
    occupancy: np.ndarray | torch.Tensor,
    cube: TargetCube,
    config: LatentConfig,
) -> trimesh.Trimesh:
    """Metric mesh (world frame, via the cube) with vertex colours; empty if no surface.

    Vertex colours are the colour of the coarse voxel a vertex lies in, or of the nearest
    active voxel (the dense field's inactive voxels have no colour of their own).
    """
    coords_t = torch.as_tensor(np.asarray(coords), dtype=torch.long)
    latent_t = torch.as_tensor(np.asarray(latent, dtype=np.float32))
    occ_t = torch.as_tensor(np.asarray(occupancy, dtype=np.float32))
    with torch.no_grad():
        sdf = fine_field(coords_t, latent_t, occ_t, config).sdf.numpy()
    fine = config.fine_resolution
    # Space outside the cube is empty: pad with "outside" so the surface closes at its faces.
    padded = np.pad(-sdf, 1, constant_values=-config.sdf_scale)
    if not (padded.min() < 0.0 < padded.max()):
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), process=False)
    # Negated SDF is high inside: "ascent" gives outward-facing triangles (as decode.py).
    vertices, faces, _, _ = marching_cubes(padded, level=0.0, gradient_direction="ascent")
    unit = (vertices - 1.0 + 0.5) / fine - 0.5  # padded index -> voxel centre -> unit cube
    colours = _voxel_colours(
        coords_t.numpy(),
        ((latent_t[:, config.sdf_channels :].numpy() + 1.0) / 2.0).clip(0.0, 1.0),
        config.resolution,
    )
    cell = np.clip(np.floor((unit + 0.5) * config.resolution), 0, config.resolution - 1)
    cell = cell.astype(np.int64)
    rgb = colours[cell[:, 0], cell[:, 1], cell[:, 2]]
    rgba = np.concatenate([rgb, np.ones((len(rgb), 1), np.float32)], axis=1)
    return trimesh.Trimesh(
        cube.to_world(unit),
        faces.astype(np.int64),
        vertex_colors=(rgba * 255).round().astype(np.uint8),
        process=False,
    )
