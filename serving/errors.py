"""Errors of the model server, each with the REST status and gRPC code it maps to, and their rate-limited log."""

import threading
import time

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


class RejectionLog:
    """Log rejected requests at WARNING, with repeats rate-limited so a flood of bad requests cannot fill the log.

    Within each window of `window_seconds`, at most `per_message` lines with
    the same message and `total` lines overall are logged. The number of
    dropped lines is logged with the first rejection after the window ends.
    """

    def __init__(self, logger, per_message=5, total=50, window_seconds=10.0):
        self.logger = logger
        self.per_message = per_message
        self.total = total
        self.window_seconds = window_seconds
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._counts = {}
        self._logged = 0
        self._dropped = 0

    def warning(self, key, format_text, *args):
        """Log `format_text % args` unless `key` (the error message) or the total is over its limit."""
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= self.window_seconds:
                if self._dropped:
                    self.logger.warning(
                        "dropped %d log lines of rejected requests in the last %.0f s, as repeats",
                        self._dropped, now - self._window_start,
                    )
                self._window_start, self._counts, self._logged, self._dropped = now, {}, 0, 0
            count = self._counts.get(key, 0)
            if count >= self.per_message or self._logged >= self.total:
                self._dropped += 1
                return
            self._counts[key] = count + 1
            self._logged += 1
        self.logger.warning(format_text, *args)
