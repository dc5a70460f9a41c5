"""`export_model`: write a trained DGC model as `<base>/<name>/<version>/` for TF Serving and ONNX."""

import json
import logging
import os
import shutil
import tempfile

import numpy as np
import onnx
import tensorflow as tf

from dgc_tf.export import contract
from dgc_tf.export.graphs import ServingModule, class_vocabulary
from dgc_tf.export.layout import check_name, check_target, check_version, model_directory, next_version
from dgc_tf.export.metadata import build_metadata
from dgc_tf.export.onnx_conversion import attach_metadata, convert_predict_function
from dgc_tf.model import DGC

logger = logging.getLogger(__name__)

_PARITY_ROWS = 16
# Retries of the final rename when another export took the chosen version.
_MAX_VERSION_RETRIES = 5


def export_model(model, base_dir, name, version=None, overwrite=False, include_onnx=True):
    """Write a trained model as `<base_dir>/<name>/<version>/`, the layout TF Serving polls.

    The version directory contains the SavedModel (signatures
    `serving_default`, `cluster_labeled`, `prior`, `decode`), `model.onnx`
    with the predict function, and `dgc_model.json` with the metadata. It is
    written under a hidden temporary name in `<base_dir>/<name>/` and renamed
    into place when complete, so TF Serving never loads a partial version.
    Before the rename, the ONNX model is run on probe rows and must match
    TensorFlow to `contract.PARITY_TOLERANCE`.

    Args:
        model: a `dgc_tf.DGC` trained with `pretrain` and `fit`, or loaded
            from a `.keras` file.
        base_dir: existing directory that TF Serving reads (its
            `--model_base_path` is `<base_dir>/<name>`).
        name: model name: letters, digits, `.`, `_` and `-`, not starting
            with `.`.
        version: non-negative integer version; by default one more than the
            largest existing version, or 1.
        overwrite: replace an existing non-empty version directory. The
            version is briefly absent while the directories are swapped.
        include_onnx: write `model.onnx`.

    Returns:
        The path of the written version directory.

    Raises:
        TypeError: if `model` is not a `dgc_tf.DGC`.
        ValueError: for an unbuilt or untrained model, non-finite weights, an
            invalid name or version, or a response family a format cannot export.
        FileNotFoundError: if `base_dir` does not exist.
        FileExistsError: if the version exists and `overwrite` is False.
        RuntimeError: if the ONNX conversion fails or ONNX Runtime and
            TensorFlow disagree.
    """
    check_exportable(model, include_onnx)
    check_name(name)
    if version is not None:
        version = check_version(version)
    model_dir = model_directory(base_dir, name)
    explicit_version = version is not None
    if explicit_version:
        check_target(os.path.join(model_dir, str(version)), overwrite)
    os.makedirs(model_dir, exist_ok=True)
    if not explicit_version:
        version = next_version(model_dir)

    logger.info("Exporting model '%s' version %d to %s", name, version, model_dir)
    staging_dir = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir)
    # mkdtemp creates mode 0700; a version directory gets the mode a plain
    # mkdir would give, so a model server running as another user can read it.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging_dir, 0o777 & ~umask)
    try:
        written = _write_version(model, staging_dir, name, version, include_onnx)
        target = _move_into_place(staging_dir, model_dir, version, explicit_version, overwrite, written)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise
    logger.info("Exported model '%s' to %s", name, target)
    return target


def check_exportable(model, include_onnx=True):
    """Raise unless `model` is a built, initialized DGC with finite weights that each format supports."""
    if not isinstance(model, DGC):
        raise TypeError(f"`model` must be a dgc_tf.DGC. Received an object of type {type(model).__name__}.")
    if not model.built or model.decoder is None:
        raise ValueError(
            "The model is not built, so there is nothing to export. Train it first: "
            "model.pretrain(x, y), then model.fit(x, y)."
        )
    if not getattr(model, "prior_initialized", False):
        raise ValueError(
            "The model is untrained: its mixture prior was never initialized. "
            "Call model.pretrain(x, y) and model.fit(x, y) before exporting."
        )
    non_finite = [variable.path for variable in model.variables if not np.all(np.isfinite(variable.numpy()))]
    if non_finite:
        raise ValueError(
            f"The model has NaN or infinite weights in {non_finite[:5]}. Retrain it, for example "
            "with a lower learning rate, before exporting."
        )
    formats = contract.FORMATS if include_onnx else ("saved_model",)
    for export_format in formats:
        if model.response not in contract.SUPPORTED_RESPONSES[export_format]:
            hint = " Export with include_onnx=False to skip ONNX." if export_format == "onnx" else ""
            raise ValueError(
                f"The {export_format} export does not support response={model.response!r}; supported "
                f"families: {contract.SUPPORTED_RESPONSES[export_format]}.{hint}"
            )


