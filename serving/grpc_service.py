"""TF Serving's gRPC API: `PredictionService` (Predict, GetModelMetadata) and `ModelService.GetModelStatus`.

The messages and stubs come from the `tensorflow-serving-api` package, so
clients written for TF Serving (`PredictionServiceStub`,
`ModelServiceStub`) work unchanged. Classify, Regress and MultiInference
return UNIMPLEMENTED, because DGC exports have predict signatures only.
"""

import functools
import logging
import socket
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from dgc_tf.serving.errors import InvalidArgument, RejectionLog, ResourceExhausted, ServingError
from dgc_tf.serving.servable import dtype_name

logger = logging.getLogger("dgc_tf.serving")
rejection_log = RejectionLog(logger)

SIGNATURE_DEF_FIELD = "signature_def"
# The tensorflow.error.Code enum of StatusProto.error_code.
_ERROR_CODES = get_model_status_pb2.ModelVersionStatus().status.DESCRIPTOR.fields_by_name["error_code"].enum_type


def _rpc(method):
    """Turn ServingErrors into gRPC status codes and log every failed call."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as error:
            rejection_log.warning(
                str(error), "gRPC %s (model %s, version %s) -> %s: %s",
                method.__name__, error.model or request.model_spec.name, error.version or "-",
                error.grpc_code.name, error,
            )
            context.abort(error.grpc_code, str(error))
        except Exception as error:  # Report unexpected failures to the client, keep serving.
            logger.exception("gRPC %s (model %s) failed", method.__name__, request.model_spec.name)
            context.abort(grpc.StatusCode.INTERNAL, f"Internal error: {type(error).__name__}: {error}")

    return wrapper


_EMPTY_NAME_MESSAGE = "model_spec.name is empty; set it to the model's directory name."


def _requested_servable(repository, model_spec):
    version = model_spec.version.value if model_spec.HasField("version") else None
    label = model_spec.version_label if model_spec.WhichOneof("version_choice") == "version_label" else None
    if not model_spec.name:
        raise InvalidArgument(_EMPTY_NAME_MESSAGE)
    return repository.get(model_spec.name, version, label)


def tensor_proto_to_array(name, tensor_proto, expected_dtype, max_bytes):
    """Convert a request TensorProto to NumPy after checking its dtype against the signature's.

    A TensorProto with fewer values than its shape needs is filled with its
    last value, as TensorFlow does, so a small message can describe a huge
    array. Arrays above `max_bytes` are rejected before they are allocated.
    """
    if tensor_proto.dtype != expected_dtype:
        raise InvalidArgument(
            f"Input {name!r} has dtype {dtype_name(tensor_proto.dtype)}, but the signature expects "
            f"{dtype_name(expected_dtype)} ({tf.dtypes.as_dtype(expected_dtype).name}). Cast the array "
            "before tf.make_tensor_proto, or use dgc_tf.serving.GrpcClient, which casts for you."
        )
    shape = tensor_proto.tensor_shape
    sizes = [dim.size for dim in shape.dim]
    if shape.unknown_rank or any(size < 0 for size in sizes):
        raise InvalidArgument(
            f"Input {name!r} has the TensorProto shape {_shape_proto_text(shape)}; a request tensor needs a "
            "known rank and sizes of 0 or more. Build it with tf.make_tensor_proto(array)."
        )
    item_bytes = tf.dtypes.as_dtype(expected_dtype).size if expected_dtype != tf.string.as_datatype_enum else 1
    decoded_bytes = int(np.prod(sizes, dtype=object)) * item_bytes
    if decoded_bytes > max_bytes:
        raise ResourceExhausted(
            f"Input {name!r} has shape {sizes}, which takes {decoded_bytes} bytes, more than the limit of "
            f"{max_bytes} (--max-request-bytes). Send fewer rows per request."
        )
    if tensor_proto.tensor_content and len(tensor_proto.tensor_content) != decoded_bytes:
        raise InvalidArgument(
            f"Input {name!r} has {len(tensor_proto.tensor_content)} bytes of tensor_content, but shape {sizes} "
            f"of {dtype_name(expected_dtype)} takes {decoded_bytes}. Build it with tf.make_tensor_proto(array)."
        )
    try:
        return tf.make_ndarray(tensor_proto)
    except (TypeError, ValueError) as error:
        raise InvalidArgument(f"Input {name!r} is not a valid TensorProto: {error}") from None


def _shape_proto_text(shape):
    return "unknown_rank" if shape.unknown_rank else str([dim.size for dim in shape.dim])


def _unimplemented(method_name, reason):
    """Return a servicer method that rejects every call with UNIMPLEMENTED and `reason`."""

    def method(self, request, context):
        rejection_log.warning(method_name, "gRPC %s -> UNIMPLEMENTED", method_name)
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method_name} is not supported: {reason}")

    method.__name__ = method_name
    return method


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repository, max_message_bytes):
        self.repository = repository
        self.max_message_bytes = max_message_bytes

    _PREDICT_ONLY = "DGC exports have predict signatures only. Call Predict instead."
    Classify = _unimplemented("Classify", _PREDICT_ONLY)
    Regress = _unimplemented("Regress", _PREDICT_ONLY)
    MultiInference = _unimplemented("MultiInference", _PREDICT_ONLY)

    @_rpc
    def Predict(self, request, context):
        servable = _requested_servable(self.repository, request.model_spec)
        with servable.error_context():
            signature_name, signature_def = servable.signature(request.model_spec.signature_name)
            unknown = sorted(set(request.inputs) - set(signature_def.inputs))
            if unknown:
                raise InvalidArgument(
                    f"Signature {signature_name!r} has no inputs named {unknown}. "
                    f"Its inputs are {sorted(signature_def.inputs)}."
                )
            raw = {
                name: tensor_proto_to_array(
                    name, tensor_proto, signature_def.inputs[name].dtype, self.max_message_bytes
                )
                for name, tensor_proto in request.inputs.items()
            }
            arrays = servable.check_inputs(signature_name, raw)
            outputs = servable.run(signature_name, arrays, list(request.output_filter))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response

    @_rpc
    def GetModelMetadata(self, request, context):
        fields = list(request.metadata_field)
        if fields != [SIGNATURE_DEF_FIELD]:
            raise InvalidArgument(
                f"metadata_field must be [{SIGNATURE_DEF_FIELD!r}], the only metadata this server "
                f"provides. Received: {fields}."
            )
        servable = _requested_servable(self.repository, request.model_spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in servable.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, repository):
        self.repository = repository

    HandleReloadConfigRequest = _unimplemented(
        "HandleReloadConfigRequest",
        "the server has no model config; it loads new version directories under BASE_DIR every --poll-seconds.",
    )

    @_rpc
    def GetModelStatus(self, request, context):
        from dgc_tf.serving.rest import status_json  # The REST and gRPC status share one source.

        model_spec = request.model_spec
        if not model_spec.name:
            raise InvalidArgument(_EMPTY_NAME_MESSAGE)
        version = model_spec.version.value if model_spec.HasField("version") else None
        if model_spec.WhichOneof("version_choice") == "version_label":
            version = self.repository.get(model_spec.name, None, model_spec.version_label).version
        status = status_json(self.repository, model_spec.name, version)
        response = get_model_status_pb2.GetModelStatusResponse()
        for entry in status["model_version_status"]:
            version_status = response.model_version_status.add()
            version_status.version = int(entry["version"])
            version_status.state = get_model_status_pb2.ModelVersionStatus.State.Value(entry["state"])
            version_status.status.error_code = _ERROR_CODES.values_by_name[entry["status"]["error_code"]].number
            version_status.status.error_message = entry["status"]["error_message"]
        return response


def build_grpc_server(repository, address, max_message_bytes, max_workers=16):
    """Return a gRPC server, not yet started, with both services, and the port it bound.

    Raises:
        OSError: the address cannot be bound.
    """
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dgc-grpc"), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(repository, max_message_bytes), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(repository), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        # gRPC's own message only points to GRPC_VERBOSITY, so a plain socket finds the reason.
        host, _, port_text = address.rpartition(":")
        reason = bind_error(host.strip("[]"), int(port_text)) or "the address is in use or invalid"
        raise OSError(f"failed to bind the gRPC port {address}: {reason}")
    return server, port


def bind_error(host, port):
    """Return why binding TCP `host:port` fails, such as 'Address already in use', or None if it succeeds now."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as error:
        return f"cannot resolve the host {host!r} ({error.strerror})"
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as in http.server and gRPC, so a port in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error.strerror or str(error)
    return None
