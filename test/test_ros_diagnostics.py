"""Rejection counting (bounded) and the DiagnosticArray built from the node's health."""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticStatus
from std_msgs.msg import Header

from rvg_ros.core.rejections import RejectionCounts, reason_key
from rvg_ros.ros.diagnostics import NodeHealth, diagnostics_values, health_to_diagnostics


def test_reason_templates_and_bounded_counts() -> None:
    assert reason_key("image step 11 is smaller than width (3 * 4 = 12) for rgb8") == (
        "image step N is smaller than width"
    )
    assert reason_key("unsupported image encoding 'x1' here") == reason_key(
        "unsupported image encoding 'yuv' here"
    )
    counts = RejectionCounts(max_reasons=3)
    for i in range(1000):  # endless distinct texts from a hostile publisher
        counts.add("colour message", f"weird thing #{i} {'x' * (i % 7)}")
    snapshot = counts.snapshot()
    assert len(snapshot) <= 4 and sum(snapshot.values()) == 1000 == counts.total()


def test_levels_and_values() -> None:
    header = Header(frame_id="")
    ok = health_to_diagnostics(NodeHealth(name="n", frames_held=3), header)
    assert ok.status[0].level == DiagnosticStatus.OK
    assert diagnostics_values(ok)["frames held"] == "3"
    warn = health_to_diagnostics(
        NodeHealth(name="n", rejected={"colour message: x": 5}, new_rejections=5), header
    )
    assert warn.status[0].level == DiagnosticStatus.WARN
    values = diagnostics_values(warn)
    assert values["rejected colour message: x"] == "5" and values["rejected total"] == "5"
    error = health_to_diagnostics(NodeHealth(name="n", write_error="[Errno 28] full"), header)
    assert error.status[0].level == DiagnosticStatus.ERROR
    assert "Errno 28" in error.status[0].message
