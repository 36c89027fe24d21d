"""Training of the fine (structured-latent) stage: ``python -m rvg_ros.rvg.fine_train``.

Mirrors ``train.py`` (part 1): every step draws its batch and noise from generators seeded by
(seed, step), so a run resumed from its checkpoint continues exactly as an uninterrupted one;
checkpoints are safetensors (model, EMA, AdamW moments; ``train.save_checkpoint``); the loss goes
to ``loss.csv``, validation to ``val.csv``.

Data: the part-1 samples (``rvg-ros train data``, e.g. ``data/rvg/{train,val}``) give views,
evidence, cube and coarse occupancy; ``fine_train data`` adds the fine targets
(``fine_data.make_fine_sample``) under the same file names in another folder. The active
voxels come from the ground-truth coarse occupancy, or with ``data --predicted`` from the
shipped coarse model's prediction (stored in the fine file, and then used in training too):
what the fine stage sees at inference. The shipped weights are a run on ground truth,
fine-tuned (``--init``) on predicted occupancies:

    python -m rvg_ros.rvg.fine_train data --coarse data/rvg --out data/rvg_fine --limit 2000
    python -m rvg_ros.rvg.fine_train fit --coarse data/rvg --fine data/rvg_fine --out runs/rvg_fine
    python -m rvg_ros.rvg.fine_train data --coarse data/rvg --out data/rvg_fine_pred \
        --predicted --limit 400 --val-limit 8 --workers 2
    python -m rvg_ros.rvg.fine_train fit --coarse data/rvg --fine data/rvg_fine_pred \
        --out runs/rvg_fine_pred --init runs/rvg_fine/rvg_fine.safetensors \
        --steps 800 --lr 1e-4 --warmup 50
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from rvg_ros.rvg.dataset import MODALITIES
from rvg_ros.rvg.fine_data import generate_fine
from rvg_ros.rvg.fine_latent import LatentConfig
from rvg_ros.rvg.fine_model import FINE_WEIGHTS_NAME, FineModel, FineModelConfig, voxel_features
from rvg_ros.rvg.fine_sample import fine_velocity_fn
from rvg_ros.rvg.flow import flow_matching_loss, sample_flow
from rvg_ros.rvg.train import (
    _append_csv,
    learning_rate,
    list_samples,
    load_checkpoint,
    plot_curves,
    rotate_views_z,
    rotate_z,
    save_checkpoint,
)

CHECKPOINT = "checkpoint.safetensors"
# validation columns drawn in curves.png (SDF error in fine voxels, sign agreement near the
# surface, colour error)
FINE_VAL_CURVES = ("sdf_mae_voxels", "sign_near", "colour_mae")
# val.csv column prefix per validated modality (RGB-D keeps the earlier runs' plain names).
VAL_PREFIX = {"rgbd": "", "rgb": "rgb_"}


@dataclass(frozen=True)
class FineTrainConfig:
    steps: int = 3000
    batch: int = 4
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 100
    ema: float = 0.999
    condition_dropout: float = 0.3  # paper: p = 0.3 (CFG's unconditional branch)
    rgbd_probability: float = 0.7
    max_views: int = 8
    # Active voxels per object; larger sets are randomly subsampled. With 2^3 patch tokens
    # (~4.5 voxels each) the largest procedural objects (~4.7k voxels) fit whole.
    max_tokens: int = 8192
    # Colour has 3 of the 67 channels; x4 gives it ~16 % of the loss instead of ~4 %.
    colour_weight: float = 4.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    validate_every: int = 200
    val_samples: int = 4
    val_steps: int = 12  # paper's SLAT sampling steps
    # Capture modalities validated, comma-separated (columns prefixed by VAL_PREFIX).
    val_modalities: str = "rgbd"
    threads: int = 1
    # Start the view encoder from part 1's (same shape): "shipped" = the weights shipped with
    # the package, or a path; "" to start from scratch.
    init_encoder: str = "shipped"
    # Start the whole model from these fine-stage weights (fine-tuning); "" = no.
    init: str = ""

    def __post_init__(self) -> None:
        # Checked here, not at the first validation hundreds of steps into a run.
        for modality in self.val_modalities.split(","):
            if modality not in MODALITIES:
                raise ValueError(
                    f"val_modalities: unknown modality {modality!r} ({', '.join(MODALITIES)})"
                )


# --------------------------------------------------------------------------- data
def rotate_fine_z(
    coords: np.ndarray, latent: np.ndarray, k: int, config: LatentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate active voxels and their sub-voxel SDF blocks by k x 90 degrees about z, as
    ``train.rotate_z`` rotates a grid: voxel (x, y) -> (R - 1 - y, x), and inside each block the
    same with R = sub. Colour does not change."""
    r, s = config.resolution, config.sub
    coords = coords.copy()
    blocks = latent[:, : config.sdf_channels].reshape(-1, s, s, s)
    for _ in range(k % 4):
        coords = np.stack([r - 1 - coords[:, 1], coords[:, 0], coords[:, 2]], axis=1)
        blocks = np.flip(np.swapaxes(blocks, 1, 2), axis=1)
    out = np.concatenate([blocks.reshape(len(blocks), -1), latent[:, config.sdf_channels :]], 1)
    return coords, np.ascontiguousarray(out)


