"""The facts stored in `dgc_model.json` and in the ONNX file's `metadata_props`."""

import datetime
import importlib.metadata

import numpy as np

import dgc_tf
from dgc_tf.export import contract


def package_version(distribution):
    """Return the installed version of a distribution, or None if it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_function(concrete_function):
    """Return `{"inputs": ..., "outputs": ...}` with the dtype and shape of each tensor.

    Shapes are lists with None for the batch dimension, read from the traced
    function, so the description matches what TF Serving reports.
    """
    args, kwargs = concrete_function.structured_input_signature
    input_specs = list(args) + [kwargs[key] for key in sorted(kwargs)]
    inputs = {spec.name: _describe_tensor(spec) for spec in input_specs}
    outputs = {name: _describe_tensor(tensor) for name, tensor in sorted(concrete_function.structured_outputs.items())}
    return {"inputs": inputs, "outputs": outputs}


def _describe_tensor(tensor):
    return {"dtype": tensor.dtype.name, "shape": tensor.shape.as_list()}


def build_metadata(model, name, version, serving_module, classes, include_onnx):
    """Return the metadata dict of one export (JSON-serializable).

    Args:
        model: the exported `dgc_tf.DGC`.
        name, version: the model name and version directory.
        serving_module: the `ServingModule` whose signatures are exported.
        classes: the label vocabulary in index order, or None.
        include_onnx: whether `model.onnx` is written.
    """
    signatures = {
        signature: describe_function(function) for signature, function in serving_module.signatures().items()
    }
    preprocessing = {
        "applied_in_graph": True,
        "feature_scaling": model.feature_scaling,
        "feature_offset": _float_list(model.feature_offset),
        "feature_scale": _float_list(model.feature_scale),
        "feature_formula": "(x - feature_offset) / feature_scale",
        "input_dtype": "float32; the Python predictors cast float64 and integer input to float32",
    }
    if model.response == "gaussian":
        preprocessing["response_offset"] = float(model.response_offset.numpy())
        preprocessing["response_scale"] = float(model.response_scale.numpy())
        preprocessing["response_formula"] = "y_pred = y_model * response_scale + response_offset"
    else:
        preprocessing["label_encoding"] = (
            "cluster_labeled maps y to class indices with a lookup table; serving_default "
            "decodes the predicted class index to y_label"
        )
    onnx_section = None
    if include_onnx:
        onnx_section = {
            "file": contract.ONNX_FILENAME,
            "opset": contract.ONNX_OPSET,
            "function": contract.PREDICT_SIGNATURE,
            "inputs": list(signatures[contract.PREDICT_SIGNATURE]["inputs"]),
            "outputs": list(signatures[contract.PREDICT_SIGNATURE]["outputs"]),
        }
    return {
        "format_version": contract.METADATA_FORMAT_VERSION,
        "name": name,
        "version": int(version),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "num_clusters": int(model.num_clusters),
        "num_features": int(model.num_features),
        "latent_dim": int(model.latent_dim),
        "response": model.response,
        "num_classes": len(classes) if classes is not None else None,
        "classes": classes,
        "label_dtype": contract.label_dtype(classes) if classes is not None else None,
        "likelihood": model.likelihood,
        "head": model.head,
        "entropy_regularizer": bool(model.entropy_regularizer),
        "response_weight": float(model.response_weight),
        "preprocessing": preprocessing,
        "signatures": signatures,
        "onnx": onnx_section,
        "versions": {
            "dgc_tf": dgc_tf.__version__,
            "tensorflow": package_version("tensorflow"),
            "keras": package_version("keras"),
            "tensorflow_probability": package_version("tensorflow-probability"),
            "tf2onnx": package_version("tf2onnx") if include_onnx else None,
            "onnx": package_version("onnx") if include_onnx else None,
        },
    }


def _float_list(variable):
    return [float(value) for value in variable.numpy().reshape(-1)]
