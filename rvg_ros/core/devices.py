"""``device: auto | cpu | cuda`` resolved for torch and Open3D."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import open3d as o3d

DEVICES = ("auto", "cpu", "cuda")


def check_device(name: str) -> str:
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; expected one of {', '.join(DEVICES)}")
    return name


def open3d_device(name: str) -> o3d.core.Device:
    """CUDA when asked for (or auto) and this Open3D build has it; else CPU."""
    check_device(name)
    import open3d as o3d  # here, so that torch-only code (rvg/generate.py) needs no Open3D

    cuda = o3d.core.cuda.is_available()
    if name == "cuda" and not cuda:
        raise ValueError("device 'cuda' requested but Open3D has no CUDA device here")
    return o3d.core.Device("CUDA:0" if cuda and name != "cpu" else "CPU:0")


def torch_device(name: str) -> str:
    """The torch device string for ``name`` (imports torch only when called)."""
    check_device(name)
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    return "cuda" if name != "cpu" and torch.cuda.is_available() else "cpu"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a GPU out-of-memory error from torch or Open3D (both say "out of memory")."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_gpu_memory() -> None:
    """Give cached CUDA blocks back after an out-of-memory error (no-op without CUDA)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
