"""Errors of the model server, each with the REST status and gRPC code it maps to."""

import grpc


class ServingError(Exception):
    """A request the server rejects; the message is sent to the client."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    # The model and version the request reached, for the server's log.
    model = None
    version = None


class InvalidArgument(ServingError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServingError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServingError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServingError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
