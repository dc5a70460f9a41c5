"""The `dgc-tf` command line: fit, evaluate, predict, report, export and demo.

Every command validates its input before TensorFlow is imported. Invalid
input (a missing file, an unknown column, bad options, an existing run
directory) prints one `dgc-tf <command>: error: ...` line on stderr and exits
with code 2.
"""

import argparse
import contextlib
import csv
import datetime
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np

import dgc_tf
from dgc_tf.training import tabular
from dgc_tf.training.tabular import DataError

PROGRAM = "dgc-tf"
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
SAMPLE_FILE = "sample.npz"
LOG_DIRECTORY = "logs"
# Training rows kept in the run directory for `dgc-tf report`.
SAMPLE_ROWS = 2000


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _unit_list(text):
    try:
        units = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 128,256,256, got {text!r}")
    if not units or any(unit < 1 for unit in units):
        raise argparse.ArgumentTypeError(f"expected positive layer widths such as 128,256,256, got {text!r}")
    return units


def _image_size(text):
    parts = text.lower().split("x")
    try:
        size = tuple(int(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or WxH such as 28 or 32x24, got {text!r}")
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected N or WxH such as 28 or 32x24, got {text!r}")
    return size


def _add_data_options(parser):
    parser.add_argument("--drop-missing", action="store_true", help="drop rows with missing values instead of failing")


def build_parser():
    parser = _ArgumentParser(
        prog=PROGRAM,
        description="Deep Goal-Oriented Clustering: cluster data so that the clusters explain a target column.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {dgc_tf.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    commands.required = True

    fit = commands.add_parser(
        "fit",
        help="train a model and write a run directory",
        description="Train a DGC model on DATA (CSV, Parquet, NPZ, NPY or an image folder) and write RUN_DIR "
        "with model.keras, config.json, history.csv, sample.npz and TensorBoard logs.",
    )
    fit.add_argument("data", metavar="DATA", help="training data file or image folder")
    fit.add_argument("--target", required=True, metavar="COL", help="column of the response y ('label' for image folders)")
    fit.add_argument("--response", required=True, choices=["categorical", "bernoulli", "gaussian"], help="family of y")
    fit.add_argument("--clusters", required=True, type=int, metavar="K", help="number of clusters, at least 2")
    fit.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to create")
    fit.add_argument("--features", nargs="+", metavar="COL", help="feature columns (default: all other columns)")
    fit.add_argument("--ignore", nargs="+", default=[], metavar="COL", help="columns to leave out of the default features")
    fit.add_argument("--id-column", metavar="COL", help="row id column, not a feature; copied into predictions")
    fit.add_argument("--groups", metavar="COL", help="true group column, not a feature; kept for clustering scores in the report")
    fit.add_argument("--image-size", type=_image_size, metavar="N|WxH", help="image size in pixels (default: the first image's)")
    fit.add_argument("--latent-dim", type=int, default=10, help="size of the latent code z (default: 10)")
    fit.add_argument("--encoder-units", type=_unit_list, default=[128, 256, 256], metavar="N,N,...", help="encoder layer widths (default: 128,256,256); the decoder mirrors them")
    fit.add_argument("--head", choices=["bias", "linear", "mlp"], default="linear", help="capacity of each cluster's response head (default: linear)")
    fit.add_argument("--response-weight", type=float, default=1.0, help="weight of the response term; 1 is the DGC bound, 0 gives VaDE (default: 1)")
    fit.add_argument("--epochs", type=int, default=30, help="training epochs of the full objective (default: 30)")
    fit.add_argument("--pretrain-epochs", type=int, default=20, help="autoencoder pretraining epochs (default: 20)")
    fit.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    fit.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate (default: 0.001)")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    fit.add_argument("--no-entropy-regularizer", action="store_true", help="leave out the per-cluster response entropy term")
    fit.add_argument("--prior-init", choices=["mixture", "shared", "class"], default="shared", help="shared: start all clusters alike so y decides the first split; mixture: fit a Gaussian mixture to the pretrained codes; class: fit a mixture to the codes of each class of y (class responses only) (default: shared)")
    fit.add_argument("--refit-start-epoch", type=int, default=10, metavar="N", help="refit the prior by its M-step after every epoch from epoch N on; 0 turns it off (default: 10)")
    fit.add_argument("--overwrite", action="store_true", help="replace RUN_DIR if it exists")
    _add_data_options(fit)

    evaluate = commands.add_parser(
        "evaluate",
        help="score a trained model on data",
        description="Print clustering accuracy, NMI and ARI against --groups, and the response accuracy "
        "(classes) or RMSE (continuous y) when DATA has the target column.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("data", metavar="DATA")
    evaluate.add_argument("--groups", metavar="COL", help="column of the true groups")
    evaluate.add_argument("--json", metavar="FILE", help="also write the scores to FILE as JSON")
    _add_data_options(evaluate)

    predict = commands.add_parser(
        "predict",
        help="write predictions for data",
        description="Write the cluster, cluster probabilities, predicted y and latent means of each row of "
        "DATA to FILE (.csv or .parquet).",
    )
    predict.add_argument("run_dir", metavar="RUN_DIR")
    predict.add_argument("data", metavar="DATA")
    predict.add_argument("--out", required=True, metavar="FILE", help="output file, .csv or .parquet")
    predict.add_argument("--batch-size", type=int, default=1024, help="prediction batch size (default: 1024)")
    _add_data_options(predict)

    report = commands.add_parser(
        "report",
        help="write an HTML report with plots",
        description="Write report.html and its PNG plots into RUN_DIR (or --out) from the saved training sample.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--out", metavar="DIR", help="report folder (default: RUN_DIR)")

    export = commands.add_parser(
        "export",
        help="export a trained model for TF Serving and ONNX",
        description="Export RUN_DIR's model to BASE/NAME/VERSION/ with dgc_tf.export.",
    )
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--out", required=True, metavar="BASE", help="export base directory (created if missing)")
    export.add_argument("--name", required=True, help="model name, the subdirectory of BASE")
    export.add_argument("--version", type=int, metavar="N", help="version number (default: the next free one)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing version")

    _add_serve_parser(commands)

    demo = commands.add_parser(
        "demo",
        help="run the demo job (DGC, VaDE and k-means on noisy MNIST and Pacman); 'dgc-tf demo --help' lists its options",
        description="Run dgc_tf.training.demo; arguments after 'demo' are passed to it.",
    )
    demo.add_argument("demo_args", nargs=argparse.REMAINDER, metavar="ARGS")
    return parser


def _port(text):
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a TCP port number from 0 to 65535, got {text!r}")
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port number from 0 to 65535, got {text!r}")
    return port


def _version_label(text):
    model, _, rest = text.partition(":")
    label, _, version = rest.partition("=")
    if not (model and label and version.isdigit()):
        raise argparse.ArgumentTypeError(f"expected MODEL:LABEL=VERSION such as pacman:stable=1, got {text!r}")
    return model, label, int(version)


def _add_serve_parser(commands):
    serve = commands.add_parser(
        "serve",
        help="serve exported models over REST and gRPC with TF Serving's APIs",
        description="Serve every model under BASE_DIR (laid out as BASE_DIR/NAME/VERSION/, as 'dgc-tf export' "
        "writes it) with TF Serving's REST and gRPC APIs. New versions are loaded and removed ones unloaded "
        "while running; the newest version serves requests without a version. Stops on SIGTERM or Ctrl-C.",
    )
    serve.add_argument("base_dir", metavar="BASE_DIR", help="export base directory with one folder per model")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--rest-port", type=_port, default=8501, help="REST port; 0 picks a free one (default: 8501)")
    serve.add_argument("--grpc-port", type=_port, default=8500, help="gRPC port; 0 picks a free one (default: 8500)")
    serve.add_argument("--poll-seconds", type=float, default=2.0, help="seconds between checks for new or removed versions (default: 2)")
    serve.add_argument("--max-request-bytes", type=int, default=32 * 1024 * 1024, help="largest REST body or gRPC message in bytes (default: 33554432, 32 MiB)")
    serve.add_argument("--version-label", type=_version_label, action="append", default=[], metavar="MODEL:LABEL=VERSION", help="name a version, as TF Serving's version labels do; requests may then use /labels/LABEL (repeatable)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info", help="logging level (default: info)")


# ---------------------------------------------------------------------- helpers


def _import_keras():
    """Import Keras with TensorFlow's C++ logging limited to errors."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import dgc_tf.model  # noqa: F401  (registers the DGC classes for loading)

    return keras


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROGRAM}: warning: {message}", file=sys.stderr)


def read_config(run_dir):
    """Return the parsed config.json of a run directory, or raise DataError."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isdir(run_dir):
        raise DataError(f"Run directory {run_dir!r} not found.")
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(run_dir, MODEL_FILE)):
        raise DataError(f"{run_dir!r} is not a dgc-tf run directory: {CONFIG_FILE} or {MODEL_FILE} is missing.")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def load_model(run_dir):
    """Load the DGC model of a run directory."""
    keras = _import_keras()
    return keras.saving.load_model(os.path.join(run_dir, MODEL_FILE))


def _check_run_target(path, overwrite):
    if os.path.exists(path) and not overwrite:
        raise DataError(f"Run directory {path!r} already exists. Pass --overwrite to replace it, or choose another --out.")
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataError(f"{path!r} exists and is not a directory.")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise DataError(f"{parent!r} is not a directory, so the run directory cannot be created in it.")


def _install_directory(temporary, target):
    """Move a finished temporary run directory into place, replacing `target` if it exists."""
    if os.path.exists(target):
        trash = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=os.path.dirname(os.path.abspath(target)))
        os.rmdir(trash)
        os.rename(target, trash)
        os.rename(temporary, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(temporary, target)


def prepare_rows(config, data, drop_missing, extra_columns=()):
    """Encode data with a run's saved feature spec, returning `(x, data)` after missing-value handling."""
    spec = config["features"]["spec"]
    tabular.check_columns(data, [entry["column"] for entry in spec], allow_block=True)
    tabular.check_columns(data, [name for name in extra_columns if name is not None])
    columns = [entry["column"] for entry in spec] + [name for name in extra_columns if name is not None]
    data, dropped = tabular.drop_or_reject_missing(data, columns, drop_missing)
    if dropped:
        print(f"dropped {dropped} row(s) with missing values", file=sys.stderr)
    x, unseen = tabular.encode_features(data, spec)
    for name, count in unseen.items():
        warnings.warn(f"{count} row(s) have a value of {name!r} not seen in training; they encode as no category.")
    return x, data


def _load_for_run(config, path):
    size = config["data"].get("image_size")
    return tabular.load(path, tuple(size) if size else None)


def _response_scores(model, config, y_true, outputs):
    """Return the response accuracy or RMSE of the prediction-time outputs."""
    if config["response"] == "gaussian":
        error = outputs["y_pred"].astype(np.float64) - np.asarray(y_true, dtype=np.float64)
        return {"response_rmse": float(np.sqrt(np.mean(error**2)))}
    if config["response"] == "categorical":
        indices = outputs["y_pred"].argmax(axis=1)
    else:
        indices = (outputs["y_pred"] >= 0.5).astype(np.int64)
    codes = model.encode_response(y_true)
    return {"response_accuracy": float(np.mean(indices == codes))}


# ---------------------------------------------------------------------- fit


def _select_training_data(args):
    if args.clusters < 2:
        raise DataError(f"--clusters must be at least 2. Received: {args.clusters}.")
    for name in ("epochs", "batch_size", "latent_dim"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be at least 1. Received: {getattr(args, name)}.")
    if args.pretrain_epochs < 0 or args.refit_start_epoch < 0:
        raise DataError("--pretrain-epochs and --refit-start-epoch must be 0 or more.")
    if not args.learning_rate > 0:
        raise DataError(f"--learning-rate must be positive. Received: {args.learning_rate}.")
    if not (args.response_weight >= 0 and np.isfinite(args.response_weight)):
        raise DataError(f"--response-weight must be a finite number >= 0. Received: {args.response_weight}.")
    _check_run_target(args.out, args.overwrite)

    data = tabular.load(args.data, args.image_size)
    selection = tabular.Selection(args.target, args.features, args.id_column, args.groups, args.ignore)
    tabular.check_columns(data, [args.target, args.id_column, args.groups])
    columns = tabular.feature_columns(data, selection)
    data, dropped = tabular.drop_or_reject_missing(data, columns + [args.target, args.groups], args.drop_missing)
    if dropped:
        print(f"dropped {dropped} row(s) with missing values", file=sys.stderr)
    spec = tabular.build_feature_spec(data, columns)
    x, _ = tabular.encode_features(data, spec)
    y = tabular.column_values(data, args.target)
    tabular.check_target(y, args.response, args.target)
    if args.clusters > len(x):
        raise DataError(f"--clusters {args.clusters} is more than the {len(x)} rows of training data.")
    return data, spec, x, y


def _history_rows(pretrain_history, fit_history):
    rows = []
    for stage, history in (("pretrain", pretrain_history), ("train", fit_history)):
        if history is None:
            continue
        metrics = history.history
        for epoch in range(len(next(iter(metrics.values()), []))):
            rows.append({"stage": stage, "epoch": epoch + 1, **{name: float(values[epoch]) for name, values in metrics.items()}})
    return rows


def _write_history(path, rows):
    names = ["stage", "epoch"]
    for row in rows:
        names += [name for name in row if name not in names]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)


def _sample_arrays(data, x, y, args):
    rows = np.arange(len(x))
    if len(x) > SAMPLE_ROWS:
        rows = np.sort(np.random.default_rng(args.seed).permutation(len(x))[:SAMPLE_ROWS])
    arrays = {"x": x[rows], "y": _plain_array(y[rows]), "rows": rows}
    if args.groups:
        arrays["groups"] = _plain_array(tabular.column_values(data, args.groups)[rows])
    if args.id_column:
        arrays["ids"] = _plain_array(tabular.column_values(data, args.id_column)[rows])
    return arrays


def _plain_array(values):
    """Return values as an array that NumPy saves without pickling (object arrays become str)."""
    values = np.asarray(values)
    return values.astype(str) if values.dtype == object else values


def run_fit(args):
    data, spec, x, y = _select_training_data(args)
    keras = _import_keras()
    from dgc_tf.callbacks import PriorRefit
    from dgc_tf.model import DGC

    image_data = data.kind == "images"
    keras.utils.set_random_seed(args.seed)
    model = DGC(
        args.clusters,
        response=args.response,
        latent_dim=args.latent_dim,
        encoder_units=tuple(args.encoder_units),
        likelihood="bernoulli" if image_data else "gaussian",
        head=args.head,
        response_weight=args.response_weight,
        entropy_regularizer=not args.no_entropy_regularizer,
        seed=args.seed,
    )
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))

    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(args.out))}.tmp-", dir=parent)
    # mkdtemp creates the folder for its owner only; a run directory gets the usual umask permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o777 & ~umask)
    try:
        start = time.time()
        print(f"pretraining the autoencoder: {len(x)} rows, {x.shape[1]} features, {args.pretrain_epochs} epochs")
        pretrain_history = model.pretrain(
            x,
            y,
            epochs=args.pretrain_epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            verbose=1,
            prior_init=args.prior_init,
        )
        callbacks = []
        if importlib.util.find_spec("tensorboard") is not None:
            callbacks.append(
                keras.callbacks.TensorBoard(os.path.join(temporary, LOG_DIRECTORY), write_graph=False, profile_batch=0)
            )
        else:
            warnings.warn("TensorBoard is not installed, so no TensorBoard logs are written; pip install tensorboard.")
        if args.refit_start_epoch:
            callbacks.append(PriorRefit(x, y, start_epoch=args.refit_start_epoch, seed=args.seed))
        print(f"training DGC with {args.clusters} clusters: {args.epochs} epochs")
        fit_history = model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, callbacks=callbacks, verbose=1)
        seconds = time.time() - start

        outputs = model.predict(x, batch_size=1024, verbose=0)
        scores = _response_scores(model, {"response": args.response}, y, outputs)
        sizes = np.bincount(outputs["cluster"], minlength=args.clusters)
        model.save(os.path.join(temporary, MODEL_FILE))
        history_rows = _history_rows(pretrain_history, fit_history)
        _write_history(os.path.join(temporary, HISTORY_FILE), history_rows)
        np.savez_compressed(os.path.join(temporary, SAMPLE_FILE), **_sample_arrays(data, x, y, args))
        config = _fit_config(args, data, spec, model, scores, sizes, seconds)
        with open(os.path.join(temporary, CONFIG_FILE), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2)
        _install_directory(temporary, args.out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise

    final_loss = history_rows[-1]["loss"]
    score_text = ", ".join(f"training {name.replace('response_', '')} {value:.4f}" for name, value in scores.items())
    print(
        f"done in {seconds:.1f} s: final loss {final_loss:.4f}, {score_text}, "
        f"cluster sizes {'/'.join(map(str, sizes.tolist()))} -> {args.out}"
    )
    return 0


def _fit_config(args, data, spec, model, scores, sizes, seconds):
    options = {key: value for key, value in vars(args).items() if key not in ("command", "handler")}
    options["data"] = os.path.abspath(args.data)
    options["out"] = os.path.abspath(args.out)
    return {
        "format": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dgc_tf_version": dgc_tf.__version__,
        "options": options,
        "response": args.response,
        "target": args.target,
        "id_column": args.id_column,
        "groups": args.groups,
        "classes": model.classes,
        "data": {
            "path": os.path.abspath(args.data),
            "kind": data.kind,
            "rows": int(data.num_rows),
            "image_size": list(data.image_size) if data.image_size else None,
        },
        "features": {"columns": [entry["column"] for entry in spec], "spec": spec, "names": tabular.feature_names(spec)},
        "training": {"seconds": round(seconds, 2), "cluster_sizes": sizes.tolist(), **scores},
        "files": {"model": MODEL_FILE, "history": HISTORY_FILE, "sample": SAMPLE_FILE, "logs": LOG_DIRECTORY},
    }


# ---------------------------------------------------------------------- evaluate and predict


def run_evaluate(args):
    config = read_config(args.run_dir)
    data = _load_for_run(config, args.data)
    target = config["target"] if config["target"] in data.frame.columns else None
    if args.groups is None and target is None:
        raise DataError(
            f"{args.data!r} has neither the target column {config['target']!r} nor a --groups column, so there is "
            "nothing to score. Use 'dgc-tf predict' for unlabeled data."
        )
    x, data = prepare_rows(config, data, args.drop_missing, extra_columns=(target, args.groups))
    model = load_model(args.run_dir)
    outputs = model.predict(x, batch_size=1024, verbose=0)

    from dgc_tf.metrics import clustering_scores

    scores = {"rows": int(len(x))}
    if target is not None:
        y = tabular.column_values(data, target)
        scores.update(_response_scores(model, config, y, outputs))
    if args.groups is not None:
        groups = tabular.column_values(data, args.groups)
        scores.update({f"clustering_{name}": value for name, value in clustering_scores(groups, outputs["cluster"]).items()})
        if target is not None:
            labeled = model.predict_labeled(x, tabular.column_values(data, target))["cluster"]
            scores["labeled_clustering_accuracy"] = clustering_scores(groups, labeled)["accuracy"]
    for name, value in scores.items():
        print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(scores, handle, indent=2)
    return 0


def prediction_frame(model, config, x, outputs, ids=None):
    """Build the prediction table: id, cluster, cluster probabilities, y, class probabilities, z_mean."""
    import pandas as pd

    columns = {}
    if ids is not None:
        columns[config["id_column"]] = ids
    columns["cluster"] = outputs["cluster"].astype(np.int64)
    for k in range(outputs["cluster_probs"].shape[1]):
        columns[f"cluster_prob_{k}"] = outputs["cluster_probs"][:, k]
    response = config["response"]
    if response == "gaussian":
        columns["y_pred"] = outputs["y_pred"]
    else:
        if response == "categorical":
            probabilities = outputs["y_pred"]
        else:
            probabilities = np.stack([1.0 - outputs["y_pred"], outputs["y_pred"]], axis=1)
        columns["y_pred"] = model.decode_labels(probabilities.argmax(axis=1))
        for index, label in enumerate(model.classes):
            columns[f"y_prob_{label}"] = probabilities[:, index]
    for d in range(outputs["z_mean"].shape[1]):
        columns[f"z_mean_{d}"] = outputs["z_mean"][:, d]
    return pd.DataFrame(columns)


def run_predict(args):
    extension = os.path.splitext(args.out)[1].lower()
    if extension not in (".csv",) + tabular.PARQUET_EXTENSIONS:
        raise DataError(f"--out must end in .csv, .parquet or .pq. Received: {args.out!r}.")
    out_parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_parent):
        raise DataError(f"Output folder {out_parent!r} not found.")
    config = read_config(args.run_dir)
    data = _load_for_run(config, args.data)
    id_column = config.get("id_column")
    if data.kind == "images":
        id_column = tabular.IMAGE_PATH_COLUMN
        config = dict(config, id_column=id_column)
    if id_column and id_column not in data.frame.columns:
        raise DataError(f"Id column {id_column!r} of the run not found in {args.data!r}.")
    x, data = prepare_rows(config, data, args.drop_missing)
    model = load_model(args.run_dir)
    outputs = model.predict(x, batch_size=args.batch_size, verbose=0)
    ids = data.frame[id_column].to_numpy() if id_column else None
    frame = prediction_frame(model, config, x, outputs, ids)
    if extension == ".csv":
        frame.to_csv(args.out, index=False)
    else:
        frame.to_parquet(args.out, index=False)
    print(f"wrote {len(frame)} predictions to {args.out}")
    return 0


