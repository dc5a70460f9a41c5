"""Tests for dgc_tf.model.DGC: training on known clusters, invariants, round trips and errors."""

import os
import subprocess
import sys
import textwrap
import warnings
from typing import NamedTuple

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sklearn.datasets import make_blobs

import dgc_tf
from dgc_tf.initialization import MixtureInitializationError
from dgc_tf.metrics import clustering_accuracy
from dgc_tf.model import DGC

TERM_NAMES = ("reconstruction", "response", "cluster_kl", "latent_kl")
# Tiny networks keep each training run in this file to a few seconds on a 2-core CPU.
SMALL_NETWORK = {"latent_dim": 2, "encoder_units": (16, 16)}
FALLBACK_METHODS = ("gaussian_mixture", "regularized_gaussian_mixture", "kmeans")


class TrainedModel(NamedTuple):
    model: DGC
    history: keras.callbacks.History
    caught_warnings: list


def small_model(num_clusters, **overrides):
    arguments = dict(SMALL_NETWORK, seed=0)
    arguments.update(overrides)
    return DGC(num_clusters, **arguments)


def small_blobs(num_rows, num_features=5, num_groups=2, seed=0):
    x, groups = make_blobs(
        n_samples=num_rows, n_features=num_features, centers=num_groups, cluster_std=1.0, random_state=seed
    )
    return x.astype(np.float32), groups


def collapse_messages(caught_warnings):
    messages = [str(item.message) for item in caught_warnings]
    return [message for message in messages if "collapsed" in message or "nearly uniform" in message]


def assert_history_finite(history):
    for name, values in history.history.items():
        assert np.all(np.isfinite(values)), f"{name}: {values}"


def assert_weights_sum_to_one(cluster_probs):
    assert np.all(np.isfinite(cluster_probs))
    assert np.all(cluster_probs >= 0.0)
    np.testing.assert_allclose(cluster_probs.sum(axis=1), 1.0, atol=1e-6)


def mixture_weights(model):
    return np.exp(model.prior.log_mixture_weights().numpy().astype(np.float64))


@pytest.fixture(scope="module")
def blob_run(blobs):
    """Four separated blobs with labels coded 1..4, after pretraining and five epochs."""
    x, groups = blobs
    keras.utils.set_random_seed(0)
    model = small_model(4, response="categorical")
    # At learning rate 1e-3 the randomly started heads still mislabel half of the
    # rows after 20 epochs, but 1e-2 labels all of them within 5 epochs (seeds 0-2).
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.pretrain(x, groups + 1, epochs=10, batch_size=100, learning_rate=1e-2, verbose=0)
        history = model.fit(x, groups + 1, epochs=5, batch_size=100, verbose=0)
    return TrainedModel(model, history, caught)


@pytest.fixture(scope="module")
def blob_model(blob_run):
    return blob_run.model


STRING_CLASSES = ["ant", "bee", "cat", "dog"]


@pytest.fixture(scope="module")
def string_label_model(blob_model):
    """The trained blob model with its class codes 1..4 renamed to STRING_CLASSES."""
    config = blob_model.get_config()
    config["classes"] = STRING_CLASSES
    model = DGC.from_config(config)
    model.build((None, blob_model.num_features))
    model.set_weights(blob_model.get_weights())
    return model


# ----------------------------------------------------------------- known clusters


def test_blobs_clustered_accurately(blob_run, blobs):
    x, groups = blobs

    clusters = blob_run.model.predict(x, verbose=0)["cluster"]
    labeled_clusters = blob_run.model.predict_labeled(x, groups + 1)["cluster"]

    counts = np.bincount(clusters, minlength=4)
    assert np.all(counts >= 100), counts
    assert clustering_accuracy(groups, clusters) >= 0.95
    assert clustering_accuracy(groups, labeled_clusters) >= 0.95
    assert collapse_messages(blob_run.caught_warnings) == []
    assert blob_run.model.initialization_method in FALLBACK_METHODS


def test_training_history_finite(blob_run):
    assert set(TERM_NAMES) | {"loss"} <= set(blob_run.history.history)
    assert_history_finite(blob_run.history)


