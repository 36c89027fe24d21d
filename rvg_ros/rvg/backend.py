"""``rvg``: reconstruction via generation (prior -> GGC -> sparse-structure flow -> fine flow).

Stages, each timed and reported: symmetry (RGB-D: the object's own symmetry, searched as
``fusion+mirror`` does, turned into virtual views that join the reconstruction prior), prior
(cube, evidence grid, view inputs), condition (multi-view
encoder + Condition Net = GGC), sampling (rectified-flow Euler steps with CFG), fine (part 2,
when its weights are there: per-view conditions and the structured-latent flow over the active
voxels, optionally with rendering-aware velocity compensation), decode (fine surface from
measurements + the generated shape), colour (+ confidence), sample (point cloud).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

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
from rvg_ros.core.surface import OBSERVED_CONFIDENCE, finish_mesh, sample_cloud
from rvg_ros.core.types import CaptureSet, Frame, Reconstruction, ReconstructionError
from rvg_ros.rvg.confidence import generated_confidence, vertex_spread
from rvg_ros.rvg.decode import (
    FREE_MARGIN_VOXELS,
    HIDDEN_GAP_VOXELS,
    MIN_WALL_VOXELS,
    decode_surface,
    measure,
)
from rvg_ros.rvg.fine_measured import LatticeTSDF
from rvg_ros.rvg.fine_sample import FineSample
from rvg_ros.rvg.generate import (
    CoarseConfig,
    FineConfig,
    PriorInputs,
    coarse_condition,
    default_start_time,
    generate_fine,
    load_fine_model,
    load_model,
    measured_known,
    sample_coarse,
)
from rvg_ros.rvg.model import ModelConfig
from rvg_ros.rvg.prior import (
    OPEN_TOP_VOXELS,
    UNKNOWN,
    completion_cube,
    evidence_grid,
    hidden_everywhere,
    seen_through,
    support_plane,
    under_open_space,
    view_inputs,
)

# Views the encoder takes (the training range is 2-8), and symmetry transforms turned into
# virtual views (an axis of revolution has 7; the three furthest turns cover the back).
MAX_ENCODED_VIEWS = 8
MAX_SYMMETRY_TRANSFORMS = 3
_STAGES = {
    "symmetry": 2.5,
    "prior": 0.5,
    "condition": 0.3,
    "sampling": 3.0,
    "measure": 0.3,
    "fine": 3.0,
    "decode": 1.0,
    "colour": 1.0,
    "sample": 0.2,
}


@dataclass
class RVGSettings:
    steps: int = CoarseConfig.steps
    cfg_scale: float = CoarseConfig.cfg_scale
    use_condition: bool = CoarseConfig.use_condition  # False: the "no GGC" ablation
    enforce_evidence: bool = CoarseConfig.enforce_evidence
    # Symmetric views in the prior (RGB-D with masks only: without depth a wrong symmetry
    # cannot be told from a right one). The generator then fills only what neither the
    # cameras nor the symmetry explain.
    symmetry: bool = True
    # Nothing below the support the object rests on (see prior.support_plane).
    support: bool = True
    # With symmetric views: voxels hidden behind the surface in every real and symmetric
    # view are forced occupied (prior.hidden_everywhere): the generator left pockets there.
    fill_inside: bool = True
    # Coarse voxels of that fill given back to the generator under space a view saw into the
    # object through (an open container's hidden bottom; prior.under_open_space); 0 = none.
    open_top_voxels: int = OPEN_TOP_VOXELS
    sample_seed: int | None = None  # None: the capture's seed
    # Where sampling starts: 1.0 = pure noise (the paper). Below 1, from the evidence's
    # "not seen empty" region (the visual hull without depth) noised to that time (SDEdit),
    # with ``steps`` scaled alike. None: 1.0 with depth, RGB_START_TIME without: on RGB the
    # generator alone left scattered blobs inside the hull (YCB dev F@0.05 0.42 vs the hull's
    # 0.65); started from the hull it keeps what the silhouettes say and carves the rest.
    start_time: float | None = None
    # Thickness (fine voxels) behind a measured surface before the generator decides.
    min_wall_voxels: float = MIN_WALL_VOXELS
    # How far in front of a measured depth (fine voxels) the views' free space starts carving.
    free_margin_voxels: float = FREE_MARGIN_VOXELS
    # With depth: a measured point the surface lost (a sub-voxel wall carved from both sides)
    # gets a solid voxel back (decode.measured_holes).
    close_holes: bool = True
    # Gaps narrower than a ball of this radius (fine voxels) in space no view saw free are
    # filled (decode.hidden_gaps); 0 = off.
    hidden_gap_voxels: int = HIDDEN_GAP_VOXELS
    # Fine stage (part 2). False: coarse shape only (part 1); True: require the fine weights
    # (rvg_fine.safetensors in ``weights_dir``, or shipped); "auto": run it when they are there;
    # "no_depth" (default): as "auto", but only for captures without depth. Measured on YCB dev
    # (docs/results.md, Table 2) with the shipped fine weights: without depth it beats part 1
    # (F@0.05 0.735 vs 0.704, CD-L2 18.8 vs 23.6 x10^-3, better on 16/18 objects); with depth it
    # is level (session 14, averaged with the coarse shape: F@0.05 0.967 vs 0.966, CD-L2 1.21
    # vs 1.27, seen accuracy 0.479 vs 0.480 mm) for about 1.5 s more: there the measured
    # surface already decides most of the shape.
    fine: bool | str = "no_depth"
    # Its sampling and rendering-aware velocity compensation (options fine_steps,
    # fine_cfg_scale, rvc, rvc_strength, rvc_t_start, rvc_view_size, rvc_depth_view_size,
    # rvc_crop, rvc_colour, rvc_photometric).
    fine_sampling: FineConfig = field(default_factory=FineConfig)
    # Gaussian smoothing of the fine SDF (fine voxels) before decode; 0 = none. None: 4 with
    # depth, 0 without. With depth (YCB dev, 4 one-sided views, session 11) the smoothed fine
    # stage beats part 1 (F@0.05 0.968 vs 0.966, CD-L2 1.19 vs 1.29, seen accuracy 0.566 vs
    # 0.568 mm) where the raw one does not (0.963, 1.44, 0.593): the raw field zigzags between
    # latent blocks. Without depth it loses (RGB + masks, sigma 4: F@0.05 0.712 vs 0.735,
    # CD-L2 20.3 vs 18.8): there the silhouettes, not a TSDF, bound the field, and smoothing
    # rounds away what the fine stage adds.
    fine_smoothing: float | None = None
    # Weight of the fine SDF against the coarse occupancy's distance in the generated shape
    # (decode.generated_distance; 1 = the fine SDF alone, 0 = part 1's shape). None: 0.5
    # with depth, 1 without (FINE_WEIGHT_WITH_DEPTH).
    fine_weight: float | None = None
    # With depth: the fine stage's SDF entries that the real views' fused TSDF measured are
    # fixed to it while the rest is sampled (rvg/fine_measured.py), so the generated shape
    # continues the measured surface instead of contradicting it where the two meet. YCB dev,
    # 4 one-sided RGB-D views, seeds 0/1/2 (session 15): seen accuracy 0.479 +- 0.001 mm vs
    # 0.480 +- 0.002 without (part 1: 0.481 +- 0.001), the mug's seed spread 0.451-0.468 vs
    # 0.453-0.509; with the fine SDF alone (fine_weight=1) 0.480 vs 0.489 mm at seed 0. Costs
    # one TSDF fusion (0.03 s), which decode then reuses.
    fine_measured: bool = True
    # Fine draws whose SDFs are averaged (each with RVC when it is on): their mean estimates
    # the posterior mean, which one draw's sampling noise scatters around. YCB dev, RGB +
    # masks, 4 one-sided views (session 15): 2 draws give F@0.05 0.738 vs 0.735, CD-L2 17.95
    # vs 18.76, seen accuracy 5.98 vs 6.15 mm (part 1: 6.10). Each draw costs the fine stage
    # again: 1.7 s on this CPU, over the 5 s budget of a reconstruction without RVC, but 0.07 s
    # on an H200. None: FINE_SAMPLES_CUDA on CUDA, 1 on the CPU.
    fine_samples: int | None = None
    # Fine samples drawn for the confidence of generated vertices (rvg/confidence.py): 2 adds
    # their spread (0.07 s more on CUDA, seconds on the CPU), which measured no better than the
    # distance from the observed surface alone, so 1 by default.
    confidence_samples: int = 1
    # Evaluation diagnostic (``rvg-ros eval --occupancy-oracle``): a closed mesh of the object
    # in the capture's frame whose true occupancy replaces the sampled one (rvg/oracle.py).
    occupancy_oracle: str = ""
    # ... and the fine stage's latents are the true ones too (needs occupancy_oracle).
    fine_oracle: bool = False


FINE_MODES = (True, False, "auto", "no_depth")
# The fine SDF's default smoothing (fine voxels) for captures with depth (RVGSettings).
FINE_SMOOTHING_WITH_DEPTH = 4.0
# The fine SDF's default weight against the coarse distance for captures with depth. YCB dev,
# 4 one-sided RGB-D views (session 14): alone (1) the fine stage cost seen accuracy where it
# contradicts part 1's shape right next to the measured surface: a lip one TSDF band thick
# over a corner it rounded off (Rubik's cube 0.257 -> 0.289 mm, toy airplane 0.92 -> 1.03), a
# floor over the cups' hidden bottom (0.557 -> 0.596), so 0.489 mm against part 1's 0.480.
# The mean of the two (0.5) keeps its gains where the coarse shape bulged (clamp 0.629 ->
# 0.594) and damps the rest: 0.479 mm (seeds 0/1/2: 0.480 +- 0.002; part 1 0.481 +- 0.001).
# Without depth the fine stage alone is the better shape (the silhouettes bound it), so 1.
FINE_WEIGHT_WITH_DEPTH = 0.5
# Fine draws averaged by default on CUDA (RVGSettings.fine_samples).
FINE_SAMPLES_CUDA = 2


def fine_mode(value: object) -> bool | str:
    """The ``fine`` option: True, False, "auto" or "no_depth" (spec strings arrive parsed by
    parse_backend_spec; "true" / "false" given as text through the Python API count too)."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    for mode in FINE_MODES:
        # ``is`` for the bools: 1 == True, and a misspelt mode must not pass as one.
        if value is mode or (isinstance(mode, str) and value == mode):
            return mode
    raise ValueError(f"rvg option fine must be one of true, false, auto, no_depth; got {value!r}")


