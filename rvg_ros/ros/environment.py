"""Process environment for ROS 2 processes we start ourselves (demo, tests, soak runs)."""

from __future__ import annotations

import os
import random
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def share_file(relative: str) -> Path | None:
    """A file under the package's share dir (colcon install) or the source tree (venv)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        candidate = Path(get_package_share_directory("rvg_ros")) / relative
        if candidate.exists():
            return candidate
    except Exception:  # noqa: BLE001 - not installed through ament: use the source tree
        pass
    candidate = PACKAGE_ROOT / relative
    return candidate if candidate.exists() else None


def isolated_ros_env(domain_id: int | None = None, shared_memory: bool = True) -> dict[str, str]:
    """os.environ plus a private DDS domain that never leaves this machine.

    A random domain id keeps concurrent runs (tests, demos) from seeing each other; the
    Fast DDS profile repeats discovery announcements so peers find each other in < 1 s.
    ``shared_memory=False``: UDP loopback only, for processes killed on purpose (see
    config/fastdds_localhost_udp.xml).
    """
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else random.randint(1, 200))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if shared_memory:
        profile = share_file("config/fastdds_localhost.xml")
    else:
        # With LOCALHOST, rmw_fastrtps replaces the profile's transports by its own (shared
        # memory included); the profile's allowlist keeps the traffic on loopback instead.
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SYSTEM_DEFAULT"
        profile = share_file("config/fastdds_localhost_udp.xml")
    if profile is not None:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    env["PYTHONUNBUFFERED"] = "1"
    return env
