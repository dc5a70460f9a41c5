"""Tests for the data sets in dgc_tf.data."""

import gzip
import os

import numpy as np
import pytest
from sklearn.cluster import KMeans

from dgc_tf.data import (
    FASHION_MNIST_DIR,
    Dataset,
    load_fashion_mnist,
    load_noisy_mnist,
    make_pacman,
    train_test_split,
)
from dgc_tf.metrics import clustering_accuracy


def pacman_angle_fraction(x):
    """Map Pacman points to their angle scaled to [0, 1] over 0.25 pi .. 1.75 pi."""
    angle = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi)
    return (angle - 0.25 * np.pi) / (1.5 * np.pi)


@pytest.fixture(scope="module")
def pacman():
    return make_pacman()


@pytest.fixture(scope="module")
def noisy_mnist():
    return load_noisy_mnist()


def test_pacman_shapes_and_dtypes(pacman):
    assert isinstance(pacman, Dataset)
    assert pacman.x.shape == (10000, 2)
    assert pacman.y.shape == (10000,)
    assert pacman.groups.shape == (10000,)
    assert pacman.x.dtype == np.float32
    assert pacman.y.dtype == np.float32
    assert pacman.groups.dtype == np.int64


def test_pacman_half_per_ring():
    assert np.bincount(make_pacman(num_samples=100).groups).tolist() == [50, 50]
    # The extra point of an odd count goes to the outer ring.
    assert np.bincount(make_pacman(num_samples=101).groups).tolist() == [50, 51]


def test_pacman_rows_are_shuffled(pacman):
    # Unshuffled rows would put all of group 0 first.
    assert pacman.groups[:5000].mean() == pytest.approx(0.5, abs=0.05)


def test_pacman_radii(pacman):
    radius = np.linalg.norm(pacman.x, axis=1)
    inner = radius[pacman.groups == 0]
    outer = radius[pacman.groups == 1]

    assert inner.min() >= 0.75 - 1e-6
    assert inner.max() <= 0.85 + 1e-6
    assert outer.min() >= 0.95 - 1e-6
    assert outer.max() <= 1.05 + 1e-6
    # The radial spread is uniform, so it reaches close to both ends.
    assert inner.min() < 0.755
    assert outer.max() > 1.045
    assert inner.mean() == pytest.approx(0.8, abs=0.005)
    assert outer.mean() == pytest.approx(1.0, abs=0.005)


def test_pacman_missing_wedge(pacman):
    t = pacman_angle_fraction(pacman.x)

    assert t.min() >= -1e-6
    assert t.max() <= 1 + 1e-6
    # Angles are uniform, so both ends of the range are reached.
    assert t.min() < 0.01
    assert t.max() > 0.99
    # No point in the mouth, which faces the positive x1 axis.
    in_mouth = (pacman.x[:, 0] > 0) & (np.abs(pacman.x[:, 1]) < pacman.x[:, 0] * 0.99)
    assert not in_mouth.any()


def test_pacman_response_curves_cross_near_80_percent():
    data = make_pacman(seed=3, response_noise=0.0)
    t = pacman_angle_fraction(data.x)
    inner = data.groups == 0
    outer = data.groups == 1

    # Noiseless, the inner ring is linear and decreasing, the outer one increasing.
    assert np.corrcoef(t[inner], data.y[inner])[0, 1] < -0.999
    inner_order = np.argsort(t[inner])
    outer_order = np.argsort(t[outer])
    assert np.all(np.diff(data.y[inner][inner_order]) <= 1e-6)
    assert np.all(np.diff(data.y[outer][outer_order]) >= -1e-6)

    grid = np.linspace(0.01, 0.99, 981)
    inner_curve = np.interp(grid, t[inner][inner_order], data.y[inner][inner_order])
    outer_curve = np.interp(grid, t[outer][outer_order], data.y[outer][outer_order])
    above = outer_curve > inner_curve
    sign_changes = np.flatnonzero(np.diff(above.astype(int)))

    assert len(sign_changes) == 1
    assert grid[sign_changes[0]] == pytest.approx(0.8, abs=0.01)


