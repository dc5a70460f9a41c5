"""Training and pretraining throughput of DGC against a plain Keras autoencoder.

All three models run in the same process, and their epochs alternate (DGC
training, DGC pretraining, plain autoencoder, then again), so that a change
in the machine's load during the run hits all three alike. A callback times
each epoch from `on_epoch_begin` to `on_epoch_end`. This leaves out the work
that `DGC.fit` does before and after Keras's loop (input checks, and the
collapse check on 2,000 rows), which is reported separately as fit() overhead.

Usage:

    python benchmarks/train_throughput.py --network mnist --batch-sizes 100 256
    python benchmarks/train_throughput.py --network pacman --batch-sizes 128
    python benchmarks/train_throughput.py --memory --batch-sizes 256 1024
    python benchmarks/train_throughput.py --network pacman --batch-sizes 128 --jit-compile

`--jit-compile` and `--steps-per-execution` set the same `compile` options
for all three models; by default Keras chooses (`jit_compile="auto"`).

`--memory` runs one fresh subprocess per model and batch size and reports the
peak resident set size (`ru_maxrss`) of each.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import dgc_tf
from dgc_tf.model import Autoencoder

# Rows per second that the DGC authors reported for their PyTorch code on a
# 2-core machine. This script does not measure them.
AUTHORS_SAMPLES_PER_SECOND = {("pacman", 128): 18700.0, ("mnist", 100): 3200.0}
TRAIN_RATIO_TARGET = 0.85
PRETRAIN_RATIO_TARGET = 0.95
AUTHORS_SPEEDUP_TARGET = 1.5

NETWORKS = {
    # The decoder mirrors the encoder widths. MNIST: categorical y with 10
    # classes, K = 10, Bernoulli decoder. Pacman: Gaussian y, K = 2.
    "mnist": dict(
        num_features=784,
        encoder_units=(500, 500, 2000),
        num_clusters=10,
        response="categorical",
        likelihood="bernoulli",
    ),
    "pacman": dict(
        num_features=2,
        encoder_units=(128, 256, 256),
        num_clusters=2,
        response="gaussian",
        likelihood="gaussian",
    ),
}
LATENT_DIM = 10

# Arguments of `compile` for all three models, set by `--jit-compile` and
# `--steps-per-execution`. Keras 3 resolves jit_compile="auto" to False on
# a machine without a GPU.
COMPILE_OPTIONS = {"jit_compile": "auto", "steps_per_execution": 1}


def make_data(network, num_rows, seed=0):
    """Return random `x` and `y` of the network's shape: pixels in [0, 1] or Gaussian features."""
    rng = np.random.default_rng(seed)
    spec = NETWORKS[network]
    if spec["likelihood"] == "bernoulli":
        x = rng.uniform(0.0, 1.0, size=(num_rows, spec["num_features"])).astype(np.float32)
    else:
        x = rng.normal(size=(num_rows, spec["num_features"])).astype(np.float32)
    if spec["response"] == "categorical":
        y = rng.integers(0, 10, size=num_rows)
    else:
        y = rng.normal(size=num_rows).astype(np.float32)
    return x, y


def build_dgc(network, x, y):
    """Return a compiled DGC with an initialized prior, ready for `fit`."""
    spec = NETWORKS[network]
    model = dgc_tf.DGC(
        num_clusters=spec["num_clusters"],
        response=spec["response"],
        latent_dim=LATENT_DIM,
        encoder_units=spec["encoder_units"],
        likelihood=spec["likelihood"],
        seed=0,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), **COMPILE_OPTIONS)
    # Zero epochs: only the preprocessing and the mixture prior are set up.
    model.pretrain(x, y, epochs=0, prior_init="shared", verbose=0)
    return model


def build_pretrain_autoencoder(model):
    """Return the `Autoencoder` that `DGC.pretrain` trains, compiled as `pretrain` compiles it."""
    autoencoder = Autoencoder(model)
    autoencoder.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), **COMPILE_OPTIONS)
    return autoencoder