# ---------------------------------------------------------------------- report, export, demo


def run_report(args):
    config = read_config(args.run_dir)
    if not os.path.isfile(os.path.join(args.run_dir, SAMPLE_FILE)):
        raise DataError(f"{args.run_dir!r} has no {SAMPLE_FILE}; refit with this version of dgc-tf to make a report.")
    from dgc_tf.training import report

    path = report.write_report(args.run_dir, config, load_model(args.run_dir), args.out)
    print(f"wrote {path}")
    return 0


def run_export(args):
    read_config(args.run_dir)
    try:
        from dgc_tf.export import export_model
    except ImportError as error:
        print(
            f"{PROGRAM} export: error: the export package dgc_tf.export cannot be imported ({error}). "
            "Reinstall dgc-tf with its export dependencies (tf2onnx, onnx, onnxruntime).",
            file=sys.stderr,
        )
        return 2
    model = load_model(args.run_dir)
    os.makedirs(args.out, exist_ok=True)
    target = export_model(model, args.out, args.name, version=args.version, overwrite=args.overwrite)
    print(f"exported to {target}")
    return 0


def run_serve(args):
    if not os.path.isdir(args.base_dir):
        raise DataError(f"Base directory {args.base_dir!r} not found. Pass the --out folder of 'dgc-tf export'.")
    if os.path.isfile(os.path.join(args.base_dir, "saved_model.pb")):
        model_dir = os.path.dirname(os.path.abspath(args.base_dir))
        raise DataError(
            f"{args.base_dir!r} contains saved_model.pb, so it is a version directory. Pass the directory above "
            f"its model directory, {os.path.dirname(model_dir)!r}: the server serves every model under BASE_DIR."
        )
    if any(entry.isdigit() for entry in os.listdir(args.base_dir)):
        raise DataError(
            f"{args.base_dir!r} contains version folders, so it is a model directory. Pass its parent "
            f"{os.path.dirname(os.path.abspath(args.base_dir))!r}: the server serves every model under BASE_DIR."
        )
    if not (args.poll_seconds > 0 and np.isfinite(args.poll_seconds)):
        raise DataError(f"--poll-seconds must be a positive number. Received: {args.poll_seconds}.")
    if args.max_request_bytes < 1:
        raise DataError(f"--max-request-bytes must be at least 1. Received: {args.max_request_bytes}.")
    labels = {}
    for model, label, version in args.version_label:
        labels.setdefault(model, {})[label] = version
    import logging

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from dgc_tf.serving.server import serve

    try:
        serve(
            args.base_dir, host=args.host, rest_port=args.rest_port, grpc_port=args.grpc_port,
            poll_seconds=args.poll_seconds, max_request_bytes=args.max_request_bytes, version_labels=labels,
        )
    except OSError as error:
        raise DataError(
            f"{str(error).rstrip('.')}. Choose free ports with --rest-port and --grpc-port, or check --host."
        ) from None
    return 0


def run_demo(args):
    from dgc_tf.training import demo

    demo.main(args.demo_args)
    return 0


HANDLERS = {
    "fit": run_fit,
    "evaluate": run_evaluate,
    "predict": run_predict,
    "report": run_report,
    "export": run_export,
    "serve": run_serve,
    "demo": run_demo,
}


def main(argv=None):
    """Run one `dgc-tf` command and return its exit code: 0, or 2 for invalid input."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:
        # The demo parses its own options, --help included.
        return run_demo(argparse.Namespace(demo_args=argv[1:]))
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    try:
        return HANDLERS[args.command](args)
    except (DataError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as error:
        message = " ".join(str(error).split())
        print(f"{PROGRAM} {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
