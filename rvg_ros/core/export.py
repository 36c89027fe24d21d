"""Write a Reconstruction to files: mesh.ply, mesh.glb, cloud.ply, result.json, preview.png.

Everything is in metres, in the capture's world frame. Exporters only read the result.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import trimesh

from rvg_ros.core.render import MeshRenderer
from rvg_ros.core.session import _fsync_dir, write_atomic
from rvg_ros.core.types import Frame, Intrinsics, Mesh, PointCloud, Reconstruction

# Generated (unobserved) surface is tinted with this colour in the preview.
GENERATED_TINT = np.array([0.85, 0.2, 0.85], dtype=np.float32)


def write_mesh_ply(mesh: Mesh, path: Path) -> None:
    legacy = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(mesh.vertices), o3d.utility.Vector3iVector(mesh.triangles)
    )
    legacy.vertex_colors = o3d.utility.Vector3dVector(mesh.vertex_colors.astype(np.float64))
    legacy.compute_vertex_normals()
    if not o3d.io.write_triangle_mesh(str(path), legacy, write_ascii=False):
        raise OSError(f"could not write {path}")


def write_mesh_glb(mesh: Mesh, path: Path) -> None:
    """GLB through trimesh: Open3D 0.20's GLB output reads back empty."""
    colours = np.concatenate(
        [np.round(mesh.vertex_colors * 255), np.full((len(mesh.vertices), 1), 255)], axis=1
    ).astype(np.uint8)
    tm = trimesh.Trimesh(mesh.vertices, mesh.triangles, vertex_colors=colours, process=False)
    write_atomic(path, tm.export(file_type="glb"))


def write_cloud_ply(cloud: PointCloud, path: Path) -> None:
    """Binary PLY with x y z, red green blue (uchar) and a float ``confidence`` property.

    Written by hand: Open3D's legacy writer drops custom properties, and this layout is
    read by Open3D, CloudCompare, MeshLab and trimesh alike.
    """
    n = len(cloud.points)
    record = np.dtype(
        [
            ("x", "<f4"),
            ("y", "<f4"),
            ("z", "<f4"),
            ("red", "u1"),
            ("green", "u1"),
            ("blue", "u1"),
            ("confidence", "<f4"),
        ]
    )
    data = np.empty(n, dtype=record)
    for i, axis in enumerate("xyz"):
        data[axis] = cloud.points[:, i]
    rgb = np.clip(np.round(cloud.colors * 255), 0, 255).astype(np.uint8)
    for i, channel in enumerate(("red", "green", "blue")):
        data[channel] = rgb[:, i]
    data["confidence"] = cloud.confidence
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {n}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "property float confidence\nend_header\n"
    )
    write_atomic(path, header.encode("ascii") + data.tobytes())


def read_cloud_ply(path: Path) -> PointCloud:
    """Read back what ``write_cloud_ply`` writes (for tests and tools)."""
    raw = Path(path).read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    n = int(raw[:end].decode("ascii").split("element vertex ")[1].split("\n")[0])
    record = np.dtype(
        [
            ("x", "<f4"),
            ("y", "<f4"),
            ("z", "<f4"),
            ("red", "u1"),
            ("green", "u1"),
            ("blue", "u1"),
            ("confidence", "<f4"),
        ]
    )
    data = np.frombuffer(raw[end:], dtype=record, count=n)
    points = np.stack([data["x"], data["y"], data["z"]], axis=1).astype(np.float64)
    colours = np.stack([data["red"], data["green"], data["blue"]], axis=1).astype(np.float32) / 255
    return PointCloud(points, colours, data["confidence"].astype(np.float32))


def preview_camera(
    mesh: Mesh, frames: list[Frame], size: int = 384
) -> tuple[Intrinsics, np.ndarray]:
    """A camera that frames the whole mesh, looking from opposite the mean input view.

    The far side is where a reconstruction-only method has holes and a generative one has
    filled in: that is the side worth looking at.
    """
    centre = 0.5 * (mesh.vertices.min(axis=0) + mesh.vertices.max(axis=0))
    radius = float(np.linalg.norm(mesh.vertices - centre, axis=1).max())
    posed = [f.camera_to_world[:3, 3] for f in frames if f.camera_to_world is not None]
    mean_dir = np.mean(posed, axis=0) - centre if posed else np.array([1.0, 0.0, 0.0])
    mean_dir[2] = 0.0
    if np.linalg.norm(mean_dir) < 1e-9:
        mean_dir = np.array([1.0, 0.0, 0.0])
    direction = -mean_dir / np.linalg.norm(mean_dir) + np.array([0.0, 0.0, 0.6])
    direction /= np.linalg.norm(direction)
    fov = np.radians(40.0)
    distance = radius / np.sin(fov / 2) * 1.1
    eye = centre + direction * distance
    forward = (centre - eye) / distance
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, np.cross(forward, right), forward], axis=1)
    pose[:3, 3] = eye
    f = 0.5 * size / np.tan(fov / 2)
    return Intrinsics(f, f, (size - 1) / 2, (size - 1) / 2, size, size), pose