def test_pacman_response_noise_level():
    noisy = make_pacman(seed=4, response_noise=0.05)
    clean = make_pacman(seed=4, response_noise=0.0)
    # The same seed draws the same positions, so only the response noise differs.
    np.testing.assert_array_equal(noisy.x, clean.x)
    residual = noisy.y - clean.y

    assert residual.std() == pytest.approx(0.05, rel=0.05)
    assert abs(residual.mean()) < 0.005
    assert clean.y.max() - clean.y.min() == pytest.approx(1.0, abs=0.01)


def test_pacman_reproducible_with_seed():
    first = make_pacman(num_samples=500, seed=7)
    second = make_pacman(num_samples=500, seed=7)

    np.testing.assert_array_equal(first.x, second.x)
    np.testing.assert_array_equal(first.y, second.y)
    np.testing.assert_array_equal(first.groups, second.groups)


def test_pacman_seeds_differ():
    first = make_pacman(num_samples=500, seed=7)
    second = make_pacman(num_samples=500, seed=8)

    assert not np.array_equal(first.x, second.x)
    assert not np.array_equal(first.y, second.y)


def test_pacman_kmeans_near_chance(pacman):
    cluster_ids = KMeans(n_clusters=2, n_init=10, random_state=0).fit_predict(pacman.x)

    assert clustering_accuracy(pacman.groups, cluster_ids) < 0.7


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            {"num_samples": -3},
            r"`num_samples` must be an integer >= 2\. Received: num_samples=-3\.",
        ),
        ({"num_samples": 1}, r"Received: num_samples=1\."),
        ({"num_samples": 10.0}, r"Received: num_samples=10\.0\."),
        ({"num_samples": True}, r"Received: num_samples=True\."),
        ({"seed": -1}, r"`seed` must be None or an integer.*Received: seed=-1\."),
        ({"seed": "a"}, r"Received: seed='a'\."),
        ({"noise": 0.2}, r"`noise` must be a number in \[0\.0, 0\.1\).*Received: noise=0\.2\."),
        ({"noise": -0.01}, r"Received: noise=-0\.01\."),
        ({"response_noise": float("nan")}, r"`response_noise` must be a number"),
    ],
)
def test_pacman_invalid_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        make_pacman(**arguments)


def test_pacman_zero_noise():
    data = make_pacman(num_samples=200, noise=0.0)
    radius = np.linalg.norm(data.x, axis=1)

    np.testing.assert_allclose(radius[data.groups == 0], 0.8, atol=1e-5)
    np.testing.assert_allclose(radius[data.groups == 1], 1.0, atol=1e-5)


def test_noisy_mnist_shapes_and_dtypes(noisy_mnist):
    assert isinstance(noisy_mnist, Dataset)
    assert noisy_mnist.x.shape == (1000, 784)
    assert noisy_mnist.y.shape == (1000,)
    assert noisy_mnist.groups.shape == (1000,)
    assert noisy_mnist.x.dtype == np.float32
    assert noisy_mnist.y.dtype == np.int64
    assert noisy_mnist.groups.dtype == np.int64


def test_noisy_mnist_pixel_range(noisy_mnist):
    assert noisy_mnist.x.min() >= 0.0
    assert noisy_mnist.x.max() <= 1.0
    # Strokes reach full intensity, so the images were scaled by 255, not more.
    assert noisy_mnist.x.max() == pytest.approx(1.0)


def test_noisy_mnist_only_two_digits(noisy_mnist):
    assert sorted(np.unique(noisy_mnist.y).tolist()) == [2, 7]
    assert np.bincount(noisy_mnist.y, minlength=10)[[2, 7]].tolist() == [500, 500]


def test_noisy_mnist_four_equal_groups(noisy_mnist):
    assert np.bincount(noisy_mnist.groups).tolist() == [250, 250, 250, 250]
    # Groups 0 and 1 are the first digit, 2 and 3 the second.
    digit_of_group = np.array([2, 2, 7, 7])
    np.testing.assert_array_equal(digit_of_group[noisy_mnist.groups], noisy_mnist.y)


def test_noisy_mnist_half_with_background(noisy_mnist):
    nonzero_fraction = (noisy_mnist.x > 0).mean(axis=1)
    has_background = noisy_mnist.groups % 2 == 1

    # A plain digit leaves most of the image black, a photo crop fills it.
    assert nonzero_fraction[~has_background].max() < 0.5
    assert nonzero_fraction[has_background].min() > 0.9
    assert has_background.mean() == 0.5


