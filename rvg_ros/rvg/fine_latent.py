"""The fine (structured-latent) stage's latent: which voxels are active, and what each holds.

ReconViaGen's second stage (TRELLIS's SLAT) attaches a latent to every *active* voxel of the
coarse structure; the latent decodes to the local geometry and appearance. Here the latent is
explicit, so no VAE has to be trained on this CPU:

- **Active voxels** (``active_voxels``): a coarse voxel is active when the surface may pass
  through it, judged from the coarse occupancy alone (what inference has): the two-sided shell
  of the binarised occupancy (occupied voxels with an empty face neighbour, empty voxels with
  an occupied face neighbour) plus every partially filled voxel (occupancy in
  (``partial``, 0.5)). Why two-sided: the zero crossing between an occupied and an empty voxel
  centre can lie in either voxel, so a one-sided shell would cut the surface at voxel faces.
  Why the partial voxels: thin parts (plates, handles, rims) fill less than half of any voxel
  and vanish from the binarised grid; the coarse occupancy still says *something* is there.
  On the procedural training set this gives ~300-3,500 active voxels per object at 32^3.
- **Latent** per active voxel (``LatentConfig.channels`` = k^3 + 3): the signed distance at the
  centres of its k^3 sub-voxels (k = 4: an effective 128^3 grid, 4x the coarse one), in units
  of the fine voxel, clipped to +-``clip_voxels`` and divided by it (so in [-1, 1]); then the
  object's colour at the surface point nearest the voxel centre, mapped to [-1, 1].
  Clipping at one coarse voxel (4 fine voxels) keeps every value that decides where the surface
  is, matches the fill the decoder gives inactive voxels (+-1: outside / inside), and keeps the
  latent on the unit scale the rectified flow's Gaussian noise has.

Inference needs only this module (numpy, scipy); the training targets are ``fine_data``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion

_FACES = np.zeros((3, 3, 3), dtype=bool)
_FACES[1, 1, :] = _FACES[1, :, 1] = _FACES[:, 1, 1] = True


@dataclass(frozen=True)
class LatentConfig:
    resolution: int = 32  # coarse grid (the sparse-structure stage's)
    sub: int = 4  # sub-voxels per coarse voxel and axis: fine grid = resolution * sub
    clip_voxels: float = 4.0  # SDF clip, fine voxels (4 = one coarse voxel)
    partial: float = 0.05  # occupancy above this (and below 0.5) also activates a voxel

    @property
    def fine_resolution(self) -> int:
        return self.resolution * self.sub

    @property
    def sdf_channels(self) -> int:
        return self.sub**3

    @property
    def channels(self) -> int:
        return self.sdf_channels + 3

    @property
    def sdf_scale(self) -> float:
        """Cube units per latent SDF unit."""
        return self.clip_voxels / self.fine_resolution


def active_voxels(occupancy: np.ndarray, partial: float = LatentConfig.partial) -> np.ndarray:
    """(M, 3) int64 indices of the active voxels of a coarse occupancy (see module docstring),
    in C order over (x, y, z) so the same grid always gives the same order."""
    occ = np.asarray(occupancy, dtype=np.float32)
    core = occ >= 0.5
    shell = (core & ~binary_erosion(core, _FACES, border_value=0)) | (
        ~core & binary_dilation(core, _FACES)
    )
    active = shell | ((occ > partial) & ~core)
    return np.argwhere(active).astype(np.int64)


def sub_voxel_centres(coords: np.ndarray, config: LatentConfig) -> np.ndarray:
    """Unit-cube centres of the sub-voxels of each active voxel, (M, k^3, 3), the sub-voxels in
    C order over (x, y, z) -- the layout ``render.SDFField.from_blocks`` expects."""
    k, fine = config.sub, config.fine_resolution
    sub = np.arange(k)
    offsets = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), axis=-1).reshape(-1, 3)
    index = coords[:, None, :] * k + offsets[None]
    return (index + 0.5) / fine - 0.5
