"""Tests for the prior M-step, the PriorRefit callback and fit_with_restarts."""

import keras
import numpy as np
import pytest
from sklearn.datasets import make_blobs

from dgc_tf.callbacks import PriorRefit
from dgc_tf.model import DGC
from dgc_tf.restarts import fit_with_restarts


def blob_data(num_rows=300, seed=0):
    x, groups = make_blobs(n_samples=num_rows, n_features=4, centers=3, random_state=seed)
    return x.astype(np.float32), groups


def small_model(seed=0, **overrides):
    arguments = dict(latent_dim=2, encoder_units=(16,), response="categorical", seed=seed)
    arguments.update(overrides)
    model = DGC(3, **arguments)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    return model


@pytest.fixture(scope="module")
def trained():
    x, groups = blob_data()
    model = small_model()
    # A pretrained model with its mixture fitted to three separated blobs has
    # weight in every cluster, which the moment comparisons below need.
    model.pretrain(x, groups, epochs=3, verbose=0)
    return model, x, groups


def naive_m_step(model, x, weights):
    """Weighted moments of q(z|x), written as a loop over clusters."""
    z_mean, z_log_var = model.encoder(model.scale_features(x))
    z_mean, z_var = z_mean.numpy().astype(np.float64), np.exp(z_log_var.numpy().astype(np.float64))
    pis, means, variances = [], [], []
    for k in range(weights.shape[1]):
        w = weights[:, k]
        mean = (w[:, None] * z_mean).sum(axis=0) / w.sum()
        variance = (w[:, None] * (z_var + (z_mean - mean) ** 2)).sum(axis=0) / w.sum()
        pis.append(w.mean())
        means.append(mean)
        variances.append(np.maximum(variance, model.variance_floor))
    return np.array(pis) / np.sum(pis), np.array(means), np.array(variances)


def test_refit_prior_labeled_matches_naive(trained):
    model, x, groups = trained
    weights = model.predict_labeled(x, groups)["cluster_probs"].astype(np.float64)
    expected_pi, expected_means, expected_variances = naive_m_step(model, x, weights)

    model.refit_prior(x, groups)

    # A cluster with (almost) no weight has ill-defined moments, so only
    # clusters holding at least 1% of the rows are compared.
    used = weights.sum(axis=0) > 0.01 * len(x)
    assert used.sum() >= 2
    np.testing.assert_allclose(np.exp(model.prior.log_mixture_weights().numpy()), expected_pi, atol=1e-5)
    np.testing.assert_allclose(
        model.prior.component_means.numpy()[used], expected_means[used], rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        model.prior.variances().numpy()[used], expected_variances[used], rtol=1e-3, atol=1e-5
    )


def test_refit_prior_unlabeled_uses_predict_weights(trained):
    model, x, _ = trained
    weights = model.predict(x, verbose=0)["cluster_probs"].astype(np.float64)
    expected_pi, expected_means, _ = naive_m_step(model, x, weights)

    model.refit_prior(x)

    used = weights.sum(axis=0) > 0.01 * len(x)
    np.testing.assert_allclose(np.exp(model.prior.log_mixture_weights().numpy()), expected_pi, atol=1e-5)
    np.testing.assert_allclose(
        model.prior.component_means.numpy()[used], expected_means[used], rtol=1e-4, atol=1e-4
    )


def test_refit_prior_raises_prior_terms(trained):
    # For fixed cluster weights the M-step maximizes the prior-dependent part
    # of the ELBO, sum_k lambda_k (log pi_k - KL_k), in closed form.
    model, x, groups = trained
    weights = model.predict_labeled(x, groups)["cluster_probs"].astype(np.float64)
    z_mean, z_log_var = model.encoder(model.scale_features(x))

    def prior_terms():
        kl = model.prior.kl_from_posterior(z_mean, z_log_var).numpy()
        log_pi = model.prior.log_mixture_weights().numpy()
        return float(np.mean(np.sum(weights * (log_pi - kl), axis=1)))

    model.prior.assign([0.2, 0.3, 0.5], np.zeros((3, 2)), np.ones((3, 2)))
    before = prior_terms()
    model.refit_prior(x, groups)
    after = prior_terms()

    assert after > before


