"""Requests per second and latency of `dgc-tf serve` over REST and gRPC, and of the ONNX predictor.

Trains a Pacman-sized model (2 features, K = 2, Gaussian y) for one epoch on
random data, exports it to a temporary directory, starts `dgc-tf serve` on it
as a separate process on 127.0.0.1, and measures from this process, for batch
sizes 1 and 64:

- latency: one client sending requests one after another (p50 and p99);
- throughput: `--clients` threads sending requests at once (requests and rows
  per second, with p50 and p99 latency under that load).

REST requests use the row format (`{"instances": [...]}`) over one
keep-alive `requests.Session` per thread. gRPC requests are `PredictRequest`
messages sent with TF Serving's `PredictionServiceStub` over one shared
channel. Request bodies are built once, so the figures cover the server, the
network stack and response parsing (JSON decoding, TensorProto to NumPy), not
the building of requests. The ONNX predictor (`dgc_tf.serving.onnx`) is timed
in this process, with no server.

Usage:

    python benchmarks/serving.py                 # prints the figures
    python benchmarks/serving.py --write-docs    # also writes the Serving section of docs/benchmarks.md
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from dgc_tf.serving.onnx import OnnxPredictor

from inference import train_and_export
from train_throughput import make_data

NETWORK = "pacman"
MODEL_NAME = NETWORK
BATCH_SIZES = (1, 64)
DOCS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks.md")
SECTION_TITLE = "## Serving (dgc-tf serve and the ONNX predictor)"
SERVER_START_TIMEOUT = 180


# ---------------------------------------------------------------------- server process


def start_server(base_dir, log_path):
    """Start `dgc-tf serve` on free ports; return the process and its REST and gRPC ports."""
    command = [sys.executable, "-m", "dgc_tf", "serve", base_dir, "--rest-port", "0", "--grpc-port", "0"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        with open(log_path) as text:
            match = re.search(r"REST on http://127\.0\.0\.1:(\d+), gRPC on 127\.0\.0\.1:(\d+)", text.read())
        if match:
            return process, int(match[1]), int(match[2])
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    with open(log_path) as text:
        raise RuntimeError(f"dgc-tf serve did not start; its log ends with:\n{text.read()[-2000:]}")


# ---------------------------------------------------------------------- clients


def rest_sender(port, x):
    url = f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}:predict"
    body = json.dumps({"instances": x.tolist()}).encode("utf-8")
    local = threading.local()

    def send():
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = local.session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"REST request failed with {response.status_code}: {response.text[:300]}")
        return response.json()["predictions"]

    return send


def grpc_sender(channel, x):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))

    def send():
        response = stub.Predict(request, timeout=60)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    return send


# ---------------------------------------------------------------------- measurement


def sequential(send, requests_count, warmup=20):
    for _ in range(warmup):
        send()
    seconds = []
    for _ in range(requests_count):
        start = time.perf_counter()
        send()
        seconds.append(time.perf_counter() - start)
    return seconds


def concurrent(send, clients, requests_per_client, warmup=5):
    """Return the wall time and per-request seconds of `clients` threads sending at once."""
    seconds = [[] for _ in range(clients)]
    errors = []
    barrier = threading.Barrier(clients + 1)

    def work(index):
        try:
            for _ in range(warmup):
                send()
            barrier.wait()
            for _ in range(requests_per_client):
                start = time.perf_counter()
                send()
                seconds[index].append(time.perf_counter() - start)
        except Exception as error:  # Reported after the run; a failed request voids the figures.
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} client thread(s) failed; first error: {errors[0]}")
    return wall, [value for values in seconds for value in values]


def summary(seconds):
    values = np.asarray(seconds)
    return {"p50_ms": 1e3 * float(np.quantile(values, 0.5)), "p99_ms": 1e3 * float(np.quantile(values, 0.99)),
            "count": int(values.size)}


def measure_protocol(send_by_batch, args):
    results = {}
    for batch_size, send in send_by_batch.items():
        count = args.requests if batch_size == 1 else max(args.requests // 4, 50)
        latency = summary(sequential(send, count))
        per_client = args.requests_per_client if batch_size == 1 else max(args.requests_per_client // 4, 10)
        wall, seconds = concurrent(send, args.clients, per_client)
        loaded = summary(seconds)
        results[batch_size] = {
            "latency": latency,
            "throughput": {
                "requests_per_s": loaded["count"] / wall,
                "rows_per_s": loaded["count"] * batch_size / wall,
                "p50_ms": loaded["p50_ms"],
                "p99_ms": loaded["p99_ms"],
                "count": loaded["count"],
            },
        }
    return results


def measure_onnx(path, x_by_batch, calls):
    predictor = OnnxPredictor(path)
    results = {}
    for batch_size, x in x_by_batch.items():
        count = calls if batch_size == 1 else max(calls // 4, 50)
        results[batch_size] = summary(sequential(lambda: predictor.predict(x), count, warmup=50))
    return results


# ---------------------------------------------------------------------- report


def machine_description():
    model_name = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model_name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for package in ("tensorflow", "tensorflow-serving-api", "grpcio", "protobuf", "onnxruntime", "numpy", "requests"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {"cpu": model_name, "cores": os.cpu_count(), "python": platform.python_version(), "versions": versions}


def format_section(results, machine, args, command, load_before, load_after):
    lines = [
        SECTION_TITLE,
        "",
        "Written by `benchmarks/serving.py`. The server (`dgc-tf serve`, a separate process) and the",
        "load-generating clients ran on the same machine and shared its cores, so every client",
        "thread took CPU time from the server. The machine has "
        f"{machine['cores']} cores, shared with other jobs during the run",
        f"(1-minute load average {load_before:.2f} before, {load_after:.2f} after). The figures are",
        "measured under that contention, not the capacity of a dedicated server; rerun the script on the",
        "target machine before relying on them.",
        "",
        f"- CPU: `{machine['cpu']}` (`model name` in /proc/cpuinfo), {machine['cores']} cores",
        f"- Python {machine['python']}; " + ", ".join(f"{name} {version}" for name, version in machine["versions"].items()),
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`",
        "- model: Pacman-sized DGC (2 features, encoder 128-256-256, latent size 10, K = 2, Gaussian y),",
        "  trained one epoch on random data; each row returns `cluster` (int64), `cluster_probs` (2 floats),",
        "  `y_pred` (1 float) and `z_mean` (10 floats)",
        f"- latency: one client, requests sent one after another ({args.requests} at batch 1,"
        f" {max(args.requests // 4, 50)} at batch 64, after 20 warm-up requests)",
        f"- throughput: {args.clients} client threads at once, {args.requests_per_client} requests each at batch 1"
        f" and {max(args.requests_per_client // 4, 10)} at batch 64",
        "",
        "| API | batch | p50 ms (1 client) | p99 ms (1 client) | requests/s "
        f"({args.clients} clients) | rows/s | p50 ms (loaded) | p99 ms (loaded) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for protocol in ("REST", "gRPC"):
        for batch_size, entry in results[protocol].items():
            latency, throughput = entry["latency"], entry["throughput"]
            lines.append(
                f"| {protocol} | {batch_size} | {latency['p50_ms']:.2f} | {latency['p99_ms']:.2f} | "
                f"{throughput['requests_per_s']:.0f} | {throughput['rows_per_s']:.0f} | "
                f"{throughput['p50_ms']:.2f} | {throughput['p99_ms']:.2f} |"
            )
    lines += [
        "",
        "ONNX predictor (`dgc_tf.serving.onnx.OnnxPredictor.predict`, in process, no server, ONNX Runtime's",
        "default thread settings):",
        "",
        "| batch | p50 ms | p99 ms | calls |",
        "|---|---|---|---|",
    ]
    for batch_size, entry in results["ONNX"].items():
        lines.append(f"| {batch_size} | {entry['p50_ms']:.3f} | {entry['p99_ms']:.3f} | {entry['count']} |")
    lines.append("")
    return "\n".join(lines)


def write_section(section, path=DOCS_PATH):
    """Replace the serving section of docs/benchmarks.md, or append it; other sections stay as they are."""
    with open(path, encoding="utf-8") as file:
        text = file.read()
    start = text.find(SECTION_TITLE)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        following = re.search(r"^## ", text[start + len(SECTION_TITLE):], flags=re.MULTILINE)
        end = start + len(SECTION_TITLE) + following.start() if following else len(text)
        text = text[:start] + section + ("\n" + text[end:] if following else "")
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="sequential batch-1 requests per API (default: 400)")
    parser.add_argument("--clients", type=int, default=8, help="client threads for throughput (default: 8)")
    parser.add_argument("--requests-per-client", type=int, default=100, help="batch-1 requests per client thread (default: 100)")
    parser.add_argument("--onnx-calls", type=int, default=2000, help="batch-1 ONNX predictor calls (default: 2000)")
    parser.add_argument("--write-docs", action="store_true", help="write the results into docs/benchmarks.md")
    args = parser.parse_args(argv)
    command = "python benchmarks/serving.py " + " ".join(argv if argv is not None else sys.argv[1:])

    load_before = os.getloadavg()[0]
    x_all, _ = make_data(NETWORK, 64, seed=1)
    x_by_batch = {batch_size: x_all[:batch_size] for batch_size in BATCH_SIZES}
    with tempfile.TemporaryDirectory() as directory:
        _, path = train_and_export(NETWORK, directory)
        process, rest_port, grpc_port = start_server(directory, os.path.join(directory, "serve.log"))
        try:
            results = {"REST": measure_protocol({b: rest_sender(rest_port, x) for b, x in x_by_batch.items()}, args)}
            print("REST", json.dumps(results["REST"], indent=1))
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                results["gRPC"] = measure_protocol({b: grpc_sender(channel, x) for b, x in x_by_batch.items()}, args)
            print("gRPC", json.dumps(results["gRPC"], indent=1))
        finally:
            process.terminate()
            process.wait(timeout=60)
        results["ONNX"] = measure_onnx(path, x_by_batch, args.onnx_calls)
        print("ONNX", json.dumps(results["ONNX"], indent=1))
    load_after = os.getloadavg()[0]

    section = format_section(results, machine_description(), args, command.strip(), load_before, load_after)
    print()
    print(section)
    if args.write_docs:
        write_section(section)
        print(f"wrote the serving section of {os.path.normpath(DOCS_PATH)}")


if __name__ == "__main__":
    main()
