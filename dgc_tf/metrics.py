"""Clustering quality scores against known groups.

Clustering accuracy is the fraction of samples that fall in the cluster matched
to their class, under the best one-to-one matching of clusters to classes
(Hungarian algorithm on the contingency table). When the numbers of clusters and
classes differ, samples in unmatched clusters count as errors. NMI and ARI come
from scikit-learn.

All functions accept any hashable labels (integers, strings) and are invariant
to renaming the clusters. This module imports numpy, scipy and scikit-learn only.
"""

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as sklearn_metrics
from sklearn.metrics.cluster import contingency_matrix

__all__ = [
    "clustering_accuracy",
    "normalized_mutual_info",
    "adjusted_rand_index",
    "clustering_scores",
]


def _validate_labels(true_groups, cluster_ids):
    """Return both label arrays as 1-D numpy arrays, or raise ValueError."""
    true_groups = np.asarray(true_groups)
    cluster_ids = np.asarray(cluster_ids)
    for name, labels in (("true_groups", true_groups), ("cluster_ids", cluster_ids)):
        if labels.ndim != 1:
            raise ValueError(
                f"`{name}` must be a 1-D array of labels. "
                f"Received: {name} with shape {labels.shape}."
            )
        if labels.size == 0:
            raise ValueError(
                f"`{name}` must contain at least one label. Received: an empty {name}."
            )
    if len(true_groups) != len(cluster_ids):
        raise ValueError(
            "`true_groups` and `cluster_ids` must have the same length. "
            f"Received: len(true_groups)={len(true_groups)}, "
            f"len(cluster_ids)={len(cluster_ids)}."
        )
    return true_groups, cluster_ids


def clustering_accuracy(true_groups, cluster_ids):
    """Compute the accuracy of the best one-to-one matching of clusters to classes.

    The matching maximizes the number of samples whose cluster is matched to
    their class (``scipy.optimize.linear_sum_assignment`` on the contingency
    table). Each cluster is matched to at most one class and each class to at
    most one cluster, so when the counts differ, the samples of unmatched
    clusters or classes count as errors.

    Parameters
    ----------
    true_groups : array-like, shape (num_samples,)
        True class labels, of any hashable type.
    cluster_ids : array-like, shape (num_samples,)
        Predicted cluster ids, of any hashable type.

    Returns
    -------
    float
        Accuracy in [0, 1].

    Raises
    ------
    ValueError
        If an input is not 1-D, is empty, or the lengths differ.
    """
    true_groups, cluster_ids = _validate_labels(true_groups, cluster_ids)
    # Shape (num_classes, num_clusters). The ids need not be 0..K-1.
    contingency = contingency_matrix(true_groups, cluster_ids)
    rows, columns = linear_sum_assignment(contingency, maximize=True)
    matched = contingency[rows, columns].sum()
    return float(matched) / len(true_groups)


def normalized_mutual_info(true_groups, cluster_ids):
    """Compute the normalized mutual information between classes and clusters.

    Wraps ``sklearn.metrics.normalized_mutual_info_score`` with its default
    arithmetic-mean normalization.

    Parameters
    ----------
    true_groups : array-like, shape (num_samples,)
        True class labels.
    cluster_ids : array-like, shape (num_samples,)
        Predicted cluster ids.

    Returns
    -------
    float
        NMI in [0, 1].

    Raises
    ------
    ValueError
        If an input is not 1-D, is empty, or the lengths differ.
    """
    true_groups, cluster_ids = _validate_labels(true_groups, cluster_ids)
    return float(sklearn_metrics.normalized_mutual_info_score(true_groups, cluster_ids))


def adjusted_rand_index(true_groups, cluster_ids):
    """Compute the adjusted Rand index between classes and clusters.

    Wraps ``sklearn.metrics.adjusted_rand_score``.

    Parameters
    ----------
    true_groups : array-like, shape (num_samples,)
        True class labels.
    cluster_ids : array-like, shape (num_samples,)
        Predicted cluster ids.

    Returns
    -------
    float
        ARI: 1 for identical partitions, about 0 for random ones, and negative
        for partitions that agree less than chance.

    Raises
    ------
    ValueError
        If an input is not 1-D, is empty, or the lengths differ.
    """
    true_groups, cluster_ids = _validate_labels(true_groups, cluster_ids)
    return float(sklearn_metrics.adjusted_rand_score(true_groups, cluster_ids))


def clustering_scores(true_groups, cluster_ids):
    """Compute clustering accuracy, NMI and ARI.

    Parameters
    ----------
    true_groups : array-like, shape (num_samples,)
        True class labels.
    cluster_ids : array-like, shape (num_samples,)
        Predicted cluster ids.

    Returns
    -------
    dict
        ``{"accuracy": float, "nmi": float, "ari": float}``.

    Raises
    ------
    ValueError
        If an input is not 1-D, is empty, or the lengths differ.
    """
    true_groups, cluster_ids = _validate_labels(true_groups, cluster_ids)
    return {
        "accuracy": clustering_accuracy(true_groups, cluster_ids),
        "nmi": normalized_mutual_info(true_groups, cluster_ids),
        "ari": adjusted_rand_index(true_groups, cluster_ids),
    }
