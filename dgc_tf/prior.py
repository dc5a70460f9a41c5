"""The Gaussian-mixture prior p(c) p(z|c) over the latent space."""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions


@keras.saving.register_keras_serializable(package="dgc_tf")
class MixturePrior(keras.layers.Layer):
    """A mixture of diagonal Gaussians with trainable weights, means and variances.

    Mathematical details:

        pi       = softmax(mixture_logits)                   # on the simplex by construction
        sigma2_k = variance_floor + softplus(raw_variances_k)
        p(z)     = sum_k pi_k N(z; mu_k, diag(sigma2_k))

    Args:
        num_clusters: number of components `K`.
        latent_dim: size of `z`.
        variance_floor: smallest component variance, which keeps a component
            from collapsing onto a single point.

    Input shape: `(..., latent_dim)`.
    Output shape: `(..., num_clusters)`: `log pi_k + log N(z; mu_k, sigma2_k)`.
    """

    def __init__(self, num_clusters, latent_dim, variance_floor=1e-4, **kwargs):
        super().__init__(**kwargs)
        self.num_clusters = int(num_clusters)
        self.latent_dim = int(latent_dim)
        self.variance_floor = float(variance_floor)

    def build(self, input_shape=None):
        self.mixture_logits = self.add_weight(
            name="mixture_logits", shape=(self.num_clusters,), initializer="zeros"
        )
        self.component_means = self.add_weight(
            name="component_means",
            shape=(self.num_clusters, self.latent_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
        )
        # softplus(0.5413) = 1, so the components start with unit variance.
        self.raw_variances = self.add_weight(
            name="raw_variances",
            shape=(self.num_clusters, self.latent_dim),
            initializer=keras.initializers.Constant(0.5413),
        )

    def log_mixture_weights(self):
        """Return `log pi`, shape `(num_clusters,)`."""
        return tf.nn.log_softmax(self.mixture_logits)

    def variances(self):
        """Return `sigma2`, shape `(num_clusters, latent_dim)`."""
        return self.variance_floor + tf.nn.softplus(self.raw_variances)

    def components(self):
        """Return p(z|c) for every cluster: batch shape `(K,)`, event shape `(D,)`."""
        # Independent normals carry the same density as MultivariateNormalDiag
        # with fewer graph ops (no linear-operator machinery), which shows in
        # the per-step cost of small networks.
        return tfd.Independent(
            tfd.Normal(loc=self.component_means, scale=tf.sqrt(self.variances())), reinterpreted_batch_ndims=1
        )

    def call(self, z):
        # z: (..., D) -> (..., 1, D) broadcasts against the K components.
        log_densities = self.components().log_prob(z[..., tf.newaxis, :])  # (..., K)
        return log_densities + self.log_mixture_weights()

    def kl_from_posterior(self, z_mean, z_log_var):
        """Return KL(N(z_mean, exp(z_log_var)) || N(mu_k, sigma2_k)) for every k.

        Args:
            z_mean, z_log_var: tensors of shape `(batch, latent_dim)`.

        Returns:
            A tensor of shape `(batch, num_clusters)`, in closed form.
        """
        posterior = tfd.Independent(
            tfd.Normal(loc=z_mean[:, tf.newaxis, :], scale=tf.exp(0.5 * z_log_var)[:, tf.newaxis, :]),
            reinterpreted_batch_ndims=1,
        )
        return tfd.kl_divergence(posterior, self.components())

    def assign(self, weights, means, variances):
        """Set the mixture from fitted parameters (e.g. a scikit-learn mixture).

        Args:
            weights: array of shape `(K,)`, positive.
            means: array of shape `(K, D)`.
            variances: array of shape `(K, D)`, positive.
        """
        weights = np.asarray(weights, np.float64)
        weights = np.maximum(weights, 1e-6)
        weights = weights / weights.sum()
        excess = np.maximum(np.asarray(variances, np.float64) - self.variance_floor, 1e-6)
        self.mixture_logits.assign(np.log(weights).astype(np.float32))
        self.component_means.assign(np.asarray(means, np.float32))
        # Inverse softplus: log(exp(v) - 1), written stably as v + log(-expm1(-v)).
        self.raw_variances.assign((excess + np.log(-np.expm1(-excess))).astype(np.float32))

    def get_config(self):
        config = super().get_config()
        config.update(
            num_clusters=self.num_clusters,
            latent_dim=self.latent_dim,
            variance_floor=self.variance_floor,
        )
        return config
