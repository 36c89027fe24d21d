"""The generative stages of ``rvg``, between the reconstruction prior and the decode.

``coarse_condition``: GGC (multi-view encoder + Condition Net over the views and the
evidence); ``sample_coarse``: the sparse-structure flow -> coarse occupancy;
``generate_fine``: per-view conditions and the structured-latent flow over the coarse
result's active voxels, optionally with rendering-aware velocity compensation -> the fine
SDF. All take the prior's arrays
(``PriorInputs``) and run on any torch device; nothing here needs Open3D, so the network stages
can be timed on a machine that has only torch (``rvg_ros.bench_network``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rvg_ros.core.types import Frame, ReconstructionError, TargetCube
from rvg_ros.rvg.fine_decode import fine_field
from rvg_ros.rvg.fine_latent import active_voxels
from rvg_ros.rvg.fine_measured import LatticeTSDF, measured_sdf_latent
from rvg_ros.rvg.fine_model import FINE_WEIGHTS_NAME, FineModel
from rvg_ros.rvg.fine_sample import FineSample, FineSampleConfig, sample_fine
from rvg_ros.rvg.flow import for_device, sample_flow
from rvg_ros.rvg.model import WEIGHTS_NAME, RVGModel
from rvg_ros.rvg.prior import FREE
from rvg_ros.rvg.render_loss import LossConfig, View, view_from_frame
from rvg_ros.rvg.rvc import RVCConfig
from rvg_ros.rvg.train import enforce_evidence, velocity_fn

StepFn = Callable[[int, int], None]
SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


_MODEL_CACHE: dict[tuple[str, str], object] = {}


def _cached(path: Path, device: str, load: Callable[[Path, str], object]) -> object:
    key = (str(path.resolve()), device)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = load(path, device)
    return _MODEL_CACHE[key]


def load_model(weights_dir: str | None, device: str) -> RVGModel:
    """The generator from ``weights_dir`` (or the weights shipped with the package), cached."""
    model = _cached(Path(weights_dir or SHIPPED_WEIGHTS) / WEIGHTS_NAME, device, RVGModel.load)
    assert isinstance(model, RVGModel)
    return model


def load_fine_model(weights_dir: str | None, device: str, required: bool) -> FineModel | None:
    """The fine stage from ``weights_dir`` (or shipped), cached; None when its file is absent
    and not ``required``."""
    path = Path(weights_dir or SHIPPED_WEIGHTS) / FINE_WEIGHTS_NAME
    if not path.is_file():
        if required:
            raise ReconstructionError(
                f"fine stage requested (fine: true) but {path} does not exist; train it with "
                "'python -m rvg_ros.rvg.fine_train fit' or set fine: false"
            )
        return None
    model = _cached(path, device, FineModel.load)
    assert isinstance(model, FineModel)
    return model


@dataclass
class PriorInputs:
    """What the prior stage hands the generators (``backend.RVGBackend.prior``)."""

    cube: TargetCube
    evidence: np.ndarray  # (R, R, R) uint8: UNKNOWN / FREE / SURFACE
    views: np.ndarray  # (V, C, S, S) float32 encoder inputs, real views first
    use_depth: bool
    # (R, R, R) bool: hidden behind the surface in every real and symmetric view (the inside
    # of an object seen all round), forced occupied; None without symmetric views.
    inside: np.ndarray | None = None

    def save(self, path: Path) -> None:
        """npz, for ``bench_network`` (the prior on one machine, the networks on another)."""
        arrays = {
            "cube": np.r_[self.cube.center, self.cube.side],
            "evidence": self.evidence,
            "views": self.views,
            "use_depth": np.array(self.use_depth),
        }
        if self.inside is not None:
            arrays["inside"] = self.inside
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> PriorInputs:
        with np.load(path) as data:
            return cls(
                cube=TargetCube(
                    center=data["cube"][:3].astype(np.float64), side=float(data["cube"][3])
                ),
                evidence=data["evidence"],
                views=data["views"],
                use_depth=bool(data["use_depth"]),
                inside=data["inside"] if "inside" in data.files else None,
            )


# Without depth, coarse sampling starts at this time from the evidence's visual hull (SDEdit;
# see ``RVGSettings.start_time``).
RGB_START_TIME = 0.5


def default_start_time(use_depth: bool) -> float:
    """Where coarse sampling starts by default: pure noise with depth, the hull without."""
    return 1.0 if use_depth else RGB_START_TIME


@dataclass(frozen=True)
class CoarseConfig:
    steps: int = 30  # paper: 30 Euler steps for the sparse structure
    cfg_scale: float = 7.5  # paper: CFG 7.5
    use_condition: bool = True  # False = evidence only (the "no GGC" ablation)
    enforce_evidence: bool = True
    start_time: float = 1.0  # < 1: SDEdit from the evidence's "not seen empty" region


@dataclass(frozen=True)
class FineConfig:
    steps: int = 12  # paper: 12 Euler steps for the structured latent
    cfg_scale: float = 3.0  # paper: CFG 3.0
    rvc: bool = False
    rvc_strength: float = 0.1  # paper: lambda = 0.1
    rvc_t_start: float = 0.5
    # Render targets: each view cut to its mask's bounding box plus rvc_crop of it per side
    # (< 0: the whole image), at rvc_view_size pixels on the longer side. 80 px of the object
    # measured as well as 128 px of the whole 256 px image (YCB dev, RGB: seen accuracy 6.14
    # vs 6.13 mm) in two thirds of the time.
    rvc_view_size: int = 80
    # Views with depth render smaller: their seen surface is the measured TSDF at decode, so
    # RVC changes nothing measurable there (Table 2), and the bench mug's 4 RGB-D views cost
    # 15.3 s at 80 px against 13.6 s at 64 (docs/results.md, speed).
    rvc_depth_view_size: int = 64
    rvc_crop: float = 0.15
    # Weights of RVC's colour terms (render_loss.LossConfig): the field's own colour against
    # each view (the paper's 1 - SSIM; the fine stage's colour is not learned) and 1 - SSIM
    # of each view against the others warped into it through the rendered depth, the term
    # that pulls the surface onto the pixels without depth (docs/results.md, Table 2).
    rvc_colour: float = 1.0
    rvc_photometric: float = 1.0


@torch.inference_mode()
def coarse_condition(
    model: RVGModel, prior: PriorInputs, config: CoarseConfig, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The evidence one-hot (1, 3, R, R, R) and the GGC (1, N, D) (the null condition for the
    "no GGC" ablation)."""
    onehot = model.onehot(torch.from_numpy(prior.evidence)[None].to(device))
    if not config.use_condition:
        return onehot, model.null_condition.expand(1, -1, -1)
    condition = model.global_condition(
        onehot,
        torch.from_numpy(prior.views)[None].to(device),
        torch.ones(1, len(prior.views), dtype=torch.bool, device=device),
    )
    return onehot, condition


