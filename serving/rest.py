"""The REST API of TF Serving over `http.server`: model status, metadata and predict.

Paths (as in TF Serving 2.x):

    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            version status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   signature definitions
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    predict

Every error is a JSON object `{"error": "<message>"}`. The status is 400
for invalid requests and 404 for unknown models and versions. It is 408 for
a body that does not arrive in time, 411 without Content-Length, 413 above
the request size limit, and 501 for methods other than GET and POST.
"""

import base64
import http.server
import json
import logging
import re
import socket
import sys
import threading
import time
import urllib.parse

import numpy as np
from google.protobuf import json_format

from dgc_tf.serving.errors import InvalidArgument, NotFound, RejectionLog, ServingError

logger = logging.getLogger("dgc_tf.serving")
rejection_log = RejectionLog(logger)

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:predict|:classify|:regress)?$"
)


class PayloadTooLarge(ServingError):
    http_status = 413


class LengthRequired(ServingError):
    http_status = 411


class RequestTimeout(ServingError):
    http_status = 408

# Seconds a connection may wait for the next part of a request, or for the
# client to read a response, before the server closes it. It is also the idle
# time after which a keep-alive connection is closed.
DEFAULT_SOCKET_TIMEOUT_SECONDS = 60.0
# Seconds spent reading and discarding a rejected body after the error reply.
# Closing a socket with unread data resets the connection, and the client may
# then lose the reply before reading it.
DISCARD_SECONDS = 2.0


# ---------------------------------------------------------------------- request handling


def handle_get(repository, path):
    """Return the JSON body for a GET request: version status or metadata."""
    match = _match_path(path, "GET")
    name, suffix = match["name"], match["suffix"]
    version = int(match["version"]) if match["version"] else None
    if suffix == "/metadata":
        servable = repository.get(name, version, match["label"])
        return metadata_json(servable)
    if suffix is not None:
        raise InvalidArgument(f"Malformed request: GET {path}. Use POST for {suffix}.")
    if match["label"]:
        version = repository.get(name, None, match["label"]).version
    return status_json(repository, name, version)


def handle_post(repository, path, body):
    """Return the JSON body for a POST request to `:predict`."""
    match = _match_path(path, "POST")
    if match["suffix"] in (":classify", ":regress"):
        raise InvalidArgument(
            f"{match['suffix'][1:]} is not supported: DGC models export predict signatures only. "
            f"POST to /v1/models/{match['name']}:predict instead."
        )
    if match["suffix"] != ":predict":
        raise InvalidArgument(f"Malformed request: POST {path}. Predict requests end in ':predict'.")
    request = parse_json_body(body)
    signature_name = request.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise InvalidArgument(f"'signature_name' must be a string. Received: {signature_name!r}.")
    version = int(match["version"]) if match["version"] else None
    servable = repository.get(match["name"], version, match["label"])
    with servable.error_context():
        return _predict(servable, signature_name, request)


def _predict(servable, signature_name, request):
    signature_name, signature_def = servable.signature(signature_name)
    has_instances, has_inputs = "instances" in request, "inputs" in request
    if has_instances == has_inputs:
        raise InvalidArgument(
            "The request must contain exactly one of 'instances' (row format) or 'inputs' (columnar format)."
        )
    if has_instances:
        raw = row_inputs(request["instances"], signature_name, signature_def)
    else:
        raw = columnar_inputs(request["inputs"], signature_def)
    arrays = servable.check_inputs(signature_name, raw)
    outputs = servable.run(signature_name, arrays)
    if has_instances:
        return {"predictions": row_outputs(outputs, signature_name)}
    return {"outputs": columnar_outputs(outputs)}


def _match_path(path, method):
    match = _PATH.match(path.split("?", 1)[0])
    if match is None:
        raise InvalidArgument(
            f"Malformed request: {method} {path}. Expected /v1/models/<name>[/versions/<version>|"
            "/labels/<label>], followed by /metadata (GET) or :predict (POST)."
        )
    parts = match.groupdict()
    # Names are percent-encoded in URLs, so a model directory "my model" is /v1/models/my%20model.
    for key in ("name", "label"):
        if parts[key]:
            parts[key] = urllib.parse.unquote(parts[key])
    return parts