def load_fine_item(
    coarse_path: Path,
    fine_path: Path,
    rng: np.random.Generator,
    config: FineTrainConfig,
    latent_config: LatentConfig,
    modality: str | None = None,
    augment: bool = True,
) -> dict[str, np.ndarray]:
    modality = modality or ("rgbd" if rng.random() < config.rgbd_probability else "rgb")
    with np.load(fine_path) as fine:
        coords = fine[f"{modality}_coords"].astype(np.int64)
        latent = fine[f"{modality}_latent"].astype(np.float32)
        # The predicted occupancy the targets sit on (``data --predicted``), else the true one.
        predicted = f"{modality}_occupancy" in fine.files
        occupancy = fine[f"{modality}_occupancy"].astype(np.float32) if predicted else None
    with np.load(coarse_path) as data:
        evidence = data[f"{modality}_evidence"]
        if occupancy is None:
            occupancy = data[f"{modality}_occupancy"]
        views = data[f"{modality}_views"].astype(np.float32)
    if len(views) > config.max_views:
        views = views[np.sort(rng.choice(len(views), config.max_views, replace=False))]
    if len(coords) > config.max_tokens:
        keep = np.sort(rng.choice(len(coords), config.max_tokens, replace=False))
        coords, latent = coords[keep], latent[keep]
    k = int(rng.integers(4)) if augment else 0
    coords, latent = rotate_fine_z(coords, latent, k, latent_config)
    return {
        "coords": coords,
        "latent": latent,
        "evidence": rotate_z(evidence, k),
        "occupancy": rotate_z(occupancy, k),
        "views": rotate_views_z(views, k),
    }