def build_plain_autoencoder(network):
    """Return a keras.Sequential autoencoder with the same Dense layers as the DGC network."""
    spec = NETWORKS[network]
    units = spec["encoder_units"]
    layers = [keras.Input((spec["num_features"],))]
    layers += [keras.layers.Dense(width, activation="relu") for width in units]
    layers.append(keras.layers.Dense(LATENT_DIM))
    layers += [keras.layers.Dense(width, activation="relu") for width in units[::-1]]
    if spec["likelihood"] == "bernoulli":
        layers.append(keras.layers.Dense(spec["num_features"]))
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
    else:
        # DGC's Gaussian decoder outputs a mean and a log-variance per feature.
        layers.append(keras.layers.Dense(2 * spec["num_features"]))
        loss = gaussian_negative_log_likelihood
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, **COMPILE_OPTIONS)
    return model


def gaussian_negative_log_likelihood(x, params):
    mean, log_var = tf.split(params, 2, axis=-1)
    return tf.reduce_sum(0.5 * (log_var + tf.square(x - mean) * tf.exp(-log_var)), axis=-1)


def dense_multiply_adds(model):
    """Return the multiply-adds per row of one forward pass through the model's kernels.

    Counts every trainable variable of rank 2 or more: the Dense kernels and
    the stacked kernels of the response heads. Biases and the prior's
    parameters take part in no matrix product, so they are left out.
    """
    total = 0
    for variable in model.trainable_variables:
        if len(variable.shape) >= 2:
            total += int(np.prod(variable.shape))
    return total


class EpochTimer(keras.callbacks.Callback):
    """Keras callback that records the wall time and the process CPU time of each epoch.

    CPU time does not grow while other jobs hold the cores, so on a shared
    machine it varies less than wall time. It also counts the time that
    TensorFlow's worker threads spend spinning while they wait for work.
    """

    def __init__(self):
        super().__init__()
        self.seconds = []
        self.cpu_seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
        self.cpu_start = process_cpu_seconds()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)
        self.cpu_seconds.append(process_cpu_seconds() - self.cpu_start)


def measure_matmul_gflops(sizes=(1024, 2048), repeats=5):
    """Return the median float32 GFLOP/s of `tf.linalg.matmul` for each square size."""
    results = {}
    for size in sizes:
        a = tf.random.uniform((size, size))
        b = tf.random.uniform((size, size))
        product = tf.function(lambda a, b: tf.reduce_sum(tf.linalg.matmul(a, b)))
        product(a, b).numpy()  # trace and warm up
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            product(a, b).numpy()
            seconds.append(time.perf_counter() - start)
        results[size] = 2.0 * size**3 / statistics.median(seconds) / 1e9
    return results


def cpu_share(wall_seconds, cpu_before, cpu_after):
    """Return the cores this process used on average: CPU seconds over wall seconds."""
    return (cpu_after - cpu_before) / wall_seconds if wall_seconds > 0 else float("nan")


def process_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def summarize(seconds, num_rows):
    rates = [num_rows / value for value in seconds]
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "epochs": len(rates),
    }


