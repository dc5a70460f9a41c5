"""Experiment recipes that reproduce the DGC paper's results, with baselines.

Run one experiment over several seeds:

    python -m dgc_tf.training.experiments noisy_mnist --seeds 5
    python -m dgc_tf.training.experiments all --out runs/experiments
    python -m dgc_tf.training.experiments pacman --smoke --out /tmp/smoke

Each experiment trains every model of its recipe once per seed. By default
each (model, seed) job runs in its own Python subprocess, so the peak memory
recorded for it (`ru_maxrss` of that process) belongs to that job alone;
`--in-process` runs all jobs in this process, where `ru_maxrss` is the peak
of the whole run so far. Results go to `<out>/<experiment>/results.jsonl`,
one JSON object per job, and a rerun of the same job replaces its line. The
arrays for the plots go to `<out>/<experiment>/<model>_seed<seed>.npz`. A
smoke run writes `..._smoke.npz`, so it never replaces the arrays of a full
run.
`python -m dgc_tf.training.results_report` turns them into docs/results.md.

The true groups are used only to score the clusterings, never in training.
"""

import argparse
import contextlib
import copy
import datetime
import fcntl
import glob
import json
import os
import resource
import socket
import subprocess
import sys
import time
import traceback
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from dgc_tf.data import Dataset, load_fashion_mnist, load_noisy_mnist, make_pacman, train_test_split  # noqa: E402
from dgc_tf.metrics import clustering_accuracy, clustering_scores  # noqa: E402

# Shared settings of the image recipes on Fashion-MNIST and SVHN: a conv
# encoder, a Bernoulli decoder for pixels in [0, 1] and a linear head per
# cluster. The epoch counts keep each experiment within 30 minutes on 2 CPU
# cores: shared with other jobs, fashion_mnist took 12 minutes for 3 seeds
# and the K sweep 6. The report records the measured times.
_IMAGE_TRAINING = {
    "num_clusters": 10,
    "prior_init": "class",
    "refit_start_epoch": 5,
    "pretrain_epochs": 10,
    "epochs": 20,
    "classifier_epochs": 15,
    "batch_size": 100,
    "learning_rate": 1e-3,
    "n_init": 1,
    "classification": True,
}
_FASHION_MODEL = {
    "response": "categorical",
    "latent_dim": 10,
    "encoder": "conv",
    "image_shape": (28, 28, 1),
    "encoder_units": (256,),
    "decoder_units": (256, 512),
    "likelihood": "bernoulli",
    "head": "linear",
}
# The smoke version of every recipe: a few hundred rows, one epoch, small networks.
_SMOKE = {
    "pretrain_epochs": 1,
    "epochs": 1,
    "classifier_epochs": 1,
    "refit_start_epoch": 1,
    "n_init": 1,
    "model": {"latent_dim": 2, "encoder_units": (16,), "decoder_units": (16,)},
}