def test_prior_refit_callback_schedule():
    x, groups = blob_data(200)
    model = small_model()
    model.pretrain(x, groups, epochs=1, verbose=0)
    calls = []
    original = model.refit_prior
    model.refit_prior = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)

    model.fit(x, groups, epochs=5, verbose=0, callbacks=[PriorRefit(x, groups, start_epoch=2, every=2)])

    assert len(calls) == 2  # after epochs 2 and 4


def test_prior_refit_rejects_bad_schedule():
    x, groups = blob_data(50)
    with pytest.raises(ValueError, match="start_epoch"):
        PriorRefit(x, groups, start_epoch=0)


def test_shared_prior_start_is_uninformative():
    x, groups = blob_data(200)
    model = small_model()
    model.pretrain(x, groups, epochs=1, verbose=0, prior_init="shared")

    weights = np.exp(model.prior.log_mixture_weights().numpy())
    np.testing.assert_allclose(weights, 1.0 / 3.0, atol=1e-6)
    variances = model.prior.variances().numpy()
    np.testing.assert_allclose(variances, variances[:1].repeat(3, axis=0), rtol=1e-5)
    assert model.initialization_method == "shared"


def test_class_prior_start_is_pure_in_y():
    x, groups = blob_data(200)
    model = small_model()
    model.pretrain(x, groups, epochs=1, verbose=0, prior_init="class")

    assert model.initialization_method == "class_mixture"
    weights = np.exp(model.prior.log_mixture_weights().numpy())
    np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-6)
    # Three classes and three components: component k starts at the moments of class k's codes.
    z_mean = model.predict(x, verbose=0)["z_mean"].astype(np.float64)
    class_means = np.stack([z_mean[groups == label].mean(axis=0) for label in range(3)])
    class_shares = np.bincount(groups) / len(groups)
    np.testing.assert_allclose(model.prior.component_means.numpy(), class_means, atol=1e-4)
    np.testing.assert_allclose(weights, class_shares, atol=1e-6)


def test_class_prior_start_rejects_bad_response():
    x, groups = blob_data(50)
    regression = DGC(2, response="gaussian", latent_dim=2, encoder_units=(8,), seed=0)
    with pytest.raises(ValueError, match="needs a class response"):
        regression.pretrain(x, groups.astype(np.float32), epochs=0, prior_init="class")
    with pytest.raises(ValueError, match="needs the responses"):
        small_model().pretrain(x, None, epochs=0, prior_init="class")


def test_pretrain_rejects_unknown_prior_init():
    x, groups = blob_data(50)
    with pytest.raises(ValueError, match="prior_init"):
        small_model().pretrain(x, groups, epochs=0, prior_init="zeros")


def test_fit_with_restarts_keeps_lowest_loss():
    x, groups = blob_data(200)
    best, summaries = fit_with_restarts(
        lambda seed: small_model(seed),
        x,
        groups,
        n_init=3,
        seed=5,
        pretrain_kwargs=dict(epochs=1, verbose=0),
        fit_kwargs=dict(epochs=1, verbose=0),
        evaluation_samples=1,
    )

    assert [summary["seed"] for summary in summaries] == [5, 6, 7]
    losses = [summary["loss"] for summary in summaries]
    assert all(np.isfinite(losses))
    assert best.seed == summaries[int(np.argmin(losses))]["seed"]


def test_fit_with_restarts_rejects_zero_restarts():
    x, groups = blob_data(50)
    with pytest.raises(ValueError, match="n_init"):
        fit_with_restarts(lambda seed: small_model(seed), x, groups, n_init=0)