def _write_version(model, directory, name, version, include_onnx):
    """Write the SavedModel, `model.onnx` and `dgc_model.json` into `directory`.

    Returns:
        `(metadata, onnx_model)`; `onnx_model` is None without ONNX. Both are
        kept so that the version fields can be rewritten if the version changes.
    """
    module = ServingModule(model)
    tf.saved_model.save(module, directory, signatures=module.signatures())
    metadata = build_metadata(model, name, version, module, class_vocabulary(model), include_onnx)

    onnx_model = None
    if include_onnx:
        onnx_model = convert_predict_function(module.predict, [module.predict.input_signature[0]])
        onnx.checker.check_model(onnx_model)
        _write_onnx(onnx_model, metadata, directory)
        _check_onnx_parity(model, module, os.path.join(directory, contract.ONNX_FILENAME))
    _write_json(metadata, directory)
    _fsync_tree(directory)
    return metadata, onnx_model


def _write_onnx(onnx_model, metadata, directory):
    attach_metadata(onnx_model, metadata)
    onnx.save(onnx_model, os.path.join(directory, contract.ONNX_FILENAME))


def _write_json(metadata, directory):
    with open(os.path.join(directory, contract.METADATA_FILENAME), "w", encoding="utf-8") as file:
        json.dump(metadata, file, indent=2, sort_keys=True)
        file.write("\n")


def _check_onnx_parity(model, module, onnx_path):
    """Raise RuntimeError unless ONNX Runtime reproduces TensorFlow's predict outputs on probe rows."""
    from dgc_tf.export.onnx_predictor import OnnxPredictor

    rng = np.random.default_rng(0)
    offset = model.feature_offset.numpy()
    scale = model.feature_scale.numpy()
    rows = (offset + scale * rng.standard_normal((_PARITY_ROWS, model.num_features))).astype(np.float32)
    reference = {key: value.numpy() for key, value in module.predict(tf.constant(rows)).items()}
    if "y_label" in reference and reference["y_label"].dtype == object:
        reference["y_label"] = np.array([label.decode("utf-8") for label in reference["y_label"]], dtype=object)
    problems = contract.compare_outputs(reference, OnnxPredictor(onnx_path).predict(rows))
    if problems:
        raise RuntimeError(
            "ONNX Runtime does not reproduce TensorFlow's predict outputs on probe rows: "
            f"{'; '.join(problems)}. Export with include_onnx=False, or report the tf2onnx and "
            "onnxruntime versions."
        )


def _move_into_place(staging_dir, model_dir, version, explicit_version, overwrite, written):
    """Rename the complete staging directory to `<model_dir>/<version>` and return that path.

    With an automatic version, a version taken meanwhile by another export
    moves this one to the next free version.
    """
    metadata, onnx_model = written
    for _ in range(_MAX_VERSION_RETRIES):
        target = os.path.join(model_dir, str(version))
        if explicit_version and overwrite and os.path.isdir(target) and os.listdir(target):
            _replace_directory(staging_dir, target)
            return target
        try:
            os.rename(staging_dir, target)  # Replaces an empty directory, fails on a non-empty one.
        except OSError:
            if not os.path.lexists(target):
                raise
            if explicit_version:
                raise FileExistsError(
                    f"Version directory {target!r} was created by another process during the export. "
                    "Pass overwrite=True to replace it, or omit the version."
                ) from None
            version = next_version(model_dir)
            _rewrite_version(staging_dir, version, metadata, onnx_model)
            continue
        _fsync_directory(model_dir)
        return target
    raise FileExistsError(
        f"Other exports kept taking the next version in {model_dir!r}; "
        f"gave up after {_MAX_VERSION_RETRIES} attempts. Retry, or pass an explicit version."
    )


def _rewrite_version(staging_dir, version, metadata, onnx_model):
    metadata["version"] = int(version)
    if onnx_model is not None:
        _write_onnx(onnx_model, metadata, staging_dir)
    _write_json(metadata, staging_dir)
    _fsync_tree(staging_dir)


def _replace_directory(staging_dir, target):
    """Swap `staging_dir` in for the existing `target` and delete the old version.

    POSIX rename cannot replace a non-empty directory, so the old version is
    first renamed to a hidden name. Between the two renames the version
    directory is absent, which a polling TF Serving may notice.
    """
    model_dir = os.path.dirname(target)
    retired = tempfile.mkdtemp(prefix=f".old-{os.path.basename(target)}-", dir=model_dir)
    old_version = os.path.join(retired, "version")
    os.rename(target, old_version)
    try:
        os.rename(staging_dir, target)
    except OSError:
        os.rename(old_version, target)  # Put the old version back before reporting the failure.
        shutil.rmtree(retired, ignore_errors=True)
        raise
    _fsync_directory(model_dir)
    shutil.rmtree(retired, ignore_errors=True)


def _fsync_tree(directory):
    """Flush every file and directory under `directory` to disk, so a crash after the rename leaves whole files."""
    for root, _, files in os.walk(directory):
        for filename in files:
            with open(os.path.join(root, filename), "rb") as file:
                os.fsync(file.fileno())
        _fsync_directory(root)


def _fsync_directory(directory):
    if os.name == "nt":  # Windows cannot open a directory for fsync.
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