EXPERIMENTS = {
    "noisy_mnist": {
        "title": "Noisy MNIST (digits 2 and 7, half over photographs, K = 4, y = digit)",
        "data": "noisy_mnist",
        "data_settings": {"test_fraction": 0.2},
        "num_clusters": 4,
        "model": {
            "response": "categorical",
            "latent_dim": 10,
            "encoder_units": (500, 500, 2000),
            "likelihood": "bernoulli",
            "head": "bias",
            "response_weight": 10.0,
        },
        "prior_init": "class",
        "refit_start_epoch": 10,
        "pretrain_epochs": 50,
        "epochs": 60,
        "batch_size": 100,
        "learning_rate": 1e-3,
        "n_init": 2,
        "seeds": 3,
        "classification": False,
        "runs": [
            {"name": "dgc", "kind": "dgc"},
            {"name": "vade", "kind": "vade"},
            # Supervision only: no reconstruction term and so no autoencoder pretraining.
            {"name": "no_decoder", "kind": "dgc", "pretrain_epochs": 0, "model": {"reconstruction_weight": 0.0}},
            {"name": "kmeans", "kind": "kmeans"},
            {"name": "agglomerative", "kind": "agglomerative"},
        ],
        "smoke": {"data_settings": {"limit": 240}},
    },
    "pacman": {
        "title": "Pacman (two annuli, K = 2, y linear on one ring and exponential on the other)",
        "data": "pacman",
        "data_settings": {"num_samples": 10000, "test_fraction": 0.2},
        "num_clusters": 2,
        "model": {
            "response": "gaussian",
            "latent_dim": 10,
            "encoder_units": (128, 256, 256),
            "likelihood": "gaussian",
            "head": "linear",
        },
        "prior_init": "shared",
        "refit_start_epoch": 10,
        "pretrain_epochs": 20,
        "epochs": 30,
        "batch_size": 128,
        "learning_rate": 1e-3,
        "n_init": 2,
        "seeds": 3,
        "classification": False,
        "runs": [
            {"name": "dgc", "kind": "dgc"},
            {"name": "vade", "kind": "vade"},
            {"name": "kmeans", "kind": "kmeans"},
            {"name": "agglomerative", "kind": "agglomerative"},
            {"name": "gmm", "kind": "gmm"},
        ],
        "smoke": {"data_settings": {"num_samples": 400}},
    },
    "fashion_mnist": {
        "title": "Fashion-MNIST (y = class, K = 10), standing in for SVHN",
        "data": "fashion_mnist",
        "data_settings": {"train_rows": 10000, "test_rows": 10000},
        **_IMAGE_TRAINING,
        "model": _FASHION_MODEL,
        "seeds": 3,
        "runs": [
            {"name": "dgc", "kind": "dgc"},
            {"name": "classifier", "kind": "classifier"},
            {"name": "vade", "kind": "vade"},
            {"name": "kmeans", "kind": "kmeans"},
        ],
        "smoke": {"data_settings": {"train_rows": 300, "test_rows": 100}},
    },
    "fashion_k_sweep": {
        "title": "Fashion-MNIST, DGC with K from 1 to 50 (y = class, 10 classes)",
        "data": "fashion_mnist",
        "data_settings": {"train_rows": 10000, "test_rows": 10000},
        **_IMAGE_TRAINING,
        "pretrain_epochs": 5,
        "epochs": 10,
        "model": _FASHION_MODEL,
        "seeds": 1,
        "runs": [
            {"name": f"dgc_k{num_clusters}", "kind": "dgc", "num_clusters": num_clusters}
            for num_clusters in (1, 5, 10, 15, 20, 50)
        ],
        "smoke": {"data_settings": {"train_rows": 300, "test_rows": 100}},
    },
    "svhn": {
        "title": "SVHN (y = digit, K = 10), through TensorFlow Datasets",
        "data": "svhn",
        "data_settings": {"train_rows": 20000, "test_rows": 5000},
        **_IMAGE_TRAINING,
        "model": dict(_FASHION_MODEL, image_shape=(32, 32, 3)),
        "seeds": 3,
        "runs": [
            {"name": "dgc", "kind": "dgc"},
            {"name": "classifier", "kind": "classifier"},
            {"name": "vade", "kind": "vade"},
            {"name": "kmeans", "kind": "kmeans"},
        ],
        "smoke": {"data_settings": {"train_rows": 300, "test_rows": 100}},
    },
}

RUN_KINDS = ("dgc", "vade", "kmeans", "agglomerative", "gmm", "classifier")
MEMORY_METHODS = {
    True: "ru_maxrss of a subprocess per job",
    False: "ru_maxrss of one process for all jobs (peak so far)",
}
# The largest seed: keras.utils.set_random_seed passes it to np.random.seed,
# which accepts 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
# Rows of the test set kept for the latent projection and the Pacman plots.
PLOT_ROWS = 1000


class DataUnavailable(Exception):
    """Raised when an experiment's data cannot be loaded on this machine; the message gives the reason."""


# ---------------------------------------------------------------- recipes


