"""Command line: `python -m dgc_tf.export MODEL.keras --out BASE --name NAME`."""

import argparse
import os
import sys
import zipfile

from dgc_tf.export.layout import check_name, check_target, check_version, model_directory

PROGRAM = "dgc-tf export"


class _ArgumentParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr and exit code 2."""

    def error(self, message):
        self.exit(2, f"{PROGRAM}: error: {message} (see --help)\n")


def build_parser():
    parser = _ArgumentParser(
        prog=PROGRAM,
        description=(
            "Export a trained DGC model to BASE/NAME/VERSION/: a SavedModel for TF Serving, "
            "model.onnx and dgc_model.json."
        ),
    )
    parser.add_argument("model", metavar="RUN_OR_MODEL", help="a trained model saved as a .keras file")
    parser.add_argument("--out", required=True, metavar="BASE", help="existing export base directory")
    parser.add_argument("--name", required=True, help="model name, the subdirectory of BASE")
    parser.add_argument(
        "--version", type=int, default=None, metavar="N", help="version number (default: the next free version)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version directory")
    parser.add_argument("--no-onnx", action="store_true", help="write the SavedModel and metadata only")
    return parser


def main(argv=None):
    """Run the export command; return the exit code (0 on success, 2 on an error)."""
    try:
        arguments = build_parser().parse_args(argv)
    except SystemExit as exit_request:  # --help (code 0) or a usage error (code 2), already printed
        return exit_request.code
    try:
        # Paths are checked before TensorFlow is imported, which takes seconds.
        check_model_file(arguments.model)
        check_name(arguments.name)
        model_dir = model_directory(arguments.out, arguments.name)
        if arguments.version is not None:
            check_target(os.path.join(model_dir, str(check_version(arguments.version))), arguments.overwrite)

        model = load_keras_model(arguments.model)
        from dgc_tf.export.exporter import export_model

        target = export_model(
            model,
            arguments.out,
            arguments.name,
            version=arguments.version,
            overwrite=arguments.overwrite,
            include_onnx=not arguments.no_onnx,
        )
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        message = " ".join(str(error).split())
        print(f"{PROGRAM}: error: {message}", file=sys.stderr)
        return 2
    print(target)
    return 0


def check_model_file(path):
    """Raise unless `path` is an existing `.keras` file."""
    if not path.endswith(".keras"):
        raise ValueError(f"RUN_OR_MODEL must be a .keras file. Received: {path!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model file {path!r} not found.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} is not a valid .keras file (a .keras file is a zip archive; this one is "
            "truncated or corrupt). Save the model again with model.save()."
        )


def load_keras_model(path):
    """Load a `dgc_tf.DGC` from a `.keras` file, or raise ValueError naming the problem."""
    check_model_file(path)
    import keras

    from dgc_tf.model import DGC  # Registers the dgc_tf classes for deserialization.

    try:
        model = keras.saving.load_model(path)
    except ValueError as error:
        raise ValueError(f"Failed to load {path!r} as a Keras model: {error}") from None
    if not isinstance(model, DGC):
        raise ValueError(f"{path!r} contains a {type(model).__name__}, not a dgc_tf.DGC model.")
    return model
