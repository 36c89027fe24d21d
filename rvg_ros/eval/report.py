"""Result files: the per-object CSV, the summary Markdown tables and a bar chart per metric."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IDENTITY = ("object", "source", "family", "backend", "status", "error")
# Text columns besides the identity ones (read back as strings).
TEXT_COLUMNS = (*IDENTITY, "pose_method")


@dataclass(frozen=True)
class Column:
    key: str  # CSV column
    label: str
    scale: float = 1.0  # CSV value (SI units) times this is what the table shows
    digits: int = 3
    higher_is_better: bool | None = True  # None: informative only (no arrow, no bold)

    @property
    def heading(self) -> str:
        arrow = {True: " ↑", False: " ↓", None: ""}[self.higher_is_better]
        return self.label + arrow


# Tables of the summary, in order. Distances in the metric tables are shown in millimetres.
TABLES: dict[str, tuple[Column, ...]] = {
    "Paper metrics (unit cube: GT longest side = 1)": (
        Column("chamfer_l2_unit", "CD-L2 ×10³", 1000.0, 2, False),
        Column("chamfer_l1_unit", "CD-L1", 1.0, 4, False),
        Column("f@0.05_unit", "F@0.05"),
        Column("f@0.1_unit", "F@0.1"),
        Column("seconds", "time (s)", 1.0, 2, None),
    ),
    "Metric surface (for grasping), split by what the input views saw": (
        Column("f@0.005", "F@5mm"),
        Column("f@0.01", "F@10mm"),
        Column("accuracy", "accuracy (mm)", 1000.0, 2, False),
        Column("completeness", "completeness@5mm"),
        Column("completeness_seen", "compl. seen"),
        Column("completeness_unseen", "compl. unseen"),
        Column("accuracy_seen", "acc. seen (mm)", 1000.0, 2, False),
        Column("accuracy_unseen", "acc. unseen (mm)", 1000.0, 2, False),
        Column("accuracy_visible", "acc. visible (mm)", 1000.0, 2, False),
    ),
    "Held-out views and confidence": (
        Column("psnr", "PSNR (dB)", 1.0, 2),
        Column("ssim", "SSIM"),
        Column("depth_mae", "depth MAE (mm)", 1000.0, 2, False),
        Column("mask_iou", "mask IoU"),
        # Calibration is the relation of the two distances, not either one alone.
        Column("conf_high_dist", "dist. conf≥0.5 (mm)", 1000.0, 2, None),
        Column("conf_low_dist", "dist. conf<0.5 (mm)", 1000.0, 2, None),
        Column("conf_low_share", "share conf<0.5", 1.0, 3, None),
    ),
}
PLOTTED = tuple(c for cols in TABLES.values() for c in cols)
# Shown only for runs whose poses were estimated or refined (rvg_ros.eval.poses); medians over
# the frames of an object, then mean ± std over the objects like every other column.
POSE_TABLE = (
    "Poses (estimated or refined; errors after alignment for unposed captures)",
    (
        Column("pose_registered", "frames registered"),
        Column("pose_rot_err_deg", "median rot. err (°)", 1.0, 2, False),
        Column("pose_trans_err_m", "median trans. err (mm)", 1000.0, 2, False),
        Column("pose_rot_err_max_deg", "max rot. err (°)", 1.0, 2, False),
        Column("pose_trans_err_max_m", "max trans. err (mm)", 1000.0, 1, False),
        Column("pose_seconds", "pose time (s)", 1.0, 2, None),
    ),
)


def write_csv(rows: Sequence[dict[str, object]], path: Path) -> None:
    """All rows; identity columns first, then every metric in first-seen order."""
    keys = list(IDENTITY)
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k, "")) for k in keys})


def _csv_value(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def read_csv(path: Path) -> list[dict[str, object]]:
    """Rows back from ``write_csv``: numbers as floats, empty cells as NaN."""
    out = []
    with open(path, newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, object] = {}
            for key, value in raw.items():
                if key in TEXT_COLUMNS:
                    row[key] = value
                else:
                    row[key] = float(value) if value not in ("", None) else math.nan
            out.append(row)
    return out


def values(rows: Sequence[dict[str, object]], backend: str, key: str) -> np.ndarray:
    """Finite values of ``key`` over the successful rows of ``backend``."""
    picked = [r.get(key, math.nan) for r in rows if r["backend"] == backend and r["status"] == "ok"]
    array = np.asarray([float(v) for v in picked], dtype=np.float64)
    return array[np.isfinite(array)]


def _cell(data: np.ndarray, column: Column) -> str:
    if len(data) == 0:
        return "–"
    mean, std = data.mean() * column.scale, data.std() * column.scale
    return f"{mean:.{column.digits}f} ± {std:.{column.digits}f}"


def summary_markdown(
    rows: Sequence[dict[str, object]], backends: Sequence[str], title: str, notes: str = ""
) -> str:
    """Mean ± std (population) over objects per backend; the best mean per column in bold
    (all of them on a tie, none when every backend ties)."""
    lines = [f"# {title}", ""]
    if notes:
        lines += [notes, ""]
    tables = list(TABLES.items())
    if any(r.get("pose_method") not in (None, "", "given") for r in rows):
        tables.append(POSE_TABLE)
    for caption, columns in tables:
        lines += [f"## {caption}", ""]
        header = ["backend", "ok", *(c.heading for c in columns)]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        best: dict[str, set[str]] = {}
        for c in columns:
            means = {b: values(rows, b, c.key) for b in backends}
            finite = {b: float(v.mean()) for b, v in means.items() if len(v)}
            if finite and c.higher_is_better is not None:
                top = (max if c.higher_is_better else min)(finite.values())
                tied = {b for b, m in finite.items() if abs(m - top) <= 1e-12 * max(1.0, abs(top))}
                if len(tied) < len(backends):  # everyone equal: nobody is best
                    best[c.key] = tied
        for b in backends:
            total = sum(1 for r in rows if r["backend"] == b)
            ok = sum(1 for r in rows if r["backend"] == b and r["status"] == "ok")
            cells = [f"`{b}`", f"{ok}/{total}"]
            for c in columns:
                text = _cell(values(rows, b, c.key), c)
                cells.append(f"**{text}**" if b in best.get(c.key, ()) else text)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += per_object_table(rows, backends)
    return "\n".join(lines)


def per_object_table(rows: Sequence[dict[str, object]], backends: Sequence[str]) -> list[str]:
    """Object x backend: F@0.1 (unit cube) / completeness of the unseen surface."""
    lines = [
        "## Per object: F@0.1 (unit cube) / completeness of the unseen surface (5 mm)",
        "",
        "| object | " + " | ".join(f"`{b}`" for b in backends) + " |",
        "|---|" + "---:|" * len(backends),
    ]
    objects = list(dict.fromkeys(str(r["object"]) for r in rows))
    for name in objects:
        cells = []
        for b in backends:
            row = next((r for r in rows if r["object"] == name and r["backend"] == b), None)
            if row is None or row["status"] != "ok":
                cells.append("failed" if row is not None else "–")
                continue
            f, unseen = float(row.get("f@0.1_unit", math.nan)), row.get("completeness_unseen")
            unseen_text = f"{float(unseen):.2f}" if unseen not in (None, "") else "–"
            cells.append(f"{f:.2f} / {unseen_text}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def bar_charts(
    rows: Sequence[dict[str, object]], backends: Sequence[str], out_dir: Path
) -> list[Path]:
    """One PNG per metric: mean per backend with a ±1 std error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for column in PLOTTED:
        data = [values(rows, b, column.key) * column.scale for b in backends]
        if not any(len(d) for d in data):
            continue
        means = [d.mean() if len(d) else 0.0 for d in data]
        stds = [d.std() if len(d) else 0.0 for d in data]
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(backends), 3.2), dpi=100)
        ax.bar(range(len(backends)), means, yerr=stds, capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(backends)), backends, rotation=20, ha="right", fontsize=8)
        arrow = {True: " (higher is better)", False: " (lower is better)", None: ""}
        ax.set_title(column.label + arrow[column.higher_is_better], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{_slug(column.key)}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def _slug(key: str) -> str:
    return key.replace("@", "_at_").replace(".", "p")
