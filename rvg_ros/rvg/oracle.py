"""The generators' oracles: the true occupancy in place of the sampled one (coarse stage),
and the true latents in place of the fine stage's.

An evaluation diagnostic, not a reconstruction mode (it needs the object's true mesh). It
answers "what would a perfect 32^3 generator give after this prior and this decode?", which
tells a generator's errors apart from the decode's (docs/results.md). The occupancy is the
fraction of 2^3 sub-samples per voxel inside the mesh, as the training targets
(``dataset.occupancy_grid``), and gets the same evidence and hidden-inside treatment as a
sampled one (``generate.finish_occupancy``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import torch
import trimesh

from rvg_ros.core.types import ReconstructionError
from rvg_ros.rvg.dataset import occupancy_grid
from rvg_ros.rvg.fine_data import MeshQuery, fine_targets
from rvg_ros.rvg.fine_decode import fine_field
from rvg_ros.rvg.fine_latent import LatentConfig
from rvg_ros.rvg.fine_sample import FineSample
from rvg_ros.rvg.generate import CoarseConfig, PriorInputs, finish_occupancy

SUPERSAMPLE = 2


def _load(mesh_path: str | Path) -> trimesh.Trimesh:
    try:
        mesh = trimesh.load(mesh_path, force="mesh", process=False)
    except (OSError, ValueError) as exc:
        raise ReconstructionError(f"occupancy oracle: cannot read {mesh_path}: {exc}") from exc
    if len(mesh.faces) == 0:
        raise ReconstructionError(f"occupancy oracle: {mesh_path} has no triangles")
    return mesh


def true_occupancy(mesh_path: str | Path, prior: PriorInputs, resolution: int) -> np.ndarray:
    """(R, R, R) float32: the fraction of each voxel of ``prior.cube`` inside the mesh (a
    closed mesh in the capture's world frame)."""
    mesh = _load(mesh_path)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(np.asarray(mesh.vertices, dtype=np.float32)),
        o3d.core.Tensor(np.asarray(mesh.faces, dtype=np.uint32)),
    )
    return occupancy_grid(_MeshInside(scene), prior.cube, resolution, SUPERSAMPLE)


class _MeshInside:
    """The ``occupancy(points)`` that ``dataset.occupancy_grid`` asks of an object."""

    def __init__(self, scene: o3d.t.geometry.RaycastingScene) -> None:
        self.scene = scene

    def occupancy(self, points: np.ndarray) -> np.ndarray:
        query = o3d.core.Tensor(np.asarray(points, dtype=np.float32))
        return self.scene.compute_occupancy(query).numpy() > 0.5


def oracle_coarse(
    mesh_path: str | Path, prior: PriorInputs, resolution: int, config: CoarseConfig
) -> np.ndarray:
    """What ``generate.sample_coarse`` returns, with the true occupancy as the sample."""
    occupancy = torch.from_numpy(true_occupancy(mesh_path, prior, resolution))[None]
    return finish_occupancy(occupancy, prior, config)


def oracle_fine(
    mesh_path: str | Path, prior: PriorInputs, occupancy: np.ndarray, config: LatentConfig
) -> tuple[FineSample, np.ndarray]:
    """What ``generate.generate_fine`` returns, with the true latents (the mesh's signed
    distances and colours, as the fine stage's training targets) for the active voxels of
    ``occupancy``."""
    query = MeshQuery(_load(mesh_path))
    coords, latent = fine_targets(query, prior.cube, occupancy, config)
    sample = FineSample(torch.from_numpy(coords), torch.from_numpy(latent))
    field = fine_field(sample.coords, sample.latent, torch.from_numpy(occupancy), config)
    return sample, field.sdf.float().numpy()
