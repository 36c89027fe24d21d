"""Per-vertex confidence of ``rvg``'s generated surface, calibrated on procedural objects.

Observed vertices (a view sees them and, with depth, measures them there) keep the full
confidence ``core/surface.py`` gives them. A generated vertex gets the probability that it lies
within ``TOLERANCE_FINE_VOXELS`` of the true surface, as measured on held-out procedural
objects (``calibrate`` below) for vertices like it, binned by

- its distance from the nearest observed vertex (fine voxels): generation is surer next to
  what a camera saw than far from it;
- with two fine samples (``confidence_samples`` = 2: 0.07 s more on CUDA, seconds on the CPU),
  also its *spread*: how far the second sample's surface is from the vertex (|SDF of sample 2|
  at the vertex, fine voxels). Measured, the spread does not help (below), so the default is
  one sample and the distance bins alone.

    python -m rvg_ros.rvg.confidence --objects 12 --out results/rvg_confidence
    python -m rvg_ros.rvg.confidence --objects 8 --modality rgb --out results/rvg_confidence_rgb

prints and writes the table that the constants below were copied from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from rvg_ros.core.types import TargetCube

# Within this distance (fine voxels: 1/128 of the generation cube) a vertex counts as right.
TOLERANCE_FINE_VOXELS = 2.0
DISTANCE_EDGES = (4.0, 8.0, 16.0)  # fine voxels from the nearest observed vertex
SPREAD_EDGES = (0.5, 1.0, 2.0)  # fine voxels between the two samples' surfaces
# Calibrated (module docstring): P(within tolerance) per distance bin, and per (distance,
# spread) bin, from ``results/rvg_confidence/calibration.json`` (12 held-out procedural objects,
# 4 one-sided RGB-D views, the shipped weights and session 14's pipeline: decode's free-space
# margin and hole closing, the fine SDF smoothed and averaged with the coarse shape with depth;
# 123k generated vertices; session 12's table was 0.869 / 0.554 / 0.550 / 0.341, session 5's
# 0.830 / 0.462 / 0.495 / 0.293). Observed vertices: 1.00. The spread orders good and bad
# generated vertices only at its largest bin (over 2 fine voxels: right 41 % of the time
# against 66-76 % below, but 2 % of the vertices), so one sample is the default on every
# device.
DISTANCE_CONFIDENCE = (0.882, 0.584, 0.597, 0.351)
# The same without depth, where the fine stage runs by default: ``--modality rgb``
# (``results/rvg_confidence_rgb``, 8 objects, 4 one-sided RGB + mask views, 105k generated
# vertices). Generation from silhouettes alone is far less sure away from what was seen.
DISTANCE_CONFIDENCE_RGB = (0.505, 0.286, 0.092, 0.001)
# Without depth an "observed" vertex is one a view sees on the object's silhouette side, not one
# a measurement put there: the same calibration found them within tolerance 58 % of the time
# (``observed_within``), so they get that, not 1.0 (with depth: 100 %, they keep 1.0).
OBSERVED_CONFIDENCE_RGB = 0.583
SPREAD_CONFIDENCE = (
    (0.900, 0.938, 0.807, 0.435),
    (0.582, 0.693, 0.491, 0.375),
    (0.597, 0.564, 0.678, 0.753),
    (0.277, 0.448, 0.432, 0.383),
)


def vertex_spread(
    second_sdf: np.ndarray,
    cube: TargetCube,
    vertices: np.ndarray,
    occupancy: np.ndarray,
    fine_weight: float = 1.0,
) -> np.ndarray:
    """|signed distance| at each vertex, in fine voxels, of the generated shape the second fine
    sample gives: its SDF weighed with the coarse ``occupancy`` as the mesh's was
    (``decode.generated_distance``), or the weighting itself would read as disagreement."""
    # decode needs Open3D; this module does not.
    from rvg_ros.rvg.decode import generated_distance

    fine_voxel = cube.side / second_sdf.shape[0]
    distance = generated_distance(occupancy, cube, vertices, second_sdf, fine_weight)
    return np.abs(distance) / fine_voxel


def distance_to_observed(
    vertices: np.ndarray, observed: np.ndarray, fine_voxel: float
) -> np.ndarray:
    """Distance of every vertex to the nearest observed one, fine voxels (inf: none observed)."""
    if not observed.any():
        return np.full(len(vertices), np.inf)
    distance = np.zeros(len(vertices))
    # Only the generated vertices need a query (the observed ones are at 0), on both cores.
    distance[~observed], _ = cKDTree(vertices[observed]).query(vertices[~observed], workers=-1)
    return distance / fine_voxel


def bins(
    vertices: np.ndarray, observed: np.ndarray, fine_voxel: float, spread: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Distance bin of every vertex, and its spread bin (None without a spread)."""
    d = np.digitize(distance_to_observed(vertices, observed, fine_voxel), DISTANCE_EDGES)
    return d, None if spread is None else np.digitize(spread, SPREAD_EDGES)