def test_fit_warns_on_collapsed_clustering(blobs):
    x, groups = blobs[0][:100], blobs[1][:100]
    model = small_model(4)
    model.pretrain(x, groups, epochs=0)
    latent_dim = model.latent_dim
    # One broad component covers every code; the others sit far away and narrow.
    means = np.concatenate([np.zeros((1, latent_dim)), np.full((3, latent_dim), 1e3)])
    variances = np.concatenate([np.full((1, latent_dim), 1e4), np.full((3, latent_dim), 1e-2)])
    model.prior.assign([0.97, 0.01, 0.01, 0.01], means, variances)
    model.compile(optimizer=keras.optimizers.Adam(0.0))

    with pytest.warns(UserWarning, match=r"collapsed: 100 of 100 rows are in cluster 0"):
        model.fit(x, groups, epochs=1, batch_size=100, verbose=0)


# ----------------------------------------------------------------- invariants


def test_cluster_probs_sum_to_one(blob_model, blobs):
    x, groups = blobs

    unlabeled = blob_model.predict(x, verbose=0)["cluster_probs"]
    labeled = blob_model.predict_labeled(x, groups + 1)["cluster_probs"]

    assert unlabeled.shape == labeled.shape == (len(x), 4)
    assert_weights_sum_to_one(unlabeled)
    assert_weights_sum_to_one(labeled)


def test_mixture_weights_on_simplex_after_training(blob_model):
    weights = mixture_weights(blob_model)

    assert np.all(weights > 0.0)
    assert weights.sum() == pytest.approx(1.0, abs=1e-6)


def test_far_row_weights_finite(blob_model, blobs):
    x = blobs[0][:5].copy()
    x[2] += 1000.0 * x.std(axis=0)

    outputs = blob_model.predict(x, verbose=0)

    assert_weights_sum_to_one(outputs["cluster_probs"])
    assert np.all(np.isfinite(outputs["y_pred"]))


def test_predict_float64_and_pandas_match_float32(blob_model, blobs):
    x = blobs[0][:200]

    from_float32 = blob_model.predict(x, verbose=0)
    from_float64 = blob_model.predict(x.astype(np.float64), verbose=0)
    from_frame = blob_model.predict(pd.DataFrame(x.astype(np.float64)), verbose=0)

    for name, expected in from_float32.items():
        np.testing.assert_array_equal(from_float64[name], expected, err_msg=name)
        np.testing.assert_array_equal(from_frame[name], expected, err_msg=name)


def test_predict_independent_of_batch_size(blob_model, blobs):
    x = blobs[0][:200]

    reference = blob_model.predict(x, batch_size=200, verbose=0)

    for batch_size in (1, 7):
        outputs = blob_model.predict(x, batch_size=batch_size, verbose=0)
        for name, expected in reference.items():
            np.testing.assert_allclose(
                outputs[name], expected, atol=1e-6, err_msg=f"{name}, batch {batch_size}"
            )


# ----------------------------------------------------------------- epoch means and validation


class SeedStateRecorder(keras.callbacks.Callback):
    """Record the model's noise seed state when each training epoch and each evaluation begins."""

    def __init__(self):
        super().__init__()
        self.epoch_states = []
        self.test_states = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_states.append(self.model.seed_generator.state.numpy().copy())

    def on_test_begin(self, logs=None):
        self.test_states.append(self.model.seed_generator.state.numpy().copy())


def recompute_batch_terms(model, x, y_encoded, seed_state, batch_size):
    """Recompute each batch's ELBO terms with the noise the model drew from `seed_state`."""
    model.seed_generator.state.assign(seed_state)
    batches = []
    for start in range(0, len(x), batch_size):
        terms = model.compute_terms(x[start : start + batch_size], y_encoded[start : start + batch_size])
        batches.append({name: value.numpy() for name, value in terms.items()})
    return batches


def epoch_mean(batches, name):
    if name == "loss":
        return float(np.mean(np.concatenate([-batch["elbo"] for batch in batches])))
    return float(np.mean(np.concatenate([batch[name] for batch in batches])))


@pytest.fixture(scope="module")
def frozen_model():
    """A model compiled with learning rate 0, so that training leaves its weights unchanged."""
    x, groups = small_blobs(140, seed=2)
    keras.utils.set_random_seed(0)
    model = small_model(2)
    model.pretrain(x, groups, epochs=0)
    model.compile(optimizer=keras.optimizers.Adam(0.0))
    return model, x, groups


