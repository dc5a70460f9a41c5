"""The DGC evidence lower bound and its cluster weights, in log space.

Notation: `B` batch, `K` clusters, `D` latent size, `M` Monte Carlo samples.

Mathematical details (Shi et al., "Deep Goal-Oriented Clustering",
arXiv:2006.04259, Eq. 6-9, with the entropy indexed by cluster):

    log p(k|z)   = log pi_k + log N(z; mu_k, sigma2_k) - logsumexp_j(same for j)
    H_k(z)       = max(entropy of p(y|z, c=k), 0)
    log lambda_k = w (log p(y|z,k) - r H_k(z)) + log p(k|z) - logsumexp_j(same for j)

    ELBO = w sum_k lambda_k (log p(y|z,k) - r H_k(z))        response
         + v log p(x|z)                                       reconstruction
         - sum_k lambda_k (log lambda_k - log pi_k)           KL(q(c|x) || p(c))
         - sum_k lambda_k KL(N(z_mean, z_var) || N(mu_k, sigma2_k))

`r` is 1 with the entropy regularizer and 0 without it. `w` weighs the
response term; `w = 1` is the bound of the paper, and `lambda` above is the
exact maximizer of the weighted bound over q(c|x). `w = 0` gives VaDE.
`v` weighs the reconstruction term: 1 is the bound, and 0 leaves the
supervision-only ablation without a decoder.

Without `y` (prediction), at `z = z_mean`:

    log lambda_test_k = -r H_k(z) + log p(k|z) - logsumexp_j(same for j)
"""

import tensorflow as tf


def cluster_log_posterior(log_joint):
    """Return `log p(k|z)` from `log pi_k + log N(z; mu_k, sigma2_k)`.

    Args:
        log_joint: tensor of shape `(..., K)`.

    Returns:
        A tensor of shape `(..., K)` whose exponentials sum to 1.
    """
    return tf.nn.log_softmax(log_joint, axis=-1)


def clipped_entropy(response_distribution):
    """Return `H_k(z) = max(entropy, 0)`, shape `(..., K)`.

    Also returns the boolean mask of entries where the clip is active.
    """
    entropy = response_distribution.entropy()
    return tf.nn.relu(entropy), entropy < 0.0


def labeled_log_weights(response_log_likelihood, entropy, log_posterior, response_weight, entropy_scale):
    """Return `log lambda_k = log q(c=k|x, y)`, shape `(..., K)`.

    Args:
        response_log_likelihood: `log p(y|z, c=k)`, shape `(..., K)`.
        entropy: clipped `H_k(z)`, shape `(..., K)`.
        log_posterior: `log p(k|z)`, shape `(..., K)`.
        response_weight: `w`, a Python float.
        entropy_scale: `r`, 1.0 with the entropy regularizer, else 0.0.
    """
    logits = response_weight * (response_log_likelihood - entropy_scale * entropy) + log_posterior
    return tf.nn.log_softmax(logits, axis=-1)


def unlabeled_log_weights(entropy, log_posterior, entropy_scale):
    """Return the prediction-time weights `log lambda_test_k`, shape `(..., K)`."""
    return tf.nn.log_softmax(log_posterior - entropy_scale * entropy, axis=-1)


def elbo_terms(
    log_weights,
    log_mixture_weights,
    latent_kl,
    reconstruction,
    response_log_likelihood=None,
    entropy=None,
    response_weight=1.0,
    entropy_scale=1.0,
    reconstruction_weight=1.0,
):
    """Return the per-example terms of the ELBO, each averaged over samples.

    Args:
        log_weights: `log lambda`, shape `(M, B, K)`.
        log_mixture_weights: `log pi`, shape `(K,)`.
        latent_kl: closed-form Gaussian KL per cluster, shape `(B, K)`.
        reconstruction: `log p(x|z)`, shape `(M, B)`.
        response_log_likelihood: `log p(y|z, k)`, shape `(M, B, K)`, or
            None when there is no response term.
        entropy: clipped `H_k(z)`, shape `(M, B, K)`; None as above.
        response_weight, entropy_scale: `w` and `r` of the module docstring.
        reconstruction_weight: `v` of the module docstring.

    Returns:
        A dict of tensors of shape `(B,)`: `response` (weighted by `w`),
        `reconstruction` (weighted by `v`), `cluster_kl`, `latent_kl` and `elbo`.
    """
    weights = tf.exp(log_weights)  # (M, B, K)
    terms = {
        "reconstruction": reconstruction_weight * tf.reduce_mean(reconstruction, axis=0),
        "cluster_kl": tf.reduce_mean(
            tf.reduce_sum(weights * (log_weights - log_mixture_weights), axis=-1), axis=0
        ),
        "latent_kl": tf.reduce_mean(tf.reduce_sum(weights * latent_kl, axis=-1), axis=0),
    }
    if response_log_likelihood is None:
        terms["response"] = tf.zeros_like(terms["reconstruction"])
    else:
        per_cluster = response_log_likelihood - entropy_scale * entropy  # (M, B, K)
        terms["response"] = response_weight * tf.reduce_mean(
            tf.reduce_sum(weights * per_cluster, axis=-1), axis=0
        )
    terms["elbo"] = (
        terms["response"] + terms["reconstruction"] - terms["cluster_kl"] - terms["latent_kl"]
    )
    return terms
