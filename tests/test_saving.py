"""Tests for DGC.save: atomic `.keras` writes."""

import keras
import numpy as np
import pytest
from sklearn.datasets import make_blobs

from dgc_tf.model import DGC


@pytest.fixture(scope="module")
def trained():
    x, groups = make_blobs(n_samples=120, n_features=4, centers=2, random_state=0)
    x = x.astype(np.float32)
    model = DGC(2, latent_dim=2, encoder_units=(8,), seed=0)
    model.pretrain(x, groups, epochs=1, verbose=0)
    return model, x, groups


def test_save_is_atomic_and_leaves_no_temporary(tmp_path, trained):
    model, x, _ = trained
    target = tmp_path / "model.keras"
    target.write_bytes(b"old")

    model.save(target)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.keras"]
    reloaded = keras.saving.load_model(target)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0)["cluster"], model.predict(x, verbose=0)["cluster"])


def test_save_refuses_overwrite_when_told(tmp_path, trained):
    model, _, _ = trained
    target = tmp_path / "model.keras"
    target.write_bytes(b"old")

    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(target, overwrite=False)

    assert target.read_bytes() == b"old"