def test_logged_values_are_epoch_means(frozen_model):
    model, x, groups = frozen_model
    x_train, y_train, x_val, y_val = x[:100], groups[:100], x[100:], groups[100:]
    recorder = SeedStateRecorder()
    weights_before = [variable.numpy().copy() for variable in model.trainable_variables]

    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        batch_size=30,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[recorder],
    )

    for before, variable in zip(weights_before, model.trainable_variables):
        np.testing.assert_array_equal(variable.numpy(), before)
    for name in ("loss",) + TERM_NAMES:
        assert f"val_{name}" in history.history
    for epoch in range(2):
        train_batches = recompute_batch_terms(
            model, x_train, model.encode_response(y_train), recorder.epoch_states[epoch], 30
        )
        val_batches = recompute_batch_terms(
            model, x_val, model.encode_response(y_val), recorder.test_states[epoch], 30
        )
        for name in ("loss",) + TERM_NAMES:
            assert history.history[name][epoch] == pytest.approx(
                epoch_mean(train_batches, name), rel=1e-5, abs=1e-6
            ), name
            assert history.history[f"val_{name}"][epoch] == pytest.approx(
                epoch_mean(val_batches, name), rel=1e-5, abs=1e-6
            ), f"val_{name}"
        last_batch_loss = float(np.mean(-train_batches[-1]["elbo"]))
        assert abs(history.history["loss"][epoch] - last_batch_loss) > 1e-3


def test_validation_split_runs_same_objective(frozen_model):
    model, x, groups = frozen_model
    recorder = SeedStateRecorder()

    history = model.fit(
        x[:100],
        groups[:100],
        validation_split=0.2,
        batch_size=30,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[recorder],
    )

    # Keras holds out the last 20% of the rows, before any shuffling.
    val_batches = recompute_batch_terms(
        model, x[80:100], model.encode_response(groups[80:100]), recorder.test_states[0], 30
    )
    for name in ("loss",) + TERM_NAMES:
        assert history.history[f"val_{name}"][0] == pytest.approx(
            epoch_mean(val_batches, name), rel=1e-5, abs=1e-6
        ), name


def test_evaluate_matches_recomputed_objective(frozen_model):
    model, x, groups = frozen_model
    recorder = SeedStateRecorder()

    results = model.evaluate(x, groups, batch_size=40, verbose=0, return_dict=True, callbacks=[recorder])

    batches = recompute_batch_terms(model, x, model.encode_response(groups), recorder.test_states[0], 40)
    for name in ("loss",) + TERM_NAMES:
        assert results[name] == pytest.approx(epoch_mean(batches, name), rel=1e-5, abs=1e-6), name


# ----------------------------------------------------------------- response families and heads


@pytest.mark.parametrize(
    "response, head, num_clusters",
    [("categorical", "linear", 2), ("bernoulli", "bias", 2), ("gaussian", "mlp", 3)],
)
def test_family_and_head_train_one_epoch(response, head, num_clusters):
    x, groups = small_blobs(80, seed=3)
    rng = np.random.default_rng(0)
    if response == "categorical":
        y, classes = groups + 10, [10, 11]
    elif response == "bernoulli":
        y, classes = np.array(["no", "yes"])[groups], ["no", "yes"]
    else:
        # All-distinct continuous values: K must stay as given.
        y, classes = groups * 5.0 + rng.normal(size=len(groups)), None
    model = small_model(num_clusters, response=response, head=head, head_units=(8,))

    model.pretrain(x, y, epochs=0)
    history = model.fit(x, y, epochs=1, batch_size=40, verbose=0)
    outputs = model.predict(x, verbose=0)

    assert_history_finite(history)
    assert model.classes == classes
    assert model.num_clusters == num_clusters
    assert model.prior.mixture_logits.shape == (num_clusters,)
    assert outputs["cluster_probs"].shape == (len(x), num_clusters)
    assert_weights_sum_to_one(outputs["cluster_probs"])
    expected_y_shape = (len(x), 2) if response == "categorical" else (len(x),)
    assert outputs["y_pred"].shape == expected_y_shape
    assert np.all(np.isfinite(outputs["y_pred"]))
    if response == "gaussian":
        with pytest.raises(ValueError, match=r"for class responses"):
            model.predict_labels(x)
    else:
        assert set(model.predict_labels(x)) <= set(classes)


