"""Training targets of the fine (structured-latent) stage: per-active-voxel latents
(``fine_latent``) computed from the procedural object's mesh.

Distances are exact Euclidean distances to the object's mesh (Open3D ``RaycastingScene``, as
``sim/objects.py`` and ``eval/visibility.py`` use), not the procedural SDF composition, whose
smooth unions and subtractions are only bounds away from the surface.

Which coarse occupancy decides the active voxels: the sample's ground truth, or (``predicted``)
the shipped coarse model's own sample from the sample's views and evidence, as inference has
it. The two differ a lot (voxel IoU 0.25-0.8 on training samples, and ~40 % more active
voxels predicted than true): a fine stage that only ever saw true shells always finds a surface
in every active voxel, and at inference builds one wherever the coarse stage guessed wrong.
Predicted-occupancy samples store that occupancy (``{modality}_occupancy``) beside the targets,
and ``fine_train`` uses it in place of the true one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import open3d as o3d
import torch
import trimesh

from rvg_ros.core.types import TargetCube
from rvg_ros.rvg.dataset import MODALITIES, sample_path
from rvg_ros.rvg.fine_latent import LatentConfig, active_voxels, sub_voxel_centres
from rvg_ros.rvg.generate import (
    CoarseConfig,
    PriorInputs,
    coarse_condition,
    default_start_time,
    load_model,
    sample_coarse,
)
from rvg_ros.rvg.model import RVGModel
from rvg_ros.sim.objects import make_object


class MeshQuery:
    """Signed distance, inside test and surface colour of a watertight, vertex-coloured mesh."""

    def __init__(self, mesh: trimesh.Trimesh) -> None:
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(
            o3d.core.Tensor(np.asarray(mesh.vertices, dtype=np.float32)),
            o3d.core.Tensor(np.asarray(mesh.faces, dtype=np.uint32)),
        )
        self.faces = np.asarray(mesh.faces)
        colours = getattr(mesh.visual, "vertex_colors", None)
        self.colours = (
            np.asarray(colours, dtype=np.float32)[:, :3] / 255.0
            if colours is not None and len(colours) == len(mesh.vertices)
            else np.full((len(mesh.vertices), 3), 0.5, np.float32)
        )

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        # One thread: the machine is shared, and data generation parallelises over samples.
        query = o3d.core.Tensor(np.asarray(points, dtype=np.float32))
        return self.scene.compute_signed_distance(query, nthreads=1).numpy()

    def occupancy(self, points: np.ndarray) -> np.ndarray:
        """Inside the mesh (bool per point): what ``dataset.occupancy_grid`` asks of a solid."""
        query = o3d.core.Tensor(np.asarray(points, dtype=np.float32))
        return self.scene.compute_occupancy(query, nthreads=1).numpy() > 0.5

    def colour(self, points: np.ndarray) -> np.ndarray:
        """Colour at the closest surface point: barycentric blend of its triangle's vertices."""
        result = self.scene.compute_closest_points(
            o3d.core.Tensor(np.asarray(points, dtype=np.float32)), nthreads=1
        )
        tri = self.faces[result["primitive_ids"].numpy().astype(np.int64)]
        uv = result["primitive_uvs"].numpy()
        w = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)
        return np.einsum("nk,nkc->nc", w, self.colours[tri]).clip(0.0, 1.0)


