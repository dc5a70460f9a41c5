"""One loaded model version: its SignatureDefs, and input checks and calls by signature."""

import base64
import contextlib
import os
import time

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

from dgc_tf.export import contract
from dgc_tf.serving.errors import InvalidArgument, ServingError

SERVE_TAG = "serve"


def read_signature_defs(version_dir):
    """Return the SignatureDef protos of the `serve` MetaGraph in `saved_model.pb`, by name.

    These are the signature definitions that TF Serving reports in its
    metadata, with the graph's tensor names, dtypes and shapes.
    """
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, contract.SAVED_MODEL_FILENAME), "rb") as file:
        saved_model.ParseFromString(file.read())
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return {name: meta_graph.signature_def[name] for name in sorted(meta_graph.signature_def)}
    raise ValueError(f"{version_dir!r} has no MetaGraph tagged {SERVE_TAG!r}.")


def dtype_name(enum_value):
    """Return the proto name of a TensorFlow dtype enum, such as DT_FLOAT."""
    return types_pb2.DataType.Name(enum_value)


class Servable:
    """A loaded version of a model: the SavedModel and its signature definitions.

    Args:
        name: the model name (its directory under the base directory).
        version: the version number (the name of the version directory).
        path: the version directory.
    """

    def __init__(self, name, version, path):
        self.name = name
        self.version = version
        self.path = path
        start = time.monotonic()
        self.signature_defs = read_signature_defs(path)
        self.loaded = tf.saved_model.load(path, tags=[SERVE_TAG])
        self.functions = dict(self.loaded.signatures)
        self.load_seconds = time.monotonic() - start

    @contextlib.contextmanager
    def error_context(self):
        """Tag ServingErrors raised inside the block with this model and version, for the log."""
        try:
            yield
        except ServingError as error:
            error.model, error.version = self.name, self.version
            raise

    def signature(self, signature_name):
        """Return the name and SignatureDef of a signature; an empty name means `serving_default`."""
        signature_name = signature_name or contract.PREDICT_SIGNATURE
        if signature_name not in self.signature_defs or signature_name not in self.functions:
            raise InvalidArgument(
                f"Signature {signature_name!r} not found in model {self.name!r} version {self.version}. "
                f"Available signatures: {sorted(self.functions)}."
            )
        return signature_name, self.signature_defs[signature_name]

    def run(self, signature_name, inputs, output_filter=()):
        """Call a signature with NumPy inputs that `check_inputs` accepted; return NumPy outputs.

        Raises:
            InvalidArgument: the graph rejected the inputs (for example a label
                that was not seen in training) or `output_filter` names an
                unknown output.
        """
        signature_name, signature_def = self.signature(signature_name)
        unknown = sorted(set(output_filter) - set(signature_def.outputs))
        if unknown:
            raise InvalidArgument(
                f"output_filter names outputs {unknown} that signature {signature_name!r} does not have. "
                f"Its outputs are {sorted(signature_def.outputs)}."
            )
        try:
            outputs = self.functions[signature_name](**{key: tf.constant(value) for key, value in inputs.items()})
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            message = _graph_error_text(getattr(error, "message", None) or str(error))
            raise InvalidArgument(f"Signature {signature_name!r} rejected the inputs: {message}") from None
        names = list(output_filter) or sorted(outputs)
        return {name: outputs[name].numpy() for name in names}

    def check_inputs(self, signature_name, inputs):
        """Convert and check request inputs against a signature; return `{name: ndarray}`.

        `inputs` maps input names to NumPy arrays or nested lists from JSON.
        Numbers are converted to the input's dtype, strings to bytes.

        Raises:
            InvalidArgument: an input is missing or unknown, or has the wrong
                shape, dtype or a non-finite value.
        """
        signature_name, signature_def = self.signature(signature_name)
        expected = sorted(signature_def.inputs)
        if sorted(inputs) != expected:
            raise InvalidArgument(
                f"Signature {signature_name!r} takes the inputs {expected}, but the request has "
                f"{sorted(inputs)}."
            )
        arrays = {}
        batch_sizes = {}
        for name in expected:
            tensor_info = signature_def.inputs[name]
            array = convert_input(name, inputs[name], tensor_info.dtype)
            check_shape(name, array, tensor_info.tensor_shape)
            arrays[name] = array
            if array.ndim:
                batch_sizes[name] = array.shape[0]
        if len(set(batch_sizes.values())) > 1:
            raise InvalidArgument(
                f"All inputs must have the same number of rows (the 0th dimension). Received: {batch_sizes}."
            )
        return arrays


def _graph_error_text(message):
    """Return the reason in a TensorFlow runtime error without its node names and trace notes."""
    if "assertion failed:" in message:
        message = message.split("assertion failed:", 1)[1].split("[[", 1)[0]
        message = message.replace("] [", " ").strip().strip("[]")
    return " ".join(message.split()).replace("\\'", "'")


