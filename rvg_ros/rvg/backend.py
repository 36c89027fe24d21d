"""``rvg``: reconstruction via generation (part 1: prior -> GGC -> sparse-structure flow).

Stages, each timed and reported: prior (cube, evidence grid, view inputs), condition (multi-view
encoder + Condition Net = GGC), sampling (rectified-flow Euler steps with CFG), decode (fine
surface from measurements + generated occupancy), colour (+ confidence), sample (point cloud).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rvg_ros.core.backends.base import (
    BackendOptions,
    ProgressFn,
    StageTimer,
    no_progress,
    peak_rss_mb,
)
from rvg_ros.core.devices import torch_device
from rvg_ros.core.surface import finish_mesh, sample_cloud
from rvg_ros.core.types import CaptureSet, Reconstruction, ReconstructionError
from rvg_ros.rvg.decode import decode_surface
from rvg_ros.rvg.flow import sample_flow
from rvg_ros.rvg.model import WEIGHTS_NAME, RVGModel
from rvg_ros.rvg.prior import completion_cube, evidence_grid, view_inputs
from rvg_ros.rvg.train import enforce_evidence, velocity_fn

SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
_STAGES = {
    "prior": 0.5,
    "condition": 0.3,
    "sampling": 3.0,
    "decode": 1.0,
    "colour": 1.0,
    "sample": 0.2,
}


@dataclass
class RVGSettings:
    steps: int = 30  # paper: 30 Euler steps for the sparse structure
    cfg_scale: float = 7.5  # paper: CFG 7.5
    use_condition: bool = True  # False = evidence only (the "no GGC" ablation)
    enforce_evidence: bool = True


_MODEL_CACHE: dict[tuple[str, str], RVGModel] = {}


def load_model(weights_dir: str | None, device: str) -> RVGModel:
    """The generator from ``weights_dir`` (or the weights shipped with the package), cached."""
    path = Path(weights_dir or SHIPPED_WEIGHTS) / WEIGHTS_NAME
    key = (str(path.resolve()), device)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = RVGModel.load(path, device)
    return _MODEL_CACHE[key]


class RVGBackend:
    name = "rvg"

    def __init__(self, options: BackendOptions | None = None) -> None:
        self.options = options or BackendOptions()
        extra = self.options.extra
        self.settings = RVGSettings(
            steps=int(extra.get("steps", RVGSettings.steps)),
            cfg_scale=float(extra.get("cfg_scale", RVGSettings.cfg_scale)),
            use_condition=bool(extra.get("use_condition", True)),
            enforce_evidence=bool(extra.get("enforce_evidence", True)),
        )

    def reconstruct(
        self, capture: CaptureSet, progress: ProgressFn = no_progress
    ) -> Reconstruction:
        device = torch_device(self.options.device)
        model = load_model(self.options.weights_dir, device)
        use_depth = capture.has_depth
        if not use_depth and not capture.has_masks:
            raise ReconstructionError("rvg needs depth or object masks in every view")
        timer = StageTimer(progress, _STAGES)
        s = self.settings
        res = model.config.resolution
        with timer.stage("prior"):
            cube = completion_cube(capture)
            evidence = evidence_grid(capture, cube, res, use_depth)
            views = view_inputs(capture, cube, use_depth, model.config.view_size)
        if device == "cpu":
            # One intra-op thread by default: the model is small, and on a shared CPU (a robot
            # runs drivers and planners beside us) OpenMP threads waiting for a descheduled
            # sibling made sampling 10-20x slower here. ``threads`` raises it on idle machines.
            torch.set_num_threads(int(self.options.extra.get("threads", 1)))
        with torch.inference_mode():
            ev = torch.from_numpy(evidence)[None].to(device)
            onehot = model.onehot(ev)
            with timer.stage("condition"):
                condition = model.global_condition(
                    onehot,
                    torch.from_numpy(views)[None].to(device),
                    torch.ones(1, len(views), dtype=torch.bool, device=device),
                )
                if not s.use_condition:
                    condition = model.null_condition.expand(1, -1, -1)
            with timer.stage("sampling") as sub:
                generator = torch.Generator().manual_seed(capture.seed)
                x0 = sample_flow(
                    velocity_fn(model, onehot, condition),
                    (1, 1, res, res, res),
                    s.steps,
                    s.cfg_scale,
                    generator,
                    device,
                    on_step=lambda k, n: sub(k / n, f"sampling {k}/{n}"),
                )
                occupancy = ((x0[:, 0] + 1) / 2).clamp(0, 1)
                if s.enforce_evidence:
                    occupancy = enforce_evidence(occupancy, ev)
                occupancy = occupancy[0].float().cpu().numpy()
        with timer.stage("decode"):
            vertices, triangles, voxel = decode_surface(
                occupancy,
                cube,
                capture.frames,
                self.options.resolution,
                use_depth,
                self.options.device,
            )
        if len(triangles) == 0:
            raise ReconstructionError("rvg produced an empty surface")
        with timer.stage("colour"):
            mesh = finish_mesh(vertices, triangles, capture.frames, 3.0 * voxel)
        with timer.stage("sample"):
            cloud = sample_cloud(mesh, self.options.cloud_points, capture.seed)
        progress("done", 1.0)
        return Reconstruction(
            mesh=mesh,
            cloud=cloud,
            backend=self.name,
            num_views=len(capture.frames),
            metric_scale=True,
            stage_seconds=timer.seconds,
            peak_memory_mb=peak_rss_mb(),
            extras={
                "method": "reconstruction via generation (GGC + sparse-structure flow)",
                "voxel_size": voxel,
                "steps": s.steps,
                "cfg_scale": s.cfg_scale,
                "use_condition": s.use_condition,
                "device": device,
                "cube_side": cube.side,
            },
        )
