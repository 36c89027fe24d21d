"""Python packaging of rvg_ros for the pip / .venv route.

The repository is ONE ROS 2 package of build type ament_cmake (package.xml): in a colcon
workspace CMakeLists.txt installs everything and this file is not used. Here, scripts/setup.sh
runs ``pip install -e .`` (with ``--no-deps``: requirements.txt is the single, pinned source of
the dependencies) and then builds only the interfaces into the venv with CMake
(scripts/build_interfaces.sh). The generated ``rvg_ros.msg/srv/action`` land in
``site-packages/rvg_ros`` and join this source package through ``pkgutil.extend_path`` in
``rvg_ros/__init__.py``.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE_NAME = "rvg_ros"

# NAME=MODULE:FUNCTION. The node executables must match RVG_ROS_EXECUTABLES in CMakeLists.txt
# (what `ros2 run` / the launch file use in a colcon install); test/test_packaging.py checks it.
CONSOLE_SCRIPTS = [
    "rvg-ros = rvg_ros.core.cli:main",
    "reconstruct_node = rvg_ros.ros.reconstruct_node:main",
    "sim_camera_node = rvg_ros.sim.camera_node:main",
]

setup(
    name=PACKAGE_NAME,
    version="0.1.0",  # keep equal to package.xml and rvg_ros.__version__ (tested)
    description="Object reconstruction for robots with ROS 2: capture, reconstruct, publish.",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE_NAME, PACKAGE_NAME + ".*"]),
    # Non-Python files inside the package (e.g. assets a backend ships) travel with it.
    include_package_data=True,
    package_data={PACKAGE_NAME: ["**/*.yaml", "**/*.json", "weights/*.safetensors"]},
    # Like an ament_python package: register rvg_ros in the ament index of the install prefix
    # and put launch/ and config/ in share/rvg_ros, so ament_index_python's
    # get_package_share_directory('rvg_ros') finds them in the venv as in a colcon install.
    # (For an editable install these are copies: scripts/setup.sh re-runs pip when they change.)
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE_NAME]),
        ("share/" + PACKAGE_NAME + "/launch", sorted(glob("launch/*.py"))),
        (
            "share/" + PACKAGE_NAME + "/config",
            sorted(glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
        ),
    ],
    # Dependencies are NOT declared here on purpose: requirements.txt pins them for a fresh
    # machine (e.g. torch==2.13.0 CPU; an open `torch` would pull a multi-GB CUDA build), and in
    # a colcon workspace rosdep/apt provide ROS itself, which pip cannot.
    install_requires=[],
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    zip_safe=False,
)
