"""Tests for dgc_tf.metrics against hand-computed values and a brute-force reference."""

import itertools

import numpy as np
import pytest
from sklearn import metrics as sklearn_metrics

from dgc_tf.metrics import (
    adjusted_rand_index,
    clustering_accuracy,
    clustering_scores,
    normalized_mutual_info,
)


def brute_force_accuracy(true_groups, cluster_ids):
    """Try every one-to-one matching of clusters to classes and return the best accuracy."""
    classes = sorted(set(true_groups))
    clusters = sorted(set(cluster_ids))
    pairs = list(zip(true_groups, cluster_ids))
    best = 0
    if len(clusters) <= len(classes):
        for matched_classes in itertools.permutations(classes, len(clusters)):
            class_of = dict(zip(clusters, matched_classes))
            best = max(best, sum(class_of[c] == t for t, c in pairs))
    else:
        for matched_clusters in itertools.permutations(clusters, len(classes)):
            # Clusters left out of the matching have no class and count as errors.
            class_of = dict(zip(matched_clusters, classes))
            best = max(best, sum(class_of.get(c) == t for t, c in pairs))
    return best / len(pairs)


def test_accuracy_perfect_with_different_ids():
    assert clustering_accuracy([0, 0, 2, 2, 2], [0, 0, 1, 1, 1]) == 1.0


def test_accuracy_large_cluster_ids():
    true_groups = [1, 1, 1, 2, 2, 2]
    cluster_ids = [60, 60, 5, 5, 5, 5]
    # Best matching: 1 -> 60 (2 samples), 2 -> 5 (3 samples).
    assert clustering_accuracy(true_groups, cluster_ids) == pytest.approx(5 / 6)
    assert clustering_accuracy(true_groups, cluster_ids) == pytest.approx(
        brute_force_accuracy(true_groups, cluster_ids)
    )


def test_accuracy_many_sparse_cluster_ids():
    true_groups = [1, 1, 2, 2, 1, 2]
    cluster_ids = [0, 60, 17, 17, 33, 42]
    # Only one cluster can be matched to each class: 1 -> 0 (or 60 or 33), 2 -> 17.
    assert clustering_accuracy(true_groups, cluster_ids) == pytest.approx(3 / 6)
    assert clustering_accuracy(true_groups, cluster_ids) == pytest.approx(
        brute_force_accuracy(true_groups, cluster_ids)
    )


def test_accuracy_more_clusters_than_classes():
    true_groups = [0, 0, 1, 1, 2, 2, 3, 3]
    cluster_ids = [0, 0, 1, 1, 2, 2, 3, 4]
    # Cluster 3 or cluster 4 stays unmatched, so one sample of class 3 is an error.
    assert clustering_accuracy(true_groups, cluster_ids) == pytest.approx(7 / 8)
    assert clustering_accuracy(true_groups, cluster_ids) == pytest.approx(
        brute_force_accuracy(true_groups, cluster_ids)
    )


def test_accuracy_fewer_clusters_than_classes():
    true_groups = [0, 0, 1, 1, 2, 2, 3, 3]
    cluster_ids = [0, 0, 1, 1, 2, 2, 2, 2]
    # Class 3 has no cluster left, so its two samples are errors.
    assert clustering_accuracy(true_groups, cluster_ids) == pytest.approx(6 / 8)
    assert clustering_accuracy(true_groups, cluster_ids) == pytest.approx(
        brute_force_accuracy(true_groups, cluster_ids)
    )


def test_accuracy_string_labels():
    true_groups = ["cat", "cat", "dog", "dog", "bird"]
    cluster_ids = ["a", "a", "b", "a", "c"]
    # Best matching: cat -> a (2), dog -> b (1), bird -> c (1).
    assert clustering_accuracy(true_groups, cluster_ids) == pytest.approx(4 / 5)
    assert clustering_accuracy(true_groups, cluster_ids) == pytest.approx(
        brute_force_accuracy(true_groups, cluster_ids)
    )