@pytest.mark.parametrize("head", ["bias", "linear", "mlp"])
def test_response_head_capacity_configured(head):
    model = small_model(2, response="categorical", head=head, num_classes=3)

    model.build((None, 4))

    assert model.heads.capacity == head
    assert model.heads.num_params == 3


# ----------------------------------------------------------------- VaDE mode


@pytest.fixture(scope="module")
def vade_run():
    x, groups = small_blobs(100, seed=4)
    keras.utils.set_random_seed(0)
    model = small_model(2, response="gaussian", response_weight=0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.pretrain(x, epochs=0)
        history = model.fit(x, epochs=1, batch_size=50, verbose=0)
    return TrainedModel(model, history, caught), x, groups


def test_vade_fit_without_response(vade_run):
    run, x, _ = vade_run

    outputs = run.model.predict(x, verbose=0)

    assert_history_finite(run.history)
    assert run.history.history["response"] == [0.0]
    assert_weights_sum_to_one(outputs["cluster_probs"])


def test_vade_fit_without_gradient_warnings(vade_run):
    run, _, _ = vade_run

    messages = [str(item.message) for item in run.caught_warnings]

    assert not [message for message in messages if "Gradients do not exist" in message]


def test_vade_fit_default_response_without_y():
    x, _ = small_blobs(60, seed=4)
    model = small_model(2, response_weight=0.0)

    history = model.fit(x, epochs=1, batch_size=30, verbose=0)

    assert_history_finite(history)


# ----------------------------------------------------------------- hard inputs


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_raw_pixels_with_high_learning_rate(likelihood):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (200, 64)).astype(np.float32)
    y = rng.integers(0, 2, 200)
    model = small_model(2, likelihood=likelihood)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))

    try:
        model.pretrain(x, y, epochs=2, batch_size=50, learning_rate=1e-2, verbose=0)
        history = model.fit(x, y, epochs=2, batch_size=50, verbose=0)
    except FloatingPointError as error:
        assert "in epoch" in str(error)
        assert "learning rate" in str(error)
    else:
        assert_history_finite(history)
        weights = mixture_weights(model)
        assert np.all(weights > 0.0)
        assert weights.sum() == pytest.approx(1.0, abs=1e-6)


def test_non_finite_loss_names_epoch():
    x, groups = small_blobs(50, seed=6)
    model = small_model(2)
    model.pretrain(x, groups, epochs=0)
    # A step of this size sends the weights, and then the loss, to inf or NaN.
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1e30))

    with pytest.raises(FloatingPointError, match=r"NaN or infinite in epoch \d+, batch 0\..*learning rate"):
        model.fit(x, groups, epochs=3, batch_size=50, verbose=0)


