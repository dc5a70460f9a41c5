"""Smoke runs of every experiment recipe, the results files and the report generator."""

import json
import os

import numpy as np
import pytest

from dgc_tf.data import FASHION_MNIST_DIR
from dgc_tf.training import baselines, experiments, results_report

# The Fashion-MNIST recipes read Debian's dataset-fashion-mnist package;
# `.ci/run` installs it. Without it their smoke runs and checks are skipped.
FASHION_AVAILABLE = os.path.isfile(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"))
FASHION_EXPERIMENTS = ("fashion_mnist", "fashion_k_sweep")


def require_fashion(experiment="fashion_mnist"):
    if experiment in FASHION_EXPERIMENTS and not FASHION_AVAILABLE:
        pytest.skip(f"Fashion-MNIST is not installed under {FASHION_MNIST_DIR} (apt install dataset-fashion-mnist)")

SMOKE_MODELS = {
    "noisy_mnist": None,
    "pacman": None,
    "fashion_mnist": None,
    # Two of the six K values keep the file fast: one cluster, and more clusters than classes.
    "fashion_k_sweep": ["dgc_k1", "dgc_k15"],
}
ACCURACY_KEYS = ("test_accuracy", "labeled_test_accuracy", "train_accuracy", "labeled_train_accuracy")


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Run the smoke version of every recipe in this process; return the output folder."""
    out = str(tmp_path_factory.mktemp("experiments"))
    empty_tfds = str(tmp_path_factory.mktemp("tensorflow_datasets"))
    previous = os.environ.get("TFDS_DATA_DIR")
    os.environ["TFDS_DATA_DIR"] = empty_tfds
    try:
        for experiment, models in SMOKE_MODELS.items():
            if experiment in FASHION_EXPERIMENTS and not FASHION_AVAILABLE:
                continue
            failures = experiments.run_experiment(experiment, [0], out, smoke=True, in_process=True, models=models)
            assert failures == 0, experiment
        assert experiments.main(["svhn", "--smoke", "--out", out]) == 0
    finally:
        if previous is None:
            del os.environ["TFDS_DATA_DIR"]
        else:
            os.environ["TFDS_DATA_DIR"] = previous
    return out


def records_of(out, experiment):
    return experiments.read_records(os.path.join(out, experiment, "results.jsonl"))


# ---------------------------------------------------------------- smoke runs


@pytest.mark.parametrize("experiment", sorted(SMOKE_MODELS))
def test_smoke_run_records_every_model(smoke_runs, experiment):
    require_fashion(experiment)
    records = records_of(smoke_runs, experiment)
    expected = SMOKE_MODELS[experiment] or [run["name"] for run in experiments.EXPERIMENTS[experiment]["runs"]]

    assert [record["model"] for record in records] == expected
    for record in records:
        assert record["status"] == "ok", record.get("reason")
        assert record["smoke"] is True
        assert record["seed"] == 0
        assert record["seconds"] > 0
        assert record["peak_rss_mb"] > 100  # TensorFlow alone takes hundreds of MB
        assert record["memory_method"] == experiments.MEMORY_METHODS[False]


@pytest.mark.parametrize("experiment", sorted(SMOKE_MODELS))
def test_smoke_accuracies_in_range(smoke_runs, experiment):
    require_fashion(experiment)
    for record in records_of(smoke_runs, experiment):
        for key in ACCURACY_KEYS + ("classification_accuracy",):
            if record.get(key) is not None:
                assert 0.0 <= record[key] <= 1.0, (record["model"], key)


def test_dgc_records_both_weightings(smoke_runs):
    for experiment in ("noisy_mnist", "pacman", "fashion_mnist"):
        if experiment in FASHION_EXPERIMENTS and not FASHION_AVAILABLE:
            continue
        models = {record["model"]: record for record in records_of(smoke_runs, experiment)}
        for key in ACCURACY_KEYS:
            assert models["dgc"][key] is not None, (experiment, key)
            assert models["vade"][key] is not None, (experiment, key)
        assert models["kmeans"].get("labeled_test_accuracy") is None


def test_no_decoder_run_uses_no_reconstruction(smoke_runs):
    record = {record["model"]: record for record in records_of(smoke_runs, "noisy_mnist")}["no_decoder"]

    assert record["settings"]["model"]["reconstruction_weight"] == 0.0
    assert record["pretrain_epochs"] == 0


def test_classification_recorded_for_fashion(smoke_runs):
    require_fashion()
    models = {record["model"]: record for record in records_of(smoke_runs, "fashion_mnist")}

    assert models["classifier"]["classification_accuracy"] is not None
    assert models["dgc"]["classification_accuracy"] is not None
    assert models["dgc"]["settings"]["model"]["encoder"] == "conv"
    assert models["dgc"]["num_train"] == 300
    assert models["dgc"]["num_test"] == 100


def test_k_sweep_unmatched_clusters_cost_accuracy(smoke_runs):
    require_fashion()
    models = {record["model"]: record for record in records_of(smoke_runs, "fashion_k_sweep")}

    assert models["dgc_k1"]["num_clusters"] == 1
    # With one cluster only the largest class can be matched.
    assert models["dgc_k1"]["test_accuracy"] <= 0.3
    assert models["dgc_k15"]["num_clusters"] == 15


def test_plot_arrays_saved(smoke_runs):
    with np.load(os.path.join(smoke_runs, "pacman", "dgc_seed0_smoke.npz")) as arrays:
        assert arrays["confusion"].shape == (2, 2)
        assert arrays["labeled_confusion"].sum() == arrays["confusion"].sum()
        assert arrays["latent_2d"].shape[1] == 2
        assert arrays["sample_x"].shape == (experiments.PLOT_ROWS, 2)
        assert arrays["sample_y"].shape == (experiments.PLOT_ROWS,)
    if not FASHION_AVAILABLE:
        return
    with np.load(os.path.join(smoke_runs, "fashion_k_sweep", "dgc_k15_seed0_smoke.npz")) as arrays:
        assert arrays["confusion"].shape == (15, 10)
        assert arrays["confusion"].sum() == 100


def test_svhn_skips_without_data(smoke_runs):
    (record,) = records_of(smoke_runs, "svhn")

    assert record["status"] == "skipped"
    assert "svhn_cropped is not prepared" in record["reason"]
    assert "--download" in record["reason"]


def test_job_in_subprocess_records_own_memory(tmp_path):
    out = str(tmp_path)

    assert experiments.main(["pacman", "--smoke", "--models", "kmeans", "--seeds", "1", "--out", out]) == 0

    (record,) = records_of(out, "pacman")
    assert record["status"] == "ok"
    assert record["memory_method"] == experiments.MEMORY_METHODS[True]
    assert record["peak_rss_mb"] > 0


# ---------------------------------------------------------------- report


@pytest.fixture(scope="module")
def report(smoke_runs, tmp_path_factory):
    docs = tmp_path_factory.mktemp("docs")
    (docs / "results_notes.md").write_text("Tried a longer schedule on seed 3.\n")
    assert results_report.main(["--runs", smoke_runs, "--out", str(docs / "results.md")]) == 0
    return docs


def test_report_has_every_experiment(report):
    page = (report / "results.md").read_text()

    for experiment in ("noisy_mnist", "pacman", "fashion_mnist", "fashion_k_sweep", "svhn"):
        if experiment in FASHION_EXPERIMENTS and not FASHION_AVAILABLE:
            continue
        assert experiments.EXPERIMENTS[experiment]["title"] in page
    assert "**Smoke run**" in page
    assert "Skipped: svhn_cropped is not prepared" in page
    assert "| no_decoder |" in page
    assert "99.6%" in page
    assert "Tried a longer schedule on seed 3." in page


def test_report_lists_bars(report):
    page = (report / "results.md").read_text()

    assert "DGC labeled test ≥ 99% in every seed" in page
    assert "DGC unlabeled test ≥ 97% in every seed" in page
    if FASHION_AVAILABLE:
        assert "DGC classification within 1 point of the plain classifier" in page


def test_report_plots_small_pngs(report):
    names = sorted(os.listdir(report / "results"))
    expected = [
        "noisy_mnist_confusion.png",
        "noisy_mnist_latent.png",
        "pacman_confusion.png",
        "pacman_latent.png",
        "pacman_samples.png",
    ]
    if FASHION_AVAILABLE:
        expected += ["fashion_k_sweep.png", "fashion_mnist_confusion.png", "fashion_mnist_latent.png"]

    assert names == sorted(expected)
    for name in names:
        content = (report / "results" / name).read_bytes()
        assert content.startswith(b"\x89PNG"), name
        assert len(content) < 80_000, name
    page = (report / "results.md").read_text()
    for name in names:
        assert f"(results/{name})" in page


def test_report_rejects_missing_runs_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        results_report.main(["--runs", str(tmp_path / "missing"), "--out", str(tmp_path / "results.md")])

    assert "is not a folder" in capsys.readouterr().err


# ---------------------------------------------------------------- pieces


def test_save_record_replaces_same_job(tmp_path):
    first = {"model": "dgc", "seed": 0, "smoke": False, "value": 1}
    other = {"model": "dgc", "seed": 1, "smoke": False, "value": 2}
    rerun = {"model": "dgc", "seed": 0, "smoke": False, "value": 3}

    for record in (first, other, rerun):
        experiments.save_record(str(tmp_path), record)

    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["value"] for line in lines] == [2, 3]
    assert sorted(os.listdir(tmp_path)) == [".lock", "results.jsonl"]


def test_resolve_settings_merges_overrides():
    settings = experiments.resolve_settings("noisy_mnist", "no_decoder")
    smoke = experiments.resolve_settings("noisy_mnist", "no_decoder", smoke=True)

    assert settings["model"]["reconstruction_weight"] == 0.0
    assert settings["model"]["encoder_units"] == (500, 500, 2000)
    assert settings["pretrain_epochs"] == 0
    assert smoke["pretrain_epochs"] == 0
    assert smoke["epochs"] == 1
    assert smoke["model"]["reconstruction_weight"] == 0.0
    assert smoke["model"]["encoder_units"] == (16,)
    # The recipe itself is never modified.
    assert "reconstruction_weight" not in experiments.EXPERIMENTS["noisy_mnist"]["model"]


def test_resolve_settings_rejects_unknown_model():
    with pytest.raises(ValueError, match=r"Experiment 'pacman' has no model 'classifier'"):
        experiments.resolve_settings("pacman", "classifier")


def test_cli_rejects_unknown_model(capsys):
    with pytest.raises(SystemExit):
        experiments.main(["pacman", "--models", "resnet", "--smoke"])

    assert "unknown models ['resnet']" in capsys.readouterr().err


def test_confusion_rows_are_clusters():
    counts = experiments.confusion_matrix([2, 2, 0], [0, 1, 1], num_clusters=3, num_groups=2)

    np.testing.assert_array_equal(counts, [[0, 1], [0, 0], [1, 1]])


def test_agglomerative_assigns_rest_to_nearest_centroid():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [10.0, 10.0]])
    groups = rng.integers(0, 2, 300)
    x = centers[groups] + rng.normal(scale=0.5, size=(300, 2))

    train_labels, test_labels = baselines.agglomerative_clusters(x[:200], x[200:], 2, seed=0, max_rows=50)

    assert len(train_labels) == 200
    assert len(test_labels) == 100
    # Two far apart blobs: every row, in the subset or not, lands with its blob.
    assert experiments.clustering_accuracy(groups[:200], train_labels) == 1.0
    assert experiments.clustering_accuracy(groups[200:], test_labels) == 1.0


@pytest.mark.parametrize(
    "values, expected",
    [([], "–"), ([0.5], "50.0"), ([0.9, 1.0], "95.0 ± 7.1 (worst 90.0)")],
)
def test_format_summary(values, expected):
    assert results_report.format_summary(values) == expected


def test_bars_met_and_short():
    met = [{"labeled_test_accuracy": 0.995, "test_accuracy": 0.96}, {"labeled_test_accuracy": 1.0, "test_accuracy": 0.99}]
    short = [{"labeled_test_accuracy": 0.99, "test_accuracy": 0.80}]

    assert [row[2] for row in results_report.evaluate_bars("pacman", {"dgc": met})] == ["met", "met"]
    assert [row[2] for row in results_report.evaluate_bars("pacman", {"dgc": short})] == [
        "met",
        "short by 15.0 points of 95.0%",
    ]


def test_fashion_bar_compares_with_classifier():
    models = {
        "dgc": [{"classification_accuracy": 0.88, "test_accuracy": 0.86}],
        "classifier": [{"classification_accuracy": 0.90}],
    }

    rows = results_report.evaluate_bars("fashion_mnist", models)

    assert rows[0][2] == "short by 1.0 points of 89.0%"
    assert rows[1][2] == "met"


# ---------------------------------------------------------------- invalid input


GOOD_LINE = json.dumps({
    "experiment": "pacman", "model": "kmeans", "seed": 0, "smoke": True, "status": "ok",
    "test_accuracy": 0.5, "train_accuracy": 0.5, "seconds": 1.0, "peak_rss_mb": 10.0,
}) + "\n"


def write_results(folder, experiment, text):
    (folder / experiment).mkdir(parents=True)
    path = folder / experiment / "results.jsonl"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "bad_line, reason",
    [('{"model": "dgc", "se\n', "invalid JSON"), ("[1, 2]\n", "not an object"), ('{"status": "ok"}\n', "missing keys")],
)
def test_read_records_names_bad_line(tmp_path, bad_line, reason):
    path = write_results(tmp_path, "pacman", GOOD_LINE + bad_line)

    with pytest.raises(experiments.InvalidRecords) as caught:
        experiments.read_records(str(path))

    assert f"{path} line 2" in str(caught.value)
    assert reason in str(caught.value)


def test_cli_rejects_file_as_out(tmp_path, capsys):
    not_a_folder = tmp_path / "results.txt"
    not_a_folder.write_text("keep me\n")

    with pytest.raises(SystemExit) as caught:
        experiments.main(["pacman", "--smoke", "--models", "kmeans", "--in-process", "--out", str(not_a_folder)])

    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert f"--out '{not_a_folder}'" in error
    assert "Traceback" not in error
    assert not_a_folder.read_text() == "keep me\n"


def test_cli_rejects_corrupt_results_before_training(tmp_path, capsys):
    truncated = GOOD_LINE + GOOD_LINE[:40]
    path = write_results(tmp_path, "pacman", truncated)

    with pytest.raises(SystemExit) as caught:
        experiments.main(["pacman", "--smoke", "--models", "kmeans", "--in-process", "--out", str(tmp_path)])

    assert caught.value.code == 2
    assert f"{path} line 2 is not a valid record" in capsys.readouterr().err
    assert path.read_text() == truncated


def test_cli_rejects_seed_beyond_numpy(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        experiments.main(["pacman", "--smoke", "--first-seed", str(experiments.MAX_SEED), "--seeds", "2",
                          "--out", str(tmp_path)])

    assert caught.value.code == 2
    assert "Lower --first-seed or --seeds" in capsys.readouterr().err
    assert not (tmp_path / "pacman" / "results.jsonl").exists()


def test_cli_interrupt_prints_one_line(tmp_path, capsys, monkeypatch):
    def interrupted_run(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "run_experiment", interrupted_run)

    assert experiments.main(["pacman", "--smoke", "--out", str(tmp_path)]) == 130
    error = capsys.readouterr().err
    assert error.startswith("Interrupted. The records of finished jobs are kept")
    assert "Traceback" not in error


def run_report_expecting_error(runs, out, capsys):
    with pytest.raises(SystemExit) as caught:
        results_report.main(["--runs", str(runs), "--out", str(out)])
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error


def test_report_rejects_corrupt_records(tmp_path, capsys):
    path = write_results(tmp_path / "runs", "pacman", GOOD_LINE + "{not json\n")

    error = run_report_expecting_error(tmp_path / "runs", tmp_path / "docs" / "results.md", capsys)

    assert f"{path} line 2 is not a valid record" in error
    assert not (tmp_path / "docs" / "results.md").exists()


def test_report_without_records_keeps_page(tmp_path, capsys):
    (tmp_path / "runs" / "pacman").mkdir(parents=True)
    (tmp_path / "runs" / "pacman" / "results.jsonl").write_text("")
    page = tmp_path / "results.md"
    page.write_text("measured results\n")

    error = run_report_expecting_error(tmp_path / "runs", page, capsys)

    assert "has no records" in error
    assert page.read_text() == "measured results\n"


def test_report_rejects_records_in_wrong_folder(tmp_path, capsys):
    write_results(tmp_path / "runs", "noisy_mnist", GOOD_LINE)

    error = run_report_expecting_error(tmp_path / "runs", tmp_path / "results.md", capsys)

    assert "experiment 'pacman', but its folder is named 'noisy_mnist'" in error


@pytest.mark.parametrize("name", ["results", "results.md"])
def test_report_rejects_out_that_is_no_page(tmp_path, capsys, name):
    write_results(tmp_path / "runs", "pacman", GOOD_LINE)
    (tmp_path / name).mkdir()

    error = run_report_expecting_error(tmp_path / "runs", tmp_path / name, capsys)

    assert f"--out '{tmp_path / name}'" in error
    assert (tmp_path / name).is_dir()


def test_report_names_its_notes_file(tmp_path):
    write_results(tmp_path / "runs", "pacman", GOOD_LINE)
    notes = tmp_path / "my_notes.md"
    notes.write_text("A note.\n")
    page = tmp_path / "docs" / "page.md"

    assert results_report.main(["--runs", str(tmp_path / "runs"), "--out", str(page), "--notes", str(notes)]) == 0

    text = page.read_text()
    assert "edit the notes in `my_notes.md`" in text
    assert "A note." in text
    assert "| kmeans | 50.0 |" in text


def test_latent_colours_distinct_for_two_labels():
    import matplotlib
    from matplotlib.colors import Normalize

    for labels in (np.array([0, 1]), np.array([3, 12, 13])):
        arguments = results_report.label_colours(labels)
        colour_map = matplotlib.colormaps[arguments["cmap"]]
        colours = colour_map(Normalize(arguments["vmin"], arguments["vmax"])(arguments["c"]))
        expected = [colour_map.colors[label % colour_map.N] for label in labels]

        np.testing.assert_allclose(colours[:, :3], expected)
    # Two clusters get the first two tab10 colours, blue and orange, not two blues.
    two = results_report.label_colours(np.array([0, 1]))
    assert two["cmap"] == "tab10"


def test_report_rejects_missing_notes(tmp_path, capsys):
    write_results(tmp_path / "runs", "pacman", GOOD_LINE)
    missing = tmp_path / "notes.md"

    with pytest.raises(SystemExit) as caught:
        results_report.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "page.md"), "--notes", str(missing)])

    assert caught.value.code == 2
    assert f"--notes '{missing}' is not a file" in capsys.readouterr().err
    assert not (tmp_path / "page.md").exists()