def parse_json_body(body):
    try:
        request = json.loads(body)
    except UnicodeDecodeError:
        raise InvalidArgument("The request body is not UTF-8 text.") from None
    except json.JSONDecodeError as error:
        raise InvalidArgument(f"The request body is not valid JSON: {error}.") from None
    except RecursionError:
        raise InvalidArgument(
            "The request body nests JSON arrays or objects too deeply for the parser. "
            "Send each row as a flat list of numbers."
        ) from None
    except ValueError as error:  # An integer with more digits than Python converts (4300 by default).
        reason = str(error).split("; use ", 1)[0]
        raise InvalidArgument(
            f"The request body has an integer that is too long to parse ({reason}). "
            "Write large values in exponent notation, such as 1e30."
        ) from None
    if not isinstance(request, dict):
        raise InvalidArgument(f"The request body must be a JSON object. Received a {type(request).__name__}.")
    return request


# ---------------------------------------------------------------------- formats


def row_inputs(instances, signature_name, signature_def):
    """Turn the row format (`instances`, a list with one entry per row) into `{input: list of rows}`."""
    names = sorted(signature_def.inputs)
    if not names:
        raise InvalidArgument(
            f"Signature {signature_name!r} has no inputs, so its outputs have no batch dimension and the "
            'row format cannot carry them. Send the columnar format: {"signature_name": '
            f'"{signature_name}", "inputs": {{}}}}.'
        )
    if not isinstance(instances, list) or not instances:
        raise InvalidArgument("'instances' must be a non-empty list with one entry per row.")
    named = [isinstance(instance, dict) for instance in instances]
    if all(named):
        for index, instance in enumerate(instances):
            if sorted(instance) != names:
                raise InvalidArgument(
                    f"Instance {index} has the keys {sorted(instance)}, but signature {signature_name!r} "
                    f"takes the inputs {names}."
                )
        return {name: [instance[name] for instance in instances] for name in names}
    if any(named):
        raise InvalidArgument("'instances' mixes objects and plain values; use one form for every row.")
    if len(names) != 1:
        raise InvalidArgument(
            f"Signature {signature_name!r} takes several inputs {names}, so each instance must be an "
            'object such as {"' + '": ..., "'.join(names) + '": ...}.'
        )
    return {names[0]: instances}


def columnar_inputs(inputs, signature_def):
    """Turn the columnar format (`inputs`, one value per input name) into `{input: value}`."""
    if isinstance(inputs, dict):
        return inputs
    if len(signature_def.inputs) == 1:
        return {next(iter(signature_def.inputs)): inputs}
    if not signature_def.inputs:
        raise InvalidArgument(
            f"'inputs' must be an empty object {{}}, because the signature takes no inputs. "
            f"Received: {json.dumps(inputs)[:60]}."
        )
    raise InvalidArgument(
        f"'inputs' must be an object keyed by input name {sorted(signature_def.inputs)}, "
        "because the signature takes several inputs."
    )


def row_outputs(outputs, signature_name):
    """Return the `predictions` list: one value per row for one output, else one object per row."""
    batch_sizes = {name: (value.shape[0] if value.ndim else None) for name, value in outputs.items()}
    sizes = set(batch_sizes.values())
    if None in sizes or len(sizes) != 1:
        raise InvalidArgument(
            f"The outputs of signature {signature_name!r} do not share a batch dimension "
            f"({batch_sizes}), so the row format cannot return them; send 'inputs' (columnar format)."
        )
    converted = {name: to_json_value(value) for name, value in outputs.items()}
    if len(converted) == 1:
        return next(iter(converted.values()))
    (batch_size,) = sizes
    return [{name: values[row] for name, values in converted.items()} for row in range(batch_size)]


def columnar_outputs(outputs):
    converted = {name: to_json_value(value) for name, value in outputs.items()}
    return next(iter(converted.values())) if len(converted) == 1 else converted


def to_json_value(array):
    """Convert an output array to JSON data: numbers, booleans, and strings (`{"b64": ...}` if not UTF-8)."""
    if array.dtype == object or array.dtype.kind == "S":
        return np.vectorize(_string_to_json, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def _string_to_json(item):
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(item).decode("ascii")}
    return item


