"""Checks of export names, versions and target directories, without TensorFlow.

The command line runs them before it loads a model, so a wrong path fails at
once instead of after TensorFlow starts.
"""

import os
import re

import numpy as np

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_name(name):
    """Raise ValueError unless `name` is a valid model directory name."""
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(
            "`name` must be a single directory name of letters, digits, '.', '_' and '-', "
            f"not starting with '.'. Received: name={name!r}"
        )


def check_version(version):
    """Return `version` as an int, or raise ValueError unless it is a non-negative integer."""
    if isinstance(version, (bool, np.bool_)) or not isinstance(version, (int, np.integer)) or version < 0:
        raise ValueError(
            "`version` must be a non-negative integer, or None for the next free version. "
            f"Received: version={version!r}"
        )
    return int(version)


def model_directory(base_dir, name):
    """Return `<base_dir>/<name>`, checking that the base exists and the name is free for a directory."""
    base_dir = os.fspath(base_dir)
    if not os.path.isdir(base_dir):
        raise FileNotFoundError(
            f"The export base directory {base_dir!r} does not exist. Create it first "
            "(it is the directory TF Serving reads), or check the path."
        )
    model_dir = os.path.join(base_dir, name)
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise FileExistsError(f"{model_dir!r} exists and is not a directory. Remove it or choose another name.")
    return model_dir


def check_target(target, overwrite):
    """Raise FileExistsError if the version directory `target` may not be written."""
    if not os.path.lexists(target):
        return
    if os.path.isdir(target) and not os.path.islink(target) and not os.listdir(target):
        return  # An empty directory contains no model, so it is replaced without `overwrite`.
    if not overwrite:
        raise FileExistsError(
            f"Version directory {target!r} already exists and is not empty. Pass overwrite=True "
            "(--overwrite) to replace it, or omit the version to write the next free one."
        )
    if not os.path.isdir(target) or os.path.islink(target):
        raise FileExistsError(f"{target!r} exists and is not a directory. Remove it first.")


def next_version(model_dir):
    """Return one more than the largest integer-named entry of `model_dir`, or 1 if there is none."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(entry) for entry in os.listdir(model_dir) if entry.isdigit()]
    return max(versions) + 1 if versions else 1