def _merge(base, overrides):
    """Return a deep copy of `base` with `overrides` applied; nested dicts are merged key by key."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_settings(experiment, run_name, smoke=False):
    """Return the full settings of one model run: the recipe, then the smoke changes, then the run's own.

    The run's own settings come last, so that the ablation keeps its zero
    pretraining epochs in the smoke version too.
    """
    recipe = EXPERIMENTS[experiment]
    runs = {run["name"]: run for run in recipe["runs"]}
    if run_name not in runs:
        raise ValueError(f"Experiment {experiment!r} has no model {run_name!r}. Models: {sorted(runs)}.")
    settings = {key: value for key, value in recipe.items() if key not in ("runs", "smoke")}
    if smoke:
        settings = _merge(settings, _merge(_SMOKE, recipe.get("smoke", {})))
    settings = _merge(settings, {key: value for key, value in runs[run_name].items() if key != "name"})
    if settings["kind"] not in RUN_KINDS:
        raise ValueError(f"Model {run_name!r} of {experiment!r} has kind {settings['kind']!r}; expected one of {RUN_KINDS}.")
    settings["name"] = run_name
    return settings


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------- data


def svhn_data_dir():
    """Return the TensorFlow Datasets folder: `TFDS_DATA_DIR`, else ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def check_available(settings, download=False):
    """Return None when the data of `settings` can be loaded, else the reason why not.

    Only SVHN can be missing. The check looks for a prepared `svhn_cropped`
    on disk and touches no network; with `download`, loading tries to
    download it instead.
    """
    if settings["data"] != "svhn" or download:
        return None
    prepared = glob.glob(os.path.join(svhn_data_dir(), "svhn_cropped", "*", "dataset_info.json"))
    if prepared:
        return None
    return (
        f"svhn_cropped is not prepared under {svhn_data_dir()}, the TensorFlow Datasets folder "
        "(TFDS_DATA_DIR sets another). On a machine "
        "with network access, rerun with --download, or prepare it first with "
        "`tfds build svhn_cropped`."
    )


def _load_svhn(split, limit, seed, download):
    # NOTE: this path has only been run where SVHN was missing (the skip);
    # loading a prepared svhn_cropped follows the TensorFlow Datasets 4.9 API.
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataUnavailable("tensorflow_datasets is not installed: pip install tensorflow-datasets") from error
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # a download on a machine without network fails instead of hanging
    try:
        images, labels = tfds.as_numpy(
            tfds.load(
                "svhn_cropped", split=split, data_dir=svhn_data_dir(), download=download, batch_size=-1,
                as_supervised=True,
            )
        )
    except Exception as error:  # tfds raises many types for missing data and failed downloads
        raise DataUnavailable(f"svhn_cropped could not be loaded ({type(error).__name__}: {error})") from error
    finally:
        socket.setdefaulttimeout(previous_timeout)
    order = np.random.default_rng(seed).permutation(len(labels))[:limit]
    x = images[order].reshape(len(order), -1).astype(np.float32) / 255.0
    y = labels[order].astype(np.int64)
    return Dataset(x=x, y=y, groups=y.copy())


def load_data(settings, seed, download=False):
    """Return `(train, test)` Datasets for the data set and sizes named in `settings`."""
    data = settings["data"]
    options = settings.get("data_settings", {})
    reason = check_available(settings, download)
    if reason:
        raise DataUnavailable(reason)
    if data in ("pacman", "noisy_mnist"):
        if data == "pacman":
            dataset = make_pacman(options.get("num_samples", 10000), seed=seed)
        else:
            dataset = load_noisy_mnist(seed=seed)
        if options.get("limit"):
            rows = np.random.default_rng(seed).permutation(len(dataset.y))[: options["limit"]]
            dataset = Dataset(*(array[rows] for array in dataset))
        return train_test_split(dataset, test_fraction=options.get("test_fraction", 0.2), seed=seed)
    if data == "fashion_mnist":
        train = load_fashion_mnist("train", limit=options.get("train_rows"), seed=seed)
        test = load_fashion_mnist("test", limit=options.get("test_rows"), seed=seed)
        return train, test
    if data == "svhn":
        train = _load_svhn("train", options.get("train_rows"), seed, download)
        test = _load_svhn("test", options.get("test_rows"), seed, download)
        return train, test
    raise ValueError(f"Unknown data set {data!r} in the recipe.")


