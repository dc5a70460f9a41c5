"""Per-cluster response models p(y|z, c=k), computed for all clusters at once."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

RESPONSE_FAMILIES = ("categorical", "bernoulli", "gaussian")
HEAD_CAPACITIES = ("bias", "linear", "mlp")


# The two products below compute tf.einsum("...d,kdh->...kh") and
# tf.einsum("...kd,kdh->...kh") with MatMul and BatchMatMul. With TensorFlow
# 2.21 on a 2-core AMD EPYC, einsum took two to four times as long for the
# heads' shapes (forward and gradient, K = 2 to 10, batch 100 to 256).


def _shared_input_product(z, kernel):
    """Return `z @ kernel[k]` for every cluster `k`: `(..., D)` and `(K, D, H)` give `(..., K, H)`."""
    num_clusters, width, units = kernel.shape
    # The K kernels side by side: one (D, K * H) matrix, one matrix product.
    side_by_side = tf.reshape(tf.transpose(kernel, [1, 0, 2]), [width, num_clusters * units])
    if z.shape.rank == 2:
        return tf.reshape(tf.matmul(z, side_by_side), [-1, num_clusters, units])
    rows = tf.matmul(tf.reshape(z, [-1, width]), side_by_side)
    return tf.reshape(rows, tf.concat([tf.shape(z)[:-1], [num_clusters, units]], axis=0))


def _per_cluster_product(hidden, kernel):
    """Return `hidden[..., k, :] @ kernel[k]` for every `k`: `(..., K, D)` and `(K, D, H)` give `(..., K, H)`."""
    num_clusters, width, units = kernel.shape
    rows = hidden if hidden.shape.rank == 3 else tf.reshape(hidden, [-1, num_clusters, width])
    by_cluster = tf.matmul(tf.transpose(rows, [1, 0, 2]), kernel)  # (K, N, H)
    product = tf.transpose(by_cluster, [1, 0, 2])  # (N, K, H)
    if hidden.shape.rank == 3:
        return product
    return tf.reshape(product, tf.concat([tf.shape(hidden)[:-1], [units]], axis=0))


@keras.saving.register_keras_serializable(package="dgc_tf")
class ResponseHeads(keras.layers.Layer):
    """`num_clusters` response models sharing one input `z`.

    Capacity decides how much of `y` a head can explain inside a mixed
    cluster: `"bias"` is p(y|c) and ignores `z`, `"linear"` is a generalized
    linear model of `z` per cluster, `"mlp"` adds one or more hidden layers
    per cluster. All clusters are evaluated by one matrix product per layer.

    Families and their parameters per cluster:

    * `"categorical"`: `num_classes` logits.
    * `"bernoulli"`: one logit.
    * `"gaussian"`: a mean and a log-variance; the predicted variance makes
      the entropy of each head differ across clusters.

    Args:
        num_clusters: number of clusters `K`.
        family: one of `RESPONSE_FAMILIES`.
        num_classes: number of classes, for `"categorical"` only.
        capacity: one of `HEAD_CAPACITIES`.
        hidden_units: hidden widths for `capacity="mlp"`.
        log_var_bounds: clip range of the Gaussian log-variance.

    Input shape: `(..., latent_dim)`.
    Output shape: `(..., num_clusters, num_params)`.
    """

    def __init__(
        self,
        num_clusters,
        family,
        num_classes=None,
        capacity="linear",
        hidden_units=(32,),
        log_var_bounds=(-7.0, 7.0),
        **kwargs,
    ):
        super().__init__(**kwargs)
        if family not in RESPONSE_FAMILIES:
            raise ValueError(
                f"`response` must be one of {RESPONSE_FAMILIES}. Received: response={family!r}"
            )
        if capacity not in HEAD_CAPACITIES:
            raise ValueError(
                f"`head` must be one of {HEAD_CAPACITIES}. Received: head={capacity!r}"
            )
        if family == "categorical" and (num_classes is None or int(num_classes) < 2):
            raise ValueError(
                "A categorical response needs `num_classes` of at least 2. "
                f"Received: num_classes={num_classes}. Call `model.adapt(x, y)` "
                "or pass num_classes."
            )
        self.num_clusters = int(num_clusters)
        self.family = family
        self.num_classes = int(num_classes) if family == "categorical" else None
        self.capacity = capacity
        self.hidden_units = tuple(int(units) for units in hidden_units)
        self.log_var_bounds = tuple(float(bound) for bound in log_var_bounds)

    @property
    def num_params(self):
        return {"categorical": self.num_classes, "bernoulli": 1, "gaussian": 2}[self.family]

    def build(self, input_shape):
        latent_dim = int(input_shape[-1])
        num_clusters = self.num_clusters
        self.hidden_kernels = []
        self.hidden_biases = []
        width = latent_dim
        if self.capacity == "mlp":
            for index, units in enumerate(self.hidden_units):
                self.hidden_kernels.append(
                    self.add_weight(
                        name=f"hidden_kernel_{index}",
                        shape=(num_clusters, width, units),
                        initializer="glorot_uniform",
                    )
                )
                self.hidden_biases.append(
                    self.add_weight(
                        name=f"hidden_bias_{index}", shape=(num_clusters, units), initializer="zeros"
                    )
                )
                width = units
        if self.capacity != "bias":
            self.output_kernel = self.add_weight(
                name="output_kernel",
                shape=(num_clusters, width, self.num_params),
                initializer="glorot_uniform",
            )
        self.output_bias = self.add_weight(
            name="output_bias", shape=(num_clusters, self.num_params), initializer="zeros"
        )

    def call(self, z):
        if self.capacity == "bias":
            # p(y|c): the parameters ignore z, broadcast to (..., K, P).
            return tf.zeros_like(z[..., :1])[..., tf.newaxis] + self.output_bias
        # The first layer reads the shared z, later ones each cluster's own hidden units.
        kernels = self.hidden_kernels + [self.output_kernel]
        biases = self.hidden_biases + [self.output_bias]
        hidden = _shared_input_product(z, kernels[0]) + biases[0]  # (..., K, H)
        for kernel, bias in zip(kernels[1:], biases[1:]):
            hidden = _per_cluster_product(tf.nn.relu(hidden), kernel) + bias  # (..., K, H)
        return hidden  # (..., K, P)

    def distribution(self, params):
        """Return p(y|z, c=k) with batch shape `(..., K)` and a scalar event."""
        if self.family == "categorical":
            return tfd.Categorical(logits=params)
        if self.family == "bernoulli":
            return tfd.Bernoulli(logits=params[..., 0])
        log_var = tf.clip_by_value(params[..., 1], *self.log_var_bounds)
        return tfd.Normal(loc=params[..., 0], scale=tf.exp(0.5 * log_var))

    def mean(self, params):
        """Return each head's prediction: class probabilities `(..., K, C)`,
        the probability of class 1 `(..., K)`, or the Gaussian mean `(..., K)`."""
        if self.family == "categorical":
            return tf.nn.softmax(params, axis=-1)
        if self.family == "bernoulli":
            return tf.sigmoid(params[..., 0])
        return params[..., 0]

    def get_config(self):
        config = super().get_config()
        config.update(
            num_clusters=self.num_clusters,
            family=self.family,
            num_classes=self.num_classes,
            capacity=self.capacity,
            hidden_units=list(self.hidden_units),
            log_var_bounds=list(self.log_var_bounds),
        )
        return config
