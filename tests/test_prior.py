"""Tests for dgc_tf.prior.MixturePrior against scipy densities and the closed-form Gaussian KL."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import multivariate_normal, norm

from dgc_tf.prior import MixturePrior

NUM_CLUSTERS, LATENT_DIM = 3, 4
WEIGHTS = np.array([0.2, 0.5, 0.3])
MEANS = np.array([[0.0, 1.0, -1.0, 2.0], [3.0, -2.0, 0.5, 0.0], [-4.0, 0.0, 1.5, -1.0]])
VARIANCES = np.array([[1.0, 0.5, 2.0, 0.1], [0.3, 3.0, 1.0, 1.0], [0.05, 0.7, 4.0, 2.5]])


@pytest.fixture
def prior():
    """A built prior set to the known WEIGHTS, MEANS and VARIANCES."""
    layer = MixturePrior(NUM_CLUSTERS, LATENT_DIM)
    layer.build((None, LATENT_DIM))
    layer.assign(WEIGHTS, MEANS, VARIANCES)
    return layer


def fitted_parameters(layer):
    """Return the layer's (pi, mu, sigma2) as float64 NumPy arrays."""
    return (
        np.exp(layer.log_mixture_weights().numpy().astype(np.float64)),
        layer.component_means.numpy().astype(np.float64),
        layer.variances().numpy().astype(np.float64),
    )


def test_assign_round_trip(prior):
    weights, means, variances = fitted_parameters(prior)

    np.testing.assert_allclose(weights, WEIGHTS, rtol=1e-6)
    np.testing.assert_allclose(means, MEANS, rtol=1e-6)
    np.testing.assert_allclose(variances, VARIANCES, rtol=1e-5)


def test_log_joint_matches_scipy_multivariate_normal(prior):
    weights, means, variances = fitted_parameters(prior)
    z = np.random.default_rng(0).normal(0.0, 3.0, (7, LATENT_DIM)).astype(np.float32)

    log_joint = prior(tf.constant(z)).numpy()

    reference = np.empty((len(z), NUM_CLUSTERS))
    for row in range(len(z)):
        for k in range(NUM_CLUSTERS):
            reference[row, k] = np.log(weights[k]) + multivariate_normal.logpdf(
                z[row], mean=means[k], cov=np.diag(variances[k])
            )
    assert log_joint.shape == (7, NUM_CLUSTERS)
    np.testing.assert_allclose(log_joint, reference, rtol=1e-5, atol=1e-4)


def test_log_joint_with_sample_dimension_matches_scipy_norm(prior):
    weights, means, variances = fitted_parameters(prior)
    z = np.random.default_rng(1).normal(0.0, 2.0, (2, 5, LATENT_DIM)).astype(np.float32)

    log_joint = prior(tf.constant(z)).numpy()

    assert log_joint.shape == (2, 5, NUM_CLUSTERS)
    for sample in range(2):
        for row in range(5):
            for k in range(NUM_CLUSTERS):
                expected = np.log(weights[k]) + norm.logpdf(
                    z[sample, row], loc=means[k], scale=np.sqrt(variances[k])
                ).sum()
                assert log_joint[sample, row, k] == pytest.approx(expected, rel=1e-5, abs=1e-4)


def test_kl_from_posterior_matches_closed_form(prior):
    _, means, variances = fitted_parameters(prior)
    rng = np.random.default_rng(2)
    z_mean = rng.normal(0.0, 2.0, (6, LATENT_DIM)).astype(np.float32)
    z_log_var = rng.uniform(-3.0, 2.0, (6, LATENT_DIM)).astype(np.float32)

    kl = prior.kl_from_posterior(tf.constant(z_mean), tf.constant(z_log_var)).numpy()

    # KL(N(m, v) || N(mu, s2)) = 0.5 * sum_d [log(s2 / v) + (v + (m - mu)^2) / s2 - 1]
    reference = np.empty((6, NUM_CLUSTERS))
    posterior_variance = np.exp(z_log_var.astype(np.float64))
    for row in range(6):
        for k in range(NUM_CLUSTERS):
            reference[row, k] = 0.5 * np.sum(
                np.log(variances[k] / posterior_variance[row])
                + (posterior_variance[row] + (z_mean[row] - means[k]) ** 2) / variances[k]
                - 1.0
            )
    assert kl.shape == (6, NUM_CLUSTERS)
    np.testing.assert_allclose(kl, reference, rtol=1e-5, atol=1e-5)