# ---------------------------------------------------------------- scoring


def confusion_matrix(clusters, groups, num_clusters, num_groups):
    """Return counts of shape `(num_clusters, num_groups)`: rows predicted cluster, columns true group."""
    counts = np.zeros((num_clusters, num_groups), np.int64)
    np.add.at(counts, (np.asarray(clusters, np.int64), np.asarray(groups, np.int64)), 1)
    return counts


def project_2d(z):
    """Return the first two principal components of the rows of `z`, shape `(num_rows, 2)`."""
    centered = z - z.mean(axis=0)
    _, _, components = np.linalg.svd(centered, full_matrices=False)
    projected = centered @ components[:2].T
    if projected.shape[1] < 2:
        projected = np.pad(projected, ((0, 0), (0, 2 - projected.shape[1])))
    return projected


def _score_clusters(record, arrays, prefix, train, test, train_clusters, test_clusters, num_clusters):
    """Add the accuracies of one weighting (`prefix` "" or "labeled_") and its confusion matrix."""
    record[f"{prefix}test_accuracy"] = clustering_accuracy(test.groups, test_clusters)
    record[f"{prefix}train_accuracy"] = clustering_accuracy(train.groups, train_clusters)
    num_groups = int(max(train.groups.max(), test.groups.max())) + 1
    arrays[f"{prefix}confusion"] = confusion_matrix(test_clusters, test.groups, num_clusters, num_groups)


def _evaluate_dgc(model, settings, train, test, seed):
    from dgc_tf.training.demo import entropy_clip_fraction

    record, arrays = {}, {}
    num_clusters = settings["num_clusters"]
    test_outputs = model.predict(test.x, verbose=0)
    train_clusters = model.predict(train.x, verbose=0)["cluster"]
    _score_clusters(record, arrays, "", train, test, train_clusters, test_outputs["cluster"], num_clusters)
    # The labeled rule of VaDE equals its unlabeled rule, so only its accuracy is kept.
    labeled_arrays = arrays if model.uses_response else {}
    _score_clusters(
        record,
        labeled_arrays,
        "labeled_",
        train,
        test,
        model.predict_labeled(train.x, train.y)["cluster"],
        model.predict_labeled(test.x, test.y)["cluster"],
        num_clusters,
    )
    scores = clustering_scores(test.groups, test_outputs["cluster"])
    record.update(nmi=scores["nmi"], ari=scores["ari"])
    if model.uses_response:
        record["entropy_clipped"] = entropy_clip_fraction(model, test.x)
    if settings["classification"] and model.uses_response:
        record["classification_accuracy"] = float(np.mean(model.predict_labels(test.x, verbose=0) == test.y))
        record["train_classification_accuracy"] = float(
            np.mean(model.predict_labels(train.x, verbose=0) == train.y)
        )

    rows = slice(0, PLOT_ROWS)
    arrays["latent_2d"] = project_2d(test_outputs["z_mean"][rows].astype(np.float64)).astype(np.float32)
    arrays["latent_cluster"] = test_outputs["cluster"][rows]
    arrays["latent_group"] = test.groups[rows]
    if settings["data"] == "pacman":
        samples = model.sample(PLOT_ROWS, seed=seed)
        arrays.update(sample_x=samples["x"], sample_y=samples["y"], sample_cluster=samples["cluster"])
        arrays.update(data_x=test.x[rows], data_y=test.y[rows], data_group=test.groups[rows])
    return record, arrays


