"""Tests for dgc_tf.heads.ResponseHeads: shapes, a per-cluster loop reference, closed-form entropies."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import expit, log_softmax, softmax
from scipy.stats import norm

from dgc_tf.heads import HEAD_CAPACITIES, RESPONSE_FAMILIES, ResponseHeads

NUM_CLUSTERS, LATENT_DIM, NUM_CLASSES = 3, 4, 5
NUM_PARAMS = {"categorical": NUM_CLASSES, "bernoulli": 1, "gaussian": 2}


def build_heads(family, capacity="linear", hidden_units=(6, 7)):
    heads = ResponseHeads(
        NUM_CLUSTERS,
        family,
        num_classes=NUM_CLASSES if family == "categorical" else None,
        capacity=capacity,
        hidden_units=hidden_units,
    )
    heads.build((None, LATENT_DIM))
    rng = np.random.default_rng(0)
    # Non-zero biases, so that a dropped bias term shows in the loop reference.
    for variable in heads.trainable_variables:
        variable.assign(rng.normal(0.0, 0.5, variable.shape).astype(np.float32))
    return heads


def loop_reference(heads, z):
    """Apply each cluster's weights to each row with plain NumPy matrix products."""
    kernels = [kernel.numpy() for kernel in heads.hidden_kernels]
    biases = [bias.numpy() for bias in heads.hidden_biases]
    output = np.empty((len(z), NUM_CLUSTERS, heads.num_params))
    for row in range(len(z)):
        for k in range(NUM_CLUSTERS):
            if heads.capacity == "bias":
                output[row, k] = heads.output_bias.numpy()[k]
                continue
            hidden = z[row]
            for kernel, bias in zip(kernels, biases):
                hidden = np.maximum(hidden @ kernel[k] + bias[k], 0.0)
            output[row, k] = hidden @ heads.output_kernel.numpy()[k] + heads.output_bias.numpy()[k]
    return output


@pytest.mark.parametrize("capacity", HEAD_CAPACITIES)
@pytest.mark.parametrize("family", RESPONSE_FAMILIES)
def test_heads_match_loop_reference(family, capacity):
    heads = build_heads(family, capacity)
    z = np.random.default_rng(1).normal(size=(6, LATENT_DIM)).astype(np.float32)

    params = heads(tf.constant(z)).numpy()

    assert params.shape == (6, NUM_CLUSTERS, NUM_PARAMS[family])
    np.testing.assert_allclose(params, loop_reference(heads, z), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("capacity", HEAD_CAPACITIES)
def test_heads_sample_dimension_shape(capacity):
    heads = build_heads("categorical", capacity)
    z = np.random.default_rng(2).normal(size=(2, 6, LATENT_DIM)).astype(np.float32)

    params = heads(tf.constant(z)).numpy()

    assert params.shape == (2, 6, NUM_CLUSTERS, NUM_CLASSES)
    np.testing.assert_allclose(params[1], heads(tf.constant(z[1])).numpy(), atol=1e-6)


@pytest.mark.parametrize("capacity", ["linear", "mlp"])
@pytest.mark.parametrize("rank", [2, 3])
def test_heads_unknown_leading_dimensions(capacity, rank):
    # Keras traces training with an unknown batch size, so the leading
    # dimensions are only known when the graph runs.
    heads = build_heads("gaussian", capacity)
    z = np.random.default_rng(3).normal(size=(2, 6, LATENT_DIM)[-rank:]).astype(np.float32)
    traced = tf.function(heads, input_signature=[tf.TensorSpec([None] * (rank - 1) + [LATENT_DIM])])

    params = traced(tf.constant(z)).numpy()

    assert params.shape == z.shape[:-1] + (NUM_CLUSTERS, 2)
    rows = z.reshape(-1, LATENT_DIM)
    np.testing.assert_allclose(
        params.reshape(len(rows), NUM_CLUSTERS, 2), loop_reference(heads, rows), rtol=1e-5, atol=1e-5
    )


def test_bias_heads_ignore_z():
    heads = build_heads("gaussian", "bias")
    rng = np.random.default_rng(3)

    first = heads(tf.constant(rng.normal(size=(4, LATENT_DIM)).astype(np.float32))).numpy()
    second = heads(tf.constant(rng.normal(0.0, 100.0, (4, LATENT_DIM)).astype(np.float32))).numpy()

    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first[0], heads.output_bias.numpy())


def test_clusters_have_separate_weights():
    heads = build_heads("bernoulli", "linear")
    z = tf.constant(np.ones((1, LATENT_DIM), np.float32))

    params = heads(z).numpy()[0, :, 0]

    assert len(np.unique(params)) == NUM_CLUSTERS


