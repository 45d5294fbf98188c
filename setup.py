"""ament_python build for diffdrr_ros: works with `colcon build` and with plain pip."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "diffdrr_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/sros2", glob("config/sros2/*.xml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="diffdrr_ros developers",
    maintainer_email="dev@diffdrr-ros.org",
    description="CT to fluoroscopy 2D/3D registration with a differentiable Siddon DRR, for ROS 2.",
    license="MIT",
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [
            "diffdrr-ros = diffdrr_ros.app.cli:main",
            "registration_node = diffdrr_ros.ros.registration_node:main",
            "managed_registration_node = diffdrr_ros.ros.managed_registration_node:main",
            "carm_simulator = diffdrr_ros.ros.carm_simulator:main",
            "igtl_bridge = diffdrr_ros.ros.igtl_bridge:main",
        ],
    },
)
