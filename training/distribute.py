"""Distributed training of DGC models with `tf.distribute`.

`make_strategy` picks a strategy by name and `train` runs the whole
pipeline under it: build and compile inside `strategy.scope()`, pretrain the
autoencoder, initialize the mixture prior once, then fit on a `tf.data`
pipeline, optionally with `keras.callbacks.BackupAndRestore`.

`DGC.train_step` divides the summed per-example objective by the global
batch size and the strategy sums the replicas' gradients, so without
sampling noise the weight updates match one device to float32 rounding.
NOTE: two cases still depend on the number of replicas. A last batch that
splits unevenly is divided by the wrong size on each replica, and every
replica draws the same z noise.

`python -m dgc_tf.training.distribute --help` lists the options of a
throughput measurement on synthetic data.
"""

import argparse
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from dgc_tf import preprocessing
from dgc_tf.model import PRIOR_INITIALIZATIONS, Autoencoder, FiniteLossGuard
from dgc_tf.training import data_pipeline

STRATEGY_NAMES = ("auto", "one-device", "mirrored", "multi-worker")
MIXED_PRECISION_POLICIES = ("mixed_float16", "mixed_bfloat16")


def make_strategy(name="auto", devices=None):
    """Create a `tf.distribute.Strategy` by name.

    Args:
        name: `"auto"` (a `MirroredStrategy` when more than one GPU is
            visible, else the default strategy), `"one-device"` (the first
            GPU, else the CPU), `"mirrored"` (all visible GPUs, or the
            `devices` given), or `"multi-worker"`
            (`MultiWorkerMirroredStrategy`, which reads the cluster and this
            process's task from the `TF_CONFIG` environment variable).
            A `tf.distribute.Strategy` instance is returned unchanged.
        devices: device names for `"mirrored"`, e.g.
            `["/cpu:0", "/cpu:1"]` with logical CPU devices.

    `"multi-worker"` must be created before the program runs any other
    TensorFlow operation, because it configures the collective ops of the
    runtime.
    """
    if isinstance(name, tf.distribute.Strategy):
        return name
    if name not in STRATEGY_NAMES:
        raise ValueError(f"`strategy` must be one of {STRATEGY_NAMES} or a tf.distribute.Strategy. Received: {name!r}")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name in ("auto", "one-device"):
        # Listing devices initializes the TensorFlow runtime, which must not
        # happen before a multi-worker strategy is created.
        gpus = tf.config.list_logical_devices("GPU")
        if name == "auto":
            return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if "TF_CONFIG" not in os.environ:
        raise ValueError(
            "strategy='multi-worker' needs the TF_CONFIG environment variable, e.g. "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}.'
        )
    return tf.distribute.MultiWorkerMirroredStrategy()


def worker_task():
    """Return `(task_type, task_index)` from `TF_CONFIG`, or `(None, None)` without it."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = config.get("task", {})
    return task.get("type"), task.get("index")


def backup_directory_for_worker(backup_dir, strategy):
    """Return where this process writes its `BackupAndRestore` files.

    Under a multi-worker strategy every worker saves its own copy, and two
    workers writing the same file would corrupt it. So worker 0 (the chief)
    uses `backup_dir` and worker `i > 0` uses `backup_dir/worker_i`.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return backup_dir
    task_type, task_index = worker_task()
    if task_type in (None, "chief") or (task_type == "worker" and task_index == 0):
        return backup_dir
    return os.path.join(backup_dir, f"{task_type}_{task_index}")


def has_backup(backup_dir):
    """Return whether `backup_dir` contains weights saved by `BackupAndRestore`."""
    return backup_dir is not None and os.path.exists(os.path.join(backup_dir, "latest.weights.h5"))


def prior_replica_values(model):
    """Return the mixture prior's means as NumPy arrays, one per replica copy.

    Under a `MirroredStrategy` a variable keeps one copy per device. An
    assignment in cross-replica context, as in `DGC.initialize_prior`,
    writes every copy. Outside a strategy the list has one array.
    """
    variable = model.prior.component_means
    tensor = getattr(variable, "value", variable)
    copies = getattr(tensor, "values", None) or getattr(variable, "values", None)
    if copies is None:
        return [variable.numpy()]
    return [copy.numpy() for copy in copies]