def status_json(repository, name, version=None):
    """Return the GetModelStatusResponse of TF Serving's REST API as JSON data.

    Versions are AVAILABLE when loaded, LOADING while they load, and END
    with the error message when their load failed.
    """
    loaded = repository.versions(name)
    failed = repository.failed_versions(name)
    loading = repository.loading_versions(name)
    if version is not None and version not in set(loaded) | set(failed) | loading:
        raise NotFound(f"Version {version} of model {name!r} not found. Loaded versions: {sorted(loaded)}.")
    entries = []
    for number in sorted(set(loaded) | set(failed) | loading, reverse=True):
        if version is not None and number != version:
            continue
        if number in loaded:
            state, status = "AVAILABLE", {"error_code": "OK", "error_message": ""}
        elif number in loading:
            state, status = "LOADING", {"error_code": "OK", "error_message": ""}
        else:
            state, status = "END", {"error_code": "UNKNOWN", "error_message": failed[number]}
        entries.append({"version": str(number), "state": state, "status": status})
    return {"model_version_status": entries}


def metadata_json(servable):
    """Return the GetModelMetadataResponse of TF Serving's REST API as JSON data."""
    signature_defs = {
        name: json_format.MessageToDict(signature_def, preserving_proto_field_name=True)
        for name, signature_def in servable.signature_defs.items()
    }
    return {
        "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
        "metadata": {"signature_def": {"signature_def": signature_defs}},
    }


# ---------------------------------------------------------------------- HTTP server


class RestServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server with TF Serving's REST API for the models of a ModelRepository.

    Args:
        address: `(host, port)` to bind.
        repository: the ModelRepository to serve.
        max_request_bytes: the largest request body accepted.
        socket_timeout: seconds a connection may wait for the next part of
            a request, or for the client to read a response, before it is
            closed.
    """

    daemon_threads = True
    # The standard library's default backlog of 5 drops connections under bursts of clients.
    request_queue_size = 128

    def __init__(self, address, repository, max_request_bytes, socket_timeout=DEFAULT_SOCKET_TIMEOUT_SECONDS):
        self.repository = repository
        self.max_request_bytes = max_request_bytes
        self.socket_timeout = socket_timeout
        self.stopping = False
        self._active_requests = 0
        # Open connections and the number of requests each has finished.
        self._connections = {}
        self._busy_connections = set()
        self._idle = threading.Condition()
        # TCPServer binds IPv4 by default, so an IPv6 host such as ::1 needs its own address family.
        self.address_family = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM)[0][0]
        super().__init__(address, RestHandler)

    def connection_opened(self, connection):
        with self._idle:
            self._connections.setdefault(connection, 0)

    def connection_closed(self, connection):
        with self._idle:
            self._connections.pop(connection, None)
            self._idle.notify_all()

    def request_started(self, connection):
        with self._idle:
            self._active_requests += 1
            self._busy_connections.add(connection)

    def request_finished(self, connection):
        with self._idle:
            self._active_requests -= 1
            self._busy_connections.discard(connection)
            if connection in self._connections:
                self._connections[connection] += 1
            self._idle.notify_all()

    def begin_stop(self):
        """Mark the server as stopping, close idle keep-alive connections and take the queued ones.

        Call after `shutdown`. Keep-alive connections that wait for their next
        request are closed. Connections in the listen backlog are accepted,
        because closing the listening socket would reset them, and their
        first request gets a reply. Every connection that is still open gets
        `Connection: close` with its next response.
        """
        with self._idle:
            self.stopping = True
            idle = [
                connection for connection, finished in self._connections.items()
                if finished and connection not in self._busy_connections
            ]
        for connection in idle:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # Already closed by the client.
        self._accept_queued()

    def _accept_queued(self):
        self.socket.setblocking(False)
        while True:
            try:
                connection, client_address = self.socket.accept()
            except OSError:  # BlockingIOError once the backlog is empty.
                return
            connection.setblocking(True)
            self.connection_opened(connection)
            self.process_request(connection, client_address)

    def wait_idle(self, timeout):
        """Wait up to `timeout` seconds for running requests and for new connections' first requests.

        Return the number of those still unfinished. Handler threads are
        daemon threads, so they never delay the exit after this wait.
        """
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._unfinished() and time.monotonic() < deadline:
                self._idle.wait(deadline - time.monotonic())
            return self._unfinished()

    def _unfinished(self):
        waiting = [connection for connection, finished in self._connections.items() if not finished]
        return len(set(waiting) | self._busy_connections)

    def handle_error(self, request, client_address):
        """Log a failed connection in one line; a client that disconnects or times out is not an error."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            logger.debug("REST connection from %s closed: %s", client_address[0], error)
        else:
            logger.exception("REST connection from %s failed", client_address[0])


class RestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dgc-tf-serving"
    # The headers and the body go out in two writes. With Nagle's algorithm on,
    # the body waits for the client's delayed ACK, about 40 ms on Linux.
    disable_nagle_algorithm = True

    def setup(self):
        self.timeout = self.server.socket_timeout
        super().setup()
        self.server.connection_opened(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.connection_closed(self.connection)

    def do_GET(self):
        self._respond(lambda: handle_get(self.server.repository, self.path))

    def do_POST(self):
        self._respond(lambda: handle_post(self.server.repository, self.path, self._read_body()))

    def send_error(self, code, message=None, explain=None):
        """Send the errors that http.server finds itself (bad request line, other methods, long URL) as JSON."""
        if code == 501:
            message = (
                f"Method {self.command} is not supported. Use GET for model status and metadata, "
                "and POST for :predict."
            )
        text = message or self.responses.get(code, ("Error",))[0]
        rejection_log.warning(text, "REST %s -> %d: %s", self.requestline or "(no request line)", code, text)
        self.close_connection = True
        data = json.dumps({"error": text}).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _read_body(self):
        length_headers = self.headers.get_all("Content-Length") or []
        if not length_headers:
            self.close_connection = True
            self._unread_bytes = self.server.max_request_bytes  # A chunked body of unknown size may follow.
            raise LengthRequired("The request has no Content-Length header; send the JSON body with its length.")
        if len(set(length_headers)) > 1:
            self.close_connection = True
            raise InvalidArgument(f"The request has conflicting Content-Length headers {length_headers}; send one.")
        length_header = length_headers[0]
        try:
            length = int(length_header)
        except ValueError:
            self.close_connection = True
            raise InvalidArgument(f"Invalid Content-Length header {length_header!r}.") from None
        if length < 0:
            self.close_connection = True
            raise InvalidArgument(f"Invalid Content-Length header {length_header!r}.")
        if length > self.server.max_request_bytes:
            # The body is discarded after the reply, and the connection cannot be reused.
            self.close_connection = True
            self._unread_bytes = length
            raise PayloadTooLarge(
                f"The request body has {length} bytes, more than the limit of {self.server.max_request_bytes}. "
                "Send fewer rows per request, or start the server with a larger --max-request-bytes."
            )
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            body = None
        if body is None or len(body) < length:
            # A timeout, or a client that closed its side of the connection early.
            self.close_connection = True
            raise RequestTimeout(
                f"The request body did not arrive: Content-Length announced {length} bytes, and they were not "
                f"all received within {self.server.socket_timeout:g} s. Send the whole body that Content-Length "
                "announces."
            )
        return body

    def _respond(self, compute):
        self.server.request_started(self.connection)
        self._unread_bytes = 0
        try:
            self._compute_and_send(compute)
            if self._unread_bytes:
                self._discard_body(self._unread_bytes)
        finally:
            self.server.request_finished(self.connection)

    def _discard_body(self, length):
        """Read and drop up to `length` bytes for up to DISCARD_SECONDS, so the client can read the reply."""
        self.wfile.flush()
        deadline = time.monotonic() + DISCARD_SECONDS
        self.connection.settimeout(DISCARD_SECONDS)
        try:
            self.connection.shutdown(socket.SHUT_WR)
            while length > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(length, 1 << 20))
                if not chunk:
                    break
                length -= len(chunk)
        except OSError as error:  # Includes timeouts; the reply is already sent.
            logger.debug("REST %s: stopped discarding a rejected body: %s", self.address_string(), error)

    def _compute_and_send(self, compute):
        try:
            status, body = 200, compute()
        except ServingError as error:
            status, body = error.http_status, {"error": str(error)}
            rejection_log.warning(
                str(error), "REST %s %s (model %s, version %s) -> %d: %s",
                self.command, self.path, error.model or "-", error.version or "-", status, error,
            )
        except Exception as error:  # Report unexpected failures to the client, keep serving.
            status, body = 500, {"error": f"Internal error: {type(error).__name__}: {error}"}
            logger.exception("REST %s %s -> 500", self.command, self.path)
        if self.server.stopping:
            self.close_connection = True
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        logger.debug("REST %s: %s", self.address_string(), format % args)