def benchmark_batch_size(network, batch_size, num_rows, epochs, peak_gflops):
    """Time DGC training, DGC pretraining and the plain autoencoder, epochs interleaved."""
    keras.utils.set_random_seed(0)
    # Random y gives collapsed clusters, and DGC.fit warns about them after every call.
    warnings.filterwarnings("ignore", message=".*cluster", category=UserWarning)
    x, y = make_data(network, num_rows)
    model = build_dgc(network, x, y)
    pretrain_autoencoder = build_pretrain_autoencoder(model)
    plain = build_plain_autoencoder(network)

    runs = {
        "dgc_train": lambda timer: model.fit(
            x, y, epochs=1, batch_size=batch_size, verbose=0, callbacks=[timer]
        ),
        "dgc_pretrain": lambda timer: pretrain_autoencoder.fit(
            x, epochs=1, batch_size=batch_size, verbose=0, callbacks=[timer]
        ),
        "plain": lambda timer: plain.fit(x, x, epochs=1, batch_size=batch_size, verbose=0, callbacks=[timer]),
    }
    timers = {name: EpochTimer() for name in runs}
    call_seconds = {name: [] for name in runs}
    for name, run in runs.items():
        run(EpochTimer())  # warm-up epoch: traces the train function
    for _ in range(epochs):
        for name, run in runs.items():
            start = time.perf_counter()
            run(timers[name])
            call_seconds[name].append(time.perf_counter() - start)

    multiply_adds = {
        "dgc_train": dense_multiply_adds(model),
        "dgc_pretrain": dense_multiply_adds(model) - LATENT_DIM * NETWORKS[network]["encoder_units"][-1],
        "plain": dense_multiply_adds(plain),
    }
    result = {"network": network, "batch_size": batch_size, "rows": num_rows}
    for name in runs:
        summary = summarize(timers[name].seconds, num_rows)
        # Forward and backward: about three times the forward pass's 2 FLOPs per multiply-add.
        summary["gflops"] = 6.0 * multiply_adds[name] * summary["median"] / 1e9
        summary["peak_fraction"] = summary["gflops"] / peak_gflops
        summary["fit_call_overhead_s"] = statistics.median(
            [total - epoch for total, epoch in zip(call_seconds[name], timers[name].seconds)]
        )
        summary["multiply_adds_per_row"] = multiply_adds[name]
        summary["rows_per_cpu_second"] = statistics.median(
            [num_rows / value for value in timers[name].cpu_seconds]
        )
        result[name] = summary
    result["train_ratio"] = result["dgc_train"]["median"] / result["plain"]["median"]
    result["pretrain_ratio"] = result["dgc_pretrain"]["median"] / result["plain"]["median"]
    # The same ratios per round, from epochs that ran next to each other, so
    # that a change of load between rounds cancels out.
    plain_seconds = timers["plain"].seconds
    result["train_ratio_per_round"] = [p / d for d, p in zip(timers["dgc_train"].seconds, plain_seconds)]
    result["pretrain_ratio_per_round"] = [p / d for d, p in zip(timers["dgc_pretrain"].seconds, plain_seconds)]
    for name in ("train", "pretrain"):
        result[f"{name}_cpu_ratio"] = (
            result[f"dgc_{name}"]["rows_per_cpu_second"] / result["plain"]["rows_per_cpu_second"]
        )
    result["plain_jit_compile"] = bool(plain.jit_compile)
    result["dgc_jit_compile"] = bool(model.jit_compile)
    return result


def format_result(result):
    lines = [f"network={result['network']} batch={result['batch_size']} rows={result['rows']}"]
    for name in ("dgc_train", "dgc_pretrain", "plain"):
        summary = result[name]
        lines.append(
            f"  {name:13s} median {summary['median']:9.0f} rows/s "
            f"(min {summary['min']:.0f}, max {summary['max']:.0f}, {summary['epochs']} epochs), "
            f"{summary['gflops']:.1f} GFLOP/s = {100 * summary['peak_fraction']:.0f}% of matmul, "
            f"fit() overhead {summary['fit_call_overhead_s']:.2f} s, "
            f"{summary['rows_per_cpu_second']:.0f} rows per CPU second"
        )
    lines.append(
        f"  jit_compile as resolved by Keras: DGC {result['dgc_jit_compile']}, plain {result['plain_jit_compile']}"
    )
    lines.append(
        f"  ratio train/plain {result['train_ratio']:.2f} (target >= {TRAIN_RATIO_TARGET}), "
        f"pretrain/plain {result['pretrain_ratio']:.2f} (target >= {PRETRAIN_RATIO_TARGET})"
    )
    for name in ("train", "pretrain"):
        per_round = result[f"{name}_ratio_per_round"]
        lines.append(
            f"  {name}/plain per round: median {statistics.median(per_round):.2f}, "
            f"min {min(per_round):.2f}, max {max(per_round):.2f} over {len(per_round)} rounds; "
            f"by CPU time {result[f'{name}_cpu_ratio']:.2f}"
        )
    authors = AUTHORS_SAMPLES_PER_SECOND.get((result["network"], result["batch_size"]))
    if authors is not None:
        speedup = result["dgc_train"]["median"] / authors
        lines.append(
            f"  against the authors' PyTorch figure of {authors:.0f} rows/s: {speedup:.2f}x "
            f"(target >= {AUTHORS_SPEEDUP_TARGET})"
        )
    return "\n".join(lines)


