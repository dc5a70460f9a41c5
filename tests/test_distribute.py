"""Tests of distributed training: replicas, worker processes, backup and restore, precision.

Logical CPU devices must be configured before TensorFlow initializes its
devices, and multi-worker strategies and SIGKILL need their own processes,
so those cases run small scripts in subprocesses and read their JSON
output. Data and networks are tiny, so each run takes seconds on a CPU.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# Imports, data and model builder shared by every script below. The
# builder's `deterministic` flag pins z_log_var to -60, so the sampled noise
# is scaled by exp(-30) (about 1e-13) and z equals z_mean to float32
# precision. That removes the Monte Carlo noise from a comparison while
# keeping the full objective and its gradients.
SCRIPT_HEADER = textwrap.dedent(
    """
    import json
    import os
    import sys

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

    import numpy as np
    from sklearn.datasets import make_blobs

    def make_data(rows=256):
        x, groups = make_blobs(n_samples=rows, n_features=6, centers=2, random_state=0)
        return x.astype("float32"), groups

    def make_builder(deterministic=False):
        from dgc_tf.model import DGC

        def build_model(seed):
            model = DGC(num_clusters=2, response="categorical", latent_dim=2, encoder_units=(16, 16), seed=seed)
            if deterministic:
                model.encoder.log_var_bounds = (-60.0, -60.0)
            return model

        return build_model
    """
)

REPLICA_SCRIPT = textwrap.dedent(
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras

    from dgc_tf.training import data_pipeline, distribute

    # One instance of each strategy for the whole script. A second
    # MirroredStrategy over the same devices restarts the collective instance
    # keys, and its all-reduce then collides with one of the first strategy
    # (a shape mismatch error between the two gradient lists).
    ONE_DEVICE = tf.distribute.OneDeviceStrategy("/cpu:0")
    TWO_REPLICAS = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def weights_of(model):
        return [weight.numpy() for weight in model.weights]

    def max_difference(first, second):
        return float(max(np.abs(a - b).max() for a, b in zip(first, second)))

    def train_run(strategy, deterministic):
        x, y = make_data()
        model, history = distribute.train(
            make_builder(deterministic), x, y, strategy=strategy, epochs=2, batch_size=64, pretrain_epochs=1, seed=1
        )
        return weights_of(model), history.history

    def two_sgd_steps(strategy, rows, deterministic):
        # Plain SGD on batches of 58 rows: the weight change is proportional
        # to the gradient, so a wrong loss scale on one replica shows up
        # directly (Adam would normalize most of it away). With 115 rows the
        # second batch has 57 rows, which two replicas split into 29 and 28.
        # The first batch must split evenly, because Keras 3.15 adds the
        # replicas' first batches together to build the model's metrics.
        x, y = make_data()
        x, y = x[:rows], y[:rows]
        keras.utils.set_random_seed(1)
        with strategy.scope():
            model = make_builder(deterministic)(1)
            model.adapt(x, y)
            model.initialize_prior(x)
            model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05))
        dataset = data_pipeline.make_dataset(model, x, y, batch_size=58, shuffle=False)
        history = model.fit(dataset, epochs=1, verbose=0)
        return weights_of(model), history.history["loss"][0]

    result = {}

    weights_one, history_one = train_run(ONE_DEVICE, deterministic=True)
    weights_two, history_two = train_run(TWO_REPLICAS, deterministic=True)
    result["history_one"] = history_one
    result["history_two"] = history_two
    result["weights_difference"] = max_difference(weights_one, weights_two)

    strategy = TWO_REPLICAS
    x, y = make_data()
    with strategy.scope():
        model = make_builder()(1)
        model.pretrain(x, y, epochs=0)
    copies = distribute.prior_replica_values(model)
    result["prior_copies"] = len(copies)
    result["prior_copies_difference"] = float(max(np.abs(copy - copies[0]).max() for copy in copies))

    for name, rows, deterministic in [("even", 116, True), ("odd", 115, True), ("noisy", 116, False)]:
        weights_one, loss_one = two_sgd_steps(ONE_DEVICE, rows, deterministic)
        weights_two, loss_two = two_sgd_steps(TWO_REPLICAS, rows, deterministic)
        result[f"step_{name}_weights_difference"] = max_difference(weights_one, weights_two)
        result[f"step_{name}_loss"] = [loss_one, loss_two]

    print("RESULT " + json.dumps(result))
    """
)