def generated_confidence(
    confidence: np.ndarray,
    vertices: np.ndarray,
    observed: np.ndarray,
    fine_voxel: float,
    spread: np.ndarray | None,
    use_depth: bool = True,
) -> np.ndarray:
    """``confidence`` with the generated (not ``observed``) vertices set from the calibration
    (RGB-D's, or without depth RGB + masks' for the distance bins); without depth the observed
    ones get their calibrated ``OBSERVED_CONFIDENCE_RGB``."""
    out = np.asarray(confidence, dtype=np.float32).copy()
    if not use_depth:
        out[observed] = OBSERVED_CONFIDENCE_RGB
    d, s = bins(vertices, observed, fine_voxel, spread)
    if s is None:
        table = np.asarray(
            DISTANCE_CONFIDENCE if use_depth else DISTANCE_CONFIDENCE_RGB, dtype=np.float32
        )
        out[~observed] = table[d[~observed]]
    else:
        grid = np.asarray(SPREAD_CONFIDENCE, dtype=np.float32)
        out[~observed] = grid[d[~observed], s[~observed]]
    return out


def calibrate(
    objects: int, views: int, seed: int, weights_dir: str | None = None, modality: str = "rgbd"
) -> dict[str, object]:
    """Reconstruct held-out procedural objects (4 one-sided views, RGB-D or RGB + masks, two
    fine samples) and measure, per spread bin, the share of generated vertices within tolerance
    of the truth."""
    from dataclasses import replace

    import open3d as o3d

    from rvg_ros.core.pipeline import ReconstructSettings, reconstruct_frames
    from rvg_ros.rvg.dataset import VAL_SEED_OFFSET
    from rvg_ros.rvg.fine_latent import LatentConfig
    from rvg_ros.sim.capture import render_frames
    from rvg_ros.sim.objects import FAMILY_NAMES, make_object
    from rvg_ros.sim.views import default_intrinsics, fit_radius, one_sided

    shape = (len(DISTANCE_EDGES) + 1, len(SPREAD_EDGES) + 1)
    hits, counts = np.zeros(shape), np.zeros(shape)
    observed_hits = observed_count = 0
    per_object = []
    for i in range(objects):
        obj = make_object(FAMILY_NAMES[i % len(FAMILY_NAMES)], VAL_SEED_OFFSET + 700 + i)
        k = default_intrinsics(160, 160)
        radius = fit_radius(np.linalg.norm(obj.bounds[1] - obj.bounds[0]), k)
        rng = np.random.default_rng(seed + i)
        poses = one_sided(views, radius, rng, obj.bounds.mean(axis=0))
        frames = render_frames(obj.mesh, poses, k)
        if modality == "rgb":
            frames = [replace(f, depth=None) for f in frames]
        settings = ReconstructSettings(
            backend="rvg",
            device="cpu",
            resolution=96,
            cloud_points=1000,
            seed=seed + i,
            weights_dir=weights_dir,
            backend_options={"fine": True, "confidence_samples": 2},
        )
        result, _ = reconstruct_frames(frames, settings)
        spread = result.extras["vertex_spread"]
        cube_side = float(result.extras["cube_side"])
        fine_resolution = LatentConfig().fine_resolution
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(
            o3d.core.Tensor(np.asarray(obj.mesh.vertices, np.float32)),
            o3d.core.Tensor(np.asarray(obj.mesh.faces, np.uint32)),
        )
        query = o3d.core.Tensor(result.mesh.vertices.astype(np.float32))
        distance = scene.compute_distance(query).numpy() / (cube_side / fine_resolution)
        observed = np.asarray(result.extras["vertex_observed"], dtype=bool)
        right = distance <= TOLERANCE_FINE_VOXELS
        observed_hits += int(right[observed].sum())
        observed_count += int(observed.sum())
        d, sp = bins(result.mesh.vertices, observed, cube_side / fine_resolution, spread)
        assert sp is not None
        gen = ~observed
        np.add.at(hits, (d[gen], sp[gen]), right[gen])
        np.add.at(counts, (d[gen], sp[gen]), 1)
        per_object.append(
            {
                "object": obj.name,
                "generated_vertices": int((~observed).sum()),
                "generated_within": float(right[~observed].mean()) if (~observed).any() else None,
                "observed_within": float(right[observed].mean()) if observed.any() else None,
            }
        )
        print(json.dumps(per_object[-1]))

    def rate(h: np.ndarray, c: np.ndarray) -> list:
        return np.where(c > 0, np.round(h / np.maximum(c, 1), 3), np.nan).tolist()

    return {
        "tolerance_fine_voxels": TOLERANCE_FINE_VOXELS,
        "distance_edges": list(DISTANCE_EDGES),
        "spread_edges": list(SPREAD_EDGES),
        "bin_vertices": counts.astype(int).tolist(),
        "distance_confidence": rate(hits.sum(axis=1), counts.sum(axis=1)),
        "spread_confidence": rate(hits, counts),
        "spread_marginal": rate(hits.sum(axis=0), counts.sum(axis=0)),
        "generated_within": round(float(hits.sum() / max(counts.sum(), 1)), 3),
        "observed_within": round(observed_hits / max(observed_count, 1), 3),
        "objects": per_object,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rvg_ros.rvg.confidence", description=__doc__)
    parser.add_argument("--objects", type=int, default=16)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/rvg_confidence"))
    parser.add_argument("--weights-dir", default=None, help="default: the shipped weights")
    parser.add_argument("--modality", choices=("rgbd", "rgb"), default="rgbd")
    args = parser.parse_args(argv)
    table = calibrate(args.objects, args.views, args.seed, args.weights_dir, args.modality)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration.json").write_text(json.dumps(table, indent=2))
    print(json.dumps({k: v for k, v in table.items() if k != "objects"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
