"""The torch stages on CUDA agree with the CPU: renderer, coarse generation, fine stage, RVC.

Runs only where torch sees a GPU (skipped elsewhere, e.g. in CI). Imports nothing that needs
Open3D, so it also runs on a GPU machine that has torch but not our whole install.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rvg_ros.core.types import CaptureSet, Intrinsics, TargetCube
from rvg_ros.rvg.fine_measured import LatticeTSDF
from rvg_ros.rvg.fine_model import FineModel, FineModelConfig
from rvg_ros.rvg.generate import (
    CoarseConfig,
    FineConfig,
    PriorInputs,
    coarse_condition,
    generate_fine,
    load_model,
    measured_known,
    sample_coarse,
)
from rvg_ros.rvg.prior import completion_cube, evidence_grid, view_inputs
from rvg_ros.rvg.render import Camera, SDFField, camera_in_cube, render

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _sphere_field(res: int = 48) -> SDFField:
    axis = (torch.arange(res) + 0.5) / res - 0.5
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    sdf = (grid - torch.tensor([0.05, -0.03, 0.02])).norm(dim=-1) - 0.28
    return SDFField(sdf, torch.rand(3, res, res, res, generator=torch.Generator().manual_seed(0)))


def test_render_on_cuda_matches_cpu() -> None:
    from conftest import look_at

    cube = TargetCube(center=np.array([0.1, 0.2, 0.3]), side=0.25)
    k = Intrinsics(fx=180.0, fy=180.0, cx=47.5, cy=47.5, width=96, height=96)
    cam = camera_in_cube(k, look_at(cube.center + np.array([0.45, 0.35, 0.3]), cube.center), cube)
    field = _sphere_field()
    cpu = render(field, cam)
    gpu = render(
        SDFField(field.sdf.cuda(), field.colour.cuda()),
        Camera(**{**cam.__dict__, "camera_to_cube": cam.camera_to_cube.cuda()}),
    )
    assert torch.allclose(cpu.silhouette, gpu.silhouette.cpu(), atol=1e-4)
    assert torch.allclose(cpu.colour, gpu.colour.cpu(), atol=1e-4)


@pytest.fixture(scope="module")
def sphere_prior() -> tuple[PriorInputs, list]:
    from conftest import sphere_frame

    centre, radius = np.array([0.1, -0.05, 0.3]), 0.04
    frames = []
    for az in np.radians([0.0, 30.0, 60.0, 90.0]):  # one side only
        eye = centre + 0.35 * np.array([np.cos(az), np.sin(az), 0.4])
        frames.append(sphere_frame(centre, radius, eye))
    capture = CaptureSet(frames, TargetCube(center=centre, side=3 * radius))
    cube = completion_cube(capture)
    prior = PriorInputs(
        cube, evidence_grid(capture, cube, 32, True), view_inputs(capture, cube, True), True
    )
    return prior, frames


def test_coarse_and_fine_generation_on_cuda_match_cpu(sphere_prior) -> None:
    prior, frames = sphere_prior
    coarse = CoarseConfig(steps=10)
    occupancy = {}
    for device in ("cpu", "cuda"):
        model = load_model(None, device)
        onehot, condition = coarse_condition(model, prior, coarse, device)
        occupancy[device] = sample_coarse(model, prior, onehot, condition, coarse, 0, device)
    # Same seed, same noise (drawn on the CPU): the devices differ only by float rounding.
    agree = np.mean((occupancy["cpu"] > 0.5) == (occupancy["cuda"] > 0.5))
    assert agree > 0.99, agree
    torch.manual_seed(0)
    fine_cpu = FineModel(FineModelConfig()).eval()
    fine_gpu = FineModel(FineModelConfig()).eval()
    fine_gpu.load_state_dict(fine_cpu.state_dict())
    fine_gpu.cuda()
    config = FineConfig(steps=4, cfg_scale=3.0)
    occ = occupancy["cpu"]
    _, sdf_cpu = generate_fine(fine_cpu, prior, occ, frames, config, 0, "cpu")
    sample, sdf_gpu = generate_fine(fine_gpu, prior, occ, frames, config, 0, "cuda")
    assert sample.latent.device.type == "cuda"
    near = np.abs(sdf_cpu) < 0.02
    assert np.mean(np.sign(sdf_cpu[near]) == np.sign(sdf_gpu[near])) > 0.98
    assert np.abs(sdf_cpu - sdf_gpu).max() < 0.01  # cube units; a fine voxel is 1/128
    # RVC on CUDA: steps at t = 1, 0.75, 0.5, 0.25; the three below t_start are compensated,
    # each with finite per-view losses for every real view.
    rvc = FineConfig(steps=4, cfg_scale=3.0, rvc=True, rvc_t_start=0.9)
    sample, _ = generate_fine(fine_gpu, prior, occ, frames, rvc, 0, "cuda")
    assert len(sample.rvc_steps) == 3
    for step in sample.rvc_steps:
        assert step.before.shape == (1, len(frames)) and torch.isfinite(step.before).all()
    # The measured entries (fine_measured) are fixed on CUDA as on the CPU. The sphere's TSDF
    # is written analytically (fusing needs Open3D), measured on the cameras' side only.
    cube, voxel = prior.cube, prior.cube.side / 64
    origin = cube.center - cube.side / 2
    axis = np.arange(65) * voxel
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1) + origin
    centre = np.array([0.1, -0.05, 0.3])
    tsdf = np.clip((np.linalg.norm(grid - centre, axis=-1) - 0.04) / (4 * voxel), -1.0, 1.0)
    weight = (grid[..., 0] > centre[0] - 0.01).astype(np.float32)
    measured = LatticeTSDF(tsdf.astype(np.float32), weight, origin, voxel, 4 * voxel)
    known_sdf = measured_known(fine_cpu, prior, occ, measured, 4.0)
    known = {}
    for device, model in (("cpu", fine_cpu), ("cuda", fine_gpu)):
        known[device], _ = generate_fine(
            model, prior, occ, frames, config, 0, device, known_sdf=known_sdf
        )
    assert known["cuda"].known_entries == known["cpu"].known_entries > 0
    assert (known["cpu"].latent - known["cuda"].latent.cpu()).abs().max() < 0.05
