"""`ModelServer`: the REST and gRPC servers and the version watcher, started and stopped together.

`serve(...)` runs one until SIGTERM or SIGINT; `dgc-tf serve BASE_DIR` calls it.
"""

import logging
import os
import signal
import threading

from dgc_tf.serving.grpc_service import bind_error, build_grpc_server
from dgc_tf.serving.repository import ModelRepository
from dgc_tf.serving.rest import DEFAULT_SOCKET_TIMEOUT_SECONDS, RestServer

logger = logging.getLogger("dgc_tf.serving")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_REST_PORT = 8501
DEFAULT_GRPC_PORT = 8500
DEFAULT_POLL_SECONDS = 2.0
# 32 MiB is an estimated 1.6 million float32 values in JSON as json.dumps
# writes them, at about 20 bytes each. Shorter numbers take fewer bytes.
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
# Seconds that running REST requests and gRPC calls may take to finish after a stop request.
STOP_GRACE_SECONDS = 5.0


class ModelServer:
    """Serves every model under `base_dir` over REST and gRPC with TF Serving's wire formats.

    Args:
        base_dir: the directory with one `<name>/<version>/` tree per model.
        host: the address to bind; 127.0.0.1 keeps the server local.
        rest_port, grpc_port: TCP ports; 0 picks a free port (see
            `rest_port` and `grpc_port` after `start`).
        poll_seconds: how often to look for new and removed versions.
        max_request_bytes: the largest REST body or gRPC message accepted.
        version_labels: `{model name: {label: version}}`.
        socket_timeout: seconds a REST connection may wait for the rest of a
            request, or for the client to read a response. It is also the
            idle time after which a keep-alive connection is closed.
    """

    def __init__(
        self,
        base_dir,
        host=DEFAULT_HOST,
        rest_port=DEFAULT_REST_PORT,
        grpc_port=DEFAULT_GRPC_PORT,
        poll_seconds=DEFAULT_POLL_SECONDS,
        max_request_bytes=DEFAULT_MAX_REQUEST_BYTES,
        version_labels=None,
        socket_timeout=DEFAULT_SOCKET_TIMEOUT_SECONDS,
    ):
        if not os.path.isdir(base_dir):
            raise FileNotFoundError(f"Base directory {base_dir!r} not found.")
        if not poll_seconds > 0:
            raise ValueError(f"poll_seconds must be positive. Received: {poll_seconds}.")
        if max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be at least 1. Received: {max_request_bytes}.")
        self.base_dir = base_dir
        self.host = host
        self.requested_ports = (rest_port, grpc_port)
        self.poll_seconds = poll_seconds
        self.max_request_bytes = max_request_bytes
        self.socket_timeout = socket_timeout
        self.repository = ModelRepository(base_dir, version_labels)
        self.rest_port = None
        self.grpc_port = None
        self._rest_server = None
        self._rest_thread = None
        self._grpc_server = None

    def start(self):
        """Load the current versions, bind both ports and start serving in background threads.

        Raises:
            OSError: a port cannot be bound.
        """
        logger.info("starting: base directory %s", os.path.abspath(self.base_dir))
        self._check_ports()
        self.repository.refresh()
        served = self._warn_about_missing_versions()
        rest_port, grpc_port = self.requested_ports
        grpc_server, self.grpc_port = build_grpc_server(
            self.repository, _address(self.host, grpc_port), self.max_request_bytes
        )
        try:
            self._rest_server = RestServer(
                (self.host, rest_port), self.repository, self.max_request_bytes, self.socket_timeout
            )
        except OSError as error:
            grpc_server.stop(None)
            raise OSError(
                f"failed to bind the REST port {_address(self.host, rest_port)}: {error.strerror or error}"
            ) from None
        self.rest_port = self._rest_server.server_address[1]
        self._grpc_server = grpc_server
        self._grpc_server.start()
        self._rest_thread = threading.Thread(
            target=self._rest_server.serve_forever, name="dgc-serving-rest", daemon=True
        )
        self._rest_thread.start()
        self.repository.start_watching(self.poll_seconds)
        logger.info(
            "serving %s: REST on http://%s, gRPC on %s",
            ", ".join(served) or "no models yet",
            _address(self.host, self.rest_port), _address(self.host, self.grpc_port),
        )
        return self

    def _check_ports(self):
        """Raise OSError for a requested port that is in use. Loading large models takes long, so this comes first."""
        for api, port in zip(("REST", "gRPC"), self.requested_ports):
            reason = bind_error(self.host, port) if port else None
            if reason is not None:
                raise OSError(f"failed to bind the {api} port {_address(self.host, port)}: {reason}")

    def _warn_about_missing_versions(self):
        """Log model directories without a loaded version and labels of unloaded versions; return the served models."""
        served = [name for name in self.repository.model_names() if self.repository.versions(name)]
        for name in sorted(set(self.repository.model_names()) - set(served)):
            logger.warning(
                "model directory %s has no loaded version; expected %s/<version>/saved_model.pb",
                os.path.join(self.base_dir, name), os.path.join(self.base_dir, name),
            )
        for name, labels in sorted(self.repository.version_labels.items()):
            loaded = self.repository.versions(name) if name in served else []
            for label, version in sorted(labels.items()):
                if version not in loaded:
                    logger.warning(
                        "version label %s:%s names version %d, which is not loaded (loaded: %s); requests with "
                        "the label return 404 until it loads", name, label, version, loaded or "none",
                    )
        if not served:
            logger.warning(
                "no models under %s yet; expected <name>/<version>/saved_model.pb, and new ones are picked up "
                "every %.1f s", self.base_dir, self.poll_seconds,
            )
        return served

    def stop(self):
        """Stop accepting requests, let running ones finish (up to 5 s each API), and stop the watcher.

        Keep-alive REST connections that wait for a request are closed at
        once. The others, and those still queued for accept, are closed after
        the response to their running or first request.
        """
        logger.info("stopping")
        if self._rest_server is not None:
            self._rest_server.shutdown()
            self._rest_server.begin_stop()
            self._rest_server.server_close()
            unfinished = self._rest_server.wait_idle(STOP_GRACE_SECONDS)
            if unfinished:
                logger.warning("stopped with %d REST request(s) still running", unfinished)
            self._rest_server = None
        if self._grpc_server is not None:
            self._grpc_server.stop(STOP_GRACE_SECONDS).wait()
            self._grpc_server = None
        self.repository.stop_watching()
        logger.info("stopped")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def _address(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(base_dir, **options):
    """Run a ModelServer until SIGTERM or SIGINT, then stop it cleanly. Call from the main thread."""
    stop_requested = threading.Event()

    def request_stop(signum, frame):
        logger.info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = ModelServer(base_dir, **options).start()
        try:
            while not stop_requested.wait(1.0):
                pass
        finally:
            server.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
