"""diagnostic_msgs/DiagnosticArray for the node's health: inputs, rejections, session, worker.

Published on ``/diagnostics`` (where ``diagnostic_aggregator`` and ``rqt_robot_monitor``
look), one status per report. WARN when messages or frames were rejected since the previous
report, ERROR when the session is not writable (the last capture failed to write).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header


@dataclass
class NodeHealth:
    """What the node knows about itself at one moment (plain data, filled by the node)."""

    name: str
    received: Mapping[str, int] = field(default_factory=dict)
    rejected: Mapping[str, int] = field(default_factory=dict)
    frames_held: int = 0
    session_dir: str = ""
    session_mb: float = 0.0
    stage: str = "idle"
    write_error: str = ""
    new_rejections: int = 0
    extra: Mapping[str, str] = field(default_factory=dict)


def health_to_diagnostics(health: NodeHealth, header: Header) -> DiagnosticArray:
    if health.write_error:
        level, message = DiagnosticStatus.ERROR, f"last write failed: {health.write_error}"
    elif health.new_rejections:
        level = DiagnosticStatus.WARN
        message = f"{health.new_rejections} inputs rejected since the last report"
    else:
        level, message = DiagnosticStatus.OK, "ok"
    values = [
        KeyValue(key="frames held", value=str(health.frames_held)),
        KeyValue(key="session dir", value=health.session_dir),
        KeyValue(key="session MB", value=f"{health.session_mb:.1f}"),
        KeyValue(key="stage", value=health.stage),
        KeyValue(key="rejected total", value=str(sum(health.rejected.values()))),
    ]
    values += [KeyValue(key=f"received {k}", value=str(v)) for k, v in health.received.items()]
    values += [
        KeyValue(key=f"rejected {k}", value=str(v)) for k, v in sorted(health.rejected.items())
    ]
    values += [KeyValue(key=k, value=v) for k, v in health.extra.items()]
    status = DiagnosticStatus(
        level=level, name=health.name, message=message, hardware_id="", values=values
    )
    return DiagnosticArray(header=header, status=[status])


def diagnostics_values(msg: DiagnosticArray) -> dict[str, str]:
    """Key -> value of the first status (for tests and tools)."""
    return {kv.key: kv.value for kv in msg.status[0].values} if msg.status else {}


__all__ = ["NodeHealth", "diagnostics_values", "health_to_diagnostics"]
