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
            self.node_log,
        )
        deadline = time.monotonic() + timeout
        self.client.wait_ready(timeout=timeout)
        # After a kill, discovery lists the dead node's servers until their lease runs out,
        # so wait_ready can pass at once: wait for this process's own "ready" line too, or
        # the first requests go to the dead node and are never answered.
        while b"]: ready: " not in self.node_log.read_bytes():
            if self.node.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"node not ready in {timeout:.0f} s; log:\n{self.log_tail()}")
            time.sleep(0.1)
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

    @property
    def node_log(self) -> Path:
        """The log of the newest node process (one per start)."""
        return self.root / f"node-{self.starts:03d}.log"

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the newest node log, for an error message."""
        if not self.node_log.is_file():
            return "(no node log)"
        return "\n".join(self.node_log.read_text(errors="replace").splitlines()[-lines:])

    def node_gone(self) -> bool:
        return self.node is None or self.node.poll() is not None

    def capture_until_accepted(self, note: str = "", timeout: float = 30.0) -> Any:
        """Capture, retrying rejections (camera not there yet, blur); the last answer.

        Raises DemoError, with the node's log tail, when the node process has exited or no
        request was answered by ``timeout``.
        """
        deadline = time.monotonic() + timeout
        unanswered = 0
        while True:
            if self.node is not None and self.node_gone():
                raise DemoError(
                    f"node exited with {self.node.returncode}; its log ends:\n{self.log_tail()}"
                )
            request = self.client.capture.srv_type.Request(note=note)
            # Short per-call timeout: after a restart, discovery still lists the killed
            # node's server for a while, and a request sent to it is never answered.
            try:
                response = self.client.call(
                    self.client.capture, request, timeout=5.0, give_up=self.node_gone
                )
            except DemoError:
                unanswered += 1
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"capture: {unanswered} requests unanswered in {timeout:.0f} s "
                        f"(node process alive); its log ends:\n{self.log_tail()}"
                    ) from None
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
    shared_memory: bool = True,
) -> Iterator[Rig]:
    """Node (+ camera) processes and a client in this process; everything stopped on exit.
    ``shared_memory=False``: every process talks UDP over loopback only (for SIGKILL runs,
    see config/fastdds_localhost_udp.xml). Use it in a process that has not created a DDS
    participant yet, as the kill loop's command does: Fast DDS reads the profile file once
    per process, and a client left on the default profile would, with this range, use every
    network interface."""
    import rclpy

    root.mkdir(parents=True, exist_ok=True)
    env = isolated_ros_env(domain_id, shared_memory=shared_memory)
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
