"""A node + simulated camera on a private DDS domain, with a client: the rig every reliability
run uses (the same processes the demo and the launch file start)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rvg_ros.ros.demo import DemoClient, DemoError, start_process, stop_process
from rvg_ros.ros.environment import PACKAGE_ROOT, isolated_ros_env

PARAMS = str(PACKAGE_ROOT / "config" / "reconstruct.yaml")


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def node_args(root: Path, *params: str) -> list[str]:
    args = ["--params-file", PARAMS, "-p", f"session_dir:={root / 'session'}"]
    for p in params:
        args += ["-p", p]
    return args


@dataclass
class Rig:
    root: Path
    env: dict[str, str]
    client: Any = None
    node: subprocess.Popen | None = None
    camera: subprocess.Popen | None = None
    node_params: tuple[str, ...] = ()
    node_env: dict[str, str] = field(default_factory=dict)
    starts: int = 0

    def start_node(self, timeout: float = 120.0) -> subprocess.Popen:
        self.starts += 1
        self.node = start_process(
            "rvg_ros.ros.reconstruct_node",
            node_args(self.root, *self.node_params),
            {**self.env, **self.node_env},
            self.root / f"node-{self.starts:03d}.log",
        )
        self.client.wait_ready(timeout=timeout)
        return self.node

    def kill_node(self) -> None:
        """SIGKILL: no clean-up code runs, as in a power cut or the OOM killer."""
        if self.node is not None:
            self.node.kill()
            self.node.wait()
            self.node.log_handle.close()  # type: ignore[attr-defined]
            self.node = None

    def start_camera(self, *params: str) -> None:
        args: list[str] = []
        for p in params:
            args += ["-p", p]
        self.camera = start_process(
            "rvg_ros.sim.camera_node", args, self.env, self.root / "camera.log"
        )

    def capture_until_accepted(self, note: str = "", timeout: float = 30.0) -> Any:
        """Capture, retrying rejections (camera not there yet, blur); the last answer."""
        deadline = time.monotonic() + timeout
        while True:
            request = self.client.capture.srv_type.Request(note=note)
            try:
                # Short per-call timeout: after a restart, discovery still lists the killed
                # node's server for a while, and a request sent to it is never answered.
                response = self.client.call(self.client.capture, request, timeout=5.0)
            except DemoError:
                if time.monotonic() > deadline:
                    raise
                continue
            if response.accepted or time.monotonic() > deadline:
                return response
            time.sleep(0.1)


@contextmanager
def rig(
    root: Path,
    *node_params: str,
    node_env: dict[str, str] | None = None,
    camera: tuple[str, ...] | None = ("orbit_speed_deg:=90.0",),
    domain_id: int | None = None,
) -> Iterator[Rig]:
    """Node (+ camera) processes and a client in this process; everything stopped on exit."""
    import rclpy

    root.mkdir(parents=True, exist_ok=True)
    env = isolated_ros_env(domain_id)
    saved = dict(os.environ)
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    if "FASTDDS_DEFAULT_PROFILES_FILE" in env:
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = env["FASTDDS_DEFAULT_PROFILES_FILE"]
    rclpy.init()
    r = Rig(root=root, env=env, node_params=tuple(node_params), node_env=dict(node_env or {}))
    r.client = DemoClient()
    try:
        if camera is not None:
            r.start_camera(*camera)
        r.start_node()
        yield r
    finally:
        r.client.close()
        for proc in (r.node, r.camera):
            if proc is not None:
                stop_process(proc)
        rclpy.try_shutdown()
        os.environ.clear()
        os.environ.update(saved)


__all__ = ["PARAMS", "Rig", "node_args", "percentile", "rig", "rss_mb"]