WORKER_SCRIPT = textwrap.dedent(
    """
    from dgc_tf.training import distribute

    output_path = sys.argv[1]
    x, y = make_data()
    model, history = distribute.train(
        make_builder(), x, y, strategy="multi-worker", epochs=2, batch_size=64, pretrain_epochs=1, seed=3
    )
    np.savez(output_path, *[weight.numpy() for weight in model.weights])
    print("RESULT " + json.dumps({"loss": history.history["loss"]}))
    """
)

RESUME_SCRIPT = textwrap.dedent(
    """
    import signal

    import keras

    from dgc_tf.training import distribute

    backup_dir, epoch_log, kill_epoch, kill_batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    class EpochLog(keras.callbacks.Callback):
        # Appends each finished epoch to a file and, when asked, kills this
        # process with SIGKILL in the middle of epoch `kill_epoch`.
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == kill_epoch and batch == kill_batch:
                os.kill(os.getpid(), signal.SIGKILL)

        def on_epoch_end(self, epoch, logs=None):
            with open(epoch_log, "a") as log:
                log.write(f"{epoch}\\n")

    x, y = make_data()
    model, history = distribute.train(
        make_builder(),
        x,
        y,
        strategy="auto",
        epochs=4,
        batch_size=64,
        pretrain_epochs=1,
        seed=2,
        backup_dir=backup_dir,
        callbacks=[EpochLog()],
    )
    print("RESULT " + json.dumps({"epochs_in_history": len(history.history["loss"])}))
    """
)