def use_vector_logs(model, strategy):
    """Make `model.train_step` return each log as a vector of length 1 under a multi-worker strategy.

    Keras 3.15 reduces the per-step logs of a `MultiWorkerMirroredStrategy`
    with `strategy.reduce("MEAN", value, axis=0)`, which raises "Invalid
    reduction dimension 0 for input with 0 dimensions" for the scalar logs
    that every train step returns. With length-1 vectors the reduction
    returns the scalar mean over replicas. Epoch logs come from the metrics and are unaffected. Other strategies
    reduce scalars correctly, so the model is left unchanged for them.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    train_step = model.train_step

    def train_step_with_vector_logs(data):
        logs = train_step(data)
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}

    model.train_step = train_step_with_vector_logs


def skip_first_batch_reduction(model, strategy):
    """Stop Keras from reducing the first batch of a built DGC model under a multi-worker strategy.

    Before training, Keras 3.15 reduces the first distributed batch across
    replicas to build metrics it may lack. With more than one worker
    `CollectiveAllReduceStrategy.reduce` rejects an `(x, y)` tuple of
    per-replica values ("Attempt to convert a value (PerReplica...) to a
    Tensor"). A built DGC model compiled with an optimizer alone has no
    compiled loss or metrics to build, so only the optimizer's variables
    are created here, inside the strategy's scope.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    if not model.built:
        raise ValueError("The model must be built (by `adapt` or `pretrain`) before training on several workers.")

    def build_optimizer(iterator=None, data_batch=None):
        with strategy.scope():
            if not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)

    model._maybe_symbolic_build = build_optimizer


def pretrain(
    model,
    x,
    y,
    strategy,
    epochs=10,
    batch_size=256,
    learning_rate=1e-3,
    verbose=0,
    prior_init="mixture",
    mixture_n_init=1,
):
    """Pretrain the autoencoder of `model` and initialize its prior, as `DGC.pretrain` does.

    `DGC.pretrain` compiles its own autoencoder, whose train step cannot be
    adapted to a multi-worker strategy (see `use_vector_logs`), so this
    function repeats its steps with the same classes. Call it inside
    `strategy.scope()`. The prior is fitted in cross-replica context, so
    its assignment reaches every replica's copy of the variables.
    """
    if prior_init not in PRIOR_INITIALIZATIONS:
        raise ValueError(f"`prior_init` must be one of {PRIOR_INITIALIZATIONS}. Received: prior_init={prior_init!r}")
    if prior_init == "class":
        model._check_class_init(y)
    x = preprocessing.as_feature_matrix(x)
    if not getattr(model, "adapted", False):
        model.adapt(x, y)
    if epochs > 0:
        autoencoder = Autoencoder(model)
        autoencoder.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate))
        use_vector_logs(autoencoder, strategy)
        guard = FiniteLossGuard()
        autoencoder.fit(x, epochs=epochs, batch_size=batch_size, verbose=verbose, callbacks=[guard])
        guard.raise_if_stopped()
    if prior_init == "mixture":
        model.initialize_prior(x, n_init=mixture_n_init)
    elif prior_init == "class":
        model.initialize_class_prior(x, y, n_init=mixture_n_init)
    else:
        model.initialize_shared_prior(x)


