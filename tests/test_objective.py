"""Tests for dgc_tf.objective against a naive per-sample, per-cluster NumPy reference."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy.special import logsumexp

from dgc_tf import objective
from dgc_tf.heads import ResponseHeads
from dgc_tf.prior import MixturePrior

tfd = tfp.distributions

NUM_SAMPLES, BATCH, NUM_CLUSTERS = 3, 5, 4

# (response_weight w, entropy_scale r): the unweighted DGC bound (w = 1) with and
# without the entropy regularizer, VaDE (w = 0), and two other response weights.
WEIGHT_SCALE_CASES = [(1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (2.5, 1.0), (0.3, 0.0)]


def log_normalize_row(values):
    """Return `values - log(sum(exp(values)))` for one row, by an explicit loop."""
    shift = max(values)
    total = sum(math.exp(value - shift) for value in values)
    return [value - shift - math.log(total) for value in values]


def naive_labeled_log_weights(log_likelihood, entropy, log_posterior, response_weight, entropy_scale):
    """Compute log lambda_k sample by sample and cluster by cluster."""
    result = np.empty_like(log_likelihood)
    for m in range(log_likelihood.shape[0]):
        for b in range(log_likelihood.shape[1]):
            logits = [
                response_weight * (log_likelihood[m, b, k] - entropy_scale * entropy[m, b, k])
                + log_posterior[m, b, k]
                for k in range(log_likelihood.shape[2])
            ]
            result[m, b] = log_normalize_row(logits)
    return result


def naive_unlabeled_log_weights(entropy, log_posterior, entropy_scale):
    """Compute log lambda_test_k row by row."""
    result = np.empty_like(entropy)
    for b in range(entropy.shape[0]):
        logits = [
            log_posterior[b, k] - entropy_scale * entropy[b, k] for k in range(entropy.shape[1])
        ]
        result[b] = log_normalize_row(logits)
    return result


def naive_elbo_terms(
    log_weights,
    log_mixture_weights,
    latent_kl,
    reconstruction,
    log_likelihood,
    entropy,
    response_weight,
    entropy_scale,
):
    """Compute every ELBO term of every example with loops over samples and clusters."""
    num_samples, batch, num_clusters = log_weights.shape
    terms = {name: np.zeros(batch) for name in ("response", "reconstruction", "cluster_kl", "latent_kl")}
    for b in range(batch):
        for m in range(num_samples):
            terms["reconstruction"][b] += reconstruction[m, b] / num_samples
            for k in range(num_clusters):
                weight = math.exp(log_weights[m, b, k])
                terms["cluster_kl"][b] += (
                    weight * (log_weights[m, b, k] - log_mixture_weights[k]) / num_samples
                )
                terms["latent_kl"][b] += weight * latent_kl[b, k] / num_samples
                if log_likelihood is not None:
                    per_cluster = log_likelihood[m, b, k] - entropy_scale * entropy[m, b, k]
                    terms["response"][b] += response_weight * weight * per_cluster / num_samples
    terms["elbo"] = (
        terms["response"] + terms["reconstruction"] - terms["cluster_kl"] - terms["latent_kl"]
    )
    return terms


@pytest.fixture
def random_terms():
    """Random float64 inputs of the objective with the shapes the model passes."""
    rng = np.random.default_rng(1)
    shape = (NUM_SAMPLES, BATCH, NUM_CLUSTERS)
    log_joint = rng.normal(0.0, 3.0, shape)
    return {
        "log_likelihood": rng.normal(-2.0, 1.5, shape),
        # Clipped entropies are >= 0 and include exact zeros.
        "entropy": np.maximum(rng.normal(0.3, 1.0, shape), 0.0),
        "log_posterior": log_joint - logsumexp(log_joint, axis=-1, keepdims=True),
        "log_mixture_weights": np.log(rng.dirichlet(np.ones(NUM_CLUSTERS))),
        "latent_kl": rng.gamma(2.0, 1.5, (BATCH, NUM_CLUSTERS)),
        "reconstruction": rng.normal(-10.0, 2.0, (NUM_SAMPLES, BATCH)),
    }


# ----------------------------------------------------------------- cluster posterior


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0.0, -1e4])
def test_cluster_log_posterior_matches_logsumexp(dtype, offset):
    rng = np.random.default_rng(2)
    log_joint = (rng.normal(0.0, 5.0, (NUM_SAMPLES, BATCH, NUM_CLUSTERS)) + offset).astype(dtype)

    result = objective.cluster_log_posterior(tf.constant(log_joint)).numpy()

    reference = log_joint.astype(np.float64) - logsumexp(log_joint.astype(np.float64), axis=-1, keepdims=True)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(result, reference, atol=tolerance)


def test_cluster_log_posterior_extreme_logits():
    log_joint = tf.constant([[250.0, -250.0, 0.0, 249.0], [-1e6, -1e6 + 3.0, -1e6, -2e6]])

    probabilities = np.exp(objective.cluster_log_posterior(log_joint).numpy())

    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-6)
    expected_first = np.exp([0.0, -500.0, -250.0, -1.0] - logsumexp([0.0, -500.0, -250.0, -1.0]))
    np.testing.assert_allclose(probabilities[0], expected_first, atol=1e-6)


# ----------------------------------------------------------------- entropy clip


def test_clipped_entropy_normal_closed_form():
    # Variances from 1e-4 to 10: the entropy of N(0, s^2) is negative below
    # s^2 = 1 / (2 pi e), about 0.0585, so the first three are clipped.
    variances = np.array([1e-4, 1e-3, 0.05, 0.07, 1.0, 10.0])
    distribution = tfd.Normal(loc=tf.zeros(6, tf.float64), scale=tf.constant(np.sqrt(variances)))

    clipped, mask = objective.clipped_entropy(distribution)

    closed_form = 0.5 * np.log(2.0 * np.pi * np.e * variances)
    np.testing.assert_allclose(clipped.numpy(), np.maximum(closed_form, 0.0), atol=1e-12)
    np.testing.assert_array_equal(mask.numpy(), closed_form < 0.0)
    assert mask.numpy().tolist() == [True, True, True, False, False, False]


# ----------------------------------------------------------------- labeled weights


@pytest.mark.parametrize("response_weight, entropy_scale", WEIGHT_SCALE_CASES)
def test_labeled_log_weights_match_naive(random_terms, response_weight, entropy_scale):
    result = objective.labeled_log_weights(
        tf.constant(random_terms["log_likelihood"]),
        tf.constant(random_terms["entropy"]),
        tf.constant(random_terms["log_posterior"]),
        response_weight,
        entropy_scale,
    ).numpy()

    reference = naive_labeled_log_weights(
        random_terms["log_likelihood"],
        random_terms["entropy"],
        random_terms["log_posterior"],
        response_weight,
        entropy_scale,
    )
    np.testing.assert_allclose(result, reference, atol=1e-12)
    np.testing.assert_allclose(np.exp(result).sum(axis=-1), 1.0, atol=1e-12)


def test_labeled_log_weights_entropy_indexed_by_cluster():
    # Equal likelihoods and posteriors: only the per-cluster entropy separates
    # the clusters, so lambda is proportional to exp(-H_k) = (1, 1/3).
    log_likelihood = tf.constant([[[-1.0, -1.0]]], tf.float64)
    entropy = tf.constant([[[0.0, math.log(3.0)]]], tf.float64)
    log_posterior = tf.constant([[[math.log(0.5), math.log(0.5)]]], tf.float64)

    with_regularizer = objective.labeled_log_weights(log_likelihood, entropy, log_posterior, 1.0, 1.0)
    without_regularizer = objective.labeled_log_weights(log_likelihood, entropy, log_posterior, 1.0, 0.0)

    np.testing.assert_allclose(np.exp(with_regularizer.numpy()), [[[0.75, 0.25]]], atol=1e-12)
    np.testing.assert_allclose(np.exp(without_regularizer.numpy()), [[[0.5, 0.5]]], atol=1e-12)


def test_labeled_log_weights_vade_equal_posterior(random_terms):
    result = objective.labeled_log_weights(
        tf.constant(random_terms["log_likelihood"]),
        tf.constant(random_terms["entropy"]),
        tf.constant(random_terms["log_posterior"]),
        0.0,
        1.0,
    )

    np.testing.assert_allclose(result.numpy(), random_terms["log_posterior"], atol=1e-12)


def test_labeled_log_weights_float32_matches_float64(random_terms):
    inputs = [random_terms[name] for name in ("log_likelihood", "entropy", "log_posterior")]

    result = objective.labeled_log_weights(
        *[tf.constant(value.astype(np.float32)) for value in inputs], 1.0, 1.0
    ).numpy()

    reference = naive_labeled_log_weights(*inputs, 1.0, 1.0)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, reference, atol=1e-5)


# ----------------------------------------------------------------- unlabeled weights


@pytest.mark.parametrize("entropy_scale", [1.0, 0.0])
def test_unlabeled_log_weights_match_naive(random_terms, entropy_scale):
    entropy = random_terms["entropy"][0]
    log_posterior = random_terms["log_posterior"][0]

    result = objective.unlabeled_log_weights(
        tf.constant(entropy), tf.constant(log_posterior), entropy_scale
    ).numpy()

    np.testing.assert_allclose(
        result, naive_unlabeled_log_weights(entropy, log_posterior, entropy_scale), atol=1e-12
    )
    np.testing.assert_allclose(np.exp(result).sum(axis=-1), 1.0, atol=1e-12)


def test_unlabeled_log_weights_without_regularizer_equal_posterior(random_terms):
    result = objective.unlabeled_log_weights(
        tf.constant(random_terms["entropy"][0]), tf.constant(random_terms["log_posterior"][0]), 0.0
    )

    np.testing.assert_allclose(result.numpy(), random_terms["log_posterior"][0], atol=1e-12)


# ----------------------------------------------------------------- ELBO terms


@pytest.mark.parametrize("response_weight, entropy_scale", WEIGHT_SCALE_CASES)
def test_elbo_terms_match_naive(random_terms, response_weight, entropy_scale):
    log_weights = naive_labeled_log_weights(
        random_terms["log_likelihood"],
        random_terms["entropy"],
        random_terms["log_posterior"],
        response_weight,
        entropy_scale,
    )

    terms = objective.elbo_terms(
        tf.constant(log_weights),
        tf.constant(random_terms["log_mixture_weights"]),
        tf.constant(random_terms["latent_kl"]),
        tf.constant(random_terms["reconstruction"]),
        tf.constant(random_terms["log_likelihood"]),
        tf.constant(random_terms["entropy"]),
        response_weight=response_weight,
        entropy_scale=entropy_scale,
    )

    reference = naive_elbo_terms(
        log_weights,
        random_terms["log_mixture_weights"],
        random_terms["latent_kl"],
        random_terms["reconstruction"],
        random_terms["log_likelihood"],
        random_terms["entropy"],
        response_weight,
        entropy_scale,
    )
    assert set(terms) == set(reference)
    for name, expected in reference.items():
        assert terms[name].shape == (BATCH,), name
        np.testing.assert_allclose(terms[name].numpy(), expected, atol=1e-10, err_msg=name)


def test_elbo_terms_without_response(random_terms):
    log_weights = random_terms["log_posterior"]

    terms = objective.elbo_terms(
        tf.constant(log_weights),
        tf.constant(random_terms["log_mixture_weights"]),
        tf.constant(random_terms["latent_kl"]),
        tf.constant(random_terms["reconstruction"]),
    )

    reference = naive_elbo_terms(
        log_weights,
        random_terms["log_mixture_weights"],
        random_terms["latent_kl"],
        random_terms["reconstruction"],
        None,
        None,
        1.0,
        1.0,
    )
    np.testing.assert_array_equal(terms["response"].numpy(), np.zeros(BATCH))
    for name, expected in reference.items():
        np.testing.assert_allclose(terms[name].numpy(), expected, atol=1e-10, err_msg=name)


def test_cluster_kl_zero_when_weights_equal_prior():
    log_mixture_weights = np.log([0.1, 0.2, 0.3, 0.4])
    log_weights = np.broadcast_to(log_mixture_weights, (2, 3, 4)).copy()

    terms = objective.elbo_terms(
        tf.constant(log_weights),
        tf.constant(log_mixture_weights),
        tf.zeros((3, 4), tf.float64),
        tf.zeros((2, 3), tf.float64),
    )

    np.testing.assert_allclose(terms["cluster_kl"].numpy(), 0.0, atol=1e-12)


# ----------------------------------------------------------------- gradients at extremes


def assert_all_finite(tensors, names):
    for tensor, name in zip(tensors, names):
        assert tensor is not None, f"no gradient for {name}"
        assert np.all(np.isfinite(tf.convert_to_tensor(tensor).numpy())), f"non-finite gradient for {name}"


@pytest.mark.parametrize("family", ["categorical", "bernoulli", "gaussian"])
def test_gradients_finite_at_extreme_latents(family):
    latent_dim, batch = 2, 6
    prior = MixturePrior(3, latent_dim)
    prior.build((None, latent_dim))
    heads = ResponseHeads(3, family, num_classes=4 if family == "categorical" else None)
    heads.build((None, latent_dim))
    rng = np.random.default_rng(3)
    # Latent codes of magnitude 1e3, far from every component mean.
    z_mean = tf.Variable(rng.choice([-1e3, 1e3], (batch, latent_dim)).astype(np.float32))
    z_log_var = tf.Variable(np.full((batch, latent_dim), 4.0, np.float32))
    noise = tf.constant(rng.normal(size=(NUM_SAMPLES, batch, latent_dim)).astype(np.float32))
    if family == "gaussian":
        y = tf.constant(rng.normal(0.0, 1e3, batch).astype(np.float32))
    elif family == "bernoulli":
        y = tf.constant([0.0, 1.0] * (batch // 2))
    else:
        y = tf.constant(np.arange(batch) % 4, tf.int32)

    with tf.GradientTape() as tape:
        z = z_mean + tf.exp(0.5 * z_log_var) * noise  # (M, B, D)
        log_posterior = objective.cluster_log_posterior(prior(z))
        distribution = heads.distribution(heads(z))
        log_likelihood = distribution.log_prob(y[:, tf.newaxis])
        entropy, _ = objective.clipped_entropy(distribution)
        log_weights = objective.labeled_log_weights(log_likelihood, entropy, log_posterior, 1.0, 1.0)
        terms = objective.elbo_terms(
            log_weights,
            prior.log_mixture_weights(),
            prior.kl_from_posterior(z_mean, z_log_var),
            tf.zeros((NUM_SAMPLES, batch)),
            log_likelihood,
            entropy,
        )
        loss = -tf.reduce_sum(terms["elbo"])

    variables = [z_mean, z_log_var] + prior.trainable_variables + heads.trainable_variables
    gradients = tape.gradient(loss, variables)

    assert np.isfinite(loss.numpy())
    assert_all_finite(gradients, [variable.name for variable in variables])
    np.testing.assert_allclose(np.exp(log_weights.numpy()).sum(axis=-1), 1.0, atol=1e-6)


def test_gradients_finite_at_extreme_logits():
    rng = np.random.default_rng(4)
    shape = (NUM_SAMPLES, BATCH, NUM_CLUSTERS)
    log_joint = tf.Variable(rng.choice([-250.0, 250.0], shape).astype(np.float32))
    log_likelihood = tf.Variable(rng.choice([-250.0, 0.0], shape).astype(np.float32))
    entropy = tf.Variable(rng.uniform(0.0, 250.0, shape).astype(np.float32))
    mixture_logits = tf.Variable([250.0, -250.0, 0.0, 240.0])

    with tf.GradientTape() as tape:
        log_posterior = objective.cluster_log_posterior(log_joint)
        log_weights = objective.labeled_log_weights(log_likelihood, entropy, log_posterior, 1.0, 1.0)
        test_log_weights = objective.unlabeled_log_weights(entropy[0], log_posterior[0], 1.0)
        terms = objective.elbo_terms(
            log_weights,
            tf.nn.log_softmax(mixture_logits),
            tf.zeros((BATCH, NUM_CLUSTERS)),
            tf.zeros((NUM_SAMPLES, BATCH)),
            log_likelihood,
            entropy,
        )
        loss = -tf.reduce_sum(terms["elbo"]) - tf.reduce_sum(test_log_weights)

    variables = [log_joint, log_likelihood, entropy, mixture_logits]
    gradients = tape.gradient(loss, variables)

    assert np.isfinite(loss.numpy())
    assert_all_finite(gradients, ["log_joint", "log_likelihood", "entropy", "mixture_logits"])
    np.testing.assert_allclose(np.exp(log_weights.numpy()).sum(axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.exp(test_log_weights.numpy()).sum(axis=-1), 1.0, atol=1e-6)
