"""The inference network q(z|x): a multilayer perceptron giving a diagonal Gaussian."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="dgc_tf")
class Encoder(keras.layers.Layer):
    """Map inputs to the mean and log-variance of q(z|x).

    The log-variance is clipped to `log_var_bounds`, which keeps
    `exp(z_log_var)` finite for inputs far from the training data.

    Args:
        latent_dim: size of `z`.
        hidden_units: widths of the hidden layers, e.g. `(500, 500, 2000)`
            for images.
        activation: activation of the hidden layers.
        log_var_bounds: `(low, high)` clip range of `z_log_var`.

    Input shape: `(batch, num_features)`.
    Output shape: two tensors of shape `(batch, latent_dim)`:
        `z_mean` and `z_log_var`.
    """

    def __init__(
        self,
        latent_dim,
        hidden_units=(128, 256, 256),
        activation="relu",
        log_var_bounds=(-10.0, 5.0),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.latent_dim = int(latent_dim)
        self.hidden_units = tuple(int(units) for units in hidden_units)
        self.activation = activation
        self.log_var_bounds = tuple(float(bound) for bound in log_var_bounds)
        self.hidden_layers = [
            keras.layers.Dense(units, activation=activation, name=f"hidden_{index}")
            for index, units in enumerate(self.hidden_units)
        ]
        self.mean_layer = keras.layers.Dense(self.latent_dim, name="z_mean")
        self.log_var_layer = keras.layers.Dense(
            self.latent_dim, name="z_log_var", kernel_initializer="zeros"
        )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.hidden_layers:
            layer.build(shape)
            shape = shape[:-1] + (layer.units,)
        self.mean_layer.build(shape)
        self.log_var_layer.build(shape)

    def call(self, x):
        hidden = x
        for layer in self.hidden_layers:
            hidden = layer(hidden)
        z_mean = self.mean_layer(hidden)
        z_log_var = tf.clip_by_value(self.log_var_layer(hidden), *self.log_var_bounds)
        return z_mean, z_log_var

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)[:-1] + (self.latent_dim,)
        return shape, shape

    def get_config(self):
        config = super().get_config()
        config.update(
            latent_dim=self.latent_dim,
            hidden_units=list(self.hidden_units),
            activation=self.activation,
            log_var_bounds=list(self.log_var_bounds),
        )
        return config
