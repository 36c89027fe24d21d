"""``rvg-ros reconstruct`` on capture folders, as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import trimesh

from rvg_ros.core.export import read_cloud_ply
from rvg_ros.core.session import CaptureSession

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "rvg_ros.core.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_reconstruct_writes_all_files_in_metres(tmp_path: Path, sphere_views) -> None:
    frames, centre, radius = sphere_views
    session = CaptureSession(tmp_path / "capture")
    for f in frames:
        session.append(f)
    out = tmp_path / "out"
    proc = _run(
        "reconstruct",
        "--input",
        str(tmp_path / "capture"),
        "--output",
        str(out),
        "--resolution",
        "64",
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("mesh.ply", "mesh.glb", "cloud.ply", "result.json", "preview.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "result.json").read_text())
    assert summary["backend"] == "fusion" and summary["num_views"] == 8
    assert summary["metric_scale"] is True
    np.testing.assert_allclose(summary["bounding_box"]["size"], [2 * radius] * 3, rtol=0.1)
    assert set(summary["stage_seconds"]) >= {"integrate", "extract"}
    assert summary["peak_memory_mb"] > 0
    glb = trimesh.load(out / "mesh.glb", force="mesh")
    assert len(glb.vertices) > 100
    np.testing.assert_allclose(glb.bounds.mean(axis=0), centre, atol=0.004)
    cloud = read_cloud_ply(out / "cloud.ply")
    assert len(cloud.points) == summary["points"]
    assert np.all((cloud.confidence >= 0) & (cloud.confidence <= 1))
    dist = np.linalg.norm(cloud.points - centre, axis=1)
    assert np.percentile(np.abs(dist - radius), 95) < 0.003


def test_bad_input_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    proc = _run(
        "reconstruct", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no transforms.json" in lines[0]


def test_unknown_backend_is_a_clear_error(tmp_path: Path, sphere_views) -> None:
    CaptureSession(tmp_path / "c").append(sphere_views[0][0])
    proc = _run(
        "reconstruct",
        "--input",
        str(tmp_path / "c"),
        "--output",
        str(tmp_path / "o"),
        "--backend",
        "magic",
    )
    assert proc.returncode == 2 and "unknown backend 'magic'" in proc.stderr
