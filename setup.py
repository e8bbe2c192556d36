"""ament_python package: installs with colcon (ROS 2 layout) or with pip into a venv."""
import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "flowclas_ros"


def tree(folder: str) -> list[tuple[str, list[str]]]:
    """data_files entries that install ``folder`` (e.g. model bundles) keeping its layout."""
    entries = []
    for root, _, files in os.walk(folder):
        files = [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
        if files:
            entries.append((os.path.join("share", PACKAGE, root), files))
    return entries


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")
         + glob("config/*.xml")),
    ] + tree("models"),
    install_requires=["setuptools"],
    # pip install ".[gpu]": the GPU backends (requirements-gpu.txt pins the same); "test" is
    # what makes `colcon test` run the suite with pytest (without it, unittest finds nothing)
    extras_require={"gpu": ["onnxruntime-gpu[cuda,cudnn]==1.31.1", "tensorrt-cu13==11.1.0.106",
                            "torch-tensorrt==2.14.0"],
                    "test": ["pytest"]},
    zip_safe=True,
    maintainer="flowclas_ros maintainers",
    maintainer_email="maintainers@flowclas-ros.org",
    description="FlowCLAS normalizing-flow anomaly segmentation for ROS 2",
    license="MIT",
    entry_points={
        "console_scripts": [
            "train = flowclas_ros.tools.train:main",
            "evaluate = flowclas_ros.tools.evaluate:main",
            "export = flowclas_ros.tools.export:main",
            "build_engine = flowclas_ros.tools.build_engine:main",
            "bag_outputs = flowclas_ros.tools.bag_outputs:main",
            "anomaly_node = flowclas_ros.tools.anomaly_node:main",
            "image_player = flowclas_ros.tools.image_player:main",
            "demo = flowclas_ros.tools.demo:main",
        ],
    },
)