def run_throughput(args):
    load_before = os.getloadavg()
    cpu_before = process_cpu_seconds()
    wall_start = time.perf_counter()
    matmul_before = measure_matmul_gflops()
    peak = max(matmul_before.values())
    print(f"tensorflow {tf.__version__}, threads intra={tf.config.threading.get_intra_op_parallelism_threads()}")
    print(
        f"compile options of all three models: jit_compile={COMPILE_OPTIONS['jit_compile']!r}, "
        f"steps_per_execution={COMPILE_OPTIONS['steps_per_execution']}"
    )
    print(f"load average before: {load_before[0]:.2f}")
    print("matmul GFLOP/s before: " + ", ".join(f"n={n}: {v:.1f}" for n, v in matmul_before.items()))

    results = []
    for batch_size in args.batch_sizes:
        result = benchmark_batch_size(args.network, batch_size, args.rows, args.epochs, peak)
        print(format_result(result), flush=True)
        results.append(result)

    matmul_after = measure_matmul_gflops()
    wall = time.perf_counter() - wall_start
    summary = {
        "results": results,
        "matmul_gflops_before": matmul_before,
        "matmul_gflops_after": matmul_after,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "process_cores_used": cpu_share(wall, cpu_before, process_cpu_seconds()),
        "wall_seconds": wall,
    }
    print("matmul GFLOP/s after: " + ", ".join(f"n={n}: {v:.1f}" for n, v in matmul_after.items()))
    print(
        f"load average after: {summary['load_average_after'][0]:.2f}; this process used "
        f"{summary['process_cores_used']:.2f} cores on average over {wall:.0f} s"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(summary, file, indent=2, default=str)


def run_memory_child(args):
    """Train one model for one epoch and print the peak RSS as JSON (runs in a fresh process)."""
    import keras
    keras.utils.set_random_seed(0)
    x, y = make_data(args.network, args.rows)
    if args.model == "dgc":
        model = build_dgc(args.network, x, y)
    else:
        model = build_plain_autoencoder(args.network)
    before_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.model == "dgc":
        model.fit(x, y, epochs=1, batch_size=args.batch_sizes[0], verbose=0)
    else:
        model.fit(x, x, epochs=1, batch_size=args.batch_sizes[0], verbose=0)
    try:
        tf_peak = f'{tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20:.0f} MiB'
    except (ValueError, RuntimeError) as error:
        tf_peak = f"unavailable: {error}"
    print(
        json.dumps(
            {
                "model": args.model,
                "batch_size": args.batch_sizes[0],
                "max_rss_mib_before_fit": before_fit / 1024,
                "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "tf_memory_info_peak": tf_peak,
            }
        )
    )


def run_memory(args):
    print(f"peak RSS (ru_maxrss) of one training epoch, {args.network} network, {args.rows} rows")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for batch_size in args.batch_sizes:
        for model in ("dgc", "plain"):
            command = [
                sys.executable,
                os.path.abspath(__file__),
                "--memory-child",
                "--model",
                model,
                "--network",
                args.network,
                "--rows",
                str(args.rows),
                "--batch-sizes",
                str(batch_size),
                "--steps-per-execution",
                str(args.steps_per_execution),
            ] + (["--jit-compile"] if args.jit_compile else [])
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            record = json.loads(output.strip().splitlines()[-1])
            print(
                f"  {model:5s} batch {batch_size:5d}: peak RSS {record['max_rss_mib']:.0f} MiB "
                f"(after building, before fit: {record['max_rss_mib_before_fit']:.0f} MiB); "
                f"peak of TF's CPU allocator: {record['tf_memory_info_peak']}",
                flush=True,
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=sorted(NETWORKS), default="mnist", help="network to train")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 256], help="batch sizes in rows")
    parser.add_argument("--rows", type=int, default=8192, help="rows per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per model, after one warm-up epoch")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument(
        "--jit-compile",
        action="store_true",
        help="compile all three models with XLA (jit_compile=True); default: Keras's 'auto'",
    )
    parser.add_argument(
        "--steps-per-execution", type=int, default=1, help="training steps per call of the train function, all models"
    )
    parser.add_argument("--memory", action="store_true", help="measure peak RSS in fresh subprocesses instead")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=("dgc", "plain"), default="dgc", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    COMPILE_OPTIONS.update(
        jit_compile=True if args.jit_compile else "auto", steps_per_execution=args.steps_per_execution
    )
    if args.memory_child:
        run_memory_child(args)
    elif args.memory:
        run_memory(args)
    else:
        run_throughput(args)


if __name__ == "__main__":
    main()