def run_script(tmp_path, name, body, args=(), env=None, timeout=240):
    """Write `SCRIPT_HEADER + body` to a file and start it with this Python."""
    path = tmp_path / f"{name}.py"
    path.write_text(SCRIPT_HEADER + body)
    environment = dict(os.environ, **(env or {}))
    return subprocess.Popen(
        [sys.executable, str(path), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def read_result(process, timeout=240):
    """Wait for a script and return the JSON it printed after `RESULT`."""
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"script failed with code {process.returncode}:\n{stderr[-3000:]}"
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"script printed no RESULT line:\n{stdout[-2000:]}\n{stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def free_ports(count):
    """Return `count` TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture(scope="module")
def replica_result(tmp_path_factory):
    """Run the one-device versus two-replica comparisons once for all tests that read them."""
    tmp_path = tmp_path_factory.mktemp("replicas")
    return read_result(run_script(tmp_path, "replicas", REPLICA_SCRIPT))


def test_replicas_match_one_device_history(replica_result):
    # Without sampling noise the only differences are float32 rounding from
    # summing gradients in another order, so 1e-5 relative (about 100 ulps) is ample.
    for name, values_one in replica_result["history_one"].items():
        values_two = replica_result["history_two"][name]
        np.testing.assert_allclose(values_two, values_one, rtol=1e-5, atol=1e-6, err_msg=name)


def test_replicas_match_one_device_weights(replica_result):
    # Measured: about 3e-8 after 1 pretraining and 2 training epochs (8 steps).
    assert replica_result["weights_difference"] < 1e-5


def test_prior_assignment_reaches_every_replica(replica_result):
    assert replica_result["prior_copies"] == 2
    assert replica_result["prior_copies_difference"] == 0.0


def test_sgd_even_batches_match(replica_result):
    assert replica_result["step_even_weights_difference"] < 1e-6
    np.testing.assert_allclose(*replica_result["step_even_loss"], rtol=1e-6)


def test_sgd_odd_batch_loss_matches(replica_result):
    # The Mean trackers sum totals and counts across replicas, so the
    # reported loss is right even when the replicas get 29 and 28 rows.
    np.testing.assert_allclose(*replica_result["step_odd_loss"], rtol=1e-6)


def test_sgd_odd_batch_weights_match(replica_result):
    assert replica_result["step_odd_weights_difference"] < 1e-6


def test_sgd_with_noise_matches(replica_result):
    assert replica_result["step_noisy_weights_difference"] < 1e-5


def test_two_workers_identical_weights(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(
            run_script(tmp_path, f"worker_{index}", WORKER_SCRIPT, [tmp_path / f"weights_{index}.npz"], {"TF_CONFIG": tf_config})
        )
    results = [read_result(process) for process in processes]

    assert results[0]["loss"] == results[1]["loss"]
    weights = [np.load(tmp_path / f"weights_{index}.npz") for index in range(2)]
    assert weights[0].files == weights[1].files
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)
    assert all(np.isfinite(loss) for loss in results[0]["loss"])


def test_killed_run_resumes_from_backup(tmp_path):
    backup_dir = tmp_path / "backup"
    epoch_log = tmp_path / "epochs.txt"
    arguments = [backup_dir, epoch_log, 2, 1]

    killed = run_script(tmp_path, "resume", RESUME_SCRIPT, arguments)
    killed.communicate(timeout=240)
    assert killed.returncode == -signal.SIGKILL
    assert epoch_log.read_text().split() == ["0", "1"]
    assert (backup_dir / "latest.weights.h5").exists()

    result = read_result(run_script(tmp_path, "resume", RESUME_SCRIPT, [backup_dir, epoch_log, -1, -1]))
    assert epoch_log.read_text().split() == ["0", "1", "2", "3"]
    assert result["epochs_in_history"] == 2
    assert not backup_dir.exists()


@pytest.fixture
def tiny_data():
    from sklearn.datasets import make_blobs

    x, groups = make_blobs(n_samples=128, n_features=6, centers=2, random_state=0)
    return x.astype("float32"), groups


def build_tiny_model(seed):
    from dgc_tf.model import DGC

    return DGC(num_clusters=2, response="categorical", latent_dim=2, encoder_units=(16, 16), seed=seed)


def test_jit_compile_loss_is_finite(tiny_data):
    from dgc_tf.training import distribute

    model, history = distribute.train(
        build_tiny_model,
        *tiny_data,
        strategy="one-device",
        epochs=1,
        batch_size=32,
        pretrain_epochs=0,
        jit_compile=True,
        steps_per_execution=2,
    )
    assert model.jit_compile
    assert len(history.history["loss"]) == 1
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_loss_is_finite(tiny_data, policy):
    import keras

    from dgc_tf.training import distribute

    try:
        model, history = distribute.train(
            build_tiny_model, *tiny_data, strategy="one-device", epochs=1, batch_size=32, pretrain_epochs=1, mixed_precision=policy
        )
    finally:
        assert keras.mixed_precision.global_policy().name == "float32"
    assert np.all(np.isfinite(history.history["loss"]))


def test_make_strategy_rejects_unknown_name():
    from dgc_tf.training import distribute

    with pytest.raises(ValueError, match="must be one of"):
        distribute.make_strategy("tpu")


def test_multi_worker_needs_tf_config(monkeypatch):
    from dgc_tf.training import distribute

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.make_strategy("multi-worker")


def test_dataset_yields_encoded_labels(tiny_data):
    from dgc_tf.training import data_pipeline

    x, groups = tiny_data
    labels = np.where(groups == 0, "a", "b")
    model = build_tiny_model(0)
    model.adapt(x, labels)
    dataset = data_pipeline.make_dataset(model, x, labels, batch_size=50, shuffle=False)
    batches = list(dataset.as_numpy_iterator())

    assert [len(batch_x) for batch_x, _ in batches] == [50, 50, 28]
    np.testing.assert_array_equal(batches[0][0], x[:50])
    np.testing.assert_array_equal(batches[0][1], (groups[:50] == 1).astype(batches[0][1].dtype))
    assert dataset.options().experimental_distribute.auto_shard_policy.name == "DATA"
