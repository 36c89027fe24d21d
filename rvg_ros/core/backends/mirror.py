"""``fusion+mirror`` (placeholder while being written)."""

from __future__ import annotations

from rvg_ros.core.backends.carve import CarveBackend


class MirrorBackend(CarveBackend):
    name = "fusion+mirror"
