"""What the depth views measured, as fine latents: the known entries of the fine sample.

The fine latent is explicit (``fine_latent``): the SDF at the sub-voxel centres of each active
voxel, in units of the clip distance. Where the fused TSDF of the real depth views is
trustworthy (where ``decode.measured_over`` takes the measurement: in front of a measured
surface, and behind it within the wall), that SDF is measured, so those entries need not be
generated: ``flow.Known`` fixes them during sampling, and the network generates the rest of
each voxel and its neighbours *from* them. Without this the generated field and the
measurement disagree where they meet (a TSDF band overhanging a corner the generator rounded
off, a floor over a cup's hidden bottom), and decode makes a surface of the disagreement.

The TSDF is projective (distance along the ray), so it overstates the distance to an oblique
surface; decode trusts it alike, and the two fields then agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates

from rvg_ros.core.types import TargetCube
from rvg_ros.rvg.fine_latent import LatentConfig, sub_voxel_centres

# A TSDF value this close to +1 is truncated: the surface is at least the truncation away.
TRUNCATED = 0.999
# Such an entry is known (as +1, "at least the clip distance outside") only when the
# truncation reaches this fraction of the latent's clip distance: then the error is at most
# the rest of the clip distance, on a point that far from any surface.
TRUNCATED_MIN_RATIO = 0.75


@dataclass(frozen=True)
class LatticeTSDF:
    """A fused TSDF on decode's lattice (``decode.measure``): values normalised by the
    truncation, weight 0 where no view measured. Kept free of Open3D (fusion's module), so
    the fine stage runs where torch alone is installed."""

    tsdf: np.ndarray  # (S, S, S)
    weight: np.ndarray  # (S, S, S)
    origin: np.ndarray  # world position of voxel (0, 0, 0)
    voxel: float  # metres
    truncation: float  # metres


def trusted(tsdf: np.ndarray, weight: np.ndarray, min_wall: float) -> np.ndarray:
    """Where decode takes the measurement over the generated shape (``decode.measured_over``):
    measured, and not deeper behind the surface than ``min_wall`` (normalised by the
    truncation, as ``tsdf``)."""
    return (weight > 0) & (tsdf > -min_wall)


def measured_sdf_latent(
    coords: np.ndarray,
    config: LatentConfig,
    cube: TargetCube,
    measured: LatticeTSDF,
    min_wall_voxels: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(M, k^3) mask and values of the SDF channels of the active voxels ``coords`` that the
    measurement fixes, in latent units (``fine_latent``). An entry is known where all eight
    lattice voxels around it are trusted (``trusted``, with decode's wall of
    ``min_wall_voxels`` lattice voxels), so trilinear interpolation reads only measured
    values."""
    min_wall = min_wall_voxels * measured.voxel / measured.truncation
    centres = cube.to_world(sub_voxel_centres(coords, config).reshape(-1, 3))
    index = ((centres - measured.origin) / measured.voxel).T
    tsdf = map_coordinates(measured.tsdf, index, order=1, mode="nearest")
    trust = map_coordinates(
        trusted(measured.tsdf, measured.weight, min_wall).astype(np.float32),
        index,
        order=1,
        mode="constant",
        cval=0.0,
    )
    known = trust > 1.0 - 1e-4
    ratio = measured.truncation / (config.sdf_scale * cube.side)
    values = np.clip(tsdf * ratio, -1.0, 1.0)
    truncated = tsdf >= TRUNCATED
    if ratio >= TRUNCATED_MIN_RATIO:
        values = np.where(truncated, 1.0, values)
    else:
        known &= ~truncated
    shape = (len(coords), config.sdf_channels)
    return known.reshape(shape), values.astype(np.float32).reshape(shape)