def collate_fine(items: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Pad tokens and views; ``token_mask`` / ``view_mask`` True = real."""
    b = len(items)
    n = max(max(len(it["coords"]) for it in items), 1)
    v = max(len(it["views"]) for it in items)
    c = items[0]["latent"].shape[1]
    latent = torch.zeros(b, n, c)
    coords = torch.zeros(b, n, 3, dtype=torch.long)
    feats = torch.zeros(b, n, 4)
    token_mask = torch.zeros(b, n, dtype=torch.bool)
    views = torch.zeros(b, v, *items[0]["views"].shape[1:])
    view_mask = torch.zeros(b, v, dtype=torch.bool)
    for i, it in enumerate(items):
        m = len(it["coords"])
        ct = torch.from_numpy(it["coords"])
        coords[i, :m] = ct
        latent[i, :m] = torch.from_numpy(it["latent"])
        feats[i, :m] = voxel_features(
            ct, torch.from_numpy(it["evidence"]), torch.from_numpy(it["occupancy"])
        )
        token_mask[i, :m] = True
        views[i, : len(it["views"])] = torch.from_numpy(it["views"])
        view_mask[i, : len(it["views"])] = True
    return {
        "latent": latent,
        "coords": coords,
        "features": feats,
        "token_mask": token_mask,
        "views": views,
        "view_mask": view_mask,
    }


def paired_files(coarse_root: Path, fine_root: Path) -> list[tuple[Path, Path]]:
    """(coarse, fine) sample pairs present in both folders."""
    fine = {p.name: p for p in list_samples(fine_root)}
    return [(p, fine[p.name]) for p in list_samples(coarse_root) if p.name in fine]


# --------------------------------------------------------------------------- model pieces
def loss_weight(batch: dict[str, torch.Tensor], config: FineTrainConfig, sdf: int) -> torch.Tensor:
    """(B, N, C): 0 on padded tokens, ``colour_weight`` on the colour channels."""
    w = batch["token_mask"][..., None].float().expand_as(batch["latent"]).clone()
    w[..., sdf:] *= config.colour_weight
    return w


@torch.no_grad()
def sample_latents(
    model: FineModel,
    batch: dict[str, torch.Tensor],
    steps: int,
    cfg: float,
    seed: int,
) -> torch.Tensor:
    """Generated latents (B, N, C) for the batch's active voxels (padding rows meaningless)."""
    condition = model.per_view_condition(batch["views"], batch["view_mask"])
    generator = torch.Generator().manual_seed(seed)
    return sample_flow(
        fine_velocity_fn(model, batch, condition),
        tuple(batch["latent"].shape),
        steps,
        cfg,
        generator,
    )


def latent_scores(
    pred: torch.Tensor, batch: dict[str, torch.Tensor], latent_config: LatentConfig
) -> dict[str, float]:
    """Sub-voxel SDF error (fine voxels), sign agreement near the surface, colour error."""
    mask = batch["token_mask"]
    s = latent_config.sdf_channels
    p, g = pred[mask][:, :s].clamp(-1, 1), batch["latent"][mask][:, :s]
    near = g.abs() < 0.5  # within 2 fine voxels of the surface: where the sign matters
    sign = ((p > 0) == (g > 0))[near].float().mean().item() if near.any() else 1.0
    colour = (pred[mask][:, s:].clamp(-1, 1) - batch["latent"][mask][:, s:]).abs() / 2
    return {
        "sdf_mae_voxels": ((p - g).abs().mean() * latent_config.clip_voxels).item(),
        "sign_near": sign,
        "colour_mae": colour.mean().item(),
    }


def validate(
    model: FineModel,
    pairs: list[tuple[Path, Path]],
    config: FineTrainConfig,
    latent_config: LatentConfig,
    modality: str = "rgbd",
) -> dict[str, float]:
    """Sampled latents (``val_steps`` Euler steps, no CFG) against the targets, plus the
    flow-matching loss at fixed noise; one modality's views, one item at a time (no padding)."""
    scores: dict[str, list[float]] = {}
    for i, (coarse, fine) in enumerate(pairs):
        rng = np.random.default_rng([12345, i])
        item = load_fine_item(coarse, fine, rng, config, latent_config, modality, augment=False)
        batch = collate_fine([item])
        pred = sample_latents(model, batch, config.val_steps, 1.0, seed=i)
        with torch.no_grad():
            condition = model.per_view_condition(batch["views"], batch["view_mask"])
            loss = flow_matching_loss(
                fine_velocity_fn(model, batch, condition),
                batch["latent"],
                torch.zeros(1, dtype=torch.bool),
                loss_weight(batch, config, latent_config.sdf_channels),
                torch.Generator().manual_seed(i),
            )
        for k, v in {"loss": loss.item(), **latent_scores(pred, batch, latent_config)}.items():
            scores.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def validate_modalities(
    model: FineModel,
    pairs: list[tuple[Path, Path]],
    config: FineTrainConfig,
    latent_config: LatentConfig,
) -> dict[str, float]:
    """``validate`` for each of ``config.val_modalities``, keys prefixed by ``VAL_PREFIX``."""
    return {
        VAL_PREFIX[modality] + k: v
        for modality in config.val_modalities.split(",")
        for k, v in validate(model, pairs, config, latent_config, modality).items()
    }


def init_encoder(model: FineModel, path: str) -> bool:
    """Copy part 1's view encoder into the fine model when the file exists and fits."""
    if path == "shipped":
        path = str(Path(__file__).resolve().parents[1] / "weights" / "rvg_ss.safetensors")
    if not path or not Path(path).is_file():
        return False
    from safetensors.torch import load_file

    tensors = load_file(path)
    own = model.encoder.state_dict()
    enc = {k[len("encoder.") :]: v for k, v in tensors.items() if k.startswith("encoder.")}
    if set(enc) != set(own) or any(enc[k].shape != v.shape for k, v in own.items()):
        return False
    model.encoder.load_state_dict(enc)
    return True


# --------------------------------------------------------------------------- loop
def train_fine(
    coarse: Path,
    fine: Path,
    out: Path,
    config: FineTrainConfig,
    model_config: FineModelConfig,
    stop_at: int | None = None,
) -> Path:
    """Train (or resume) and return the path of the EMA weights. ``stop_at`` ends the run
    after that step (checkpoint and weights saved) without changing its schedule: the same
    command without it resumes to ``config.steps`` exactly as an uninterrupted run."""
    torch.set_num_threads(config.threads)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = FineModel(model_config)
    if config.init:
        model = FineModel.load(Path(config.init))
        if model.config != model_config:
            raise ValueError(f"--init {config.init}: its model config differs from this run's")
        print(f"fine model initialised from {config.init}")
    elif init_encoder(model, config.init_encoder):
        print(f"view encoder initialised from {config.init_encoder}")
    ema = FineModel(model_config)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    step = 0
    if (out / CHECKPOINT).exists():
        step = load_checkpoint(out / CHECKPOINT, model, ema, optimizer)
    (out / "config.json").write_text(
        json.dumps(
            {
                "train": asdict(config),
                "model": asdict(model_config),
                "coarse": str(coarse),
                "fine": str(fine),
                "parameters": model.parameter_counts(),
            },
            indent=2,
        )
    )
    train_pairs = paired_files(Path(coarse) / "train", Path(fine) / "train")
    val_pairs = paired_files(Path(coarse) / "val", Path(fine) / "val")[: config.val_samples]
    if not train_pairs:
        raise RuntimeError(f"no paired training samples in {coarse}/train and {fine}/train")
    lc = model_config.latent
    running, t0 = [], time.monotonic()
    end = config.steps if stop_at is None else min(stop_at, config.steps)
    while step < end:
        rng = np.random.default_rng([config.seed, step])
        picks = rng.choice(len(train_pairs), config.batch)
        batch = collate_fine([load_fine_item(*train_pairs[i], rng, config, lc) for i in picks])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        model.train()
        condition = model.per_view_condition(batch["views"], batch["view_mask"])
        drop = torch.rand(config.batch, generator=generator) < config.condition_dropout
        loss = flow_matching_loss(
            fine_velocity_fn(model, batch, condition),
            batch["latent"],
            drop,
            loss_weight(batch, config, lc.sdf_channels),
            generator,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(config.ema, (1.0 + step) / (10.0 + step))  # EMA warm-up, as train.py
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1.0 - decay)
        step += 1
        running.append(loss.item())
        if step % config.log_every == 0:
            row = {
                "step": step,
                "loss": float(np.mean(running)),
                "lr": learning_rate(step, config),
                "seconds": time.monotonic() - t0,
                "tokens": int(batch["token_mask"].sum()),
            }
            _append_csv(out / "loss.csv", row)
            print(
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                )
            )
            running = []
        if step % config.checkpoint_every == 0 or step in (config.steps, end):
            save_checkpoint(out / CHECKPOINT, model, ema, optimizer, step, config)
            ema.save(out / FINE_WEIGHTS_NAME, {"step": str(step)})
        if val_pairs and (step % config.validate_every == 0 or step in (config.steps, end)):
            ema.eval()
            scores = validate_modalities(ema, val_pairs, config, lc)
            _append_csv(out / "val.csv", {"step": step, **scores})
            print(f"validation at {step}: {scores}")
            plot_curves(out, tuple(k for k in scores if k.endswith(FINE_VAL_CURVES)))
    ema.save(out / FINE_WEIGHTS_NAME, {"step": str(step)})
    return out / FINE_WEIGHTS_NAME


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rvg_ros.rvg.fine_train", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    data = sub.add_parser("data", help="fine targets for existing part-1 samples")
    data.add_argument("--coarse", default="data/rvg", help="part-1 data (train/, val/)")
    data.add_argument("--out", default="data/rvg_fine")
    data.add_argument("--limit", type=int, default=None, help="first N training samples")
    data.add_argument("--val-limit", type=int, default=None, help="first N validation samples")
    data.add_argument("--workers", type=int, default=1)
    data.add_argument(
        "--predicted",
        nargs="?",
        const="",
        default=None,
        metavar="WEIGHTS_DIR",
        help="active voxels from the coarse model's prediction (shipped weights, or this folder)",
    )
    fit = sub.add_parser("fit", help="train the fine stage (resumes from OUT/checkpoint)")
    fit.add_argument("--coarse", default="data/rvg")
    fit.add_argument("--fine", default="data/rvg_fine")
    fit.add_argument("--out", default="runs/rvg_fine")
    fit.add_argument(
        "--stop-at", type=int, default=None, help="stop after this step (the schedule stays)"
    )
    for field_name, default in asdict(FineTrainConfig()).items():
        fit.add_argument(f"--{field_name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    if args.what == "data":
        config = LatentConfig()
        total = 0
        for split, limit in (("val", args.val_limit), ("train", args.limit)):
            src, dst = Path(args.coarse) / split, Path(args.out) / split
            if args.workers <= 1:
                total += generate_fine(src, dst, config, limit, predicted=args.predicted)
                continue
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(args.workers) as pool:
                jobs = [
                    pool.submit(
                        generate_fine, src, dst, config, limit, args.workers, k, args.predicted
                    )
                    for k in range(args.workers)
                ]
                total += sum(job.result() for job in jobs)
        print(f"wrote {total} fine samples to {args.out}")
        return 0
    config = FineTrainConfig(**{k: getattr(args, k) for k in asdict(FineTrainConfig())})
    weights = train_fine(
        Path(args.coarse), Path(args.fine), Path(args.out), config, FineModelConfig(), args.stop_at
    )
    print(f"weights: {weights}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
