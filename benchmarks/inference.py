"""Prediction latency at batch 1 and throughput at batch 1,024, per way of running a DGC model.

Trains a model briefly on random data, exports it with
`dgc_tf.export.export_model` to a temporary directory, and times in one
process, with the methods interleaved round by round:

- `keras_predict`: `model.predict(x, verbose=0)`, the in-memory model through
  Keras's prediction loop;
- `tf_function`: `model(x)` wrapped in one `tf.function` with a fixed input
  signature, the in-memory model without the loop;
- `savedmodel_signature`: `tf.saved_model.load(path).signatures["serving_default"]`;
- `savedmodel_predictor`: `dgc_tf.export.load(path, format="saved_model").predict`;
- `onnx_predictor`: `dgc_tf.export.load(path, format="onnx").predict`;
- `onnx_session_1thread`: a raw `onnxruntime.InferenceSession` with
  `intra_op_num_threads=1`, fed a float32 array.

Every timed call includes the conversion of a NumPy input and of the outputs
back to NumPy, as a caller sees it.

Usage:

    python benchmarks/inference.py --network pacman
    python benchmarks/inference.py --network mnist --rounds 5
"""

import argparse
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import onnxruntime
import tensorflow as tf

from dgc_tf.export import export_model, load

from train_throughput import build_dgc, make_data

ONNX_SPEEDUP_TARGET = 5.0
ONNX_LATENCY_TARGET_MS = 0.2


def train_and_export(network, directory):
    """Return a DGC model trained for one epoch and the version directory it was exported to."""
    keras.utils.set_random_seed(0)
    warnings.filterwarnings("ignore", message=".*cluster", category=UserWarning)
    x, y = make_data(network, 2048)
    model = build_dgc(network, x, y)
    model.fit(x, y, epochs=1, batch_size=256, verbose=0)
    return model, export_model(model, directory, network)


def build_methods(model, path):
    """Return the callables to time, by name. Each takes a float32 NumPy matrix."""
    num_features = model.num_features
    model_function = tf.function(
        lambda x: model(x), input_signature=[tf.TensorSpec([None, num_features], tf.float32)]
    )
    signature = tf.saved_model.load(path).signatures["serving_default"]
    savedmodel_predictor = load(path, format="saved_model")
    onnx_predictor = load(path, format="onnx")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        os.path.join(path, "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
    )
    input_name = session.get_inputs()[0].name

    return {
        "keras_predict": lambda x: model.predict(x, verbose=0),
        "tf_function": lambda x: {name: value.numpy() for name, value in model_function(x).items()},
        "savedmodel_signature": lambda x: {
            name: value.numpy() for name, value in signature(x=tf.constant(x)).items()
        },
        "savedmodel_predictor": savedmodel_predictor.predict,
        "onnx_predictor": onnx_predictor.predict,
        "onnx_session_1thread": lambda x: session.run(None, {input_name: x}),
    }


def time_calls(function, x, calls):
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        function(x)
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(methods, x, calls_per_round, rounds, slow_methods=("keras_predict",)):
    """Return the per-call seconds of each method, the methods taking turns each round."""
    for function in methods.values():
        time_calls(function, x, 3)  # warm-up: tracing and first-run allocations
    seconds = {name: [] for name in methods}
    for _ in range(rounds):
        for name, function in methods.items():
            # Keras's predict loop costs milliseconds per call; fewer calls keep the run short.
            calls = max(calls_per_round // 10, 5) if name in slow_methods else calls_per_round
            seconds[name] += time_calls(function, x, calls)
    return seconds


def percentile(values, fraction):
    return float(np.quantile(np.asarray(values), fraction))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=("pacman", "mnist"), default="pacman", help="network to export")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over all methods")
    parser.add_argument("--calls", type=int, default=400, help="batch-1 calls per method and round")
    parser.add_argument("--batch-calls", type=int, default=10, help="batch-1,024 calls per method and round")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, onnxruntime {onnxruntime.__version__}")
    print(f"load average before: {load_before[0]:.2f}")
    with tempfile.TemporaryDirectory() as directory:
        model, path = train_and_export(args.network, directory)
        methods = build_methods(model, path)
        x_all, _ = make_data(args.network, 1024, seed=1)

        single = measure(methods, x_all[:1], args.calls, args.rounds)
        print(f"\nbatch 1, network {args.network}: latency in ms")
        print(f"  {'method':22s} {'median':>8s} {'p99':>8s} {'calls':>6s}")
        for name, values in single.items():
            print(
                f"  {name:22s} {1e3 * statistics.median(values):8.3f} "
                f"{1e3 * percentile(values, 0.99):8.3f} {len(values):6d}"
            )

        batch = measure(methods, x_all, args.batch_calls, args.rounds, slow_methods=())
        print(f"\nbatch 1024, network {args.network}: throughput")
        print(f"  {'method':22s} {'rows/s':>10s} {'ms/call':>8s}")
        for name, values in batch.items():
            median = statistics.median(values)
            print(f"  {name:22s} {1024 / median:10.0f} {1e3 * median:8.2f}")

    onnx_ms = 1e3 * statistics.median(single["onnx_predictor"])
    raw_ms = 1e3 * statistics.median(single["onnx_session_1thread"])
    savedmodel_ms = 1e3 * statistics.median(single["savedmodel_signature"])
    print(
        f"\nONNX predictor {onnx_ms:.3f} ms (raw session {raw_ms:.3f} ms) against the SavedModel "
        f"signature {savedmodel_ms:.3f} ms: {savedmodel_ms / onnx_ms:.1f}x lower "
        f"(target >= {ONNX_SPEEDUP_TARGET}x and < {ONNX_LATENCY_TARGET_MS} ms)"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
