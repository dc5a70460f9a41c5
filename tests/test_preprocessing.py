"""Tests for dgc_tf.preprocessing: input checks, feature scaling and label vocabularies."""

import numpy as np
import pandas as pd
import pytest

from dgc_tf import preprocessing

# ----------------------------------------------------------------- feature matrix


def test_feature_matrix_from_pandas_float64():
    frame = pd.DataFrame({"a": [0.1, 2.5, -3.0], "b": [1, 2, 3]})

    array = preprocessing.as_feature_matrix(frame)

    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, frame.to_numpy().astype(np.float32))


def test_feature_matrix_float64_equals_float32():
    values = np.random.default_rng(0).normal(size=(20, 3))

    from_float64 = preprocessing.as_feature_matrix(values)
    from_float32 = preprocessing.as_feature_matrix(values.astype(np.float32))

    np.testing.assert_array_equal(from_float64, from_float32)


def test_feature_matrix_flattens_images():
    images = np.zeros((4, 28, 28), np.uint8)

    assert preprocessing.as_feature_matrix(images).shape == (4, 784)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.array([["a", "b"], ["c", "d"]]), r"`x` must contain numbers only"),
        (pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}), r"`x` must contain numbers only.*'x'"),
        (np.arange(5.0), r"`x` must be 2-D .* Received a 1-D array of shape \(5,\)"),
        (np.zeros((0, 3)), r"`x` is empty. Received shape \(0, 3\)"),
        (
            np.array([[1.0, np.nan], [2.0, 3.0], [np.nan, 1.0]]),
            r"NaN or infinite values in 2 row\(s\), columns \[0, 1\]",
        ),
        (np.array([[1.0, np.inf]]), r"NaN or infinite values in 1 row\(s\), columns \[1\]"),
    ],
    ids=["strings", "text-column", "one-dimensional", "empty", "nan", "inf"],
)
def test_feature_matrix_rejects_invalid_input(x, message):
    with pytest.raises(ValueError, match=message):
        preprocessing.as_feature_matrix(x)


def test_feature_matrix_error_uses_argument_name():
    with pytest.raises(ValueError, match=r"`x_val` must be 2-D"):
        preprocessing.as_feature_matrix(np.arange(3.0), name="x_val")


# ----------------------------------------------------------------- feature statistics


