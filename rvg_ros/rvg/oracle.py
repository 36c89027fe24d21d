"""The coarse stage's oracle: the true occupancy in place of the sampled one.

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
from rvg_ros.rvg.generate import CoarseConfig, PriorInputs, finish_occupancy

SUPERSAMPLE = 2


def true_occupancy(mesh_path: str | Path, prior: PriorInputs, resolution: int) -> np.ndarray:
    """(R, R, R) float32: the fraction of each voxel of ``prior.cube`` inside the mesh (a
    closed mesh in the capture's world frame)."""
    try:
        mesh = trimesh.load(mesh_path, force="mesh", process=False)
    except (OSError, ValueError) as exc:
        raise ReconstructionError(f"occupancy oracle: cannot read {mesh_path}: {exc}") from exc
    if len(mesh.faces) == 0:
        raise ReconstructionError(f"occupancy oracle: {mesh_path} has no triangles")
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
