"""Packaging: the generated interfaces, and the agreement between setup.py, CMakeLists.txt and
package.xml (the two install routes, pip/.venv and colcon, must offer the same executables).

Fast (a few seconds): no DDS traffic, one subprocess.
"""

import ast
import importlib.util
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# Generated interfaces
# ------------------------------------------------------------------------------------------
def fields(cls) -> dict[str, str]:
    return cls.get_fields_and_field_types()


def test_reconstruction_message_fields():
    from rvg_ros.msg import Reconstruction

    assert fields(Reconstruction) == {
        "header": "std_msgs/Header",
        "mesh": "shape_msgs/Mesh",
        "vertex_colors": "sequence<std_msgs/ColorRGBA>",
        "vertex_confidence": "sequence<float>",
        "cloud": "sensor_msgs/PointCloud2",
        "object_pose": "geometry_msgs/Pose",
        "bounding_box_size": "geometry_msgs/Vector3",
        "metric_scale": "boolean",
        "backend": "string",
        "num_views": "uint32",
        "stage_names": "sequence<string>",
        "stage_seconds": "sequence<float>",
        "file_paths": "sequence<string>",
    }


def test_reconstruction_message_holds_values():
    import numpy as np

    from rvg_ros.msg import Reconstruction

    msg = Reconstruction(backend="fusion", num_views=8, metric_scale=True)
    msg.vertex_confidence = np.array([0.25, 1.0], dtype=np.float32)
    msg.stage_names = ["integrate", "extract"]
    assert msg.backend == "fusion" and msg.num_views == 8 and msg.metric_scale
    assert list(msg.vertex_confidence) == [0.25, 1.0]
    assert list(msg.stage_names) == ["integrate", "extract"]


def test_service_fields():
    from rvg_ros.srv import Capture, LoadSession, Reconstruct, Reset

    assert fields(Capture.Request) == {"note": "string"}
    assert fields(Capture.Response) == {
        "accepted": "boolean",
        "frame_index": "int32",
        "num_frames": "uint32",
        "reason": "string",
    }
    assert fields(Reconstruct.Request) == {
        "backend": "string",
        "max_views": "uint32",
        "seed": "int32",
    }
    assert fields(Reconstruct.Response) == {
        "success": "boolean",
        "message": "string",
        "reconstruction": "rvg_ros/Reconstruction",
    }
    assert fields(Reset.Request) == {}
    assert fields(Reset.Response) == {
        "success": "boolean",
        "message": "string",
        "session_dir": "string",
    }
    assert fields(LoadSession.Request) == {"path": "string"}
    assert fields(LoadSession.Response) == {
        "success": "boolean",
        "message": "string",
        "num_frames": "uint32",
    }


def test_action_fields():
    from rvg_ros.action import Reconstruct

    assert fields(Reconstruct.Goal) == {"backend": "string", "max_views": "uint32", "seed": "int32"}
    assert fields(Reconstruct.Result) == {
        "success": "boolean",
        "message": "string",
        "reconstruction": "rvg_ros/Reconstruction",
    }
    assert fields(Reconstruct.Feedback) == {
        "stage": "string",
        "progress": "float",
        "elapsed": "float",
    }


def test_tf2_msgs_tfmessage():
    """tf2_msgs comes from ROS, or from scripts/interfaces/tf2_msgs when the venv has none."""
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    assert fields(TFMessage) == {"transforms": "sequence<geometry_msgs/TransformStamped>"}
    msg = TFMessage(transforms=[TransformStamped(child_frame_id="camera")])
    assert msg.transforms[0].child_frame_id == "camera"


