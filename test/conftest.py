"""Shared fixtures: analytic scenes whose exact geometry is known."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from rvg_ros.core.types import Frame, Intrinsics


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world looking from ``eye`` at ``target`` with world z up."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = eye
    return pose


def sphere_frame(
    centre: np.ndarray, radius: float, eye: np.ndarray, size: int = 128, fov_deg: float = 30.0
) -> Frame:
    """A depth/mask/colour view of a sphere by exact ray-sphere intersection."""
    f = 0.5 * size / np.tan(np.radians(fov_deg) / 2)
    k = Intrinsics(f, f, (size - 1) / 2, (size - 1) / 2, size, size)
    pose = look_at(eye, centre)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    rays_cam = np.stack([(u - k.cx) / k.fx, (v - k.cy) / k.fy, np.ones_like(u)], axis=-1)
    rays = rays_cam @ pose[:3, :3].T
    oc = eye - centre
    a = np.sum(rays**2, axis=-1)
    b = 2 * rays @ oc
    c = oc @ oc - radius**2
    disc = b**2 - 4 * a * c
    hit = disc > 0
    t = np.where(hit, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), 0.0)
    depth = np.where(hit, t, 0.0).astype(np.float32)  # rays_cam has z = 1, so t is z-depth
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[hit] = (200, 80, 40)
    return Frame(rgb=rgb, intrinsics=k, camera_to_world=pose, depth=depth, mask=hit, stamp=0.0)


@pytest.fixture
def sphere_views() -> tuple[list[Frame], np.ndarray, float]:
    """8 views around a 4 cm-radius sphere at (0.1, -0.05, 0.3); returns frames, centre, radius."""
    centre = np.array([0.1, -0.05, 0.3])
    radius = 0.04
    frames = []
    for i in range(8):
        az = 2 * np.pi * i / 8
        el = np.radians(40 if i % 2 else -30)
        eye = centre + 0.35 * np.array(
            [np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)]
        )
        frames.append(sphere_frame(centre, radius, eye))
    return frames, centre, radius


# test/node_hooks/sitecustomize.py: loaded into a node process started with node_hold_env(), it
# holds a reconstruction at a chosen stage until the node's cancel check stops it, so the cancel
# tests (test_node.py, test_node_faults.py) don't race the node's 10 Hz cancel relay.
NODE_HOOKS = Path(__file__).resolve().parent / "node_hooks"


def node_hold_env(hold_file: Path) -> dict[str, str]:
    """Environment to add to a node process's: its reconstructions hold at the stage written in
    ``hold_file`` (missing or empty: no hold, so write it only around the goal to cancel).

    Python imports the hook at start-up from PYTHONPATH (the caller's entries kept after it). The
    variable name is the hook's HOLD_FILE_ENV, repeated: importing the hook here would run its
    start-up code in the test process."""
    pythonpath = [str(NODE_HOOKS), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(pythonpath), "RVG_ROS_TEST_HOLD_FILE": str(hold_file)}


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """One intra-op thread: the suite's subprocesses share 2 cores, and OpenMP threads that
    wait for a descheduled sibling make small models orders of magnitude slower."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


# Property tests run the same examples on every machine (CI must not flake on a new random
# draw), and keep no example database in the checkout. HYPOTHESIS_PROFILE=explore searches anew.
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True, database=None, deadline=None)
    _hypothesis_settings.register_profile("explore", deadline=None)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is a test dependency; without it those tests don't import
    pass