def test_noisy_mnist_background_intensity(noisy_mnist):
    has_background = noisy_mnist.groups % 2 == 1
    images = noisy_mnist.x[has_background]
    # Pixels above the background cap belong to the digit.
    digit_pixels = images > 0.6 + 1e-6

    assert digit_pixels.any(axis=1).all()
    # Crops come from random places, so the top rows (mostly background) differ.
    assert len({tuple(np.round(image[:28], 3)) for image in images}) > 400


def test_noisy_mnist_rows_are_shuffled(noisy_mnist):
    assert noisy_mnist.y[:500].tolist().count(2) == pytest.approx(250, abs=50)


def test_noisy_mnist_reproducible_with_seed(noisy_mnist):
    again = load_noisy_mnist(seed=0)

    np.testing.assert_array_equal(noisy_mnist.x, again.x)
    np.testing.assert_array_equal(noisy_mnist.y, again.y)
    np.testing.assert_array_equal(noisy_mnist.groups, again.groups)


def test_noisy_mnist_seeds_differ(noisy_mnist):
    other = load_noisy_mnist(seed=1)

    assert not np.array_equal(noisy_mnist.x, other.x)
    assert not np.array_equal(noisy_mnist.groups, other.groups)


def test_noisy_mnist_other_digits_and_fraction():
    data = load_noisy_mnist(digits=[0, 4, 9], background_fraction=0.0)

    assert data.x.shape == (1500, 784)
    assert sorted(np.unique(data.y).tolist()) == [0, 4, 9]
    # Without backgrounds only the even groups (plain digits) occur.
    assert np.bincount(data.groups).tolist() == [500, 0, 500, 0, 500]


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"digits": (2, 2)}, r"`digits` must be a non-empty sequence.*Received: digits=\(2, 2\)\."),
        ({"digits": ()}, r"Received: digits=\(\)\."),
        ({"digits": (2, 10)}, r"Received: digits=\(2, 10\)\."),
        ({"digits": "27"}, r"Received: digits='27'\."),
        ({"background_fraction": 1.5}, r"`background_fraction` must be a number in \[0\.0, 1\.0\]"),
        ({"background_intensity": 0.0}, r"`background_intensity` must be a number in \(0\.0, 1\.0\]"),
        ({"seed": 2**32}, r"Received: seed=4294967296\."),
    ],
)
def test_noisy_mnist_invalid_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        load_noisy_mnist(**arguments)


def test_train_test_split_sizes_and_strata(pacman):
    train, test = train_test_split(pacman, test_fraction=0.2, seed=0)

    assert isinstance(train, Dataset)
    assert isinstance(test, Dataset)
    assert len(train.x) == 8000
    assert len(test.x) == 2000
    assert len(train.y) == len(train.groups) == 8000
    assert len(test.y) == len(test.groups) == 2000
    assert np.bincount(test.groups).tolist() == [1000, 1000]
    assert train.x.dtype == np.float32


def test_train_test_split_keeps_rows_together(pacman):
    train, test = train_test_split(pacman, seed=0)
    rows = np.concatenate([train.x, test.x])
    responses = np.concatenate([train.y, test.y])
    groups = np.concatenate([train.groups, test.groups])

    # Sorting by the coordinates undoes the split, and every row must come back whole.
    original_order = np.lexsort(pacman.x.T)
    split_order = np.lexsort(rows.T)
    np.testing.assert_array_equal(rows[split_order], pacman.x[original_order])
    np.testing.assert_array_equal(responses[split_order], pacman.y[original_order])
    np.testing.assert_array_equal(groups[split_order], pacman.groups[original_order])


def test_train_test_split_reproducible(noisy_mnist):
    first_train, first_test = train_test_split(noisy_mnist, seed=3)
    second_train, second_test = train_test_split(noisy_mnist, seed=3)
    _, other_test = train_test_split(noisy_mnist, seed=4)

    np.testing.assert_array_equal(first_train.x, second_train.x)
    np.testing.assert_array_equal(first_test.groups, second_test.groups)
    assert not np.array_equal(first_test.x, other_test.x)
    assert np.bincount(first_test.groups).tolist() == [50, 50, 50, 50]


def test_train_test_split_without_stratify():
    data = make_pacman(num_samples=101)

    train, test = train_test_split(data, test_fraction=0.3, seed=1, stratify=False)

    assert len(train.x) + len(test.x) == 101