def test_interfaces_and_sources_form_one_package_outside_the_repo(tmp_path):
    """From another directory (no repo on sys.path via the cwd): the source package rvg_ros
    (core, ...) and the generated rvg_ros.msg/srv/action must import together."""
    code = (
        "import rvg_ros, rvg_ros.core\n"
        "from rvg_ros.msg import Reconstruction\n"
        "from rvg_ros.srv import Capture, Reconstruct, Reset, LoadSession\n"
        "from rvg_ros.action import Reconstruct\n"
        "from tf2_msgs.msg import TFMessage\n"
        "print(rvg_ros.__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    # The source tree's __init__ (with pkgutil.extend_path) must win, not a generated one.
    init = Path(out.stdout.strip().splitlines()[-1]).resolve()
    assert (init.parent / "core").is_dir(), init


# ------------------------------------------------------------------------------------------
# setup.py / CMakeLists.txt / package.xml agreement
# ------------------------------------------------------------------------------------------
def _setup_py_assignments() -> dict:
    tree = ast.parse((REPO / "setup.py").read_text())
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                try:
                    values[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
    return values


def _setup_py_version() -> str:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "version":
            return ast.literal_eval(node.value)
    raise AssertionError("no version= in setup.py")


def console_scripts() -> dict[str, str]:
    scripts = _setup_py_assignments()["CONSOLE_SCRIPTS"]
    result = {}
    for entry in scripts:
        name, target = (part.strip() for part in entry.split("="))
        result[name] = target
    return result


def cmake_executables() -> dict[str, str]:
    text = (REPO / "CMakeLists.txt").read_text()
    block = re.search(r"set\(RVG_ROS_EXECUTABLES(.*?)\)", text, re.S)
    assert block, "RVG_ROS_EXECUTABLES not found in CMakeLists.txt"
    entries = re.findall(r'"([^"=]+)=([^"]+)"', block.group(1))
    return dict(entries)


def test_node_executables_agree_between_setup_py_and_cmake():
    scripts = console_scripts()
    executables = cmake_executables()
    assert {"reconstruct_node", "sim_camera_node"} <= set(executables)
    for name, target in executables.items():
        assert scripts.get(name) == target, f"{name}: CMake {target}, setup.py {scripts.get(name)}"
    # Every console script except the CLI is a node executable that `ros2 run` must find.
    assert set(scripts) - set(executables) == {"rvg-ros"}
    assert scripts["rvg-ros"] == "rvg_ros.core.cli:main"


@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_console_script_targets_exist(name):
    module, function = console_scripts()[name].split(":")
    assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
    source = Path(importlib.util.find_spec(module).origin).read_text()
    assert re.search(rf"^def {function}\(", source, re.M), f"{name}: no {function}() in {module}"


def test_versions_and_names_agree():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.findtext("name") == "rvg_ros"
    assert root.find("export").findtext("build_type") == "ament_cmake"
    assert "rosidl_interface_packages" in [g.text for g in root.findall("member_of_group")]
    import rvg_ros

    assert root.findtext("version") == _setup_py_version() == rvg_ros.__version__
    assert re.search(r"^project\(rvg_ros\)", (REPO / "CMakeLists.txt").read_text(), re.M)
    assert (REPO / "resource" / "rvg_ros").is_file()


def test_cmake_generates_every_interface_definition():
    """Every .msg/.srv/.action file is listed in rosidl_generate_interfaces (and vice versa)."""
    text = (REPO / "CMakeLists.txt").read_text()
    listed = set(re.findall(r'"((?:msg|srv|action)/\w+\.(?:msg|srv|action))"', text))
    on_disk = {
        str(p.relative_to(REPO))
        for d in ("msg", "srv", "action")
        for p in (REPO / d).glob(f"*.{d}")
    }
    assert listed == on_disk


def test_interface_dependencies_declared_in_package_xml():
    text = (REPO / "CMakeLists.txt").read_text()
    deps = re.search(r"DEPENDENCIES([^)]*)\)", text).group(1).split()
    root = ET.parse(REPO / "package.xml").getroot()
    declared = {e.text for tag in ("depend", "build_depend") for e in root.findall(tag)}
    assert set(deps) <= declared
    # The msg files only reference packages listed as DEPENDENCIES (or rvg_ros itself).
    used = set()
    for path in REPO.glob("*/*.*"):
        if path.suffix in (".msg", ".srv", ".action"):
            used |= set(re.findall(r"^\s*(\w+)/\w+", path.read_text(), re.M))
    assert used - {"rvg_ros"} <= set(deps), used


def test_cmake_installs_launch_and_config():
    text = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"install\(DIRECTORY launch config DESTINATION", text)
    assert (REPO / "launch").is_dir() and (REPO / "config").is_dir()


def test_fastdds_profile_is_valid_xml():
    root = ET.parse(REPO / "config" / "fastdds_localhost.xml").getroot()
    ns = {"d": "http://www.eprosima.com"}
    count = root.find(".//d:initialAnnouncements/d:count", ns)
    nanosec = root.find(".//d:initialAnnouncements/d:period/d:nanosec", ns)
    assert count is not None and int(count.text) == 20
    assert nanosec is not None and int(nanosec.text) == 100_000_000
