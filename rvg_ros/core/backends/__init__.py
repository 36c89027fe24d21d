"""Backends by name. A plain dict: adding a backend is one import and one line."""

from __future__ import annotations

from collections.abc import Callable

from rvg_ros.core.backends.base import Backend, BackendOptions, ProgressFn, no_progress
from rvg_ros.core.backends.carve import CarveBackend
from rvg_ros.core.backends.convex import ConvexBackend
from rvg_ros.core.backends.fusion import FusionBackend
from rvg_ros.core.backends.hull import HullBackend
from rvg_ros.core.backends.mirror import MirrorBackend


def _rvg(options: BackendOptions) -> Backend:
    # Imported on use: torch is only needed by the learned backend.
    from rvg_ros.rvg.backend import RVGBackend

    return RVGBackend(options)


BACKENDS: dict[str, Callable[[BackendOptions], Backend]] = {
    "fusion": FusionBackend,
    "hull": HullBackend,
    # Reconstruction-only completion baselines (what a user would do instead of generation).
    "fusion+convex": ConvexBackend,
    "fusion+carve": CarveBackend,
    "fusion+mirror": MirrorBackend,
    "rvg": _rvg,
}


def _option_value(text: str) -> object:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_backend_spec(spec: str) -> tuple[str, dict[str, object]]:
    """``name@key=value@key=value`` -> (name, options), e.g. ``rvg@cfg_scale=1@steps=10``.

    Lets one comma-separated list (``rvg-ros eval --backends``) name variants of a backend.
    """
    name, *pairs = spec.split("@")
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"bad backend option {pair!r} in {spec!r}: expected key=value")
        options[key] = _option_value(value)
    return name, options


def is_known_backend(name: str) -> bool:
    """Whether ``name`` (optionally with ``@key=value`` options) names a registered backend."""
    try:
        return parse_backend_spec(name)[0] in BACKENDS
    except ValueError:
        return False


def make_backend(name: str, options: BackendOptions | None = None) -> Backend:
    """The backend ``name`` (optionally ``name@key=value...``); ValueError naming the known ones."""
    base, spec_options = parse_backend_spec(name)
    if base not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    options = options or BackendOptions(resolution=96)
    if spec_options:
        options.extra = {**options.extra, **spec_options}
    return BACKENDS[base](options)


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendOptions",
    "ProgressFn",
    "make_backend",
    "no_progress",
    "parse_backend_spec",
    "is_known_backend",
]
