"""Fault injection through the real pipeline: GPU out of memory, CPU fallback, failpoints."""

from __future__ import annotations

import pytest

from rvg_ros.core import failpoints
from rvg_ros.core.devices import is_out_of_memory
from rvg_ros.core.pipeline import ReconstructSettings, reconstruct_frames


@pytest.fixture
def oom_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(failpoints.ENV, "backend.reconstruct=cuda_oom*1")
    monkeypatch.setattr(failpoints, "_hits", failpoints.Counter())


def _settings(**changes: object) -> ReconstructSettings:
    return ReconstructSettings(resolution=32, cloud_points=500, **changes)


def test_gpu_oom_is_retried_on_cpu_when_allowed(sphere_views, oom_once: None) -> None:
    stages: list[str] = []
    result, _ = reconstruct_frames(
        sphere_views[0], _settings(device="auto", cpu_fallback=True), lambda s, f: stages.append(s)
    )
    assert "retry on cpu" in stages
    assert "out of memory" in result.extras["device_fallback"]
    assert "retried on CPU" in result.extras["device_fallback"]
    assert len(result.mesh.vertices) > 100


def test_gpu_oom_is_reported_when_fallback_is_off(sphere_views, oom_once: None) -> None:
    with pytest.raises(Exception, match="CUDA out of memory") as info:
        reconstruct_frames(sphere_views[0], _settings(device="auto", cpu_fallback=False))
    assert is_out_of_memory(info.value)
    # The failpoint fired once; the next request succeeds (nothing stuck after an OOM).
    result, _ = reconstruct_frames(sphere_views[0], _settings(device="auto"))
    assert "device_fallback" not in result.extras


def test_cpu_runs_never_see_a_cuda_oom(sphere_views, oom_once: None) -> None:
    result, _ = reconstruct_frames(sphere_views[0], _settings(device="cpu", cpu_fallback=True))
    assert "device_fallback" not in result.extras


def test_out_of_memory_recognition() -> None:
    import torch

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("[Open3D Error] CUDA runtime error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_failpoint_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failpoints, "_hits", failpoints.Counter())
    monkeypatch.setenv(failpoints.ENV, "a=enospc*2; b=sleep:0.01; c=nonsense")
    for _ in range(2):
        with pytest.raises(OSError, match="No space left"):
            failpoints.hit("a")
    failpoints.hit("a")  # count exhausted
    failpoints.hit("b")
    failpoints.hit("unset")
    with pytest.raises(ValueError, match="unknown failpoint action"):
        failpoints.hit("c")