class BatchLossRecorder(keras.callbacks.Callback):
    """Record every batch's logged loss. Its batch hook makes Keras call all hooks in order."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_epoch_begin(self, epoch, logs=None):
        self.losses.append([])

    def on_train_batch_end(self, batch, logs=None):
        self.losses[-1].append(float(logs["loss"]))


def test_non_finite_loss_names_first_batch():
    # Four batches per epoch. Without other batch hooks, Keras runs the
    # guard's hooks on worker threads, and it must still name the batch that
    # an in-order run records as the first non-finite one.
    x, groups = small_blobs(200, seed=6)

    def fit(callbacks):
        keras.utils.set_random_seed(1)
        model = small_model(2)
        model.pretrain(x, groups, epochs=0)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=1e30))
        with pytest.raises(FloatingPointError) as error:
            model.fit(x, groups, epochs=3, batch_size=50, shuffle=False, verbose=0, callbacks=callbacks)
        return str(error.value)

    recorder = BatchLossRecorder()
    in_order_message = fit([recorder])
    epoch, batch = next(
        (epoch, batch)
        for epoch, losses in enumerate(recorder.losses)
        for batch, loss in enumerate(losses)
        if not np.isfinite(loss)
    )
    expected = f"in epoch {epoch + 1}, batch {batch}."
    assert expected in in_order_message
    assert expected in fit([])


def test_pretrain_with_duplicate_rows():
    rng = np.random.default_rng(7)
    # 190 copies of one row and 10 distinct rows.
    x = np.concatenate([np.tile(rng.normal(size=(1, 5)), (190, 1)), rng.normal(size=(10, 5))])
    x = x.astype(np.float32)
    y = rng.integers(0, 2, 200)
    model = small_model(3)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.pretrain(x, y, epochs=1, batch_size=50, verbose=0)

    assert model.initialization_method in FALLBACK_METHODS
    weights = mixture_weights(model)
    assert np.all(weights > 0.0)
    assert weights.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.all(model.prior.variances().numpy() >= model.variance_floor)


def test_more_clusters_than_distinct_rows():
    x = np.repeat(np.eye(3, 5, dtype=np.float32), 10, axis=0)
    model = small_model(4)

    with pytest.raises(MixtureInitializationError, match=r"distinct rows \(3\)\. Received: num_clusters=4\."):
        model.pretrain(x, np.arange(30) % 2, epochs=0)


def test_more_clusters_than_rows():
    x, groups = small_blobs(10, seed=8)
    model = small_model(20)

    message = r"distinct rows \(10\)\. Received: num_clusters=20\."
    with pytest.raises(MixtureInitializationError, match=message):
        model.pretrain(x, groups, epochs=0)


def test_single_cluster_trains():
    x, groups = small_blobs(60, seed=9)
    model = small_model(1)

    model.pretrain(x, groups, epochs=0)
    history = model.fit(x, groups, epochs=1, batch_size=30, verbose=0)
    outputs = model.predict(x, verbose=0)

    assert_history_finite(history)
    np.testing.assert_allclose(outputs["cluster_probs"], 1.0, atol=1e-6)
    np.testing.assert_array_equal(outputs["cluster"], 0)


def test_constant_columns_warn_and_train():
    x, groups = small_blobs(60, num_features=6, seed=10)
    frame = pd.DataFrame(x.astype(np.float64), columns=[f"f{index}" for index in range(6)])
    frame["f2"] = 3.25
    frame["f5"] = 0.0
    model = small_model(2)

    with pytest.warns(UserWarning, match=r"constant: \[2, 5\]"):
        history = model.fit(frame, groups, epochs=2, batch_size=30, verbose=0)

    assert_history_finite(history)
    np.testing.assert_array_equal(model.feature_scale.numpy()[[2, 5]], [1.0, 1.0])
    assert np.all(np.isfinite(model.predict(frame, verbose=0)["z_mean"]))


# ----------------------------------------------------------------- labels


def test_predict_labels_decode_integer_codes(blob_model, blobs):
    x, groups = blobs

    labels = blob_model.predict_labels(x[:300], verbose=0)

    assert blob_model.classes == [1, 2, 3, 4]
    assert set(labels.tolist()) <= {1, 2, 3, 4}
    assert np.mean(labels == groups[:300] + 1) >= 0.95


def test_predict_labels_decode_strings(string_label_model, blobs):
    x, groups = blobs

    predicted = string_label_model.predict_labels(x[:300], verbose=0)

    assert predicted.dtype == object
    assert set(predicted.tolist()) <= set(STRING_CLASSES)
    assert np.mean(predicted == np.array(STRING_CLASSES)[groups[:300]]) >= 0.95


def test_predict_labeled_encodes_strings(string_label_model, blob_model, blobs):
    x, groups = blobs

    from_strings = string_label_model.predict_labeled(x[:300], np.array(STRING_CLASSES)[groups[:300]])
    from_codes = blob_model.predict_labeled(x[:300], groups[:300] + 1)

    np.testing.assert_allclose(from_strings["cluster_probs"], from_codes["cluster_probs"], atol=1e-6)


@pytest.mark.parametrize(
    "response, y, message",
    [
        ("categorical", np.ones(20, int), r"`y` has a single class \(1\)"),
        ("categorical", np.array(["a"] * 20), r"`y` has a single class \(a\)"),
        ("bernoulli", np.arange(20) % 3, r"Bernoulli response needs exactly 2 classes. Received 3"),
    ],
)
def test_adapt_rejects_unusable_labels(response, y, message):
    x, _ = small_blobs(20)
    model = small_model(2, response=response)

    with pytest.raises(ValueError, match=message):
        model.adapt(x, y)


def test_predict_labeled_rejects_unknown_labels(blob_model, blobs):
    with pytest.raises(ValueError, match=r"1 label\(s\) the model was not trained on: \['7'\]"):
        blob_model.predict_labeled(blobs[0][:3], [1, 2, 7])


# ----------------------------------------------------------------- round trips


def test_config_round_trip(blob_model, blobs):
    x = blobs[0][:50]
    config = blob_model.get_config()

    restored = DGC.from_config(config)
    restored.build((None, x.shape[1]))
    restored.set_weights(blob_model.get_weights())

    assert restored.get_config() == config
    expected = blob_model.predict(x, verbose=0)
    for name, values in restored.predict(x, verbose=0).items():
        np.testing.assert_array_equal(values, expected[name], err_msg=name)


def assert_same_predictions(model, loaded, x):
    for batch_size in (1, 37):
        expected = model.predict(x, batch_size=batch_size, verbose=0)
        actual = loaded.predict(x, batch_size=batch_size, verbose=0)
        assert set(actual) == set(expected)
        for name, values in expected.items():
            np.testing.assert_array_equal(actual[name], values, err_msg=f"{name}, batch {batch_size}")


def test_keras_file_round_trip(blob_model, blobs, tmp_path):
    x = blobs[0][:74]
    path = tmp_path / "blobs.keras"

    blob_model.save(path)
    loaded = keras.models.load_model(path)

    assert isinstance(loaded, DGC)
    assert loaded.classes == [1, 2, 3, 4]
    np.testing.assert_array_equal(loaded.feature_offset.numpy(), blob_model.feature_offset.numpy())
    np.testing.assert_array_equal(mixture_weights(loaded), mixture_weights(blob_model))
    assert_same_predictions(blob_model, loaded, x)


def test_keras_file_round_trip_string_labels(string_label_model, blobs, tmp_path):
    x = blobs[0][:74]
    path = tmp_path / "strings.keras"

    string_label_model.save(path)
    loaded = keras.models.load_model(path)

    assert loaded.classes == STRING_CLASSES
    np.testing.assert_array_equal(
        loaded.predict_labels(x, verbose=0), string_label_model.predict_labels(x, verbose=0)
    )
    assert_same_predictions(string_label_model, loaded, x)


def test_sample_shapes_and_labels(blob_model):
    draws = blob_model.sample(50, seed=1)

    assert draws["cluster"].shape == (50,)
    assert set(draws["cluster"].tolist()) <= {0, 1, 2, 3}
    assert draws["z"].shape == (50, blob_model.latent_dim)
    assert draws["x_mean"].shape == draws["x"].shape == (50, 10)
    assert draws["y"].shape == (50,)
    assert set(draws["y"].tolist()) <= {1, 2, 3, 4}
    for name, values in draws.items():
        assert np.all(np.isfinite(values.astype(np.float64))), name


def test_sample_repeatable_with_seed(blob_model):
    draws = blob_model.sample(50, seed=1)
    repeated = blob_model.sample(50, seed=1)

    for name, values in draws.items():
        np.testing.assert_array_equal(repeated[name], values, err_msg=name)


def test_sample_string_labels(string_label_model):
    draws = string_label_model.sample(20, seed=2)

    assert draws["y"].shape == (20,)
    assert set(draws["y"].tolist()) <= set(STRING_CLASSES)


# ----------------------------------------------------------------- building and importing


def test_metrics_include_one_tracker_per_term(blob_model):
    names = [metric.name for metric in blob_model.metrics]

    for name in ("loss",) + TERM_NAMES:
        assert names.count(name) == 1, name


def test_summary_lists_layers(blob_model):
    lines = []

    blob_model.summary(print_fn=lambda line, **kwargs: lines.append(line))

    text = "\n".join(lines)
    for layer in ("encoder", "prior", "decoder", "heads"):
        assert layer in text


def test_layers_return_tensors(blob_model, blobs):
    x = tf.constant(blobs[0][:3])

    outputs = blob_model(x)
    z_mean, z_log_var = blob_model.encoder(blob_model.scale_features(x))

    for name, value in outputs.items():
        assert isinstance(value, tf.Tensor), name
    layer_outputs = {
        "z_mean": z_mean,
        "z_log_var": z_log_var,
        "prior": blob_model.prior(z_mean),
        "decoder": blob_model.decoder(z_mean),
        "heads": blob_model.heads(z_mean),
    }
    for name, value in layer_outputs.items():
        assert isinstance(value, tf.Tensor), name
    assert blob_model.heads(z_mean).shape == (3, 4, 4)


def test_layers_build_symbolically():
    inputs = keras.Input((5,))

    z_mean, z_log_var = dgc_tf.Encoder(2, (8,))(inputs)
    reconstruction = dgc_tf.Decoder(5, (8,))(z_mean)
    log_joint = dgc_tf.MixturePrior(3, 2)(z_mean)
    head_params = dgc_tf.ResponseHeads(3, "categorical", num_classes=4)(z_mean)

    assert tuple(z_mean.shape) == tuple(z_log_var.shape) == (None, 2)
    assert tuple(reconstruction.shape) == (None, 5)
    assert tuple(log_joint.shape) == (None, 3)
    assert tuple(head_params.shape) == (None, 3, 4)


def test_import_is_lazy():
    script = textwrap.dedent(
        """
        import sys
        import dgc_tf
        import dgc_tf.data, dgc_tf.initialization, dgc_tf.metrics, dgc_tf.preprocessing
        assert "tensorflow" not in sys.modules, "importing dgc_tf imported tensorflow"
        dgc_tf.DGC
        assert "tensorflow" in sys.modules, "dgc_tf.DGC did not load tensorflow"
        """
    )

    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )

    assert result.returncode == 0, result.stderr[-2000:]


def test_public_names_resolve():
    for name in dgc_tf.__all__:
        assert getattr(dgc_tf, name) is not None, name


# ----------------------------------------------------------------- error messages


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"num_clusters": 0}, r"`num_clusters` must be a positive integer.*Received: num_clusters=0"),
        ({"num_clusters": -2}, r"Received: num_clusters=-2"),
        ({"num_clusters": 2.5}, r"Received: num_clusters=2.5"),
        ({"num_clusters": True}, r"Received: num_clusters=True"),
        ({"num_clusters": "3"}, r"Received: num_clusters='3'"),
        ({"response": "poisson"}, r"`response` must be one of .*Received: response='poisson'"),
        ({"latent_dim": 0}, r"`latent_dim` must be at least 1. Received: latent_dim=0"),
        ({"likelihood": "laplace"}, r"`likelihood` must be one of .*Received: likelihood='laplace'"),
        (
            {"feature_scaling": "robust"},
            r"`feature_scaling` must be one of .*Received: feature_scaling='robust'",
        ),
        ({"head": "deep"}, r"`head` must be one of .*Received: head='deep'"),
        (
            {"response_weight": -1.0},
            r"`response_weight` must be a finite number >= 0. Received: response_weight=-1.0",
        ),
        ({"response_weight": float("nan")}, r"Received: response_weight=nan"),
        ({"response_weight": float("inf")}, r"Received: response_weight=inf"),
        ({"num_samples": 0}, r"`num_samples` must be at least 1. Received: num_samples=0"),
    ],
)
def test_constructor_rejects_bad_arguments(arguments, message):
    arguments = {"num_clusters": 2, **arguments}

    with pytest.raises(ValueError, match=message):
        DGC(**arguments)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.array([["a", "b"]] * 4), r"`x` must contain numbers only"),
        (np.arange(10.0), r"`x` must be 2-D"),
        (np.array([[np.nan] * 10, [0.0] * 10]), r"`x` contains NaN or infinite values in 1 row\(s\)"),
    ],
    ids=["non-numeric", "one-dimensional", "nan"],
)
def test_invalid_features_rejected(blob_model, x, message):
    with pytest.raises(ValueError, match=message):
        blob_model.predict(x, verbose=0)
    with pytest.raises(ValueError, match=message):
        blob_model.fit(x, np.ones(len(x), int), epochs=1, verbose=0)


def test_mismatched_lengths_rejected(blob_model, blobs):
    x, groups = blobs
    message = r"same number of rows. Received 10 rows in x and 9 in y"

    with pytest.raises(ValueError, match=message):
        blob_model.fit(x[:10], groups[:9] + 1, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=message):
        blob_model.predict_labeled(x[:10], groups[:9] + 1)
    with pytest.raises(ValueError, match=message):
        small_model(2).adapt(x[:10], groups[:9])


def test_fit_without_response_rejected():
    x, _ = small_blobs(20)
    model = small_model(2, response="gaussian")

    with pytest.raises(ValueError, match=r"needs the response `y`: call fit\(x, y\).*response_weight=0"):
        model.fit(x, epochs=1, verbose=0)


# ----------------------------------------------------------------- conv encoder and the ablation


def tiny_images(num_rows=64, seed=0):
    """Return flattened 8 x 8 one-channel images in [0, 1] and classes: 0 is bright on top, 1 below."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 2, num_rows)
    images = 0.2 * rng.random((num_rows, 8, 8, 1))
    images[classes == 0, :4] += 0.7
    images[classes == 1, 4:] += 0.7
    return np.clip(images, 0.0, 1.0).reshape(num_rows, 64).astype(np.float32), classes