# ----------------------------------------------------------------- distributions


def test_gaussian_entropy_and_log_prob_closed_form():
    heads = build_heads("gaussian")
    log_var = np.array([[-9.0, -1.0, 0.0], [0.5, 2.0, 9.0]], np.float32)
    mean = np.array([[0.0, 1.0, -2.0], [3.0, 0.5, 0.0]], np.float32)
    params = tf.constant(np.stack([mean, log_var], axis=-1))
    y = np.array([0.3, -1.0], np.float32)

    distribution = heads.distribution(params)

    # The log-variance is clipped to the default bounds (-7, 7).
    variance = np.exp(np.clip(log_var.astype(np.float64), -7.0, 7.0))
    np.testing.assert_allclose(
        distribution.entropy().numpy(), 0.5 * np.log(2.0 * np.pi * np.e * variance), rtol=1e-5
    )
    np.testing.assert_allclose(
        distribution.log_prob(tf.constant(y)[:, tf.newaxis]).numpy(),
        norm.logpdf(y[:, np.newaxis], loc=mean, scale=np.sqrt(variance)),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(heads.mean(params).numpy(), mean)


def test_bernoulli_entropy_and_log_prob_closed_form():
    heads = build_heads("bernoulli")
    logits = np.array([[-30.0, -2.0, 0.0], [0.5, 3.0, 30.0]], np.float32)
    params = tf.constant(logits[..., np.newaxis])
    y = np.array([1.0, 0.0], np.float32)

    distribution = heads.distribution(params)

    probability = expit(logits.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nan_to_num(probability * np.log(probability)) - np.nan_to_num(
            (1.0 - probability) * np.log1p(-probability)
        )
    np.testing.assert_allclose(distribution.entropy().numpy(), entropy, rtol=1e-4, atol=1e-6)
    expected_log_prob = np.where(
        y[:, np.newaxis] == 1.0, -np.logaddexp(0.0, -logits), -np.logaddexp(0.0, logits)
    )
    np.testing.assert_allclose(
        distribution.log_prob(tf.constant(y)[:, tf.newaxis]).numpy(), expected_log_prob, rtol=1e-5
    )
    np.testing.assert_allclose(heads.mean(params).numpy(), probability, rtol=1e-5, atol=1e-7)


def test_categorical_entropy_and_log_prob_closed_form():
    heads = build_heads("categorical")
    logits = np.random.default_rng(4).normal(0.0, 3.0, (2, NUM_CLUSTERS, NUM_CLASSES)).astype(np.float32)
    y = np.array([4, 1], np.int32)

    distribution = heads.distribution(tf.constant(logits))

    probabilities = softmax(logits.astype(np.float64), axis=-1)
    log_probabilities = log_softmax(logits.astype(np.float64), axis=-1)
    np.testing.assert_allclose(
        distribution.entropy().numpy(), -(probabilities * log_probabilities).sum(axis=-1), rtol=1e-5
    )
    np.testing.assert_allclose(
        distribution.log_prob(tf.constant(y)[:, tf.newaxis]).numpy(),
        log_probabilities[np.arange(2), :, y],
        rtol=1e-5,
    )
    np.testing.assert_allclose(heads.mean(tf.constant(logits)).numpy(), probabilities, rtol=1e-5)
    np.testing.assert_allclose(heads.mean(tf.constant(logits)).numpy().sum(axis=-1), 1.0, atol=1e-6)


def test_gaussian_entropy_differs_across_clusters():
    heads = build_heads("gaussian", "linear")
    z = tf.constant(np.random.default_rng(5).normal(size=(3, LATENT_DIM)).astype(np.float32))

    entropy = heads.distribution(heads(z)).entropy().numpy()

    assert entropy.shape == (3, NUM_CLUSTERS)
    assert np.all(np.ptp(entropy, axis=1) > 1e-3)


# ----------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"family": "poisson"}, r"`response` must be one of .*Received: response='poisson'"),
        ({"family": "gaussian", "capacity": "deep"}, r"`head` must be one of .*Received: head='deep'"),
        ({"family": "categorical"}, r"num_classes` of at least 2. Received: num_classes=None"),
        ({"family": "categorical", "num_classes": 1}, r"at least 2. Received: num_classes=1"),
    ],
)
def test_constructor_rejects_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        ResponseHeads(NUM_CLUSTERS, **arguments)


def test_config_round_trip():
    heads = build_heads("categorical", "mlp")
    config = heads.get_config()

    restored = ResponseHeads.from_config(config)
    restored.build((None, LATENT_DIM))

    assert restored.get_config() == config
    assert [variable.shape for variable in restored.weights] == [variable.shape for variable in heads.weights]
