"""The models under a base directory: which versions are loaded, and a thread that follows changes.

The layout is TF Serving's: `<base>/<model name>/<version>/saved_model.pb`,
where a version is a directory named by a non-negative integer. Hidden names
(such as the `.tmp-*` directories an export writes before renaming them into
place) and other non-numeric names are ignored.
"""

import logging
import os
import threading
import time

from dgc_tf.export import contract
from dgc_tf.serving.errors import InvalidArgument, NotFound
from dgc_tf.serving.servable import Servable

logger = logging.getLogger("dgc_tf.serving")


def scan_base_dir(base_dir):
    """Return `{model name: {version: version directory}}` for the complete versions under `base_dir`."""
    found = {}
    for name in sorted(os.listdir(base_dir)):
        model_dir = os.path.join(base_dir, name)
        if name.startswith(".") or not os.path.isdir(model_dir):
            continue
        versions = {}
        for entry in os.listdir(model_dir):
            version_dir = os.path.join(model_dir, entry)
            if entry.isdigit() and os.path.isfile(os.path.join(version_dir, contract.SAVED_MODEL_FILENAME)):
                versions[int(entry)] = version_dir
        found[name] = versions
    return found


def version_stamp(version_dir):
    """Return the relative path, size and modification time of every file under `version_dir`, sorted.

    Raises:
        OSError: `version_dir` cannot be listed.
    """
    entries = []
    for root, _, files in os.walk(version_dir, onerror=_raise):
        for file_name in files:
            file_path = os.path.join(root, file_name)
            try:
                status = os.stat(file_path)
            except FileNotFoundError:
                continue  # Removed while listing, so the next poll finds the new state.
            entries.append((os.path.relpath(file_path, version_dir), status.st_size, status.st_mtime_ns))
    return tuple(sorted(entries))


def _raise(error):
    raise error