def test_standard_statistics():
    x = np.random.default_rng(1).normal(5.0, 3.0, (50, 4)).astype(np.float32)

    offset, scale = preprocessing.feature_statistics(x, "standard")

    np.testing.assert_allclose(offset, x.mean(axis=0, dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(scale, x.std(axis=0, dtype=np.float64), rtol=1e-6)


def test_standard_statistics_constant_columns_warn():
    x = np.random.default_rng(2).normal(size=(30, 6)).astype(np.float32)
    x[:, 2] = 7.5
    x[:, 5] = 0.0

    with pytest.warns(UserWarning, match=r"2 feature column\(s\) are constant: \[2, 5\]"):
        offset, scale = preprocessing.feature_statistics(x, "standard")

    assert scale[2] == 1.0
    assert scale[5] == 1.0
    assert offset[2] == pytest.approx(7.5)
    assert offset[5] == 0.0
    scaled = (x - offset) / scale
    assert np.all(np.isfinite(scaled))
    np.testing.assert_allclose(scaled[:, [2, 5]], 0.0, atol=1e-6)


def test_minmax_statistics_are_global():
    x = np.array([[0.0, 255.0], [10.0, 100.0]], np.float32)

    offset, scale = preprocessing.feature_statistics(x, "minmax")

    np.testing.assert_array_equal(offset, [0.0, 0.0])
    np.testing.assert_array_equal(scale, [255.0, 255.0])
    assert ((x - offset) / scale).max() == 1.0


def test_minmax_statistics_constant_input():
    offset, scale = preprocessing.feature_statistics(np.full((3, 2), 4.0, np.float32), "minmax")

    np.testing.assert_array_equal(offset, [4.0, 4.0])
    np.testing.assert_array_equal(scale, [1.0, 1.0])


def test_no_scaling_statistics():
    offset, scale = preprocessing.feature_statistics(np.ones((3, 2), np.float32), "none")

    np.testing.assert_array_equal(offset, [0.0, 0.0])
    np.testing.assert_array_equal(scale, [1.0, 1.0])


def test_unknown_scaling_rejected():
    with pytest.raises(ValueError, match=r"Received: feature_scaling='robust'"):
        preprocessing.feature_statistics(np.ones((3, 2)), "robust")


# ----------------------------------------------------------------- class vocabulary


@pytest.mark.parametrize(
    "y, expected",
    [
        ([3, 1, 2, 1], [1, 2, 3]),
        (np.array([2.0, 1.0, 3.0]), [1, 2, 3]),
        (["dog", "cat", "dog"], ["cat", "dog"]),
        (pd.Series(["yes", "no", "yes"]), ["no", "yes"]),
        (pd.Series(pd.Categorical(["x", "y", "x"])), ["x", "y"]),
        (np.array([True, False]), [False, True]),
        (np.array([[0], [1], [1]]), [0, 1]),
    ],
    ids=[
        "int-codes",
        "integral-floats",
        "strings",
        "pandas-strings",
        "pandas-categorical",
        "bools",
        "column",
    ],
)
def test_build_vocabulary(y, expected):
    classes = preprocessing.build_vocabulary(y)

    assert classes == expected
    # Plain Python scalars, so the vocabulary serializes to JSON with the model.
    assert all(type(label) is type(expected[0]) for label in classes)


@pytest.mark.parametrize(
    "y, message",
    [
        (np.ones(10), r"`y` has a single class \(1\)"),
        (["a", "a"], r"`y` has a single class \(a\)"),
        ([], r"`y` has a single class \(none\)"),
        (np.array([0.5, 1.0]), r"non-integer floats"),
        (np.array([1.0, np.nan]), r"`y` contains NaN labels"),
        (np.array(["a", None, "b"], dtype=object), r"`y` contains missing labels"),
        (pd.Series(["a", None, "b"]), r"`y` contains missing labels"),
        (np.zeros((3, 2)), r"`y` must be 1-D .* Received shape \(3, 2\)"),
    ],
    ids=["single-int", "single-string", "empty", "fractional", "nan", "none", "pandas-missing", "matrix"],
)
def test_build_vocabulary_rejects_invalid_labels(y, message):
    with pytest.raises(ValueError, match=message):
        preprocessing.build_vocabulary(y)


def test_encode_labels_round_trip():
    y = np.array([3, 1, 2, 3, 1])
    classes = preprocessing.build_vocabulary(y)

    codes = preprocessing.encode_labels(y, classes)

    np.testing.assert_array_equal(codes, [2, 0, 1, 2, 0])
    np.testing.assert_array_equal(np.asarray(classes)[codes], y)


def test_encode_labels_strings_and_integral_floats():
    np.testing.assert_array_equal(
        preprocessing.encode_labels(pd.Series(["b", "a", "b"]), ["a", "b"]), [1, 0, 1]
    )
    np.testing.assert_array_equal(preprocessing.encode_labels(np.array([2.0, 1.0]), [1, 2]), [1, 0])


def test_encode_labels_unknown_rejected():
    with pytest.raises(ValueError, match=r"2 label\(s\) the model was not trained on: \['4', '9'\]"):
        preprocessing.encode_labels([1, 4, 9], [1, 2, 3])


# ----------------------------------------------------------------- continuous response


def test_response_vector_and_statistics():
    values = preprocessing.as_response_vector(pd.Series([1.0, 2.0, 6.0]))

    offset, scale = preprocessing.response_statistics(values)

    assert values.dtype == np.float32
    assert offset == pytest.approx(3.0)
    assert scale == pytest.approx(np.std([1.0, 2.0, 6.0]))


def test_constant_response_gets_unit_scale():
    offset, scale = preprocessing.response_statistics(np.full(5, 2.0, np.float32))

    assert (offset, scale) == (2.0, 1.0)


@pytest.mark.parametrize(
    "y, message",
    [
        (["low", "high"], r"`y` must be numeric for response='gaussian'"),
        ([1.0, np.nan, np.inf], r"`y` contains 2 NaN or infinite value\(s\)"),
    ],
)
def test_response_vector_rejects_invalid_values(y, message):
    with pytest.raises(ValueError, match=message):
        preprocessing.as_response_vector(y)