@torch.inference_mode()
def sample_coarse(
    model: RVGModel,
    prior: PriorInputs,
    onehot: torch.Tensor,
    condition: torch.Tensor,
    config: CoarseConfig,
    seed: int,
    device: str,
    on_step: StepFn | None = None,
) -> np.ndarray:
    """(R, R, R) float32 occupancy probability of the coarse structure, evidence enforced."""
    res = model.config.resolution
    ev = torch.from_numpy(prior.evidence)[None].to(device)
    # The noise is drawn on the CPU: a seed gives the same start on every device.
    generator = torch.Generator().manual_seed(seed)
    steps = max(1, round(config.steps * config.start_time))
    x0 = sample_flow(
        for_device(velocity_fn(model, onehot, condition), device),
        (1, 1, res, res, res),
        steps,
        config.cfg_scale,
        generator,
        device,
        on_step=on_step,
        x_start=torch.where(ev == FREE, -1.0, 1.0)[:, None].float(),
        t_start=config.start_time,
    )
    return finish_occupancy(((x0[:, 0] + 1) / 2).clamp(0, 1), prior, config)


def finish_occupancy(
    occupancy: torch.Tensor, prior: PriorInputs, config: CoarseConfig
) -> np.ndarray:
    """(1, R, R, R) occupancy probability -> (R, R, R) float32 numpy, with the evidence
    enforced and the prior's hidden inside filled (what decode gets from the coarse stage)."""
    device = occupancy.device
    if config.enforce_evidence:
        occupancy = enforce_evidence(occupancy, torch.from_numpy(prior.evidence)[None].to(device))
    if prior.inside is not None:
        occupancy = torch.where(torch.from_numpy(prior.inside)[None].to(device), 1.0, occupancy)
    return occupancy[0].float().cpu().numpy()


def rvc_targets(
    config: FineConfig, cube: TargetCube, frames: Sequence[Frame], device: str
) -> tuple[RVCConfig, list[View]]:
    """RVC's settings and its render targets (the real views) from the fine configuration."""
    rvc = RVCConfig(
        strength=config.rvc_strength,
        t_start=config.rvc_t_start,
        loss=LossConfig(colour=config.rvc_colour, photometric=config.rvc_photometric),
    )
    crop = config.rvc_crop if config.rvc_crop >= 0 else None
    views = [
        view_from_frame(
            f,
            cube,
            config.rvc_view_size if f.depth is None else config.rvc_depth_view_size,
            device=device,
            crop_margin=crop,
        )
        for f in frames
    ]
    return rvc, views


def measured_known(
    model: FineModel,
    prior: PriorInputs,
    occupancy: np.ndarray,
    measured: LatticeTSDF,
    min_wall_voxels: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The fine latent's SDF entries the real views' TSDF fixes (``fine_measured``), for the
    active voxels of ``occupancy``: once per reconstruction, shared by every draw."""
    lc = model.config.latent
    coords = active_voxels(occupancy, lc.partial)
    return measured_sdf_latent(coords, lc, prior.cube, measured, min_wall_voxels)


def generate_fine(
    model: FineModel,
    prior: PriorInputs,
    occupancy: np.ndarray,
    frames: Sequence[Frame],
    config: FineConfig,
    seed: int,
    device: str,
    on_step: StepFn | None = None,
    known_sdf: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[FineSample, np.ndarray]:
    """The fine latents and their dense SDF ((R k)^3, cube units) for the coarse
    ``occupancy``. RVC renders into ``frames``: the real views only (the symmetric ones are
    the symmetry's guess, not a measurement). ``known_sdf`` (``measured_known``): the SDF
    entries the real views measured, fixed rather than generated."""
    rvc, rvc_views = rvc_targets(config, prior.cube, frames, device) if config.rvc else (None, [])
    sample = sample_fine(
        model,
        occupancy,
        prior.evidence,
        prior.views,
        FineSampleConfig(steps=config.steps, cfg_scale=config.cfg_scale, seed=seed, rvc=rvc),
        rvc_views,
        on_step=on_step,
        device=device,
        known_sdf=known_sdf,
    )
    with torch.no_grad():
        field = fine_field(
            sample.coords,
            sample.latent,
            torch.from_numpy(occupancy).to(device),
            model.config.latent,
        )
    return sample, field.sdf.float().cpu().numpy()
