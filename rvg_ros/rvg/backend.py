"""``rvg``: reconstruction via generation (part 1: prior -> GGC -> sparse-structure flow).

Stages, each timed and reported: symmetry (RGB-D: the object's own symmetry, searched as
``fusion+mirror`` does, turned into virtual views that join the reconstruction prior), prior
(cube, evidence grid, view inputs), condition (multi-view
encoder + Condition Net = GGC), sampling (rectified-flow Euler steps with CFG), decode (fine
surface from measurements + generated occupancy), colour (+ confidence), sample (point cloud).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from rvg_ros.core.backends.base import (
    BackendOptions,
    ProgressFn,
    StageTimer,
    no_progress,
    peak_rss_mb,
)
from rvg_ros.core.backends.completion import fused_vertices
from rvg_ros.core.backends.symmetry import Symmetry, find_symmetry, symmetric_views
from rvg_ros.core.devices import torch_device
from rvg_ros.core.surface import finish_mesh, sample_cloud
from rvg_ros.core.types import CaptureSet, Frame, Reconstruction, ReconstructionError
from rvg_ros.rvg.decode import MIN_WALL_VOXELS, decode_surface
from rvg_ros.rvg.flow import sample_flow
from rvg_ros.rvg.model import WEIGHTS_NAME, RVGModel
from rvg_ros.rvg.prior import (
    FREE,
    UNKNOWN,
    completion_cube,
    evidence_grid,
    hidden_everywhere,
    support_plane,
    view_inputs,
)
from rvg_ros.rvg.train import enforce_evidence, velocity_fn

# Views the encoder takes (the training range is 2-8), and symmetry transforms turned into
# virtual views (an axis of revolution has 7; the three furthest turns cover the back).
MAX_ENCODED_VIEWS = 8
MAX_SYMMETRY_TRANSFORMS = 3
RGB_START_TIME = 0.5
SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
_STAGES = {
    "symmetry": 2.5,
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
    # Symmetric views in the prior (RGB-D with masks only: without depth a wrong symmetry
    # cannot be told from a right one). The generator then fills only what neither the
    # cameras nor the symmetry explain.
    symmetry: bool = True
    # Nothing below the support the object rests on (see prior.support_plane).
    support: bool = True
    sample_seed: int | None = None  # None: the capture's seed
    # Where sampling starts: 1.0 = pure noise (the paper). Below 1, from the evidence's
    # "not seen empty" region (the visual hull without depth) noised to that time (SDEdit),
    # with ``steps`` scaled alike. None: 1.0 with depth, RGB_START_TIME without: on RGB the
    # generator alone left scattered blobs inside the hull (YCB dev F@0.05 0.42 vs the hull's
    # 0.65); started from the hull it keeps what the silhouettes say and carves the rest.
    start_time: float | None = None
    # Thickness (fine voxels) behind a measured surface before the generator decides.
    min_wall_voxels: float = MIN_WALL_VOXELS


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
            symmetry=bool(extra.get("symmetry", RVGSettings.symmetry)),
            support=bool(extra.get("support", RVGSettings.support)),
            sample_seed=None if extra.get("sample_seed") is None else int(extra["sample_seed"]),
            start_time=None if extra.get("start_time") is None else float(extra["start_time"]),
            min_wall_voxels=float(extra.get("min_wall_voxels", RVGSettings.min_wall_voxels)),
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
        symmetry: Symmetry | None = None
        virtual: list[Frame] = []
        with timer.stage("symmetry"):
            if s.symmetry and use_depth and capture.has_masks:
                symmetry, virtual = self._symmetric_views(capture)
        with timer.stage("prior"):
            hinted = CaptureSet(capture.frames + virtual, capture.target, capture.seed)
            cube = completion_cube(hinted)
            support = support_plane(capture) if s.support else None
            evidence = evidence_grid(capture, cube, res, use_depth, support)
            if virtual:
                # The cameras' own evidence wins; the symmetry speaks only where they know nothing.
                hint = evidence_grid(
                    CaptureSet(virtual, capture.target), cube, res, use_depth, support
                )
                evidence = np.where(evidence == UNKNOWN, hint, evidence)
            # The encoder saw 2-8 views in training: real views first, then virtual ones.
            encoded = capture.frames + virtual[: max(MAX_ENCODED_VIEWS - len(capture.frames), 0)]
            views = view_inputs(
                CaptureSet(encoded, capture.target), cube, use_depth, model.config.view_size
            )
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
                # ``sample_seed`` varies the generation alone (same views): seed variance.
                seed = capture.seed if s.sample_seed is None else s.sample_seed
                generator = torch.Generator().manual_seed(seed)
                start = s.start_time or (1.0 if use_depth else RGB_START_TIME)
                steps = max(1, round(s.steps * start))
                x0 = sample_flow(
                    velocity_fn(model, onehot, condition),
                    (1, 1, res, res, res),
                    steps,
                    s.cfg_scale,
                    generator,
                    device,
                    on_step=lambda k, n: sub(k / n, f"sampling {k}/{n}"),
                    x_start=torch.where(ev == FREE, -1.0, 1.0)[:, None].float(),
                    t_start=start,
                )
                occupancy = ((x0[:, 0] + 1) / 2).clamp(0, 1)
                if s.enforce_evidence:
                    occupancy = enforce_evidence(occupancy, ev)
                if virtual:
                    inside = hidden_everywhere(capture.frames, virtual, cube, res)
                    occupancy = torch.where(
                        torch.from_numpy(inside)[None].to(device), 1.0, occupancy
                    )
                occupancy = occupancy[0].float().cpu().numpy()
        with timer.stage("decode"):
            vertices, triangles, voxel = decode_surface(
                occupancy,
                cube,
                capture.frames,
                # The target's voxel size, as fusion uses: the completion cube is larger, and a
                # coarser TSDF would cost the seen surface accuracy (0.34 vs 0.23 mm on YCB).
                round(self.options.resolution * cube.side / capture.target.side),
                use_depth,
                self.options.device,
                hint_frames=virtual,
                support_plane=support,
                min_wall_voxels=s.min_wall_voxels,
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
                "start_time": start,
                "use_condition": s.use_condition,
                "device": device,
                "cube_side": cube.side,
                "symmetry": symmetry.kind if symmetry is not None else "none",
                "symmetric_views": len(virtual),
                "support_plane": " ".join(f"{v:.5f}" for v in support)
                if support is not None
                else "none",
            },
        )

    def _symmetric_views(self, capture: CaptureSet) -> tuple[Symmetry | None, list[Frame]]:
        """The best symmetry consistent with the views (as ``fusion+mirror`` finds it) and the
        virtual views it implies; (None, []) when no symmetry is consistent."""
        points = fused_vertices(capture, replace(self.options, extra={}))
        voxel = capture.target.side / self.options.resolution
        symmetry, _ = find_symmetry(points, capture.frames, capture.target, voxel, capture.seed)
        if symmetry is None:
            return None, []
        return symmetry, symmetric_views(capture.frames, symmetry, MAX_SYMMETRY_TRANSFORMS)
