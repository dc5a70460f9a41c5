"""One loaded model version: its SignatureDefs, and input checks and calls by signature."""

import base64
import contextlib
import json
import os
import sys
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
        except UnicodeDecodeError:
            # TensorFlow quotes the rejected value in its message, and fails to decode it when it is not UTF-8.
            raise InvalidArgument(
                f"Signature {signature_name!r} rejected the inputs with an error message that is not UTF-8 text. "
                "A string input contains bytes that are not UTF-8, such as a label the model was not trained on."
            ) from None
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
    if isinstance(value, np.ndarray):
        if value.dtype != dtype.as_numpy_dtype:
            raise InvalidArgument(
                f"Input {name!r} has dtype {value.dtype}, but the signature expects {expected} "
                f"({dtype.name}). Cast it to {dtype.name} before sending."
            )
        array = value
    elif dtype == tf.bool:
        array = _json_to_array(name, value, expected, _is_json_bool, "true or false")
        return array.astype(bool)
    elif dtype.is_floating or dtype.is_integer:
        array = _json_to_array(name, value, expected, _is_json_number, "numbers such as 0.5, without quotes")
        if array.dtype == object:
            array = _convert_big_integers(name, value, dtype, expected)
    else:
        raise InvalidArgument(f"Input {name!r} has dtype {expected}, which this server cannot convert from JSON.")

    if dtype.is_floating:
        return _convert_floats(name, array, dtype)
    if dtype.is_integer:
        return _convert_integers(name, array, dtype, expected)
    return array


def _convert_big_integers(name, value, dtype, expected):
    """Convert JSON numbers that include integers beyond int64, which NumPy keeps as Python objects."""
    if dtype.is_floating:
        try:
            return np.array(value, dtype=np.float64)
        except OverflowError:  # Beyond float64 as well, so beyond every float dtype.
            path, item = _first_leaf(name, value, lambda item: abs(item) > sys.float_info.max)
    else:
        info = np.iinfo(dtype.as_numpy_dtype)
        found = _first_leaf(name, value, lambda item: not info.min <= item <= info.max)
        if found is None:
            return np.array(value, dtype=dtype.as_numpy_dtype)
        path, item = found
    raise InvalidArgument(
        f"Input {name!r} has the integer {_json_text(item)} at {path}, beyond the {dtype.name} range "
        f"({expected}). Send smaller values."
    )


def _is_json_number(item):
    return isinstance(item, (int, float)) and not isinstance(item, bool)


def _is_json_bool(item):
    return isinstance(item, bool)


def _json_to_array(name, value, expected, is_valid, valid_text):
    """Convert nested JSON lists to an ndarray; raise InvalidArgument naming the first ragged row or invalid value.

    The result has a bool, integer or float dtype, or the object dtype when
    the numbers include integers beyond int64.
    """
    valid_kinds = "b" if is_valid is _is_json_bool else "iuf"
    try:
        array = np.array(value)
    except ValueError:
        array = None
    if array is not None and array.dtype.kind in valid_kinds:
        return array

    # The request is invalid or contains integers beyond int64, so look for the first problem.
    ragged = _describe_ragged(name, value)
    if ragged is not None:
        raise InvalidArgument(
            f"Input {name!r} is not a rectangular array: {ragged}. Send rows with the same number of values."
        )
    invalid = _first_leaf(name, value, lambda item: not is_valid(item))
    if invalid is not None:
        path, item = invalid
        raise InvalidArgument(
            f"Input {name!r} must contain {expected} values, but {path} is {_json_text(item)}. "
            f"Send {valid_text}."
        )
    if array is None:
        raise InvalidArgument(f"Input {name!r} is not a rectangular array of {expected} values.")
    return array