def test_accuracy_invariant_to_renaming():
    rng = np.random.default_rng(0)
    true_groups = rng.integers(0, 3, size=50)
    cluster_ids = rng.integers(0, 4, size=50)
    expected = clustering_accuracy(true_groups, cluster_ids)

    renamings = [
        {0: 3, 1: 2, 2: 1, 3: 0},
        {0: 10, 1: 60, 2: 7, 3: 33},
        {0: "w", 1: "x", 2: "y", 3: "z"},
    ]
    for renaming in renamings:
        renamed = [renaming[c] for c in cluster_ids]
        assert clustering_accuracy(true_groups, renamed) == pytest.approx(expected)


def test_accuracy_matches_brute_force_randomly():
    rng = np.random.default_rng(1)
    for _ in range(200):
        num_samples = int(rng.integers(1, 12))
        num_classes = int(rng.integers(1, 5))
        num_clusters = int(rng.integers(1, 6))
        true_groups = rng.integers(0, num_classes, size=num_samples).tolist()
        cluster_ids = rng.integers(0, num_clusters, size=num_samples).tolist()

        accuracy = clustering_accuracy(true_groups, cluster_ids)

        assert 0.0 <= accuracy <= 1.0
        assert accuracy == pytest.approx(brute_force_accuracy(true_groups, cluster_ids))


def test_accuracy_returns_python_float():
    accuracy = clustering_accuracy(np.array([0, 1]), np.array([1, 0]))
    assert type(accuracy) is float
    assert accuracy == 1.0


def test_accuracy_single_sample():
    assert clustering_accuracy([5], [9]) == 1.0


@pytest.mark.parametrize(
    "function",
    [clustering_accuracy, normalized_mutual_info, adjusted_rand_index, clustering_scores],
)
def test_validation_errors(function):
    with pytest.raises(ValueError, match=r"must have the same length.*=3.*=2"):
        function([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="`true_groups` must contain at least one label"):
        function([], [])
    with pytest.raises(ValueError, match=r"`cluster_ids` must be a 1-D array.*\(2, 2\)"):
        function([0, 1, 1, 0], [[0, 1], [1, 0]])
    with pytest.raises(ValueError, match=r"`true_groups` must be a 1-D array.*\(\)"):
        function(3, [3])


def test_nmi_hand_computed():
    assert normalized_mutual_info([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    # Clusters independent of the classes share no information.
    assert normalized_mutual_info([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0)


def test_ari_hand_computed():
    assert adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    # Pairs within a class: 2, pairs within a cluster: 2, shared pairs: 0, all pairs: 6.
    # Expected index 2 * 2 / 6 = 2/3, max index 2, so ARI = (0 - 2/3) / (2 - 2/3) = -0.5.
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)


def test_nmi_and_ari_match_sklearn():
    rng = np.random.default_rng(2)
    true_groups = rng.integers(0, 4, size=100)
    cluster_ids = rng.integers(0, 5, size=100)

    assert normalized_mutual_info(true_groups, cluster_ids) == pytest.approx(
        sklearn_metrics.normalized_mutual_info_score(true_groups, cluster_ids)
    )
    assert adjusted_rand_index(true_groups, cluster_ids) == pytest.approx(
        sklearn_metrics.adjusted_rand_score(true_groups, cluster_ids)
    )


def test_clustering_scores_keys_and_values():
    true_groups = ["a", "a", "b", "b", "b"]
    cluster_ids = [7, 7, 7, 60, 60]

    scores = clustering_scores(true_groups, cluster_ids)

    assert set(scores) == {"accuracy", "nmi", "ari"}
    assert scores["accuracy"] == pytest.approx(4 / 5)
    assert scores["nmi"] == pytest.approx(normalized_mutual_info(true_groups, cluster_ids))
    assert scores["ari"] == pytest.approx(adjusted_rand_index(true_groups, cluster_ids))
