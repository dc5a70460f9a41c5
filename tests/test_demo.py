"""Smoke test of the demo job: every data set and model on one epoch."""

import re

import pytest

from dgc_tf.training import demo

RESULT_PATTERN = re.compile(
    r"^RESULT (?P<dataset>\w+) model=(?P<model>dgc|vade|kmeans) "
    r"clustering_accuracy=(?P<accuracy>[0-9.]+) labeled_clustering_accuracy=(?P<labeled>[0-9.]+|n/a) "
    r"nmi=[-0-9.]+ ari=[-0-9.]+ entropy_clipped=(?P<clipped>[0-9.]+|n/a) seconds=[0-9.]+ seed=0$"
)


@pytest.fixture
def tiny_recipes(monkeypatch):
    for name, recipe in demo.RECIPES.items():
        tiny = dict(recipe, pretrain_epochs=1, epochs=1, n_init=1, refit_start_epoch=1)
        tiny["model"] = dict(recipe["model"], encoder_units=(16, 16), latent_dim=2)
        monkeypatch.setitem(demo.RECIPES, name, tiny)


def test_demo_prints_one_line_per_model(tiny_recipes, capsys, tmp_path):
    demo.main(["--seeds", "1", "--save-dir", str(tmp_path)])

    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("RESULT")]
    matches = [RESULT_PATTERN.match(line) for line in lines]
    assert all(matches), lines
    assert [(m["dataset"], m["model"]) for m in matches] == [
        (dataset, model) for dataset in ("noisy_mnist", "pacman") for model in ("dgc", "vade", "kmeans")
    ]
    for match in matches:
        assert 0.0 <= float(match["accuracy"]) <= 1.0
        assert (match["labeled"] == "n/a") == (match["model"] != "dgc")
        assert (match["clipped"] == "n/a") == (match["model"] != "dgc")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["noisy_mnist.keras", "pacman.keras"]
