"""Packaging for dgc-tf.

The library lives in `dgc_tf/`; the top-level `training/`, `export/` and
`serving/` folders install as its subpackages `dgc_tf.training`,
`dgc_tf.export` and `dgc_tf.serving`.
"""

import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
SUBPACKAGES = ("training", "export", "serving")

package_dir = {"dgc_tf": "dgc_tf"}
packages = ["dgc_tf"] + [f"dgc_tf.{name}" for name in find_packages(where="dgc_tf")]
for folder in SUBPACKAGES:
    if os.path.isdir(os.path.join(HERE, folder)):
        package_dir[f"dgc_tf.{folder}"] = folder
        packages.append(f"dgc_tf.{folder}")
        packages += [f"dgc_tf.{folder}.{name}" for name in find_packages(where=folder)]

setup(
    name="dgc-tf",
    version="0.1.0",
    description="Deep Goal-Oriented Clustering with TensorFlow and Keras",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    install_requires=[
        "tensorflow==2.21.*",
        "tensorflow-probability[tf]==0.25.*",
        "keras>=3.10,<4",
        "numpy",
        "scipy",
        "scikit-learn",
        "pandas",
        "pyarrow",
        "matplotlib",
        "pillow",
        "tensorboard",
        "mlxtend",
        "tensorflow-datasets",
        "tf2onnx",
        "onnx",
        "onnxruntime",
        "grpcio",
        "tensorflow-serving-api==2.21.*",
    ],
    extras_require={"test": ["pytest", "requests"]},
    entry_points={"console_scripts": ["dgc-tf=dgc_tf.training.cli:main"]},
)
