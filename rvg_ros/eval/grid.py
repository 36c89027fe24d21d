"""The grid image: input views | ground truth | each backend, seen from the unseen side.

Reconstruction-only methods leave the far side open or flat; this is where the gap shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from rvg_ros.core.render import MeshRenderer
from rvg_ros.sim.views import default_intrinsics

THUMB = 128
BACKGROUND = (24, 24, 28)


@dataclass
class GridRow:
    name: str
    inputs: list[np.ndarray]  # input colour images
    gt: np.ndarray
    backends: dict[str, np.ndarray | None] = field(default_factory=dict)  # None = failed


def thumbnail(image: np.ndarray, size: int = THUMB) -> np.ndarray:
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def render_thumbnail(mesh: object, pose: np.ndarray, size: int = THUMB) -> np.ndarray:
    """``mesh`` (anything ``MeshRenderer`` takes) from ``pose`` with the evaluation's field of
    view, so thumbnails frame the object like the input views do."""
    return MeshRenderer(mesh).render(default_intrinsics(size, size), pose, BACKGROUND).rgb


def save_grid(rows: Sequence[GridRow], backends: Sequence[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_inputs = max(len(r.inputs) for r in rows)
    columns = [f"input {i + 1}" for i in range(n_inputs)] + ["ground truth", *backends]
    fig, axes = plt.subplots(
        len(rows),
        len(columns),
        figsize=(1.25 * len(columns), 1.3 * len(rows) + 0.3),
        dpi=100,
        squeeze=False,
    )
    for r, row in enumerate(rows):
        images: list[np.ndarray | None] = [thumbnail(x) for x in row.inputs]
        images += [None] * (n_inputs - len(row.inputs))
        images += [row.gt] + [row.backends.get(b) for b in backends]
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if image is None:
                ax.imshow(np.full((THUMB, THUMB, 3), 60, np.uint8))
                if c >= n_inputs:
                    ax.text(THUMB / 2, THUMB / 2, "failed", ha="center", va="center", color="w")
            else:
                ax.imshow(image)
            if r == 0:
                ax.set_title(columns[c], fontsize=7)
            if c == 0:
                ax.set_ylabel(row.name, fontsize=6)
    fig.tight_layout(pad=0.2)
    fig.savefig(path)
    plt.close(fig)
    return path
