"""The launch file, the parameter file and the node agree (``ros2 launch`` is not installable
here, so this checks by reading the launch file rather than running it)."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from rvg_ros.ros.reconstruct_node import PARAMETERS as NODE_PARAMETERS
from rvg_ros.sim.camera_node import PARAMETERS as SIM_PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "reconstruct.launch.py"


def _launch_nodes() -> list[dict[str, str]]:
    """Keyword arguments (literal ones) of every Node(...) call in the launch file."""
    tree = ast.parse(LAUNCH.read_text())
    constants = {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
    }
    nodes = []
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node":
            kwargs = {}
            for k in call.keywords:
                if isinstance(k.value, ast.Constant):
                    kwargs[k.arg] = k.value.value
                elif isinstance(k.value, ast.Name) and k.value.id in constants:
                    kwargs[k.arg] = constants[k.value.id]
            nodes.append(kwargs)
    return nodes


def _console_scripts() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CONSOLE_SCRIPTS":
            return {ast.literal_eval(e).split("=")[0].strip() for e in node.value.elts}
    raise AssertionError("CONSOLE_SCRIPTS not found in setup.py")


def test_launch_starts_registered_executables_of_this_package() -> None:
    nodes = _launch_nodes()
    assert {n["executable"] for n in nodes} == {"reconstruct_node", "sim_camera_node"}
    assert all(n["package"] == "rvg_ros" for n in nodes)
    assert {n["executable"] for n in nodes} <= _console_scripts()
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for node in nodes:
        assert node["executable"] in cmake


def test_launch_default_params_file_is_the_shipped_yaml() -> None:
    source = LAUNCH.read_text()
    assert '"config", "reconstruct.yaml"' in source
    assert (ROOT / "config" / "reconstruct.yaml").is_file()


def test_yaml_names_the_launched_node_and_only_declared_parameters() -> None:
    doc = yaml.safe_load((ROOT / "config" / "reconstruct.yaml").read_text())
    node_name = next(n["name"] for n in _launch_nodes() if n["executable"] == "reconstruct_node")
    (key,) = doc.keys()
    assert key.endswith(f"/{node_name}")
    params = doc[key]["ros__parameters"]
    declared = {name: default for name, default, _ in NODE_PARAMETERS}
    assert set(params) == set(declared)
    for name, value in params.items():
        # The YAML must not change a parameter's type (rclpy would refuse to start).
        assert type(value) is type(declared[name]), name


def test_every_parameter_has_a_description() -> None:
    for name, _, description in (*NODE_PARAMETERS, *SIM_PARAMETERS):
        assert len(description) > 10, name


def test_rviz_config_shows_the_node_topics() -> None:
    rviz = (ROOT / "config" / "rvg.rviz").read_text()
    for topic in ("cloud", "mesh_marker", "camera_frusta", "preview"):
        assert f"/rvg_reconstruct/{topic}" in rviz


def test_readme_documents_every_node_parameter() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name, _, _ in NODE_PARAMETERS if f"`{name}`" not in readme]
    assert not missing, missing
