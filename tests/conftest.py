"""Shared pytest setup: quiet TensorFlow logging and repeatable random state."""

import os
import sys

# TensorFlow reads this when it is first imported, so it must be set before any
# test module imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def seeded_random_state():
    """Seed Python, NumPy and TensorFlow before every test that runs with Keras loaded.

    Tests that never import Keras (the data and metrics tests) keep a
    TensorFlow-free process.
    """
    if "keras" in sys.modules:
        import keras

        keras.utils.set_random_seed(0)
    else:
        np.random.seed(0)


@pytest.fixture(scope="session")
def blobs():
    """Four well separated Gaussian blobs: 1,000 rows, 10 features, group ids 0..3."""
    from sklearn.datasets import make_blobs

    x, groups = make_blobs(
        n_samples=1000, n_features=10, centers=4, cluster_std=1.0, random_state=0
    )
    return x.astype(np.float32), groups.astype(np.int64)
