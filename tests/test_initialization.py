"""Tests for dgc_tf.initialization: the mixture fit with its fallbacks, and collapse detection."""

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from dgc_tf.initialization import (
    MixtureInitializationError,
    allocate_components,
    describe_collapse,
    fit_class_mixture,
    fit_mixture,
)
from dgc_tf.metrics import clustering_accuracy

CENTERS = np.array([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]])


def separated_codes(rows_per_cluster=100, seed=0):
    rng = np.random.default_rng(seed)
    z = np.concatenate([center + rng.normal(0.0, 0.5, (rows_per_cluster, 2)) for center in CENTERS])
    return z, np.repeat(np.arange(len(CENTERS)), rows_per_cluster)


def assert_valid_mixture(weights, means, variances, num_clusters, latent_dim, variance_floor=1e-4):
    assert weights.shape == (num_clusters,)
    assert means.shape == (num_clusters, latent_dim)
    assert variances.shape == (num_clusters, latent_dim)
    assert np.all(weights > 0.0)
    assert weights.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.all(np.isfinite(means))
    assert np.all(np.isfinite(variances))
    assert np.all(variances >= variance_floor)


def test_fit_mixture_separated_codes():
    z, _ = separated_codes()

    weights, means, variances, method = fit_mixture(z, 3, seed=0)

    assert method == "gaussian_mixture"
    assert_valid_mixture(weights, means, variances, 3, 2)
    np.testing.assert_allclose(np.sort(weights), [1 / 3] * 3, atol=0.02)
    nearest_center = np.linalg.norm(means[:, np.newaxis] - CENTERS, axis=-1).argmin(axis=1)
    assert sorted(nearest_center) == [0, 1, 2]
    np.testing.assert_allclose(means, CENTERS[nearest_center], atol=0.2)
    np.testing.assert_allclose(variances, 0.25, atol=0.1)


def test_fit_mixture_mostly_duplicate_rows():
    rng = np.random.default_rng(1)
    # 95% of the rows are one repeated code, and the other 5% are spread around it.
    z = np.concatenate([np.tile([[1.0, -2.0]], (950, 1)), rng.normal(0.0, 3.0, (50, 2))])

    weights, means, variances, method = fit_mixture(z, 4, seed=0)

    assert method in ("gaussian_mixture", "regularized_gaussian_mixture", "kmeans")
    assert_valid_mixture(weights, means, variances, 4, 2)


@pytest.mark.parametrize("num_clusters", [4, 5])
def test_fit_mixture_clusters_near_distinct_rows(num_clusters):
    distinct = np.random.default_rng(2).normal(0.0, 2.0, (5, 3))
    z = np.repeat(distinct, 20, axis=0)

    weights, means, variances, method = fit_mixture(z, num_clusters, seed=0)

    assert method in ("gaussian_mixture", "regularized_gaussian_mixture", "kmeans")
    assert_valid_mixture(weights, means, variances, num_clusters, 3)


def failing_mixture_fit(self, z, y=None):
    raise ValueError("simulated singular covariance")


def test_fit_mixture_falls_back_to_kmeans(monkeypatch):
    monkeypatch.setattr(GaussianMixture, "fit", failing_mixture_fit)
    z, groups = separated_codes(rows_per_cluster=40)

    weights, means, variances, method = fit_mixture(z, 3, seed=0, variance_floor=1e-3)

    assert method == "kmeans"
    assert_valid_mixture(weights, means, variances, 3, 2, variance_floor=1e-3)
    assignment = np.linalg.norm(z[:, np.newaxis] - means, axis=-1).argmin(axis=1)
    assert clustering_accuracy(groups, assignment) == 1.0


def test_fit_mixture_kmeans_fallback_with_duplicates(monkeypatch):
    monkeypatch.setattr(GaussianMixture, "fit", failing_mixture_fit)
    # Three distinct codes and three clusters: every k-means cluster has zero spread.
    z = np.repeat([[0.0, 0.0], [1.0, 1.0], [5.0, -5.0]], [98, 1, 1], axis=0)

    weights, means, variances, method = fit_mixture(z, 3, seed=0)

    assert method == "kmeans"
    assert_valid_mixture(weights, means, variances, 3, 2)


