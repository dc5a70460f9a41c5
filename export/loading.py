"""`load`: open an exported model as a predictor, from either format."""

import os

from dgc_tf.export import contract

LOAD_FORMATS = ("saved_model", "onnx")


def load(path, format=None):
    """Return a predictor for an exported model, with `.predict(x)` returning NumPy arrays.

    Args:
        path: a version directory, a `model.onnx` file, or a model directory
            `<base>/<name>` (its largest version is loaded).
        format: `"saved_model"`, `"onnx"`, or None: ONNX for a `.onnx` file,
            otherwise the SavedModel, or the ONNX file of a directory without one.

    Returns:
        A `SavedModelPredictor` (imports TensorFlow) or an `OnnxPredictor`
        (imports only NumPy and ONNX Runtime).
    """
    if format not in (None,) + LOAD_FORMATS:
        raise ValueError(f"`format` must be one of {LOAD_FORMATS} or None. Received: format={format!r}")
    path = os.fspath(path)
    if os.path.isfile(path):
        if path.endswith(".onnx") and format in (None, "onnx"):
            return _onnx_predictor(path)
        raise ValueError(
            f"{path!r} is a file, but only a .onnx file can be loaded directly; pass the version "
            "directory for a SavedModel."
        )
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No exported model at {path!r}: the path does not exist.")
    path = _latest_version_if_model_dir(path)
    has_saved_model = os.path.isfile(os.path.join(path, contract.SAVED_MODEL_FILENAME))
    has_onnx = os.path.isfile(os.path.join(path, contract.ONNX_FILENAME))
    if format == "onnx" or (format is None and has_onnx and not has_saved_model):
        return _onnx_predictor(path)
    if has_saved_model:
        from dgc_tf.export.savedmodel_predictor import SavedModelPredictor

        return SavedModelPredictor(path)
    raise FileNotFoundError(
        f"{path!r} contains neither {contract.SAVED_MODEL_FILENAME} nor {contract.ONNX_FILENAME}. "
        "Pass a version directory written by dgc_tf.export.export_model."
    )


def _onnx_predictor(path):
    from dgc_tf.export.onnx_predictor import OnnxPredictor

    return OnnxPredictor(path)


def _latest_version_if_model_dir(path):
    """Return the largest version directory of a model directory, or `path` itself."""
    if os.path.isfile(os.path.join(path, contract.SAVED_MODEL_FILENAME)) or os.path.isfile(
        os.path.join(path, contract.ONNX_FILENAME)
    ):
        return path
    versions = [
        int(entry) for entry in os.listdir(path) if entry.isdigit() and os.path.isdir(os.path.join(path, entry))
    ]
    return os.path.join(path, str(max(versions))) if versions else path