@pytest.fixture(scope="module")
def conv_model():
    x, classes = tiny_images()
    model = small_model(
        2, response="categorical", likelihood="bernoulli", encoder="conv", image_shape=(8, 8, 1), encoder_units=(8,)
    )
    model.pretrain(x, classes, epochs=1, batch_size=16, verbose=0)
    model.fit(x, classes, epochs=1, batch_size=16, verbose=0)
    return model


def test_conv_encoder_layers_and_outputs(conv_model):
    x, _ = tiny_images()
    z_mean, z_log_var = conv_model.encoder(x[:5])

    assert type(conv_model.encoder).__name__ == "ConvEncoder"
    assert [layer.strides for layer in conv_model.encoder.conv_layers] == [(2, 2), (2, 2)]
    assert tuple(z_mean.shape) == (5, 2)
    assert tuple(z_log_var.shape) == (5, 2)
    assert np.all(z_log_var.numpy() >= -10.0)
    assert np.all(z_log_var.numpy() <= 5.0)


def test_conv_model_keras_file_round_trip(conv_model, tmp_path):
    x, _ = tiny_images()
    path = tmp_path / "conv.keras"

    conv_model.save(path)
    loaded = keras.models.load_model(path)

    assert loaded.get_config()["encoder"] == "conv"
    assert loaded.get_config()["image_shape"] == [8, 8, 1]
    assert_same_predictions(conv_model, loaded, x)