def test_fit_mixture_rejects_more_clusters_than_distinct_rows():
    z = np.repeat(np.arange(8.0).reshape(4, 2), 25, axis=0)

    with pytest.raises(
        MixtureInitializationError,
        match=r"at most the number of distinct rows \(4\)\. Received: num_clusters=5\.",
    ):
        fit_mixture(z, 5)


def test_fit_mixture_rejects_non_finite_codes():
    z, _ = separated_codes(rows_per_cluster=10)
    z[3, 1] = np.nan

    with pytest.raises(MixtureInitializationError, match=r"NaN or infinite latent codes"):
        fit_mixture(z, 3)


def test_fit_mixture_single_cluster():
    z, _ = separated_codes(rows_per_cluster=10)

    weights, means, variances, method = fit_mixture(z, 1)

    assert_valid_mixture(weights, means, variances, 1, 2)
    np.testing.assert_allclose(means[0], z.mean(axis=0), atol=1e-6)


# ----------------------------------------------------------------- collapse detection


def test_describe_collapse_single_cluster():
    probabilities = np.tile([0.05, 0.9, 0.05], (100, 1))

    message = describe_collapse(probabilities)

    assert message is not None
    assert "collapsed: 100 of 100 rows are in cluster 1" in message
    assert "pretraining" in message


def test_describe_collapse_uniform_weights():
    rng = np.random.default_rng(3)
    probabilities = 0.25 + rng.uniform(-1e-3, 1e-3, (200, 4))
    probabilities /= probabilities.sum(axis=1, keepdims=True)

    message = describe_collapse(probabilities)

    assert message is not None
    assert "nearly uniform" in message
    assert "4 clusters" in message


def test_describe_collapse_healthy_clustering():
    probabilities = np.eye(4)[np.arange(200) % 4] * 0.9 + 0.025

    assert describe_collapse(probabilities) is None


def test_describe_collapse_single_cluster_model():
    assert describe_collapse(np.ones((50, 1))) is None


@pytest.mark.parametrize(
    "counts, num_clusters, expected",
    [
        ([50, 50], 4, [2, 2]),
        ([90, 10], 4, [3, 1]),  # every class keeps one component
        ([10, 10, 10], 3, [1, 1, 1]),
        ([2, 100], 5, [1, 4]),
        ([1, 3], 4, [1, 3]),  # no class gets more components than rows
    ],
)
def test_allocate_components(counts, num_clusters, expected):
    np.testing.assert_array_equal(allocate_components(counts, num_clusters), expected)


def test_allocate_components_rejects_more_components_than_rows():
    with pytest.raises(ValueError, match="num_clusters=5"):
        allocate_components([1, 3], 5)


def test_fit_class_mixture_splits_each_class_by_geometry():
    # Class 0 contains the two left blobs and class 1 the right one. With 3
    # components, class 0's two go to the blobs that only the codes tell apart.
    z, groups = separated_codes()
    labels = np.where(groups == 2, 1, 0)

    weights, means, variances, method = fit_class_mixture(z, labels, 3, seed=0)

    assert method == "class_mixture"
    assert_valid_mixture(weights, means, variances, 3, 2)
    np.testing.assert_allclose(weights, [1 / 3] * 3, atol=0.02)
    nearest_center = np.linalg.norm(means[:, np.newaxis] - CENTERS, axis=-1).argmin(axis=1)
    assert sorted(nearest_center[:2]) == [0, 1]  # class 0's components come first
    assert nearest_center[2] == 2
    np.testing.assert_allclose(means, CENTERS[nearest_center], atol=0.2)


def test_fit_class_mixture_groups_classes():
    z, groups = separated_codes()
    # Six classes, two per blob: the three components must follow the blobs.
    labels = 2 * groups + np.arange(len(groups)) % 2

    weights, means, variances, method = fit_class_mixture(z, labels, 3, seed=0)

    assert method == "class_groups"
    assert_valid_mixture(weights, means, variances, 3, 2)
    nearest_center = np.linalg.norm(means[:, np.newaxis] - CENTERS, axis=-1).argmin(axis=1)
    assert sorted(nearest_center) == [0, 1, 2]


def test_fit_class_mixture_rejects_mismatched_labels():
    z, groups = separated_codes()
    with pytest.raises(ValueError, match="one label per code"):
        fit_class_mixture(z, groups[:-1], 3)
