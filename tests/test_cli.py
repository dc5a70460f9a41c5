"""End-to-end tests of the `dgc-tf` command line, run as subprocesses on tiny data.

Every training run uses 200 rows, one epoch and a 16-16 encoder, so a whole
fit takes seconds. The bad-input cases fail before TensorFlow is imported.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

SCRIPT = os.path.join(os.path.dirname(sys.executable), "dgc-tf")
COMMAND = [SCRIPT] if os.path.exists(SCRIPT) else [sys.executable, "-m", "dgc_tf"]
TINY_MODEL = ["--epochs", "1", "--pretrain-epochs", "1", "--encoder-units", "16,16", "--latent-dim", "2"]


def run_cli(*arguments, cwd=None):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        COMMAND + [str(argument) for argument in arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=300,
    )


def make_frame(num_rows=200, seed=0):
    """Two groups that differ in `a`, `b` and the class `y`; `yc` is a continuous response."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 2, num_rows)
    a = rng.normal(3.0 * groups, 1.0)
    labels = np.where(groups == 1, "yes", "no")
    return pd.DataFrame(
        {
            "id": [f"row{index}" for index in range(num_rows)],
            "a": a,
            "b": rng.normal(-2.0 * groups, 1.0),
            "color": np.where(rng.random(num_rows) < 0.5, "red", "blue"),
            "group": groups,
            "y": labels,
            "yc": a + rng.normal(0.0, 0.1, num_rows),
        }
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    make_frame().to_csv(folder / "data.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def class_run(workspace):
    """A categorical run on data.csv, trained once for the whole module."""
    result = run_cli(
        "fit", workspace / "data.csv", "--target", "y", "--response", "categorical", "--clusters", "2",
        "--out", workspace / "run", "--id-column", "id", "--groups", "group", "--ignore", "yc", *TINY_MODEL,
    )
    assert result.returncode == 0, result.stderr
    return workspace / "run", result


def assert_input_error(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# ---------------------------------------------------------------------- working commands


@pytest.mark.parametrize("command", ["fit", "evaluate", "predict", "report", "export", "demo"])
def test_help_of_each_command(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_version_option():
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("dgc-tf ")


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "dgc_tf", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("fit", "evaluate", "predict", "report", "export", "demo"):
        assert command in result.stdout


def test_fit_writes_run_directory(class_run, workspace):
    run_dir, result = class_run
    for name in ("model.keras", "config.json", "history.csv", "sample.npz", "logs"):
        assert (run_dir / name).exists(), name
    assert [name for name in os.listdir(workspace) if ".tmp-" in name] == []
    assert "done in" in result.stdout
    assert "training accuracy" in result.stdout

    config = json.loads((run_dir / "config.json").read_text())
    assert config["features"]["columns"] == ["a", "b", "color"]
    assert config["features"]["names"] == ["a", "b", "color=blue", "color=red"]
    assert config["options"]["clusters"] == 2
    assert config["options"]["encoder_units"] == [16, 16]
    assert config["classes"] == ["no", "yes"]

    history = pd.read_csv(run_dir / "history.csv")
    assert history["stage"].tolist() == ["pretrain", "train"]
    assert {"loss", "reconstruction", "response"} <= set(history.columns)
    assert any(name.startswith("events.out.tfevents") for _, _, files in os.walk(run_dir / "logs") for name in files)


def test_evaluate_prints_scores(class_run, workspace):
    run_dir, _ = class_run
    result = run_cli("evaluate", run_dir, workspace / "data.csv", "--groups", "group", "--json", workspace / "scores.json")
    assert result.returncode == 0, result.stderr
    scores = json.loads((workspace / "scores.json").read_text())
    assert scores["rows"] == 200
    for name in ("response_accuracy", "clustering_accuracy", "clustering_nmi", "clustering_ari"):
        assert name in scores
        assert f"{name}:" in result.stdout
    assert 0.0 <= scores["clustering_accuracy"] <= 1.0


def test_predict_matches_model_predict(class_run, workspace):
    run_dir, _ = class_run
    out = workspace / "predictions.csv"
    result = run_cli("predict", run_dir, workspace / "data.csv", "--out", out)
    assert result.returncode == 0, result.stderr
    predictions = pd.read_csv(out)

    import keras

    import dgc_tf.model  # noqa: F401
    from dgc_tf.training import tabular

    config = json.loads((run_dir / "config.json").read_text())
    x, _ = tabular.encode_features(tabular.load(str(workspace / "data.csv")), config["features"]["spec"])
    model = keras.saving.load_model(run_dir / "model.keras")
    expected = model.predict(x, verbose=0)

    assert predictions["id"].tolist() == [f"row{index}" for index in range(200)]
    np.testing.assert_array_equal(predictions["cluster"].to_numpy(), expected["cluster"])
    probabilities = predictions[["cluster_prob_0", "cluster_prob_1"]].to_numpy()
    np.testing.assert_allclose(probabilities, expected["cluster_probs"], atol=1e-6)
    np.testing.assert_allclose(predictions[["y_prob_no", "y_prob_yes"]].to_numpy(), expected["y_pred"], atol=1e-6)
    np.testing.assert_allclose(predictions[["z_mean_0", "z_mean_1"]].to_numpy(), expected["z_mean"], atol=1e-6)
    assert predictions["y_pred"].tolist() == model.predict_labels(x, verbose=0).tolist()


def test_predict_reapplies_encoding_to_new_rows(class_run, workspace):
    run_dir, _ = class_run
    new_rows = make_frame(20, seed=1).drop(columns=["y", "group", "yc"])
    new_rows.loc[0, "color"] = "green"  # a category unseen in training
    new_rows.to_parquet(workspace / "new.parquet", index=False)
    result = run_cli("predict", run_dir, workspace / "new.parquet", "--out", workspace / "new_predictions.parquet")
    assert result.returncode == 0, result.stderr
    assert "not seen in training" in result.stderr
    predictions = pd.read_parquet(workspace / "new_predictions.parquet")
    assert len(predictions) == 20
    assert predictions["id"].tolist() == new_rows["id"].tolist()
    assert set(predictions["y_pred"]) <= {"no", "yes"}


def test_export_writes_version(class_run, workspace):
    run_dir, _ = class_run
    result = run_cli("export", run_dir, "--out", workspace / "exports", "--name", "tiny")
    assert result.returncode == 0, result.stderr
    version_dir = workspace / "exports" / "tiny" / "1"
    assert (version_dir / "saved_model.pb").exists()
    assert (version_dir / "dgc_model.json").exists()


def test_export_without_package_fails_clearly(class_run, workspace):
    run_dir, _ = class_run
    script = (
        "import sys; sys.modules['dgc_tf.export'] = None\n"
        "from dgc_tf.training.cli import main\n"
        f"sys.exit(main(['export', {str(run_dir)!r}, '--out', {str(workspace / 'none')!r}, '--name', 'x']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert_input_error(result, "dgc_tf.export cannot be imported")


def test_gaussian_npz_fit_overwrites(workspace):
    frame = make_frame()
    x = frame[["a", "b"]].to_numpy(np.float32)
    np.savez(workspace / "data.npz", x=x, y=frame["yc"].to_numpy(), groups=frame["group"].to_numpy())
    run_dir = workspace / "gaussian_run"
    run_dir.mkdir()
    (run_dir / "stale.txt").write_text("from an earlier run")

    result = run_cli(
        "fit", workspace / "data.npz", "--target", "y", "--response", "gaussian", "--clusters", "2",
        "--out", run_dir, "--groups", "groups", "--head", "bias", "--prior-init", "shared",
        "--refit-start-epoch", "1", "--no-entropy-regularizer", "--overwrite", *TINY_MODEL,
    )
    assert result.returncode == 0, result.stderr
    assert "training rmse" in result.stdout
    assert not (run_dir / "stale.txt").exists()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["features"]["spec"] == [{"column": "x", "kind": "block", "width": 2}]

    result = run_cli("evaluate", run_dir, workspace / "data.npz", "--groups", "groups")
    assert result.returncode == 0, result.stderr
    assert "response_rmse:" in result.stdout
    assert "clustering_accuracy:" in result.stdout


def test_demo_passes_arguments():
    result = run_cli("demo", "--help")
    assert result.returncode == 0, result.stderr
    assert "--datasets" in result.stdout


# ---------------------------------------------------------------------- bad input: message and exit code 2


def fit_arguments(data, out, *extra, target="y", clusters="2"):
    return ("fit", data, "--target", target, "--response", "categorical", "--clusters", clusters, "--out", out, *extra)


def test_missing_file_rejected(tmp_path):
    result = run_cli(*fit_arguments(tmp_path / "absent.csv", tmp_path / "run"))
    assert_input_error(result, "absent.csv", "not found")


def test_unknown_column_rejected(workspace, tmp_path):
    result = run_cli(*fit_arguments(workspace / "data.csv", tmp_path / "run", target="price"))
    assert_input_error(result, "Column 'price' not found", "Available columns")
    result = run_cli(*fit_arguments(workspace / "data.csv", tmp_path / "run", "--features", "a", "weight"))
    assert_input_error(result, "Column 'weight' not found")


def test_single_value_target_rejected(tmp_path):
    frame = make_frame()
    frame["y"] = "same"
    frame.to_csv(tmp_path / "one.csv", index=False)
    result = run_cli(*fit_arguments(tmp_path / "one.csv", tmp_path / "run", "--id-column", "id"))
    assert_input_error(result, "'y' has a single value")


def test_unencodable_column_rejected(tmp_path):
    frame = make_frame()
    frame["note"] = [f"free text {index}" for index in range(len(frame))]
    frame.to_csv(tmp_path / "text.csv", index=False)
    result = run_cli(*fit_arguments(tmp_path / "text.csv", tmp_path / "run", "--features", "a", "note"))
    assert_input_error(result, "Non-numeric feature column(s) cannot be encoded", "'note'")
    # Without --id-column the id strings are a feature with 200 distinct values.
    result = run_cli(*fit_arguments(tmp_path / "text.csv", tmp_path / "run", "--features", "a", "id"))
    assert_input_error(result, "'id'")


def test_missing_values_rejected(tmp_path):
    frame = make_frame()
    frame.loc[[3, 7], "a"] = np.nan
    frame.loc[[7, 9], "color"] = None
    frame.to_csv(tmp_path / "holes.csv", index=False)
    result = run_cli(*fit_arguments(tmp_path / "holes.csv", tmp_path / "run", "--id-column", "id", "--ignore", "yc"))
    assert_input_error(result, "3 row(s)", "'a' (2)", "'color' (2)", "--drop-missing")


def test_drop_missing_drops_rows(tmp_path):
    frame = make_frame()
    frame.loc[[3, 7], "a"] = np.nan
    frame.to_csv(tmp_path / "holes.csv", index=False)
    # 198 rows remain, so K = 199 fails after the drop: that message shows the drop happened.
    result = run_cli(
        *fit_arguments(tmp_path / "holes.csv", tmp_path / "run", "--id-column", "id", "--drop-missing", clusters="199")
    )
    assert_input_error(result, "more than the 198 rows")
    assert "dropped 2 row(s)" in result.stderr


def test_empty_file_rejected(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    result = run_cli(*fit_arguments(tmp_path / "empty.csv", tmp_path / "run"))
    assert_input_error(result, "is empty")
    (tmp_path / "header.csv").write_text("a,b,y\n")
    result = run_cli(*fit_arguments(tmp_path / "header.csv", tmp_path / "run"))
    assert_input_error(result, "has no rows")


def test_unreadable_images_rejected(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "images" / label / "good.png")
    (tmp_path / "images" / "dog" / "broken.png").write_bytes(b"not a png")
    result = run_cli(*fit_arguments(tmp_path / "images", tmp_path / "run", target="label"))
    assert_input_error(result, "cannot be read", "broken.png")


def test_cluster_count_out_of_range_rejected(workspace, tmp_path):
    result = run_cli(*fit_arguments(workspace / "data.csv", tmp_path / "run", clusters="1"))
    assert_input_error(result, "--clusters must be at least 2")
    result = run_cli(*fit_arguments(workspace / "data.csv", tmp_path / "run", "--id-column", "id", clusters="500"))
    assert_input_error(result, "--clusters 500 is more than the 200 rows")


def test_npy_columns_are_numbered(tmp_path):
    np.save(tmp_path / "table.npy", make_frame()[["a", "b", "group"]].to_numpy())
    result = run_cli(*fit_arguments(tmp_path / "table.npy", tmp_path / "run", target="2", clusters="500"))
    assert_input_error(result, "more than the 200 rows")
    result = run_cli(*fit_arguments(tmp_path / "table.npy", tmp_path / "run", target="y"))
    assert_input_error(result, "Column 'y' not found", "Available columns: 0, 1, 2")
    np.save(tmp_path / "vector.npy", np.arange(5.0))
    result = run_cli(*fit_arguments(tmp_path / "vector.npy", tmp_path / "run"))
    assert_input_error(result, "must be a 2-D table")


def test_existing_run_directory_rejected(workspace, tmp_path):
    (tmp_path / "run").mkdir()
    result = run_cli(*fit_arguments(workspace / "data.csv", tmp_path / "run"))
    assert_input_error(result, "already exists", "--overwrite")


def test_response_family_mismatch_rejected(workspace, tmp_path):
    arguments = ("fit", workspace / "data.csv", "--target", "y", "--response", "gaussian", "--clusters", "2")
    result = run_cli(*arguments, "--out", tmp_path / "run", "--id-column", "id")
    assert_input_error(result, "not numeric")


def test_predict_rejects_unknown_extension_and_run(class_run, workspace):
    run_dir, _ = class_run
    result = run_cli("predict", run_dir, workspace / "data.csv", "--out", workspace / "out.xlsx")
    assert_input_error(result, "--out must end in .csv")
    result = run_cli("predict", workspace / "no_run", workspace / "data.csv", "--out", workspace / "out.csv")
    assert_input_error(result, "Run directory", "not found")


def test_predict_rejects_missing_feature_column(class_run, workspace):
    run_dir, _ = class_run
    make_frame(10).drop(columns=["color"]).to_csv(workspace / "no_color.csv", index=False)
    result = run_cli("predict", run_dir, workspace / "no_color.csv", "--out", workspace / "out.csv")
    assert_input_error(result, "Column 'color' not found")