def test_kl_from_posterior_zero_at_component(prior):
    _, means, variances = fitted_parameters(prior)

    kl = prior.kl_from_posterior(
        tf.constant(means[1:2].astype(np.float32)), tf.constant(np.log(variances[1:2]).astype(np.float32))
    ).numpy()

    assert kl[0, 1] == pytest.approx(0.0, abs=1e-5)
    assert kl[0, 0] > 0.1
    assert kl[0, 2] > 0.1


def test_mixture_weights_on_simplex_at_extreme_logits(prior):
    prior.mixture_logits.assign([250.0, -250.0, 0.0])

    weights = np.exp(prior.log_mixture_weights().numpy())

    assert np.all(np.isfinite(weights))
    assert weights.sum() == pytest.approx(1.0, abs=1e-6)


def test_assign_keeps_zero_weight_positive(prior):
    prior.assign([0.0, 0.7, 0.3], MEANS, VARIANCES)

    weights = np.exp(prior.log_mixture_weights().numpy().astype(np.float64))

    assert np.all(weights > 0.0)
    assert weights.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(weights[1:], [0.7, 0.3], rtol=1e-5)


def test_variances_respect_floor(prior):
    prior.assign(WEIGHTS, MEANS, np.full((NUM_CLUSTERS, LATENT_DIM), 1e-9))
    assigned = prior.variances().numpy()
    prior.raw_variances.assign(np.full((NUM_CLUSTERS, LATENT_DIM), -200.0))
    driven_down = prior.variances().numpy()

    assert np.all(assigned >= prior.variance_floor)
    assert np.all(driven_down >= prior.variance_floor)
    np.testing.assert_allclose(driven_down, prior.variance_floor, rtol=1e-6)


def test_assign_large_variances_round_trip(prior):
    variances = np.full((NUM_CLUSTERS, LATENT_DIM), 500.0)

    prior.assign(WEIGHTS, MEANS, variances)

    np.testing.assert_allclose(prior.variances().numpy(), variances, rtol=1e-6)


def test_initial_components_have_unit_variance():
    layer = MixturePrior(NUM_CLUSTERS, LATENT_DIM)
    layer.build((None, LATENT_DIM))

    np.testing.assert_allclose(layer.variances().numpy(), 1.0, atol=1e-3)
    np.testing.assert_allclose(np.exp(layer.log_mixture_weights().numpy()), 1.0 / NUM_CLUSTERS, atol=1e-7)


def test_gradients_finite_far_from_components(prior):
    z = tf.constant(np.full((4, LATENT_DIM), 1e3, np.float32))

    with tf.GradientTape() as tape:
        log_posterior = tf.nn.log_softmax(prior(z), axis=-1)
        loss = -tf.reduce_sum(log_posterior[:, 0])
    gradients = tape.gradient(loss, prior.trainable_variables)

    for variable, gradient in zip(prior.trainable_variables, gradients):
        assert np.all(np.isfinite(gradient.numpy())), variable.name


def test_config_round_trip(prior):
    config = prior.get_config()

    restored = MixturePrior.from_config(config)

    assert restored.get_config() == config
    assert (restored.num_clusters, restored.latent_dim, restored.variance_floor) == (
        NUM_CLUSTERS,
        LATENT_DIM,
        1e-4,
    )
