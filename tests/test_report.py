"""Tests of `dgc-tf report`: the HTML page, its PNG plots, and rendering in headless Chromium."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from test_cli import TINY_MODEL, assert_input_error, make_frame, run_cli

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def gaussian_report(tmp_path_factory):
    """A Gaussian-response run on a CSV, with its report written."""
    folder = tmp_path_factory.mktemp("report")
    make_frame().to_csv(folder / "data.csv", index=False)
    run_dir = folder / "run"
    result = run_cli(
        "fit", folder / "data.csv", "--target", "yc", "--response", "gaussian", "--clusters", "3",
        "--out", run_dir, "--id-column", "id", "--groups", "group", "--ignore", "y", *TINY_MODEL,
    )
    assert result.returncode == 0, result.stderr
    result = run_cli("report", run_dir)
    assert result.returncode == 0, result.stderr
    return run_dir


def linked_images(page_path):
    page = page_path.read_text()
    return re.findall(r'<img src="([^"]+)"', page)


def test_report_links_existing_plots(gaussian_report):
    from PIL import Image

    page = gaussian_report / "report.html"
    images = linked_images(page)
    names = [os.path.basename(image) for image in images]
    assert names == [
        "cluster_sizes.png",
        "latent_space.png",
        "response_by_cluster.png",
        "response_curves.png",
        "training_curves.png",
    ]
    for image in images:
        with Image.open(gaussian_report / image) as opened:
            assert opened.format == "PNG"
            assert min(opened.size) > 100


def test_report_lists_scores(gaussian_report):
    page = (gaussian_report / "report.html").read_text()
    assert "response RMSE" in page
    assert "clustering accuracy (true groups: group)" in page
    assert "yc (gaussian)" in page


def test_report_for_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, brightness in (("dark", 60), ("light", 250)):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(12):
            pixels = (rng.random((10, 8)) * brightness).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{index}.png")
    run_dir = tmp_path / "run"
    result = run_cli(
        "fit", tmp_path / "images", "--target", "label", "--response", "bernoulli", "--clusters", "2",
        "--out", run_dir, "--image-size", "6x5", *TINY_MODEL,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["image_size"] == [6, 5]
    assert config["features"]["spec"] == [{"column": "pixels", "kind": "block", "width": 30}]

    result = run_cli("report", run_dir, "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    names = [os.path.basename(image) for image in linked_images(tmp_path / "report" / "report.html")]
    assert "cluster_samples.png" in names
    assert "response_curves.png" not in names

    result = run_cli("predict", run_dir, tmp_path / "images", "--out", tmp_path / "predictions.csv")
    assert result.returncode == 0, result.stderr
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert predictions["path"].iloc[0] == os.path.join("dark", "0.png")
    assert set(predictions["y_pred"]) <= {"dark", "light"}
    assert {"y_prob_dark", "y_prob_light"} <= set(predictions.columns)


def test_report_without_run_directory(tmp_path):
    result = run_cli("report", tmp_path / "absent")
    assert_input_error(result, "Run directory", "not found")


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed; the page is not rendered")
def test_report_renders_in_chromium(gaussian_report, tmp_path):
    from PIL import Image

    screenshot = tmp_path / "report.png"
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={screenshot}",
            "--window-size=1280,2400",
            (gaussian_report / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("L"))
    # A blank page is one colour; plots give many grey levels.
    assert len(np.unique(pixels)) > 20
    print(f"screenshot: {screenshot}", file=sys.stderr)