def _describe_ragged(name, value):
    """Return a description of the first list whose items differ in length or kind, or None."""
    stack = [(name, value)]
    while stack:
        path, item = stack.pop()
        if not isinstance(item, list) or not item:
            continue
        is_list = [isinstance(child, list) for child in item]
        if not all(is_list):
            if any(is_list):
                index = is_list.index(not is_list[0])
                return f"{path}[0] is {_kind(item[0])}, but {path}[{index}] is {_kind(item[index])}"
            continue
        for index, child in enumerate(item):
            if len(child) != len(item[0]):
                return f"{path}[0] has {len(item[0])} values, but {path}[{index}] has {len(child)}"
        stack.extend(reversed([(f"{path}[{index}]", child) for index, child in enumerate(item)]))
    return None


def _kind(item):
    return f"a list of {len(item)} values" if isinstance(item, list) else f"the single value {_json_text(item)}"


def _first_leaf(name, value, is_match):
    """Return `(path, item)` of the first non-list item in nested lists for which `is_match` is true, or None."""
    stack = [(name, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed([(f"{path}[{index}]", child) for index, child in enumerate(item)]))
        elif is_match(item):
            return path, item
    return None


def _json_text(item):
    """Return a short JSON rendering of a request value for error messages."""
    text = json.dumps(item) if isinstance(item, (str, int, float, bool, dict, type(None))) else repr(item)
    return text if len(text) <= 60 else text[:57] + "..."


def _index_text(name, array, mask):
    index = tuple(int(i) for i in np.argwhere(mask)[0])
    return name + "".join(f"[{i}]" for i in index), array[index]


def _convert_floats(name, array, dtype):
    finite = np.isfinite(array)
    if not np.all(finite):
        path, item = _index_text(name, array, ~finite)
        raise InvalidArgument(
            f"Input {name!r} contains NaN or infinite values, such as {item} at {path}. "
            "Send finite numbers only; drop or impute rows with missing values."
        )
    with np.errstate(over="ignore"):
        converted = array.astype(dtype.as_numpy_dtype)
    finite = np.isfinite(converted)
    if not np.all(finite):
        path, item = _index_text(name, array, ~finite)
        limit = float(np.finfo(dtype.as_numpy_dtype).max)
        raise InvalidArgument(
            f"Input {name!r} contains values beyond the {dtype.name} range, such as {item:g} at {path}. "
            f"Send values between -{limit:.4g} and {limit:.4g}."
        )
    return converted


def _convert_integers(name, array, dtype, expected):
    if array.dtype.kind == "f" and not np.all(array == np.round(array)):
        path, item = _index_text(name, array, array != np.round(array))
        raise InvalidArgument(
            f"Input {name!r} must contain integers ({expected}), but {path} is {item:g}. Send whole numbers."
        )
    info = np.iinfo(dtype.as_numpy_dtype)
    if array.size and (array.min() < info.min or array.max() > info.max):
        path, item = _index_text(name, array, (array < info.min) | (array > info.max))
        raise InvalidArgument(
            f"Input {name!r} has values outside the {dtype.name} range, such as {item} at {path}. "
            f"Send integers from {info.min} to {info.max}."
        )
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
        found = _first_leaf(name, value, lambda item: not isinstance(item, (str, dict)))
        detail = f", but {found[0]} is {_json_text(found[1])}" if found else ""
        raise InvalidArgument(
            f"Input {name!r} must contain strings (DT_STRING){detail}. Send JSON strings or {{\"b64\": ...}} objects."
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
    """Raise InvalidArgument unless `array` fits a TensorShapeProto (size -1 is any size) and has rows."""
    if tensor_shape.unknown_rank:
        return
    expected = [dim.size for dim in tensor_shape.dim]
    if array.ndim and array.shape[0] == 0:
        # Checked before the shape, because JSON writes an empty batch as [], of shape [0] whatever the row shape.
        row_shape = _shape_text(expected[1:])
        raise InvalidArgument(f"Input {name!r} has no rows; send at least one row of shape {row_shape}.")
    fits = array.ndim == len(expected) and all(size < 0 or size == actual for size, actual in zip(expected, array.shape))
    if not fits:
        raise InvalidArgument(
            f"Input {name!r} must have shape {_shape_text(expected)}. Received shape {list(array.shape)}."
        )


def _shape_text(sizes):
    return "[" + ", ".join("None" if size < 0 else str(size) for size in sizes) + "]"
