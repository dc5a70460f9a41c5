"""Mixture initialization from latent codes, and checks for a collapsed clustering.

NumPy and scikit-learn only; the model calls these between pretraining and
training.
"""

import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture


class MixtureInitializationError(RuntimeError):
    """Raised when no initialization of the mixture prior succeeds."""


def fit_mixture(z, num_clusters, seed=0, n_init=1, variance_floor=1e-4):
    """Fit a diagonal Gaussian mixture to latent codes, falling back when it fails.

    Tries three methods in order. First scikit-learn's `GaussianMixture`.
    Then the same with a covariance regularization of 1% of the mean
    variance, because duplicate rows and tiny clusters make the plain fit
    singular. Last, k-means centres with the variance of each k-means
    cluster floored at `variance_floor`.

    Args:
        z: array of shape `(num_samples, latent_dim)`.
        num_clusters: number of components `K`.
        seed: random state of the fits.
        n_init: initializations of each scikit-learn fit.
        variance_floor: smallest variance given to a component.

    Returns:
        `(weights, means, variances, method)` with shapes `(K,)`, `(K, D)`,
        `(K, D)`, and the name of the method that succeeded.

    Raises:
        MixtureInitializationError: if `z` has fewer distinct rows than
            `num_clusters` or holds non-finite values.
    """
    z = np.asarray(z, np.float64)
    if not np.isfinite(z).all():
        raise MixtureInitializationError(
            "The encoder produced NaN or infinite latent codes, so the mixture "
            "prior cannot be initialized. Scale the inputs (feature_scaling) or "
            "lower the pretraining learning rate."
        )
    num_distinct = len(np.unique(z.round(decimals=6), axis=0))
    if num_distinct < num_clusters:
        raise MixtureInitializationError(
            f"`num_clusters` must be at most the number of distinct rows "
            f"({num_distinct}). Received: num_clusters={num_clusters}."
        )
    mean_variance = float(z.var(axis=0).mean()) or 1.0

    for method, reg_covar in (("gaussian_mixture", 1e-6), ("regularized_gaussian_mixture", 1e-2 * mean_variance)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                mixture = GaussianMixture(
                    num_clusters,
                    covariance_type="diag",
                    reg_covar=reg_covar,
                    n_init=n_init,
                    random_state=seed,
                ).fit(z)
        except (ValueError, np.linalg.LinAlgError):
            continue
        counts = np.bincount(mixture.predict(z), minlength=num_clusters)
        if np.all(np.isfinite(mixture.means_)) and counts.min() >= min(2, len(z) // num_clusters):
            variances = np.maximum(mixture.covariances_, variance_floor)
            return mixture.weights_, mixture.means_, variances, method

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        kmeans = KMeans(num_clusters, n_init=10, random_state=seed).fit(z)
    labels = kmeans.labels_
    counts = np.bincount(labels, minlength=num_clusters).astype(np.float64)
    variances = np.empty_like(kmeans.cluster_centers_)
    for cluster in range(num_clusters):
        members = z[labels == cluster]
        variances[cluster] = members.var(axis=0) if len(members) > 1 else mean_variance
    variances = np.maximum(variances, max(variance_floor, 1e-3 * mean_variance))
    weights = np.maximum(counts, 1.0) / np.maximum(counts, 1.0).sum()
    return weights, kmeans.cluster_centers_, variances, "kmeans"


def describe_collapse(cluster_probs):
    """Return a warning text when cluster weights show a failed clustering, else None.

    Two failures are detected: almost every row (98% or more) assigned to one
    cluster, and weights so close to uniform that no cluster is preferred.

    Args:
        cluster_probs: array of shape `(num_samples, num_clusters)`.
    """
    cluster_probs = np.asarray(cluster_probs)
    num_samples, num_clusters = cluster_probs.shape
    if num_clusters < 2 or num_samples < 2:
        return None
    remedies = (
        "Likely causes: too little autoencoder pretraining, a poor mixture "
        "initialization, or a learning rate that is too high. Try more "
        "pretraining epochs, n_init restarts, or a lower learning rate."
    )
    counts = np.bincount(cluster_probs.argmax(axis=1), minlength=num_clusters)
    if counts.max() >= 0.98 * num_samples:
        return (
            f"The clustering collapsed: {counts.max()} of {num_samples} rows are in "
            f"cluster {int(counts.argmax())}. {remedies}"
        )
    mean_max = float(cluster_probs.max(axis=1).mean())
    if mean_max < 1.0 / num_clusters + 0.02 * (1.0 - 1.0 / num_clusters):
        return (
            f"The cluster weights are nearly uniform (mean largest weight "
            f"{mean_max:.3f} with {num_clusters} clusters), so no cluster is "
            f"preferred. {remedies}"
        )
    return None