@pytest.mark.parametrize("test_fraction", [0.0, 1.0, -0.2, "0.2"])
def test_train_test_split_invalid_fraction(pacman, test_fraction):
    with pytest.raises(ValueError, match=r"`test_fraction` must be a number in \(0\.0, 1\.0\)"):
        train_test_split(pacman, test_fraction=test_fraction)


def test_train_test_split_invalid_dataset(pacman):
    with pytest.raises(ValueError, match=r"`dataset` must be a dgc_tf\.data\.Dataset.*tuple"):
        train_test_split(tuple(pacman))
    mismatched = Dataset(x=pacman.x, y=pacman.y[:-1], groups=pacman.groups)
    with pytest.raises(ValueError, match="same number of rows"):
        train_test_split(mismatched)


# ---------------------------------------------------------------- Fashion-MNIST


def write_idx(path, array, magic):
    """Write `array` (unsigned bytes) as a gzip-compressed IDX file with the given magic number."""
    header = magic.to_bytes(4, "big") + b"".join(size.to_bytes(4, "big") for size in array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fashion_dir(tmp_path):
    """Five 28 x 28 test images whose pixels all equal 50 * class, for classes 0 to 4."""
    labels = np.arange(5, dtype=np.uint8)
    images = np.repeat(50 * labels, 28 * 28).reshape(5, 28, 28)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, 0x00000803)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, 0x00000801)
    return tmp_path


def test_fashion_reads_idx_files(tiny_fashion_dir):
    data = load_fashion_mnist("test", seed=0, data_dir=str(tiny_fashion_dir))

    assert data.x.shape == (5, 784)
    assert data.x.dtype == np.float32
    assert data.y.dtype == np.int64
    np.testing.assert_array_equal(data.groups, data.y)
    # Every image is constant at 50 * class / 255, whatever the row order.
    np.testing.assert_allclose(data.x, np.repeat(50 * data.y[:, None] / 255.0, 784, axis=1), rtol=1e-6)
    assert sorted(data.y.tolist()) == [0, 1, 2, 3, 4]


def test_fashion_limit_and_seed(tiny_fashion_dir):
    first = load_fashion_mnist("test", limit=3, seed=4, data_dir=str(tiny_fashion_dir))
    again = load_fashion_mnist("test", limit=3, seed=4, data_dir=str(tiny_fashion_dir))

    assert first.x.shape == (3, 784)
    np.testing.assert_array_equal(first.y, again.y)


def test_fashion_missing_file_names_package(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.gz.*apt install dataset-fashion-mnist"):
        load_fashion_mnist("train", data_dir=str(tmp_path))


def test_fashion_wrong_magic_rejected(tiny_fashion_dir):
    write_idx(tiny_fashion_dir / "t10k-images-idx3-ubyte.gz", np.zeros((5, 784), np.uint8), 0x00000802)

    with pytest.raises(ValueError, match=r"magic number is 0x802, expected 0x803"):
        load_fashion_mnist("test", data_dir=str(tiny_fashion_dir))


def test_fashion_truncated_file_rejected(tiny_fashion_dir):
    path = tiny_fashion_dir / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as file:
        file.write((0x00000801).to_bytes(4, "big") + (5).to_bytes(4, "big") + b"\x00\x01")

    with pytest.raises(ValueError, match=r"truncated or corrupt: the header declares shape \(5,\)"):
        load_fashion_mnist("test", data_dir=str(tiny_fashion_dir))


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"split": "validation"}, r"`split` must be 'train' or 'test'. Received: split='validation'"),
        ({"limit": 0}, r"`limit` must be an integer >= 1. Received: limit=0"),
        ({"seed": -1}, r"Received: seed=-1"),
    ],
)
def test_fashion_invalid_arguments_rejected(arguments, message):
    with pytest.raises(ValueError, match=message):
        load_fashion_mnist(**arguments)


@pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
    reason="Debian's dataset-fashion-mnist package is not installed",
)
def test_fashion_installed_test_split():
    data = load_fashion_mnist("test")

    assert data.x.shape == (10000, 784)
    assert np.bincount(data.y).tolist() == [1000] * 10
    assert 0.0 <= data.x.min()
    assert data.x.max() <= 1.0
    # Images are mostly background: about half the pixels are exactly 0.
    assert 0.3 < np.mean(data.x == 0.0) < 0.7