def convert_input(name, value, dtype_enum):
    """Convert one input (JSON data or an ndarray) to the NumPy dtype of a signature input."""
    dtype = tf.dtypes.as_dtype(dtype_enum)
    expected = dtype_name(dtype_enum)
    if dtype == tf.string:
        return _convert_strings(name, value)
    if isinstance(value, np.ndarray) and value.dtype != dtype.as_numpy_dtype:
        raise InvalidArgument(
            f"Input {name!r} has dtype {value.dtype}, but the signature expects {expected} "
            f"({dtype.name}). Cast it to {dtype.name} before sending."
        )

    try:
        array = np.array(value, dtype=object if dtype == tf.bool else None)
    except ValueError as error:
        raise InvalidArgument(f"Input {name!r} is not a rectangular array: {error}") from None
    if dtype == tf.bool:
        if not all(isinstance(item, (bool, np.bool_)) for item in array.reshape(-1)):
            raise InvalidArgument(f"Input {name!r} must contain true or false values ({expected}).")
        return array.astype(bool)
    if array.dtype == object:
        raise InvalidArgument(
            f"Input {name!r} must be a rectangular array of numbers ({expected}); rows of different "
            "lengths or non-numeric values were received."
        )
    if array.dtype.kind not in "iuf":
        raise InvalidArgument(f"Input {name!r} must contain numbers ({expected}). Received {array.dtype} values.")

    if dtype.is_floating:
        return _convert_floats(name, array, dtype)
    if dtype.is_integer:
        return _convert_integers(name, array, dtype, expected)
    raise InvalidArgument(f"Input {name!r} has dtype {expected}, which this server cannot convert from JSON.")


def _convert_floats(name, array, dtype):
    if not np.all(np.isfinite(array)):
        raise InvalidArgument(f"Input {name!r} contains NaN or infinite values; send finite numbers only.")
    with np.errstate(over="ignore"):
        converted = array.astype(dtype.as_numpy_dtype)
    if not np.all(np.isfinite(converted)):
        raise InvalidArgument(f"Input {name!r} contains values beyond the {dtype.name} range.")
    return converted


def _convert_integers(name, array, dtype, expected):
    if array.dtype.kind == "f" and not np.all(array == np.round(array)):
        raise InvalidArgument(f"Input {name!r} must contain integers ({expected}); fractional values were received.")
    info = np.iinfo(dtype.as_numpy_dtype)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise InvalidArgument(f"Input {name!r} has values outside the {dtype.name} range.")
    return array.astype(dtype.as_numpy_dtype)


def _convert_strings(name, value):
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SUO":
            return np.vectorize(_to_bytes, otypes=[object])(value) if value.size else value.astype(object)
        raise InvalidArgument(f"Input {name!r} must contain strings (DT_STRING). Received {value.dtype} values.")
    try:
        array = np.array(_decode_b64(value), dtype=object)
    except (ValueError, TypeError) as error:
        raise InvalidArgument(f"Input {name!r} is not a valid string array: {error}") from None
    flat = array.reshape(-1)
    if not all(isinstance(item, (str, bytes)) for item in flat):
        raise InvalidArgument(
            f"Input {name!r} must contain strings (DT_STRING), as JSON strings or {{\"b64\": ...}} objects."
        )
    return np.array([_to_bytes(item) for item in flat], dtype=object).reshape(array.shape)


def _to_bytes(item):
    return item if isinstance(item, bytes) else str(item).encode("utf-8")


def _decode_b64(value):
    """Replace `{"b64": "..."}` objects, TF Serving's form for binary strings, with bytes."""
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise ValueError('an object inside a string input must be {"b64": "<base64 text>"}')
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise ValueError(f"invalid base64 text {value['b64'][:40]!r}") from None
    if isinstance(value, list):
        return [_decode_b64(item) for item in value]
    return value


def check_shape(name, array, tensor_shape):
    """Raise InvalidArgument unless `array` fits a TensorShapeProto (size -1 is any size)."""
    if tensor_shape.unknown_rank:
        return
    expected = [dim.size for dim in tensor_shape.dim]
    expected_text = "[" + ", ".join("None" if size < 0 else str(size) for size in expected) + "]"
    fits = array.ndim == len(expected) and all(size < 0 or size == actual for size, actual in zip(expected, array.shape))
    if not fits:
        raise InvalidArgument(
            f"Input {name!r} must have shape {expected_text}. Received shape {list(array.shape)}."
        )
    if array.ndim and array.shape[0] == 0:
        raise InvalidArgument(f"Input {name!r} has no rows; send at least one.")
