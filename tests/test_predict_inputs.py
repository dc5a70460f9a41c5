"""Tests for prediction on hostile inputs: wrong width, overflow, far outliers."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from dgc_tf.model import DGC


@pytest.fixture(scope="module")
def trained():
    x, groups = make_blobs(n_samples=150, n_features=3, centers=2, random_state=0)
    x = x.astype(np.float32)
    model = DGC(2, latent_dim=2, encoder_units=(8,), seed=0)
    model.pretrain(x, groups, epochs=1, verbose=0)
    model.fit(x, groups, epochs=1, verbose=0)
    return model, x, groups


def test_predict_rejects_wrong_feature_count(trained):
    model, x, _ = trained

    with pytest.raises(ValueError, match=r"shape \(num_rows, 3\).*Received shape \(150, 2\)"):
        model.predict(x[:, :2], verbose=0)


def test_evaluate_rejects_wrong_feature_count(trained):
    model, x, groups = trained

    with pytest.raises(ValueError, match=r"shape \(num_rows, 3\)"):
        model.evaluate(x[:, :2], groups, verbose=0)


def test_predict_rejects_float32_overflow(trained):
    model, _, _ = trained

    with pytest.raises(ValueError, match="beyond the float32 range"):
        model.predict(np.full((1, 3), 1e39), verbose=0)


@pytest.mark.parametrize("magnitude", [1e6, 1e20, 1e30, -1e30])
def test_far_outlier_weights_stay_finite(trained, magnitude):
    model, x, _ = trained
    rows = np.concatenate([x[:3], np.full((1, 3), magnitude, np.float32)])

    outputs = model.predict(rows, verbose=0)

    assert np.all(np.isfinite(outputs["cluster_probs"]))
    np.testing.assert_allclose(outputs["cluster_probs"].sum(axis=1), 1.0, atol=1e-6)
    assert np.all(np.isfinite(outputs["y_pred"]))
    # The clip touches only the outlier: ordinary rows are predicted as alone,
    # up to float32 rounding from the different batch shape.
    alone = model.predict(x[:3], verbose=0)
    np.testing.assert_allclose(outputs["cluster_probs"][:3], alone["cluster_probs"], atol=1e-6)
