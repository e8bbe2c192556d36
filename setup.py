"""ament_python package: installs with colcon (ROS 2 layout) or with pip into a venv."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "flowclas_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
        (f"share/{PACKAGE}/models", [f for f in glob("models/**/*", recursive=True) if "." in f.rsplit("/", 1)[-1]]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="flowclas_ros maintainers",
    maintainer_email="maintainers@flowclas-ros.org",
    description="FlowCLAS normalizing-flow anomaly segmentation for ROS 2",
    license="MIT",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "train = flowclas_ros.training.train:main",
            "evaluate = flowclas_ros.evaluation.evaluate:main",
            "export = flowclas_ros.export.export:main",
            "anomaly_node = flowclas_ros.node.anomaly_node:main",
            "smoke = flowclas_ros.demo:smoke_main",
        ],
    },
)