def observed_vertices(result: Reconstruction) -> np.ndarray:
    """Which mesh vertices a view backs: the backend's own flags when it gives them (``rvg``
    without depth calibrates its silhouette-backed vertices below 1.0), else confidence 1.0."""
    flags = result.extras.get("vertex_observed")
    if flags is not None and len(flags) == len(result.mesh.vertices):
        return np.asarray(flags, dtype=bool)
    return result.mesh.vertex_confidence >= 0.99


def render_preview(
    mesh: Mesh, frames: list[Frame], observed: np.ndarray, size: int = 384
) -> np.ndarray:
    """RGB preview: observed surface (``observed``: per-vertex flags, ``observed_vertices``)
    in its colours, generated surface tinted magenta."""
    if mesh.is_empty:
        return np.zeros((size, size, 3), np.uint8)
    observed = np.asarray(observed, dtype=bool)[:, None]
    colours = np.where(
        observed, mesh.vertex_colors, 0.4 * mesh.vertex_colors + 0.6 * GENERATED_TINT
    )
    tinted = Mesh(mesh.vertices, mesh.triangles, colours.astype(np.float32), mesh.vertex_confidence)
    intrinsics, pose = preview_camera(mesh, frames, size)
    return MeshRenderer(tinted).render(intrinsics, pose, background=(40, 40, 48)).rgb


def result_summary(result: Reconstruction) -> dict[str, object]:
    lo, hi = result.bounding_box()
    return {
        "backend": result.backend,
        "num_views": result.num_views,
        "metric_scale": result.metric_scale,
        "frame_id": result.frame_id,
        "bounding_box": {"min": lo.tolist(), "max": hi.tolist(), "size": (hi - lo).tolist()},
        "vertices": len(result.mesh.vertices),
        "triangles": len(result.mesh.triangles),
        "points": len(result.cloud.points),
        "observed_fraction": float(np.mean(observed_vertices(result)))
        if len(result.mesh.vertices)
        else 0.0,
        "stage_seconds": result.stage_seconds,
        "total_seconds": float(sum(result.stage_seconds.values())),
        "peak_memory_mb": result.peak_memory_mb,
        "extras": {
            k: v for k, v in result.extras.items() if isinstance(v, (int, float, str, bool))
        },
        "files": result.files,
    }


def export_reconstruction(
    result: Reconstruction, frames: list[Frame], out_dir: Path
) -> dict[str, str]:
    """Write all output files; fills and returns ``result.files`` (name -> absolute path)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        name: str((out_dir / name).resolve())
        for name in ("mesh.ply", "mesh.glb", "cloud.ply", "preview.png", "result.json")
    }
    write_mesh_ply(result.mesh, out_dir / "mesh.ply")
    write_mesh_glb(result.mesh, out_dir / "mesh.glb")
    write_cloud_ply(result.cloud, out_dir / "cloud.ply")
    preview = render_preview(result.mesh, frames, observed=observed_vertices(result))
    ok, png = cv2.imencode(".png", preview[:, :, ::-1])
    if not ok:
        raise OSError("could not encode preview.png")
    write_atomic(out_dir / "preview.png", png.tobytes())
    result.files = files
    write_atomic(out_dir / "result.json", json.dumps(result_summary(result), indent=2).encode())
    return files


def next_result_dir(out_root: Path) -> Path:
    """``out_root/NNN`` one past the highest numbered result already there (001 if none)."""
    out_root = Path(out_root)
    numbers = [int(p.name) for p in out_root.glob("[0-9]*") if p.name.isdigit()]
    return out_root / f"{max(numbers, default=0) + 1:03d}"


def export_reconstruction_atomic(
    result: Reconstruction, frames: list[Frame], out_dir: Path
) -> dict[str, str]:
    """``export_reconstruction`` into a hidden sibling folder, then one rename to ``out_dir``:
    readers (and a restart after a kill) see a complete result folder or none at all."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by a kill during an earlier export
    export_reconstruction(result, frames, staging)
    final = out_dir.resolve()
    result.files = {name: str(final / name) for name in result.files}
    write_atomic(staging / "result.json", json.dumps(result_summary(result), indent=2).encode())
    os.rename(staging, out_dir)  # fails rather than merging if out_dir appeared meanwhile
    _fsync_dir(out_dir.parent)
    return result.files
