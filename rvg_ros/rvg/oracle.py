"""The generators' oracles: the true occupancy in place of the sampled one (coarse stage),
and the true latents in place of the fine stage's.

An evaluation diagnostic, not a reconstruction mode (it needs the object's true mesh). It
answers "what would a perfect 32^3 generator give after this prior and this decode?", which
tells a generator's errors apart from the decode's (docs/results.md). The occupancy is the
fraction of 2^3 sub-samples per voxel inside the mesh, as the training targets
(``dataset.occupancy_grid``), and gets the same evidence and hidden-inside treatment as a
sampled one (``generate.finish_occupancy``); the fine latents are the fine stage's training
targets (``fine_data.fine_targets``). Both read the mesh through ``fine_data.MeshQuery``,
loaded once per reconstruction (``load_truth``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh

from rvg_ros.core.types import ReconstructionError
from rvg_ros.rvg.dataset import DataConfig, occupancy_grid
from rvg_ros.rvg.fine_data import MeshQuery, fine_targets
from rvg_ros.rvg.fine_decode import fine_field
from rvg_ros.rvg.fine_latent import LatentConfig
from rvg_ros.rvg.fine_sample import FineSample
from rvg_ros.rvg.generate import CoarseConfig, PriorInputs, finish_occupancy


def load_truth(mesh_path: str | Path) -> MeshQuery:
    """The object's true mesh (closed, in the capture's world frame), ready to query."""
    try:
        mesh = trimesh.load(mesh_path, force="mesh", process=False)
    except (OSError, ValueError) as exc:
        raise ReconstructionError(f"occupancy oracle: cannot read {mesh_path}: {exc}") from exc
    if len(mesh.faces) == 0:
        raise ReconstructionError(f"occupancy oracle: {mesh_path} has no triangles")
    return MeshQuery(mesh)


def oracle_coarse(
    truth: MeshQuery, prior: PriorInputs, resolution: int, config: CoarseConfig
) -> np.ndarray:
    """What ``generate.sample_coarse`` returns, with the true occupancy as the sample."""
    occupancy = occupancy_grid(truth, prior.cube, resolution, DataConfig.supersample)
    return finish_occupancy(torch.from_numpy(occupancy)[None], prior, config)


def oracle_fine(
    truth: MeshQuery, prior: PriorInputs, occupancy: np.ndarray, config: LatentConfig
) -> tuple[FineSample, np.ndarray]:
    """What ``generate.generate_fine`` returns, with the true latents (the mesh's signed
    distances and colours) for the active voxels of ``occupancy``."""
    coords, latent = fine_targets(truth, prior.cube, occupancy, config)
    sample = FineSample(torch.from_numpy(coords), torch.from_numpy(latent))
    field = fine_field(sample.coords, sample.latent, torch.from_numpy(occupancy), config)
    return sample, field.sdf.float().numpy()
