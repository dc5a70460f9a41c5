"""Input checks and the statistics that travel with a model.

Everything here works on NumPy arrays and imports no TensorFlow. The model
stores the results (feature offset and scale, the class vocabulary, the
response offset and scale) and applies them inside its own graph, so a saved
or exported model takes raw features and returns decoded labels.
"""

import warnings

import numpy as np

FEATURE_SCALINGS = ("standard", "minmax", "none")


def as_feature_matrix(x, name="x"):
    """Convert features to a finite float32 matrix, or raise a clear error.

    Args:
        x: array-like of shape `(num_samples, num_features)`; pandas frames,
            float64 and integer arrays are accepted.
        name: argument name used in error messages.

    Returns:
        A float32 NumPy array of shape `(num_samples, num_features)`.

    Raises:
        ValueError: if `x` is not numeric, not 2-D, empty, or contains NaN or
            infinite values.
    """
    try:
        array = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"`{name}` must contain numbers only; encode text columns first "
            f"(for example one-hot). Conversion failed with: {error}"
        ) from None
    if array.ndim == 1:
        raise ValueError(
            f"`{name}` must be 2-D with shape (num_samples, num_features). "
            f"Received a 1-D array of shape {array.shape}; use x.reshape(-1, 1) "
            "for a single feature."
        )
    if array.ndim > 2:
        array = array.reshape(array.shape[0], -1)
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"`{name}` is empty. Received shape {array.shape}; at least one row "
            "and one feature are needed."
        )
    finite = np.isfinite(array)
    if not finite.all():
        bad_rows = int((~finite).any(axis=1).sum())
        bad_columns = np.flatnonzero((~finite).any(axis=0)).tolist()
        raise ValueError(
            f"`{name}` contains NaN or infinite values in {bad_rows} row(s), "
            f"columns {bad_columns[:10]}. Drop or impute those rows before "
            "training."
        )
    with np.errstate(over="ignore"):
        array32 = array.astype(np.float32)
    if not np.isfinite(array32).all():
        bad_rows = int((~np.isfinite(array32)).any(axis=1).sum())
        raise ValueError(
            f"`{name}` has {bad_rows} row(s) with values beyond the float32 range "
            f"(about 3.4e38 in magnitude). Rescale those features before training or prediction."
        )
    return array32


def feature_statistics(x, method):
    """Compute the offset and scale that map raw features to model inputs.

    The model computes `(x - offset) / scale`.

    * `"standard"`: per-feature mean and standard deviation, for a Gaussian
      decoder.
    * `"minmax"`: one global minimum and range for all features, so images
      keep their relative intensities and land in [0, 1] for a Bernoulli
      decoder.
    * `"none"`: offset 0 and scale 1.

    Args:
        x: float array of shape `(num_samples, num_features)`.
        method: one of `FEATURE_SCALINGS`.

    Returns:
        `(offset, scale)`, two float32 arrays of shape `(num_features,)`.
        Constant features get scale 1, with a warning naming them.
    """
    if method not in FEATURE_SCALINGS:
        raise ValueError(
            f"`feature_scaling` must be one of {FEATURE_SCALINGS}. "
            f"Received: feature_scaling={method!r}"
        )
    num_features = x.shape[1]
    if method == "none":
        return np.zeros(num_features, np.float32), np.ones(num_features, np.float32)
    if method == "minmax":
        low, high = float(x.min()), float(x.max())
        value_range = high - low if high > low else 1.0
        return (
            np.full(num_features, low, np.float32),
            np.full(num_features, value_range, np.float32),
        )

    offset = x.mean(axis=0, dtype=np.float64)
    scale = x.std(axis=0, dtype=np.float64)
    constant = scale < 1e-8 * np.maximum(1.0, np.abs(offset))
    if constant.any():
        columns = np.flatnonzero(constant).tolist()
        warnings.warn(
            f"{len(columns)} feature column(s) are constant: {columns[:20]}. "
            "They carry no information; they are centred and left at unit "
            "scale. Drop them to save computation.",
            stacklevel=3,
        )
        scale = np.where(constant, 1.0, scale)
    return offset.astype(np.float32), scale.astype(np.float32)


def _python_scalar(value):
    return value.item() if isinstance(value, np.generic) else value


def build_vocabulary(y, name="y"):
    """Return the sorted distinct labels of a categorical response.

    Args:
        y: 1-D array-like of labels: strings, booleans or integer codes.
        name: argument name used in error messages.

    Returns:
        A list of plain Python scalars (JSON-serializable), sorted.

    Raises:
        ValueError: for missing labels or fewer than two distinct classes.
    """
    labels = np.asarray(y)
    if labels.ndim != 1:
        labels = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels
    if labels.ndim != 1:
        raise ValueError(
            f"`{name}` must be 1-D with one label per row. Received shape {labels.shape}."
        )
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all():
            raise ValueError(f"`{name}` contains NaN labels; drop those rows first.")
        if np.any(labels != np.round(labels)):
            raise ValueError(
                f"`{name}` contains non-integer floats, which are not class labels. "
                "Use response='gaussian' for a continuous response."
            )
        labels = labels.astype(np.int64)
    if labels.dtype == object:
        # pandas string columns mark a missing label with NaN, which astype(str)
        # would turn into a class named "nan"; pandas.isna also catches None and pd.NA.
        import pandas

        if pandas.isna(labels).any():
            raise ValueError(
                f"`{name}` contains missing labels (None or NaN); drop those rows first."
            )
        labels = labels.astype(str)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError(
            f"`{name}` has a single class ({_python_scalar(classes[0]) if len(classes) else 'none'}); "
            "a categorical or Bernoulli response needs at least two classes."
        )
    return [_python_scalar(label) for label in classes]


def encode_labels(y, classes, name="y"):
    """Map labels to their integer positions in `classes`.

    Raises:
        ValueError: naming up to ten labels that are not in `classes`.
    """
    labels = np.asarray(y).reshape(-1)
    if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    if labels.dtype == object or labels.dtype.kind in "US":
        labels = labels.astype(str)
        lookup = {str(label): index for index, label in enumerate(classes)}
    else:
        lookup = {label: index for index, label in enumerate(classes)}
    codes = np.empty(len(labels), np.int64)
    unknown = []
    for row, label in enumerate(labels.tolist()):
        index = lookup.get(label)
        if index is None:
            unknown.append(label)
            index = -1
        codes[row] = index
    if unknown:
        raise ValueError(
            f"`{name}` contains {len(unknown)} label(s) the model was not trained "
            f"on: {sorted(set(map(str, unknown)))[:10]}. Known classes: {list(classes)[:20]}."
        )
    return codes


def as_response_vector(y, name="y"):
    """Convert a continuous response to a finite float32 vector."""
    try:
        values = np.asarray(y, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be numeric for response='gaussian'. Use "
            "response='categorical' for class labels."
        ) from None
    if not np.isfinite(values).all():
        raise ValueError(
            f"`{name}` contains {int((~np.isfinite(values)).sum())} NaN or infinite "
            "value(s); drop those rows first."
        )
    return values.astype(np.float32)


def response_statistics(y):
    """Return `(offset, scale)` that standardize a continuous response."""
    offset = float(np.mean(y))
    scale = float(np.std(y))
    return offset, (scale if scale > 1e-8 * max(1.0, abs(offset)) else 1.0)