def train(
    build_model,
    x,
    y=None,
    strategy="auto",
    epochs=10,
    batch_size=256,
    pretrain_epochs=10,
    seed=0,
    backup_dir=None,
    mixed_precision=None,
    jit_compile=False,
    steps_per_execution=1,
    learning_rate=1e-3,
    pretrain_learning_rate=1e-3,
    prior_init="mixture",
    drop_remainder=False,
    callbacks=None,
    verbose=0,
):
    """Build, pretrain and fit a DGC model under a distribution strategy.

    Inside `strategy.scope()` the model is built with `build_model(seed)`,
    its autoencoder pretrained and its mixture prior initialized once. The
    prior is fitted to the whole of `x` in cross-replica context, so the
    assignment reaches every replica's copy. The model is then compiled and
    fitted on a shuffled `tf.data` pipeline of global batches.

    When `backup_dir` contains a backup from an interrupted run, pretraining
    and the prior initialization are skipped, because
    `BackupAndRestore` reloads all weights (prior and optimizer included)
    and the epoch count at the start of `fit`. The resumed run then trains
    only the remaining epochs.

    Args:
        build_model: callable taking an integer seed and returning a
            `dgc_tf.DGC`. It is called inside `strategy.scope()` and the
            model is compiled again here.
        x: raw features of shape `(num_samples, num_features)`.
        y: raw responses of shape `(num_samples,)`, or None (VaDE).
        strategy: a name accepted by `make_strategy`, or a strategy.
        epochs: epochs of the full objective.
        batch_size: global batch size, split across all replicas.
        pretrain_epochs: autoencoder epochs; 0 fits the mixture prior to
            the untrained encoder's codes.
        seed: seed of Keras, the model, the mixture fit and the shuffle.
        backup_dir: directory for `keras.callbacks.BackupAndRestore`
            (saved at every epoch end and deleted when training finishes),
            or None for no backup.
        mixed_precision: None, `"mixed_float16"` or `"mixed_bfloat16"`:
            the global Keras dtype policy while the model is built. The
            previous policy is restored when `train` returns.
            NOTE: with dgc_tf 0.1.0 both policies fail in the first
            pretraining step, because `DGC` computes its objective in the
            policy's float16 or bfloat16 compute dtype.
        jit_compile: compile the train step with XLA.
        steps_per_execution: train steps run per call of the compiled
            function.
        learning_rate: Adam learning rate of the full objective.
        pretrain_learning_rate: Adam learning rate of the autoencoder.
        prior_init: `"mixture"`, `"shared"` or `"class"`, see `DGC.pretrain`.
        drop_remainder: drop the last partial batch of every epoch.
        callbacks: more Keras callbacks for `fit`.
        verbose: Keras verbosity.

    Returns:
        `(model, history)`: the trained model and the
        `keras.callbacks.History` of the final `fit`. After a resumed run
        the history holds only the epochs trained by this call.
    """
    if mixed_precision not in (None,) + MIXED_PRECISION_POLICIES:
        raise ValueError(
            f"`mixed_precision` must be None or one of {MIXED_PRECISION_POLICIES}. "
            f"Received: mixed_precision={mixed_precision!r}"
        )
    strategy = make_strategy(strategy)
    replicas = strategy.num_replicas_in_sync
    if int(batch_size) % replicas:
        # Keras 3.15 adds the replicas' first batches together to build the
        # metrics, which fails when they differ in size.
        raise ValueError(
            f"`batch_size` must be a multiple of the number of replicas ({replicas}), so the "
            f"first batch splits evenly. Received: batch_size={batch_size!r}"
        )
    previous_policy = keras.mixed_precision.global_policy()
    if mixed_precision is not None:
        keras.mixed_precision.set_global_policy(mixed_precision)
    try:
        keras.utils.set_random_seed(seed)
        worker_backup_dir = backup_directory_for_worker(backup_dir, strategy) if backup_dir else None
        resuming = has_backup(worker_backup_dir)
        with strategy.scope():
            model = build_model(seed)
            # NOTE: workers decide this separately. A worker that finds no
            # backup while another does pretrains alone and waits forever
            # for the others' collective ops.
            if resuming:
                # Only the preprocessing statistics and the vocabulary are
                # learned here, because every weight is reloaded from the backup.
                model.adapt(x, y)
                model.prior_initialized = True
            else:
                pretrain(
                    model,
                    x,
                    y,
                    strategy,
                    epochs=pretrain_epochs,
                    batch_size=batch_size,
                    learning_rate=pretrain_learning_rate,
                    verbose=verbose,
                    prior_init=prior_init,
                )
            model.compile(
                optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                jit_compile=jit_compile,
                steps_per_execution=steps_per_execution,
            )
            use_vector_logs(model, strategy)
            skip_first_batch_reduction(model, strategy)

        dataset = data_pipeline.make_dataset(
            model, x, y, batch_size=batch_size, seed=seed, drop_remainder=drop_remainder
        )
        fit_callbacks = list(callbacks or [])
        if worker_backup_dir is not None:
            fit_callbacks.append(keras.callbacks.BackupAndRestore(worker_backup_dir))
        history = model.fit(dataset, epochs=epochs, callbacks=fit_callbacks, verbose=verbose)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return model, history


class ThroughputMeter(keras.callbacks.Callback):
    """Record the wall time of every training epoch, in seconds."""

    def __init__(self):
        super().__init__()
        self.epoch_seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._start)


def main(argv=None):
    """Measure training throughput on synthetic blobs under a chosen strategy."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--strategy", default="auto", choices=STRATEGY_NAMES, help="strategy name (ignored with --logical-cpus)")
    parser.add_argument(
        "--logical-cpus",
        type=int,
        default=0,
        help="split the CPU into this many logical devices and train with a MirroredStrategy over them (0: leave the CPU whole)",
    )
    parser.add_argument("--rows", type=int, default=8192, help="training rows")
    parser.add_argument("--features", type=int, default=20, help="features per row")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs, at least 2 (the first epoch traces the graph and is not timed)")
    parser.add_argument("--batch-size", type=int, default=256, help="global batch size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the model and the shuffle")
    arguments = parser.parse_args(argv)
    if arguments.epochs < 2:
        parser.error("--epochs must be at least 2, because the first epoch is not timed")

    devices = None
    if arguments.logical_cpus > 0:
        # Logical devices must be configured before TensorFlow initializes its runtime.
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * arguments.logical_cpus
        )
        devices = [f"/cpu:{index}" for index in range(arguments.logical_cpus)]
        strategy = make_strategy("mirrored", devices=devices)
    else:
        strategy = make_strategy(arguments.strategy)

    from sklearn.datasets import make_blobs

    from dgc_tf.model import DGC

    x, y = make_blobs(
        n_samples=arguments.rows, n_features=arguments.features, centers=3, random_state=arguments.seed
    )
    meter = ThroughputMeter()
    train(
        lambda seed: DGC(num_clusters=3, response="categorical", latent_dim=4, encoder_units=(64, 64), seed=seed),
        x.astype(np.float32),
        y,
        strategy=strategy,
        epochs=arguments.epochs,
        batch_size=arguments.batch_size,
        pretrain_epochs=1,
        seed=arguments.seed,
        callbacks=[meter],
    )
    seconds = float(np.mean(meter.epoch_seconds[1:]))
    print(
        f"replicas={strategy.num_replicas_in_sync} rows={arguments.rows} batch_size={arguments.batch_size} "
        f"seconds_per_epoch={seconds:.3f} samples_per_second={arguments.rows / seconds:.0f}"
    )


if __name__ == "__main__":
    main()
