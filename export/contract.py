"""Names, file layout and input checks shared by the exporter and the predictors.

This module imports NumPy only, so the ONNX predictor and the servers can use
it without TensorFlow.
"""

import numpy as np

SAVED_MODEL_FILENAME = "saved_model.pb"
ONNX_FILENAME = "model.onnx"
METADATA_FILENAME = "dgc_model.json"
METADATA_FORMAT_VERSION = 1

ONNX_OPSET = 17

PREDICT_SIGNATURE = "serving_default"
LABELED_SIGNATURE = "cluster_labeled"
PRIOR_SIGNATURE = "prior"
DECODE_SIGNATURE = "decode"
SIGNATURES = (PREDICT_SIGNATURE, LABELED_SIGNATURE, PRIOR_SIGNATURE, DECODE_SIGNATURE)

FORMATS = ("saved_model", "onnx")
# Response families each format can export. dgc_tf.heads.RESPONSE_FAMILIES
# lists what the model supports; a new family stays unexported until it is
# added here and tested.
SUPPORTED_RESPONSES = {
    "saved_model": ("categorical", "bernoulli", "gaussian"),
    "onnx": ("categorical", "bernoulli", "gaussian"),
}
CLASS_RESPONSES = ("categorical", "bernoulli")

# Exported outputs are compared with `PARITY_TOLERANCE * max(1, |reference|)`:
# absolute for probabilities and latent codes, relative for values in raw
# response units, where float32 keeps about 7 significant digits.
PARITY_TOLERANCE = 1e-5
# Discrete outputs (cluster ids, labels) are compared only on rows whose two
# largest probabilities differ by more than this margin, because a near-tie
# may break either way under float rounding.
ARGMAX_MARGIN = 1e-4


def label_dtype(classes):
    """Return the dtype name of decoded labels: "string", "bool" or "int64".

    Args:
        classes: the class vocabulary (a list of Python scalars), or None when
            the model has only a number of classes. The labels are then the
            class indices.
    """
    if not classes:
        return "int64"
    if isinstance(classes[0], str):
        return "string"
    if isinstance(classes[0], (bool, np.bool_)):
        return "bool"
    return "int64"


def as_input_matrix(x, num_features):
    """Convert features to a finite float32 matrix with `num_features` columns.

    float64 and integer input is cast to float32, the dtype of every exported
    graph, so it gives the same results as float32 input.

    Raises:
        ValueError: for non-numeric, wrongly shaped or non-finite input.
    """
    try:
        array = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`x` must contain numbers only. Conversion to float32 failed with: {error}") from None
    if array.ndim != 2 or (num_features is not None and array.shape[1] != num_features):
        raise ValueError(
            f"`x` must have shape (num_rows, {num_features}). Received shape {array.shape}; "
            "reshape a single row with x.reshape(1, -1)."
        )
    if not np.isfinite(array).all():
        bad_rows = np.flatnonzero(~np.isfinite(array).all(axis=1)).tolist()
        raise ValueError(
            f"`x` contains NaN or infinite values (or values beyond the float32 range) "
            f"in rows {bad_rows[:10]}. Drop or impute those rows."
        )
    return array


def compare_outputs(reference, candidate):
    """Return descriptions of the outputs where `candidate` differs from `reference`.

    Both are dicts of NumPy arrays from the predict function. Float outputs
    must agree to `PARITY_TOLERANCE * max(1, |reference|)`; `cluster` and
    `y_label` must be equal except on near-ties (see `ARGMAX_MARGIN`).
    An empty list means the two agree.
    """
    problems = []
    missing = sorted(set(reference) ^ set(candidate))
    if missing:
        problems.append(f"outputs present in only one runtime: {missing}")
    for name in sorted(set(reference) & set(candidate)):
        expected = np.asarray(reference[name])
        actual = np.asarray(candidate[name])
        if expected.shape != actual.shape:
            problems.append(f"{name}: shape {actual.shape}, expected {expected.shape}")
            continue
        if expected.dtype.kind == "f":
            allowed = PARITY_TOLERANCE * np.maximum(1.0, np.abs(expected))
            excess = np.abs(actual.astype(np.float64) - expected) - allowed
            if not np.all(excess <= 0):
                difference = float(np.max(np.abs(actual.astype(np.float64) - expected)))
                problems.append(f"{name}: max absolute difference {difference:.3g}")
            continue
        probabilities = reference["cluster_probs"] if name == "cluster" else reference.get("y_pred")
        clear = _clear_decision_rows(probabilities, len(expected))
        if not np.array_equal(expected[clear], actual[clear]):
            problems.append(f"{name}: {int(np.sum(expected[clear] != actual[clear]))} row(s) differ")
    return problems


def _clear_decision_rows(probabilities, num_rows):
    """Return a mask of the rows whose decision is not a near-tie."""
    if probabilities is None:
        return np.ones(num_rows, bool)
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.ndim == 1:  # Bernoulli: the decision threshold is 0.5.
        return np.abs(probabilities - 0.5) > ARGMAX_MARGIN / 2
    if probabilities.shape[1] < 2:
        return np.ones(num_rows, bool)
    top_two = np.sort(probabilities, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0] > ARGMAX_MARGIN