def train_and_evaluate(settings, train, test, seed):
    """Train the model of one run and score it; return `(record, arrays, train_seconds)`."""
    from dgc_tf.training import baselines

    kind = settings["kind"]
    num_clusters = settings["num_clusters"]
    start = time.time()
    if kind in ("dgc", "vade"):
        from dgc_tf.training.demo import train_model

        model = train_model(settings, train, seed, vade=kind == "vade")
        train_seconds = time.time() - start
        record, arrays = _evaluate_dgc(model, settings, train, test, seed)
        return record, arrays, train_seconds

    if kind == "classifier":
        num_classes = int(max(train.y.max(), test.y.max())) + 1
        model = baselines.train_classifier(
            train.x,
            train.y,
            num_classes,
            settings["model"],
            settings["classifier_epochs"],
            settings["batch_size"],
            settings["learning_rate"],
            seed,
        )
        train_seconds = time.time() - start
        record = {
            "classification_accuracy": float(np.mean(model.predict(test.x, verbose=0).argmax(axis=1) == test.y)),
            "train_classification_accuracy": float(
                np.mean(model.predict(train.x, verbose=0).argmax(axis=1) == train.y)
            ),
        }
        return record, {}, train_seconds

    cluster_functions = {
        "kmeans": baselines.kmeans_clusters,
        "agglomerative": baselines.agglomerative_clusters,
        "gmm": baselines.gaussian_mixture_clusters,
    }
    train_clusters, test_clusters = cluster_functions[kind](train.x, test.x, num_clusters, seed)
    train_seconds = time.time() - start
    record, arrays = {}, {}
    _score_clusters(record, arrays, "", train, test, train_clusters, test_clusters, num_clusters)
    scores = clustering_scores(test.groups, test_clusters)
    record.update(nmi=scores["nmi"], ari=scores["ari"])
    return record, arrays, train_seconds


# ---------------------------------------------------------------- files


