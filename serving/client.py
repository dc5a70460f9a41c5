"""Clients for the REST and gRPC APIs of `dgc-tf serve` and of TF Serving itself.

Both read the signature definitions from the server once per model version
and cast inputs to the dtypes the signature declares: float64 or integer
features become float32, labels become the label dtype. A gRPC server rejects
a TensorProto of another dtype, and this cast avoids that.

This module imports TensorFlow, because the TF Serving protos it uses are
defined in the `tensorflow` package.
"""

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from dgc_tf.serving.errors import InvalidArgument, NotFound, ServingError

DEFAULT_SIGNATURE = "serving_default"


def cast_inputs(inputs, signature_def):
    """Return `{input name: ndarray}` in the dtypes of `signature_def`.

    Args:
        inputs: an array for a signature with one input, or a dict of arrays
            by input name.
        signature_def: a `SignatureDef` proto.

    Raises:
        ValueError: an input is missing, unknown, or cannot be cast without
            changing its values (fractions for integer inputs, numbers beyond
            the float32 range).
    """
    names = sorted(signature_def.inputs)
    if not isinstance(inputs, dict):
        if len(names) != 1:
            raise ValueError(f"The signature takes the inputs {names}; pass a dict keyed by these names.")
        inputs = {names[0]: inputs}
    if sorted(inputs) != names:
        raise ValueError(f"The signature takes the inputs {names}. Received: {sorted(inputs)}.")
    return {name: _cast(name, inputs[name], signature_def.inputs[name].dtype) for name in names}


def _cast(name, value, dtype_enum):
    dtype = tf.dtypes.as_dtype(dtype_enum)
    array = np.asarray(value)
    if dtype == tf.string:
        flat = [item if isinstance(item, bytes) else str(item).encode("utf-8") for item in array.reshape(-1)]
        return np.array(flat, dtype=object).reshape(array.shape)
    if dtype == tf.bool:
        return array.astype(bool)
    if array.dtype.kind not in "iufb":
        raise ValueError(f"Input {name!r} must hold numbers for dtype {dtype.name}. Received dtype {array.dtype}.")
    if dtype.is_integer and array.dtype.kind == "f" and not np.all(array == np.round(array)):
        raise ValueError(f"Input {name!r} has fractional values, but the signature expects {dtype.name}.")
    with np.errstate(over="ignore"):
        converted = array.astype(dtype.as_numpy_dtype)
    if dtype.is_floating and not np.array_equal(np.isfinite(converted), np.isfinite(array)):
        raise ValueError(f"Input {name!r} has values beyond the {dtype.name} range.")
    return converted


def _decode_strings(array):
    if array.dtype == object:
        return np.vectorize(lambda item: item.decode("utf-8") if isinstance(item, bytes) else item, otypes=[object])(array)
    return array


class RestClient:
    """A client for TF Serving's REST API.

    Args:
        url: the server's base URL, such as `http://127.0.0.1:8501`.
        timeout: seconds to wait for each response.
    """

    def __init__(self, url="http://127.0.0.1:8501", timeout=30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._signature_defs = {}

    def _request(self, path, body=None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method="GET" if body is None else "POST")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read()).get("error", "")
            except (ValueError, AttributeError):
                message = error.reason
            raise _ERRORS.get(error.code, ServingError)(f"HTTP {error.code} from {self.url + path}: {message}") from None

    @staticmethod
    def _model_path(model, version=None, label=None):
        path = f"/v1/models/{model}"
        if version is not None:
            path += f"/versions/{int(version)}"
        elif label:
            path += f"/labels/{label}"
        return path

    def status(self, model, version=None):
        """Return the model's version status: `{"model_version_status": [...]}`."""
        return self._request(self._model_path(model, version))

    def metadata(self, model, version=None, label=None):
        """Return the model's metadata, with the signature definitions under `metadata.signature_def`."""
        return self._request(self._model_path(model, version, label) + "/metadata")

    def signature_def(self, model, signature_name=DEFAULT_SIGNATURE, version=None, label=None):
        """Return a signature's `SignatureDef` proto, read from the server once and then cached."""
        key = (model, version, label)
        if key not in self._signature_defs:
            definitions = self.metadata(model, version, label)["metadata"]["signature_def"]["signature_def"]
            self._signature_defs[key] = {
                name: json_format.ParseDict(value, meta_graph_pb2.SignatureDef()) for name, value in definitions.items()
            }
        signature_defs = self._signature_defs[key]
        if signature_name not in signature_defs:
            raise InvalidArgument(f"Model {model!r} has no signature {signature_name!r}; it has {sorted(signature_defs)}.")
        return signature_defs[signature_name]

    def predict(self, model, inputs, signature_name=DEFAULT_SIGNATURE, version=None, label=None):
        """Return a signature's outputs as `{name: ndarray}`, sending the columnar format.

        `inputs` is an array (one-input signatures) or a dict of arrays; each
        is cast to the signature's dtype first. String outputs come back as
        object arrays of str.
        """
        signature_def = self.signature_def(model, signature_name, version, label)
        arrays = cast_inputs(inputs, signature_def)
        body = {
            "signature_name": signature_name,
            "inputs": {name: _json_value(array) for name, array in arrays.items()},
        }
        outputs = self._request(self._model_path(model, version, label) + ":predict", body)["outputs"]
        if len(signature_def.outputs) == 1:
            outputs = {next(iter(signature_def.outputs)): outputs}
        result = {}
        for name, value in outputs.items():
            dtype = tf.dtypes.as_dtype(signature_def.outputs[name].dtype)
            result[name] = np.array(value, dtype=object if dtype == tf.string else dtype.as_numpy_dtype)
        return result


