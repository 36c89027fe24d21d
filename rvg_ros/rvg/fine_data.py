"""Targets of the fine (structured-latent) stage: active voxels and their per-voxel latents.

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

Distances are exact Euclidean distances to the object's mesh (Open3D ``RaycastingScene``, as
``sim/objects.py`` and ``eval/visibility.py`` use), not the procedural SDF composition, whose
smooth unions and subtractions are only bounds away from the surface.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open3d as o3d
import trimesh
from scipy.ndimage import binary_dilation, binary_erosion

from rvg_ros.core.types import TargetCube
from rvg_ros.rvg.dataset import MODALITIES, sample_path
from rvg_ros.sim.objects import make_object

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