@contextlib.contextmanager
def _locked(directory):
    """Hold an exclusive lock on `<directory>/.lock`, so two runs never rewrite results.jsonl at once."""
    with open(os.path.join(directory, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _replace_atomically(path, write):
    """Call `write(temporary_path)`, then rename the temporary file to `path`."""
    directory, name = os.path.split(path)
    stem, extension = os.path.splitext(name)
    temporary = os.path.join(directory, f".{stem}.tmp-{os.getpid()}{extension}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


class InvalidRecords(ValueError):
    """Raised when a results.jsonl line is not a JSON object with the keys of a record."""


# Keys that save_record needs to find an earlier record of the same job.
RECORD_KEYS = ("model", "seed", "smoke")


def read_records(path):
    """Return the records of a results.jsonl file, or an empty list when it does not exist.

    Raises:
        InvalidRecords: a line is not valid JSON, not an object, or lacks a
            key of `RECORD_KEYS`. The message names the file and line.
    """
    if not os.path.exists(path):
        return []
    records = []
    with open(path, "rb") as file:
        for number, raw_line in enumerate(file, start=1):
            if not raw_line.strip():
                continue
            try:
                record = json.loads(raw_line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise InvalidRecords(_invalid_line_message(path, number, f"invalid JSON: {error}")) from error
            if not isinstance(record, dict):
                raise InvalidRecords(_invalid_line_message(path, number, f"a JSON {type(record).__name__}, not an object"))
            missing = [key for key in RECORD_KEYS if key not in record]
            if missing:
                raise InvalidRecords(_invalid_line_message(path, number, f"missing keys {missing}"))
            records.append(record)
    return records


def _invalid_line_message(path, number, reason):
    return (
        f"{path} line {number} is not a valid record ({reason}). Expected one JSON object per line "
        "as written by dgc_tf.training.experiments; repair or delete that line, or move the file aside."
    )


def save_record(directory, record):
    """Add `record` to `<directory>/results.jsonl`, replacing an earlier record of the same job."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "results.jsonl")
    key = (record["model"], record["seed"], record["smoke"])
    with _locked(directory):
        records = [old for old in read_records(path) if (old["model"], old["seed"], old["smoke"]) != key]
        records.append(record)

        def write(temporary):
            with open(temporary, "w", encoding="utf-8") as file:
                file.writelines(json.dumps(item, sort_keys=True) + "\n" for item in records)

        _replace_atomically(path, write)


def arrays_filename(model, seed, smoke):
    """Return the name of the .npz file with the plot arrays of one job."""
    return f"{model}_seed{seed}{'_smoke' if smoke else ''}.npz"


def save_arrays(path, arrays):
    """Write `arrays` to a compressed .npz file atomically."""
    _replace_atomically(path, lambda temporary: np.savez_compressed(temporary, **arrays))


# ---------------------------------------------------------------- jobs


def _peak_rss_mb():
    # Linux reports ru_maxrss in kilobytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_job(experiment, run_name, seed, out, smoke=False, isolated=False, download=False):
    """Train, score and record one model of one experiment with one seed.

    Writes one record to `<out>/<experiment>/results.jsonl` (status `ok`,
    `skipped` or `failed`) and, for status `ok`, the plot arrays to
    `<out>/<experiment>/` (named by `arrays_filename`).

    Returns:
        The record.
    """
    settings = resolve_settings(experiment, run_name, smoke)
    directory = os.path.join(out, experiment)
    trains_dgc = settings["kind"] in ("dgc", "vade")
    epochs = settings["classifier_epochs"] if settings["kind"] == "classifier" else settings["epochs"]
    record = {
        "experiment": experiment,
        "model": run_name,
        "kind": settings["kind"],
        "seed": seed,
        "smoke": smoke,
        "num_clusters": settings["num_clusters"],
        "pretrain_epochs": settings["pretrain_epochs"] if trains_dgc else None,
        "epochs": epochs if trains_dgc or settings["kind"] == "classifier" else None,
        "n_init": settings["n_init"] if trains_dgc else None,
        "memory_method": MEMORY_METHODS[isolated],
        "settings": _jsonable(settings),
    }
    start = time.time()
    try:
        import keras

        keras.utils.set_random_seed(seed)
        train, test = load_data(settings, seed, download)
        record.update(num_train=len(train.y), num_test=len(test.y))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="keras")
            scores, arrays, train_seconds = train_and_evaluate(settings, train, test, seed)
        record.update(scores, status="ok", train_seconds=train_seconds)
        if arrays:
            os.makedirs(directory, exist_ok=True)
            save_arrays(os.path.join(directory, arrays_filename(run_name, seed, smoke)), arrays)
    except DataUnavailable as error:
        record.update(status="skipped", reason=str(error))
    except Exception as error:  # recorded, so that one failed job does not stop the others
        record.update(status="failed", reason=f"{type(error).__name__}: {error}")
        traceback.print_exc()
    record.update(
        seconds=time.time() - start,
        peak_rss_mb=_peak_rss_mb(),
        finished_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    save_record(directory, record)
    _print_record(record)
    return record


def _print_record(record):
    fields = [f"RESULT {record['experiment']} model={record['model']} seed={record['seed']} status={record['status']}"]
    for name in (
        "test_accuracy",
        "labeled_test_accuracy",
        "train_accuracy",
        "labeled_train_accuracy",
        "classification_accuracy",
    ):
        if record.get(name) is not None:
            fields.append(f"{name}={record[name]:.4f}")
    fields.append(f"seconds={record['seconds']:.1f} peak_rss_mb={record['peak_rss_mb']:.0f}")
    if record.get("reason"):
        fields.append(f"reason={record['reason']!r}")
    print(" ".join(fields), flush=True)


def run_experiment(experiment, seeds, out, smoke=False, in_process=False, models=None, download=False):
    """Run every model of `experiment` for each seed in `seeds`; return the number of failed jobs.

    Data that cannot be had here (SVHN without a prepared copy) gives one
    `skipped` record and no failure.
    """
    recipe = EXPERIMENTS[experiment]
    run_names = [run["name"] for run in recipe["runs"] if models is None or run["name"] in models]
    reason = check_available(resolve_settings(experiment, run_names[0], smoke), download) if run_names else None
    if reason:
        record = {
            "experiment": experiment,
            "model": "all",
            "seed": None,
            "smoke": smoke,
            "status": "skipped",
            "reason": reason,
            "seconds": 0.0,
            "peak_rss_mb": None,
        }
        save_record(os.path.join(out, experiment), record)
        print(f"SKIPPED {experiment}: {reason}", flush=True)
        return 0

    failures = 0
    for seed in seeds:
        for run_name in run_names:
            if in_process:
                status = run_job(experiment, run_name, seed, out, smoke, isolated=False, download=download)["status"]
            else:
                status = _run_job_in_subprocess(experiment, run_name, seed, out, smoke, download)
            failures += status == "failed"
    return failures


def _run_job_in_subprocess(experiment, run_name, seed, out, smoke, download):
    command = [
        sys.executable, "-m", "dgc_tf.training.experiments", experiment,
        "--job", run_name, "--first-seed", str(seed), "--out", out,
    ]
    command += ["--smoke"] if smoke else []
    command += ["--download"] if download else []
    completed = subprocess.run(command)
    if completed.returncode == 0:
        return "ok"
    # The job writes its own record, unless the process died before it could.
    print(f"FAILED {experiment} model={run_name} seed={seed}: exit status {completed.returncode}", flush=True)
    return "failed"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS) + ["all"], help="experiment to run, or all")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the recipe's)")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first run")
    parser.add_argument(
        "--out", default=os.path.join("runs", "experiments"), help="output folder (default: runs/experiments)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny data, one epoch and small networks")
    parser.add_argument("--models", nargs="+", help="run only these models of the recipe")
    parser.add_argument(
        "--in-process", action="store_true", help="run all jobs in this process instead of a subprocess each"
    )
    parser.add_argument("--download", action="store_true", help="let TensorFlow Datasets download SVHN")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # one model in this process, used by the subprocesses
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be at least 1. Received: {args.seeds}")
    if args.first_seed < 0:
        parser.error(f"--first-seed must be at least 0. Received: {args.first_seed}")

    experiments = sorted(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    if args.job and args.experiment == "all":
        parser.error("--job needs one experiment, not all")
    if args.models:
        known = {run["name"] for name in experiments for run in EXPERIMENTS[name]["runs"]}
        unknown = sorted(set(args.models) - known)
        if unknown:
            parser.error(f"unknown models {unknown}; the chosen experiments have {sorted(known)}")
    seed_ranges = {}
    for experiment in experiments:
        if args.job:
            num_seeds = 1
        elif args.seeds is not None:
            num_seeds = args.seeds
        else:
            num_seeds = EXPERIMENTS[experiment]["seeds"]
        seed_ranges[experiment] = range(args.first_seed, args.first_seed + num_seeds)
        if seed_ranges[experiment][-1] > MAX_SEED:
            parser.error(
                f"seeds {args.first_seed} to {seed_ranges[experiment][-1]} of {experiment} exceed {MAX_SEED}, "
                "the largest seed NumPy accepts. Lower --first-seed or --seeds."
            )
        problem = check_output_folder(args.out, experiment)
        if problem:
            parser.error(problem)

    try:
        if args.job:
            record = run_job(args.experiment, args.job, args.first_seed, args.out, args.smoke, True, args.download)
            return 1 if record["status"] == "failed" else 0
        failures = 0
        for experiment in experiments:
            failures += run_experiment(
                experiment, seed_ranges[experiment], args.out, args.smoke, args.in_process, args.models, args.download
            )
    except KeyboardInterrupt:
        if args.job:
            return 130  # the parent process prints the message
        # Every finished job's record is already in results.jsonl, which is only ever replaced whole.
        print(
            f"Interrupted. The records of finished jobs are kept in {args.out}/<experiment>/results.jsonl; "
            "rerun the same command to run every job again.",
            file=sys.stderr,
            flush=True,
        )
        return 130
    return 1 if failures else 0


def check_output_folder(out, experiment):
    """Return None when `<out>/<experiment>/` can take results, else the reason and the fix.

    Creates the folder, checks that it is writable and that an existing
    results.jsonl can be read, so that no job trains before a bad `--out`
    fails and no earlier record is dropped by a rewrite.
    """
    directory = os.path.join(out, experiment)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        return (
            f"--out {out!r}: cannot create the folder {directory!r} ({error.strerror}). "
            "Pass a folder that exists or can be created, not a file."
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"--out {out!r}: the folder {directory!r} is not writable. Pass a writable folder."
    try:
        read_records(os.path.join(directory, "results.jsonl"))
    except (InvalidRecords, OSError) as error:
        return f"--out {out!r}: {error}"
    return None


if __name__ == "__main__":
    sys.exit(main())
