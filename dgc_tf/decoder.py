"""The generative network p(x|z), Bernoulli or Gaussian."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

LIKELIHOODS = ("bernoulli", "gaussian")


@keras.saving.register_keras_serializable(package="dgc_tf")
class Decoder(keras.layers.Layer):
    """Map latent codes to the parameters of p(x|z).

    * `"bernoulli"`: independent Bernoulli pixels, for data in [0, 1]; the
      output contains logits.
    * `"gaussian"`: independent normals with a learned per-feature scale,
      for standardized features; the output contains means.

    Args:
        num_features: size of `x`.
        hidden_units: widths of the hidden layers, from `z` outwards.
        likelihood: one of `LIKELIHOODS`.
        activation: activation of the hidden layers.

    Input shape: `(..., latent_dim)`.
    Output shape: `(..., num_features)`.
    """

    def __init__(
        self,
        num_features,
        hidden_units=(256, 256, 128),
        likelihood="gaussian",
        activation="relu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if likelihood not in LIKELIHOODS:
            raise ValueError(
                f"`likelihood` must be one of {LIKELIHOODS}. Received: likelihood={likelihood!r}"
            )
        self.num_features = int(num_features)
        self.hidden_units = tuple(int(units) for units in hidden_units)
        self.likelihood = likelihood
        self.activation = activation
        self.hidden_layers = [
            keras.layers.Dense(units, activation=activation, name=f"hidden_{index}")
            for index, units in enumerate(self.hidden_units)
        ]
        self.output_layer = keras.layers.Dense(self.num_features, name="x_params")

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.hidden_layers:
            layer.build(shape)
            shape = shape[:-1] + (layer.units,)
        self.output_layer.build(shape)
        if self.likelihood == "gaussian":
            self.log_scale = self.add_weight(
                name="log_scale", shape=(self.num_features,), initializer="zeros"
            )

    def call(self, z):
        hidden = z
        for layer in self.hidden_layers:
            hidden = layer(hidden)
        return self.output_layer(hidden)

    def distribution(self, params):
        """Return p(x|z) with event shape `(num_features,)`."""
        if self.likelihood == "bernoulli":
            return tfd.Independent(tfd.Bernoulli(logits=params, dtype=params.dtype), 1)
        # The clip keeps a collapsing feature from sending log p(x|z) to infinity.
        scale = tf.exp(tf.clip_by_value(self.log_scale, -7.0, 3.0))
        return tfd.Independent(tfd.Normal(loc=params, scale=scale), 1)

    def mean(self, params):
        """Return E[x|z] in the model's (scaled) input space."""
        if self.likelihood == "bernoulli":
            return tf.sigmoid(params)
        return params

    def get_config(self):
        config = super().get_config()
        config.update(
            num_features=self.num_features,
            hidden_units=list(self.hidden_units),
            likelihood=self.likelihood,
            activation=self.activation,
        )
        return config
