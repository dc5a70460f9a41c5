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


def allocate_components(class_counts, num_clusters):
    """Share `num_clusters` mixture components among classes in proportion to their rows.

    Every class gets one component first. The rest go by the largest
    remainder of `num_clusters * count / total`, so a class never gets more
    components than it has rows.

    Args:
        class_counts: rows per class, shape `(num_classes,)`, each at least 1.
        num_clusters: total components, at least the number of classes.

    Returns:
        int array of shape `(num_classes,)` summing to `num_clusters`.
    """
    counts = np.asarray(class_counts, np.int64)
    if num_clusters > counts.sum():
        raise ValueError(
            f"`num_clusters` must be at most the number of rows ({int(counts.sum())}). "
            f"Received: num_clusters={num_clusters}."
        )
    allocation = np.ones(len(counts), np.int64)
    while allocation.sum() < num_clusters:
        quota = num_clusters * counts / counts.sum() - allocation
        quota[allocation >= counts] = -np.inf  # Classes that have one component per row are full.
        allocation[int(np.argmax(quota))] += 1
    return allocation


def fit_class_mixture(z, labels, num_clusters, seed=0, n_init=1, variance_floor=1e-4):
    """Initialize a mixture from the codes of each class of a class response.

    With at least as many components as classes, each class gets its share
    of the components (`allocate_components`) and a Gaussian mixture is fitted
    to the codes of its rows alone (`fit_mixture`, with its fallbacks). Every
    component then starts pure in `y`, and the geometry of `x` splits the
    classes that get more than one component. With fewer components than
    classes, k-means on the class mean codes groups the classes, and each
    group's rows give one component.

    Args:
        z: codes of shape `(num_samples, latent_dim)`.
        labels: class indices of shape `(num_samples,)`.
        num_clusters: number of components `K`.
        seed: random state of the fits.
        n_init: initializations of each mixture fit.
        variance_floor: smallest variance given to a component.

    Returns:
        `(weights, means, variances, method)` as `fit_mixture` returns them;
        `method` is `"class_mixture"` or `"class_groups"`.
    """
    z = np.asarray(z, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(z):
        raise ValueError(f"`labels` has {len(labels)} rows but `z` has {len(z)}; pass one label per code.")
    classes, labels = np.unique(labels, return_inverse=True)
    counts = np.bincount(labels)
    mean_variance = float(z.var(axis=0).mean()) or 1.0
    floor = max(variance_floor, 1e-3 * mean_variance)

    if num_clusters < len(classes):
        class_means = np.stack([z[labels == index].mean(axis=0) for index in range(len(classes))])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            grouping = KMeans(num_clusters, n_init=10, random_state=seed).fit_predict(class_means)
        groups = grouping[labels]
        weights = np.bincount(groups, minlength=num_clusters) / len(z)
        means = np.stack([z[groups == group].mean(axis=0) for group in range(num_clusters)])
        variances = np.stack([z[groups == group].var(axis=0) for group in range(num_clusters)])
        return weights, means, np.maximum(variances, floor), "class_groups"

    weights, means, variances = [], [], []
    for index, num_components in enumerate(allocate_components(counts, num_clusters)):
        codes = z[labels == index]
        if num_components == 1:
            class_weights, class_means, class_variances = np.ones(1), codes.mean(axis=0)[None], codes.var(axis=0)[None]
        else:
            class_weights, class_means, class_variances, _ = fit_mixture(
                codes, num_components, seed=seed, n_init=n_init, variance_floor=variance_floor
            )
        weights.append(class_weights * len(codes) / len(z))
        means.append(class_means)
        variances.append(class_variances)
    return (
        np.concatenate(weights),
        np.concatenate(means),
        np.maximum(np.concatenate(variances), floor),
        "class_mixture",
    )


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