class ModelRepository:
    """Loads every model version under `base_dir` and serves lookups by name, version or label.

    Args:
        base_dir: the directory holding one subdirectory per model.
        version_labels: `{model name: {label: version}}`, TF Serving's
            version labels (such as `stable` and `canary`).
    """

    def __init__(self, base_dir, version_labels=None):
        self.base_dir = base_dir
        self.version_labels = {name: dict(labels) for name, labels in (version_labels or {}).items()}
        self._lock = threading.Lock()
        self._models = {}  # name -> {version: Servable}
        self._failed = {}  # (name, version) -> (version_stamp of the failed load, error message)
        self._loading = set()  # (name, version) pairs being loaded
        self._scan_error = None
        self._stop = threading.Event()
        self._thread = None

    # ------------------------------------------------------------------ lookups

    def model_names(self):
        with self._lock:
            return sorted(self._models)

    def versions(self, name):
        """Return the loaded versions of a model, newest first; raise NotFound for an unknown model."""
        with self._lock:
            if name not in self._models:
                raise NotFound(f"Model {name!r} not found. Served models: {sorted(self._models)}.")
            return sorted(self._models[name], reverse=True)

    def loading_versions(self, name):
        """Return the set of versions of `name` that are being loaded."""
        with self._lock:
            return {version for model, version in self._loading if model == name}

    def failed_versions(self, name):
        """Return `{version: error message}` for the versions of `name` that failed to load."""
        with self._lock:
            return {version: message for (model, version), (_, message) in self._failed.items() if model == name}

    def get(self, name, version=None, label=None):
        """Return the Servable for a request: the given version, the labeled one, or the newest.

        Raises:
            NotFound: the model, or the version, is not loaded.
            InvalidArgument: the label is not defined for this model.
        """
        try:
            return self._get(name, version, label)
        except (NotFound, InvalidArgument) as error:
            error.model, error.version = name, version
            raise

    def _get(self, name, version, label):
        if label:
            labels = self.version_labels.get(name, {})
            if label not in labels:
                raise InvalidArgument(
                    f"Unrecognized servable version label {label!r} for model {name!r}. "
                    f"Defined labels: {sorted(labels) or 'none'}; define one with --version-label."
                )
            version = labels[label]
        with self._lock:
            versions = self._models.get(name)
            if versions is None:
                raise NotFound(f"Model {name!r} not found. Served models: {sorted(self._models)}.")
            if not versions:
                failed = {v: message for (model, v), (_, message) in self._failed.items() if model == name}
                detail = "; ".join(f"version {v} failed to load: {message}" for v, message in sorted(failed.items()))
                raise NotFound(
                    f"Model {name!r} has no loaded version"
                    + (f" ({detail})." if detail else f"; expected {self.base_dir}/{name}/<version>/saved_model.pb.")
                )
            if version is None:
                return versions[max(versions)]
            if version not in versions:
                if (name, version) in self._failed:
                    raise NotFound(
                        f"Version {version} of model {name!r} failed to load: {self._failed[(name, version)][1]} "
                        f"Loaded versions: {sorted(versions)}."
                    )
                raise NotFound(
                    f"Version {version} of model {name!r} not found. Loaded versions: {sorted(versions)}."
                )
            return versions[version]

    # ------------------------------------------------------------------ loading

    def refresh(self):
        """Load new versions and unload removed ones; return the number of changes.

        A version that fails to load is logged and skipped. It is tried again
        when a file in its directory is added, removed or changed, such as
        the variables that a copy writes after `saved_model.pb`.
        """
        try:
            found = scan_base_dir(self.base_dir)
        except OSError as error:
            # Logged once per distinct error, not on every poll.
            if str(error) != self._scan_error:
                logger.error("failed to list base directory %s: %s; serving the loaded versions", self.base_dir, error)
                self._scan_error = str(error)
            return 0
        if self._scan_error is not None:
            logger.info("base directory %s can be listed again", self.base_dir)
            self._scan_error = None
        changes = self._unload_removed(found)
        for name, versions in found.items():
            with self._lock:
                self._models.setdefault(name, {})
                loaded = set(self._models[name])
            for version in sorted(set(versions) - loaded):
                changes += self._load(name, version, versions[version])
        return changes

    def _unload_removed(self, found):
        changes = 0
        with self._lock:
            for name in list(self._models):
                for version in list(self._models[name]):
                    if version not in found.get(name, {}):
                        del self._models[name][version]
                        logger.info("unloaded model %s version %d: its directory was removed", name, version)
                        changes += 1
                if name not in found:
                    del self._models[name]
                    logger.info("model %s removed: its directory is gone", name)
            for key in list(self._failed):
                if key[1] not in found.get(key[0], {}):
                    del self._failed[key]
        return changes

    def _load(self, name, version, path):
        try:
            stamp = version_stamp(path)
        except OSError:
            return 0  # Removed after the scan, so the next scan will not list it.
        with self._lock:
            previous = self._failed.get((name, version))
        if previous is not None and previous[0] == stamp:
            return 0
        logger.info("loading model %s version %d from %s", name, version, path)
        with self._lock:
            self._loading.add((name, version))
        try:
            servable = Servable(name, version, path)
        except Exception as error:  # A broken version must not stop the server.
            message = " ".join(str(error).split())[:500] or type(error).__name__
            logger.error("failed to load model %s version %d from %s: %s", name, version, path, message)
            with self._lock:
                self._loading.discard((name, version))
                self._failed[(name, version)] = (stamp, message)
            return 0
        with self._lock:
            self._loading.discard((name, version))
            self._failed.pop((name, version), None)
            self._models.setdefault(name, {})[version] = servable
        logger.info("loaded model %s version %d in %.1f s", name, version, servable.load_seconds)
        return 1

    # ------------------------------------------------------------------ watcher

    def start_watching(self, poll_seconds):
        """Call `refresh` every `poll_seconds` in a daemon thread until `stop_watching`."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._watch, args=(poll_seconds,), name="dgc-serving-version-watcher", daemon=True
        )
        self._thread.start()

    def stop_watching(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    def _watch(self, poll_seconds):
        while not self._stop.wait(poll_seconds):
            try:
                self.refresh()
            except Exception:  # Keep watching; the next poll may succeed.
                logger.exception("version watcher: refreshing %s failed", self.base_dir)
        logger.debug("version watcher stopped")