def _json_value(array):
    if array.dtype == object:
        return np.vectorize(lambda item: item.decode("utf-8"), otypes=[object])(array).tolist()
    return array.tolist()


_ERRORS = {400: InvalidArgument, 404: NotFound}


class GrpcClient:
    """A client for TF Serving's gRPC API, built on the official `PredictionServiceStub`.

    Args:
        target: `host:port` of the gRPC server, such as `127.0.0.1:8500`.
        timeout: seconds to wait for each call.

    Errors come back as `grpc.RpcError`, whose `code()` is INVALID_ARGUMENT
    or NOT_FOUND and whose `details()` is the server's message.
    """

    def __init__(self, target="127.0.0.1:8500", timeout=30.0, max_message_bytes=64 * 1024 * 1024):
        self.timeout = timeout
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        self.prediction_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self._signature_defs = {}

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    @staticmethod
    def _set_model_spec(model_spec, model, version=None, label=None, signature_name=None):
        model_spec.name = model
        if version is not None:
            model_spec.version.value = int(version)
        elif label:
            model_spec.version_label = label
        if signature_name:
            model_spec.signature_name = signature_name

    def status(self, model, version=None):
        """Return the `GetModelStatusResponse` of a model."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._set_model_spec(request.model_spec, model, version)
        return self.model_stub.GetModelStatus(request, timeout=self.timeout)

    def metadata(self, model, version=None, label=None):
        """Return `{signature name: SignatureDef}` of a served model version."""
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._set_model_spec(request.model_spec, model, version, label)
        request.metadata_field.append("signature_def")
        response = self.prediction_stub.GetModelMetadata(request, timeout=self.timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return dict(signature_map.signature_def)

    def signature_def(self, model, signature_name=DEFAULT_SIGNATURE, version=None, label=None):
        """Return a signature's `SignatureDef`, read from the server once and then cached."""
        key = (model, version, label)
        if key not in self._signature_defs:
            self._signature_defs[key] = self.metadata(model, version, label)
        signature_defs = self._signature_defs[key]
        if signature_name not in signature_defs:
            raise InvalidArgument(f"Model {model!r} has no signature {signature_name!r}; it has {sorted(signature_defs)}.")
        return signature_defs[signature_name]

    def make_request(self, model, inputs, signature_name=DEFAULT_SIGNATURE, version=None, label=None):
        """Return a `PredictRequest` whose inputs are cast to the signature's dtypes."""
        arrays = cast_inputs(inputs, self.signature_def(model, signature_name, version, label))
        request = predict_pb2.PredictRequest()
        self._set_model_spec(request.model_spec, model, version, label, signature_name)
        for name, array in arrays.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
        return request

    def predict(self, model, inputs, signature_name=DEFAULT_SIGNATURE, version=None, label=None):
        """Return a signature's outputs as `{name: ndarray}`; string outputs as object arrays of str."""
        request = self.make_request(model, inputs, signature_name, version, label)
        response = self.prediction_stub.Predict(request, timeout=self.timeout)
        return {name: _decode_strings(tf.make_ndarray(proto)) for name, proto in response.outputs.items()}