def fine_config(extra: dict[str, object]) -> FineConfig:
    """The fine stage's settings from backend options: each FineConfig field under its own
    name (the rvc_* ones), steps and cfg_scale as fine_steps and fine_cfg_scale; values
    converted to the field default's type."""
    values = {}
    for f in fields(FineConfig):
        option = f.name if f.name.startswith("rvc") else f"fine_{f.name}"
        if option in extra:
            values[f.name] = type(f.default)(extra[option])
    return FineConfig(**values)


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
            fill_inside=bool(extra.get("fill_inside", RVGSettings.fill_inside)),
            sample_seed=None if extra.get("sample_seed") is None else int(extra["sample_seed"]),
            start_time=None if extra.get("start_time") is None else float(extra["start_time"]),
            min_wall_voxels=float(extra.get("min_wall_voxels", RVGSettings.min_wall_voxels)),
            free_margin_voxels=float(
                extra.get("free_margin_voxels", RVGSettings.free_margin_voxels)
            ),
            close_holes=bool(extra.get("close_holes", RVGSettings.close_holes)),
            hidden_gap_voxels=int(extra.get("hidden_gap_voxels", RVGSettings.hidden_gap_voxels)),
            open_top_voxels=int(extra.get("open_top_voxels", RVGSettings.open_top_voxels)),
            fine=fine_mode(extra.get("fine", RVGSettings.fine)),
            fine_sampling=fine_config(extra),
            fine_smoothing=None
            if extra.get("fine_smoothing") is None
            else float(extra["fine_smoothing"]),
            fine_weight=None if extra.get("fine_weight") is None else float(extra["fine_weight"]),
            fine_measured=bool(extra.get("fine_measured", RVGSettings.fine_measured)),
            fine_samples=None if extra.get("fine_samples") is None else int(extra["fine_samples"]),
            confidence_samples=int(extra.get("confidence_samples", RVGSettings.confidence_samples)),
            occupancy_oracle=str(extra.get("occupancy_oracle", "")),
            fine_oracle=bool(extra.get("fine_oracle", False)),
        )
        for name in ("hidden_gap_voxels", "open_top_voxels"):
            if getattr(self.settings, name) < 0:
                raise ValueError(
                    f"rvg option {name} must be 0 (off) or more; got {getattr(self.settings, name)}"
                )
        if self.settings.free_margin_voxels <= 0:
            raise ValueError(
                "rvg option free_margin_voxels must be above 0 (at 0 a depth measurement would "
                f"carve its own surface); got {self.settings.free_margin_voxels}"
            )
        if self.settings.fine_weight is not None and not 0.0 <= self.settings.fine_weight <= 1.0:
            raise ValueError(
                "rvg option fine_weight must be in [0, 1] (1: the fine SDF alone, 0: the coarse "
                f"shape alone); got {self.settings.fine_weight}"
            )
        if self.settings.fine_samples is not None and self.settings.fine_samples < 1:
            raise ValueError(
                f"rvg option fine_samples must be 1 or more; got {self.settings.fine_samples}"
            )
        if self.settings.fine_oracle and not self.settings.occupancy_oracle:
            raise ValueError("rvg option fine_oracle needs occupancy_oracle (the true mesh)")

    def reconstruct(
        self, capture: CaptureSet, progress: ProgressFn = no_progress
    ) -> Reconstruction:
        device = torch_device(self.options.device)
        model = load_model(self.options.weights_dir, device)
        s = self.settings
        fine_model = (
            None
            if s.fine is False or (s.fine == "no_depth" and capture.has_depth)
            else load_fine_model(self.options.weights_dir, device, required=s.fine is True)
        )
        if not capture.has_depth and not capture.has_masks:
            raise ReconstructionError("rvg needs depth or object masks in every view")
        timer = StageTimer(progress, _STAGES)
        with timer.stage("symmetry"):
            symmetry, virtual = self.symmetric_views(capture)
        with timer.stage("prior"):
            prior, support = self.prior(capture, virtual, model.config)
        if device == "cpu":
            # One intra-op thread by default: the model is small, and on a shared CPU (a robot
            # runs drivers and planners beside us) OpenMP threads waiting for a descheduled
            # sibling made sampling 10-20x slower here. ``threads`` raises it on idle machines.
            torch.set_num_threads(int(self.options.extra.get("threads", 1)))
        # ``sample_seed`` varies the generation alone (same views): seed variance.
        seed = capture.seed if s.sample_seed is None else s.sample_seed
        coarse = self.coarse_config(prior.use_depth)
        with timer.stage("condition"):
            onehot, condition = coarse_condition(model, prior, coarse, device)
        truth = None
        if s.occupancy_oracle:
            # An evaluation diagnostic: imported here, off the node's start-up path.
            from rvg_ros.rvg import oracle

            truth = oracle.load_truth(s.occupancy_oracle)
        with timer.stage("sampling") as sub:
            if truth is not None:
                res = model.config.resolution
                occupancy = oracle.oracle_coarse(truth, prior, res, coarse)
            else:
                occupancy = sample_coarse(
                    model,
                    prior,
                    onehot,
                    condition,
                    coarse,
                    seed,
                    device,
                    on_step=lambda k, n: sub(k / n, f"sampling {k}/{n}"),
                )
        fine: FineSample | None = None
        fine_sdf: np.ndarray | None = None
        second_sdf: np.ndarray | None = None
        smoothing = self.fine_smoothing(prior.use_depth)
        fine_weight = self.fine_weight(prior.use_depth)
        # The target's voxel size, as fusion uses: the completion cube is larger, and a coarser
        # TSDF would cost the seen surface accuracy (0.34 vs 0.23 mm on YCB).
        resolution = round(self.options.resolution * prior.cube.side / capture.target.side)
        measured: LatticeTSDF | None = None
        known_sdf: tuple[np.ndarray, np.ndarray] | None = None
        if fine_model is not None and prior.use_depth and s.fine_measured:
            with timer.stage("measure"):
                measured = measure(capture.frames, prior.cube, resolution, self.options.device)
                known_sdf = measured_known(
                    fine_model, prior, occupancy, measured, s.min_wall_voxels
                )
        draws = self.fine_samples(device)
        if fine_model is not None:
            # Progress: the averaged draws, then the spread draw when there is one.
            total = draws + (1 if s.confidence_samples >= 2 else 0)

            def draw(config: FineConfig, k: int, label: str) -> tuple[FineSample, np.ndarray]:
                return generate_fine(
                    fine_model,
                    prior,
                    occupancy,
                    capture.frames,
                    config,
                    seed + k,
                    device,
                    on_step=lambda i, n: sub((k + i / n) / total, f"{label} {i}/{n}"),
                    known_sdf=known_sdf,
                )

            with timer.stage("fine") as sub:
                if s.fine_oracle and truth is not None:
                    fine, fine_sdf = oracle.oracle_fine(
                        truth, prior, occupancy, fine_model.config.latent
                    )
                else:
                    fine, fine_sdf = draw(s.fine_sampling, 0, "fine")
                    # More draws: their mean estimates the posterior mean of the SDF, which a
                    # single draw's sampling noise scatters around (RGB-side zigzags between
                    # latent blocks). Seeds seed + 1 ... seed + draws - 1.
                    for k in range(1, draws):
                        fine_sdf = fine_sdf + draw(s.fine_sampling, k, f"fine draw {k + 1}")[1]
                    fine_sdf = fine_sdf / draws
                if s.confidence_samples >= 2:
                    # Another draw, not in the mean (no RVC: the spread is the generator's own
                    # uncertainty).
                    _, second_sdf = draw(replace(s.fine_sampling, rvc=False), draws, "fine spread")
                if smoothing > 0:
                    fine_sdf = gaussian_filter(fine_sdf, smoothing)
                    # The spread compares the two draws: both smoothed alike, or it would
                    # count the smoothing itself as disagreement.
                    if second_sdf is not None:
                        second_sdf = gaussian_filter(second_sdf, smoothing)
        with timer.stage("decode"):
            vertices, triangles, voxel = decode_surface(
                occupancy,
                prior.cube,
                capture.frames,
                resolution,
                prior.use_depth,
                self.options.device,
                hint_frames=virtual,
                support_plane=support,
                min_wall_voxels=s.min_wall_voxels,
                fine_sdf=fine_sdf,
                hidden_gap_voxels=s.hidden_gap_voxels,
                free_margin_voxels=s.free_margin_voxels,
                close_holes=s.close_holes,
                fine_weight=fine_weight,
                measured=measured,
            )
        if len(triangles) == 0:
            raise ReconstructionError("rvg produced an empty surface")
        spread: np.ndarray | None = None
        observed: np.ndarray | None = None
        with timer.stage("colour"):
            mesh = finish_mesh(vertices, triangles, capture.frames, 3.0 * voxel)
            if fine is not None:
                observed = mesh.vertex_confidence >= OBSERVED_CONFIDENCE
                if second_sdf is not None:
                    spread = vertex_spread(
                        second_sdf, prior.cube, mesh.vertices, occupancy, fine_weight
                    )
                mesh.vertex_confidence = generated_confidence(
                    mesh.vertex_confidence,
                    mesh.vertices,
                    observed,
                    prior.cube.side / fine_model.config.latent.fine_resolution,
                    spread,
                    prior.use_depth,
                )
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
                "method": "reconstruction via generation (GGC + sparse-structure flow"
                + (" + fine structured-latent flow)" if fine is not None else ")"),
                "voxel_size": voxel,
                "steps": s.steps,
                "cfg_scale": s.cfg_scale,
                "start_time": coarse.start_time,
                "use_condition": s.use_condition,
                "device": device,
                "cube_side": prior.cube.side,
                "hidden_gap_voxels": s.hidden_gap_voxels,
                "open_top_voxels": s.open_top_voxels,
                "free_margin_voxels": s.free_margin_voxels,
                "close_holes": s.close_holes,
                "symmetry": symmetry.kind if symmetry is not None else "none",
                **({"occupancy_oracle": s.occupancy_oracle} if s.occupancy_oracle else {}),
                **({"fine_oracle": True} if s.fine_oracle else {}),
                "symmetric_views": len(virtual),
                "inside_voxels": int(prior.inside.sum()) if prior.inside is not None else 0,
                "support_plane": " ".join(f"{v:.5f}" for v in support)
                if support is not None
                else "none",
                **self._fine_report(fine, smoothing, fine_weight, draws),
                # In-process only (result.json keeps scalars): for rvg/confidence.py.
                **({"vertex_spread": spread} if spread is not None else {}),
                **({"vertex_observed": observed} if observed is not None else {}),
                "confidence_samples": 2 if second_sdf is not None else 1,
            },
        )

    def fine_smoothing(self, use_depth: bool) -> float:
        """The fine SDF's smoothing (``RVGSettings.fine_smoothing``; None: by modality)."""
        if self.settings.fine_smoothing is not None:
            return self.settings.fine_smoothing
        return FINE_SMOOTHING_WITH_DEPTH if use_depth else 0.0

    def fine_samples(self, device: str) -> int:
        """Fine draws averaged (``RVGSettings.fine_samples``; None: by device)."""
        if self.settings.fine_samples is not None:
            return self.settings.fine_samples
        return FINE_SAMPLES_CUDA if device.startswith("cuda") else 1

    def fine_weight(self, use_depth: bool) -> float:
        """The fine SDF's weight in the generated shape (``RVGSettings.fine_weight``; None: by
        modality)."""
        if self.settings.fine_weight is not None:
            return self.settings.fine_weight
        return FINE_WEIGHT_WITH_DEPTH if use_depth else 1.0

    def prior(
        self, capture: CaptureSet, virtual: list[Frame], config: ModelConfig
    ) -> tuple[PriorInputs, np.ndarray | None]:
        """The reconstruction prior (cube, evidence grid, view inputs) and the support plane.
        Symmetric ``virtual`` views add evidence only where the cameras know nothing."""
        use_depth = capture.has_depth
        res = config.resolution
        hinted = CaptureSet(capture.frames + virtual, capture.target, capture.seed)
        cube = completion_cube(hinted)
        support = support_plane(capture) if self.settings.support else None
        evidence = evidence_grid(capture, cube, res, use_depth, support)
        inside = None
        if virtual:
            hint = evidence_grid(CaptureSet(virtual, capture.target), cube, res, use_depth, support)
            evidence = np.where(evidence == UNKNOWN, hint, evidence)
            if self.settings.fill_inside:
                through = seen_through(capture.frames + virtual, cube, res)
                inside = hidden_everywhere(capture.frames, virtual, cube, res) & ~under_open_space(
                    through, evidence, self.settings.open_top_voxels
                )
        # The encoder saw 2-8 views in training: real views first, then virtual ones.
        encoded = capture.frames + virtual[: max(MAX_ENCODED_VIEWS - len(capture.frames), 0)]
        views = view_inputs(CaptureSet(encoded, capture.target), cube, use_depth, config.view_size)
        return PriorInputs(cube, evidence, views, use_depth, inside), support

    def coarse_config(self, use_depth: bool) -> CoarseConfig:
        s = self.settings
        return CoarseConfig(
            steps=s.steps,
            cfg_scale=s.cfg_scale,
            use_condition=s.use_condition,
            enforce_evidence=s.enforce_evidence,
            start_time=s.start_time or default_start_time(use_depth),
        )

    def _fine_report(
        self, fine: FineSample | None, smoothing: float, weight: float, draws: int
    ) -> dict[str, object]:
        """What the fine stage did, for result.json: active voxels, steps, and per compensated
        step the per-view rendering losses before and after RVC."""
        if fine is None:
            return {"fine": "off"}
        f = self.settings.fine_sampling
        report: dict[str, object] = {
            "fine": "on",
            "fine_active_voxels": int(len(fine.coords)),
            "fine_steps": f.steps,
            "fine_cfg_scale": f.cfg_scale,
            "fine_smoothing": smoothing,
            "fine_weight": weight,
            "fine_samples": draws,
            "fine_measured": fine.known_entries > 0,
            "fine_known_entries": fine.known_entries,
            "rvc": f.rvc,
        }
        if f.rvc:
            report.update({k: v for k, v in asdict(f).items() if k.startswith("rvc_")})
            # Scalars only in result.json: the per-step, per-view losses as one JSON string.
            report["rvc_view_losses"] = json.dumps(
                [
                    {
                        "t": round(step.t, 4),
                        "before": [round(float(v), 5) for v in step.before[0]],
                        "after": None
                        if step.after is None
                        else [round(float(v), 5) for v in step.after[0]],
                        "kept": [bool(k) for k in step.kept[0]],
                    }
                    for step in fine.rvc_steps
                ]
            )
        return report

    def symmetric_views(self, capture: CaptureSet) -> tuple[Symmetry | None, list[Frame]]:
        """The best symmetry consistent with the views (as ``fusion+mirror`` finds it) and the
        virtual views it implies; (None, []) when no symmetry is consistent or it is off
        (RGB-D with masks only: without depth a wrong symmetry cannot be told from a right
        one)."""
        if not (self.settings.symmetry and capture.has_depth and capture.has_masks):
            return None, []
        points = fused_vertices(capture, replace(self.options, extra={}))
        voxel = capture.target.side / self.options.resolution
        symmetry, _ = find_symmetry(points, capture.frames, capture.target, voxel, capture.seed)
        if symmetry is None:
            return None, []
        return symmetry, symmetric_views(capture.frames, symmetry, MAX_SYMMETRY_TRANSFORMS)
