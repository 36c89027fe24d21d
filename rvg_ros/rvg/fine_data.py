"""Training targets of the fine (structured-latent) stage: per-active-voxel latents
(``fine_latent``) computed from the procedural object's mesh.

Distances are exact Euclidean distances to the object's mesh (Open3D ``RaycastingScene``, as
``sim/objects.py`` and ``eval/visibility.py`` use), not the procedural SDF composition, whose
smooth unions and subtractions are only bounds away from the surface.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import open3d as o3d
import trimesh

from rvg_ros.core.types import TargetCube
from rvg_ros.rvg.dataset import MODALITIES, sample_path
from rvg_ros.rvg.fine_latent import LatentConfig, active_voxels, sub_voxel_centres
from rvg_ros.sim.objects import make_object


class MeshQuery:
    """Signed distance and surface colour of a watertight, vertex-coloured mesh."""

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


def make_fine_sample(coarse_path: Path, config: LatentConfig) -> dict[str, np.ndarray]:
    """Fine targets for a part-1 sample file (``dataset.make_sample``), per modality.

    The object is rebuilt from the sample's seed (``make_object(None, seed)``, as the sample was
    made); the cube and the coarse occupancy are the sample's own, so the fine targets sit
    exactly on the coarse ones.
    """
    with np.load(coarse_path) as data:
        seed = int(data["seed"])
        cubes = {m: data[f"{m}_cube"] for m in MODALITIES}
        occupancy = {m: data[f"{m}_occupancy"] for m in MODALITIES}
    if occupancy[MODALITIES[0]].shape[0] != config.resolution:
        raise ValueError(
            f"{coarse_path}: coarse grid {occupancy[MODALITIES[0]].shape[0]}, "
            f"config {config.resolution}"
        )
    query = MeshQuery(make_object(None, seed).mesh)
    out: dict[str, np.ndarray] = {"seed": np.array(seed), "sub": np.array(config.sub)}
    for m in MODALITIES:
        cube = TargetCube(center=cubes[m][:3].astype(np.float64), side=float(cubes[m][3]))
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
) -> int:
    """Fine samples for the part-1 samples in ``coarse_root`` (sorted; the first ``limit``),
    written under the same names to ``fine_root``; skips existing files, so it resumes and
    parallelises like ``dataset.generate`` (same ``stride``, different ``offset``).
    Deterministic: the targets depend only on the sample (its seed, cube and occupancy)."""
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
        sample = make_fine_sample(path, config)
        tmp = out_path.with_name(f".{out_path.stem}.tmp.npz")
        np.savez_compressed(tmp, **sample)
        os.replace(tmp, out_path)
        written += 1
    return written