def fine_targets(
    query: MeshQuery, cube: TargetCube, occupancy: np.ndarray, config: LatentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Active voxel indices (M, 3) int64 and their latents (M, channels) float32."""
    coords = active_voxels(occupancy, config.partial)
    if len(coords) == 0:
        return coords, np.zeros((0, config.channels), np.float32)
    unit = sub_voxel_centres(coords, config).reshape(-1, 3)
    sdf = query.signed_distance(cube.to_world(unit)) / cube.side  # cube units
    sdf = sdf.reshape(len(coords), config.sdf_channels) / config.sdf_scale
    centres = (coords + 0.5) / config.resolution - 0.5
    colour = query.colour(cube.to_world(centres))
    latent = np.concatenate([np.clip(sdf, -1.0, 1.0), 2.0 * colour - 1.0], axis=1)
    return coords, latent.astype(np.float32)


def predicted_occupancy(
    model: RVGModel,
    cube: TargetCube,
    evidence: np.ndarray,
    views: np.ndarray,
    use_depth: bool,
    seed: int,
) -> np.ndarray:
    """The coarse occupancy inference would give for a sample's views and evidence: the
    backend's default sampling (30 steps, CFG 7.5, from the hull without depth), seeded."""
    prior = PriorInputs(cube, evidence, views.astype(np.float32), use_depth, None)
    config = CoarseConfig(start_time=default_start_time(use_depth))
    onehot, condition = coarse_condition(model, prior, config, "cpu")
    return sample_coarse(model, prior, onehot, condition, config, seed, "cpu")


def make_fine_sample(
    coarse_path: Path, config: LatentConfig, coarse_model: RVGModel | None = None
) -> dict[str, np.ndarray]:
    """Fine targets for a part-1 sample file (``dataset.make_sample``), per modality.

    The object is rebuilt from the sample's seed (``make_object(None, seed)``, as the sample was
    made); the cube is the sample's own. The active voxels are those of the sample's true
    coarse occupancy, or, given ``coarse_model``, of the occupancy it predicts (stored too).
    """
    with np.load(coarse_path) as data:
        seed = int(data["seed"])
        cubes = {m: data[f"{m}_cube"] for m in MODALITIES}
        occupancy = {m: data[f"{m}_occupancy"] for m in MODALITIES}
        inputs = (
            {m: (data[f"{m}_evidence"], data[f"{m}_views"]) for m in MODALITIES}
            if coarse_model is not None
            else {}
        )
    if occupancy[MODALITIES[0]].shape[0] != config.resolution:
        raise ValueError(
            f"{coarse_path}: coarse grid {occupancy[MODALITIES[0]].shape[0]}, "
            f"config {config.resolution}"
        )
    query = MeshQuery(make_object(None, seed).mesh)
    out: dict[str, np.ndarray] = {"seed": np.array(seed), "sub": np.array(config.sub)}
    for m in MODALITIES:
        cube = TargetCube(center=cubes[m][:3].astype(np.float64), side=float(cubes[m][3]))
        if coarse_model is not None:
            occupancy[m] = predicted_occupancy(coarse_model, cube, *inputs[m], m == "rgbd", seed)
            out[f"{m}_occupancy"] = occupancy[m].astype(np.float16)
        coords, latent = fine_targets(query, cube, occupancy[m], config)
        out[f"{m}_coords"] = coords.astype(np.int16)
        out[f"{m}_latent"] = latent.astype(np.float16)
    return out


def generate_fine(
    coarse_root: Path,
    fine_root: Path,
    config: LatentConfig,
    limit: int | None = None,
    stride: int = 1,
    offset: int = 0,
    predicted: str | None = None,
) -> int:
    """Fine samples for the part-1 samples in ``coarse_root`` (sorted; the first ``limit``),
    written under the same names to ``fine_root``; skips existing files, so it resumes and
    parallelises like ``dataset.generate`` (same ``stride``, different ``offset``).
    ``predicted``: a weights folder (None = ground-truth occupancy; "" = the shipped weights)
    whose coarse model predicts the occupancy. Deterministic: the targets depend only on the
    sample (its seed, cube and occupancy; the prediction is seeded by the sample's seed)."""
    coarse_model = None
    if predicted is not None:
        torch.set_num_threads(1)  # one process per core, as the data generation runs
        coarse_model = load_model(predicted or None, "cpu")
    fine_root = Path(fine_root)
    fine_root.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in Path(coarse_root).glob("*.npz") if not p.name.startswith("."))
    files = files[:limit] if limit is not None else files
    written = 0
    for path in files[offset::stride]:
        with np.load(path) as data:
            seed = int(data["seed"])
        out_path = sample_path(fine_root, seed)
        if out_path.exists():
            continue
        sample = make_fine_sample(path, config, coarse_model)
        tmp = out_path.with_name(f".{out_path.stem}.tmp.npz")
        np.savez_compressed(tmp, **sample)
        os.replace(tmp, out_path)
        written += 1
    return written