def test_conv_encoder_rejects_wrong_feature_count():
    x, classes = small_blobs(20, num_features=10)
    model = small_model(2, encoder="conv", image_shape=(3, 3, 1))

    with pytest.raises(ValueError, match=r"reads rows of 9 values.*input has 10 features"):
        model.fit(x, classes, epochs=1, verbose=0)


def test_no_decoder_ablation_leaves_decoder_untrained():
    x, groups = small_blobs(200)
    model = small_model(2, reconstruction_weight=0.0)
    model.pretrain(x, groups, epochs=0, verbose=0)
    decoder_before = [weight.numpy().copy() for weight in model.decoder.weights]

    history = model.fit(x, groups, epochs=2, batch_size=50, verbose=0)

    assert history.history["reconstruction"] == [0.0, 0.0]
    assert_history_finite(history)
    for before, after in zip(decoder_before, model.decoder.weights):
        np.testing.assert_array_equal(after.numpy(), before)
    assert model.get_config()["reconstruction_weight"] == 0.0


def test_reconstruction_weight_scales_term():
    x, groups = small_blobs(100)
    model = small_model(2)
    model.pretrain(x, groups, epochs=0, verbose=0)
    y = model.encode_response(groups)

    # The same seed state draws the same z for both calls.
    seed_state = model.seed_generator.state.numpy()
    full = model.compute_terms(x, y)["reconstruction"].numpy()
    model.reconstruction_weight = 0.25
    model.seed_generator.state.assign(seed_state)
    quarter = model.compute_terms(x, y)["reconstruction"].numpy()

    np.testing.assert_allclose(quarter, 0.25 * full, rtol=1e-5)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"encoder": "resnet"}, r"`encoder` must be one of \('mlp', 'conv'\). Received: encoder='resnet'"),
        ({"encoder": "conv"}, r"encoder='conv' needs the shape of one image: pass image_shape"),
        ({"encoder": "conv", "image_shape": (28, 28)}, r"Received: image_shape=\(28, 28\)"),
        ({"encoder": "conv", "image_shape": (28, 0, 1)}, r"three positive integers"),
        ({"reconstruction_weight": -0.5}, r"`reconstruction_weight` must be a finite number >= 0"),
        ({"reconstruction_weight": float("nan")}, r"Received: reconstruction_weight=nan"),
        ({"reconstruction_weight": "1"}, r"Received: reconstruction_weight='1'"),
        ({"reconstruction_weight": True}, r"Received: reconstruction_weight=True"),
    ],
)
def test_encoder_and_reconstruction_arguments_rejected(arguments, message):
    with pytest.raises(ValueError, match=message):
        DGC(2, **arguments)
