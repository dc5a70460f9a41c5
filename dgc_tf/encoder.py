"""The inference network q(z|x): an MLP or a small conv net giving a diagonal Gaussian."""

import math
import numbers

import keras
import tensorflow as tf

ENCODER_TYPES = ("mlp", "conv")


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
        hidden = self._features(x)
        for layer in self.hidden_layers:
            hidden = layer(hidden)
        z_mean = self.mean_layer(hidden)
        z_log_var = tf.clip_by_value(self.log_var_layer(hidden), *self.log_var_bounds)
        return z_mean, z_log_var

    def _features(self, x):
        """Return the input of the dense layers; the MLP reads `x` as it is."""
        return x

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


def validate_image_shape(image_shape):
    """Return `image_shape` as a tuple `(height, width, channels)` of positive ints, or raise ValueError."""
    valid = isinstance(image_shape, (tuple, list)) and len(image_shape) == 3
    if valid:
        for size in image_shape:
            if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
                valid = False
    if not valid:
        raise ValueError(
            "`image_shape` must be (height, width, channels), three positive integers, "
            f"e.g. (28, 28, 1) for MNIST. Received: image_shape={image_shape!r}"
        )
    return tuple(int(size) for size in image_shape)


@keras.saving.register_keras_serializable(package="dgc_tf")
class ConvEncoder(Encoder):
    """Map flattened images to the mean and log-variance of q(z|x) with a small conv net.

    Each row is reshaped to `image_shape`, passed through one 3 x 3
    convolution with stride 2 per entry of `filters` (each halves the height
    and width), flattened, and passed through the dense layers of `Encoder`.
    The log-variance is clipped as in `Encoder`.

    Args:
        latent_dim: size of `z`.
        image_shape: `(height, width, channels)` of one image; the rows of the
            input are the images flattened in row-major order (channels last).
        filters: number of filters of each stride-2 convolution.
        hidden_units: widths of the dense layers after the convolutions.
        activation: activation of the convolutions and dense layers.
        log_var_bounds: `(low, high)` clip range of `z_log_var`.

    Input shape: `(batch, height * width * channels)`.
    Output shape: two tensors of shape `(batch, latent_dim)`:
        `z_mean` and `z_log_var`.
    """

    def __init__(
        self,
        latent_dim,
        image_shape,
        filters=(32, 64),
        hidden_units=(256,),
        activation="relu",
        log_var_bounds=(-10.0, 5.0),
        **kwargs,
    ):
        super().__init__(latent_dim, hidden_units, activation, log_var_bounds, **kwargs)
        self.image_shape = validate_image_shape(image_shape)
        self.filters = tuple(int(count) for count in filters)
        if not self.filters or min(self.filters) < 1:
            raise ValueError(
                f"`filters` must be a non-empty sequence of positive integers. Received: filters={filters!r}"
            )
        self.conv_layers = [
            keras.layers.Conv2D(count, 3, strides=2, padding="same", activation=activation, name=f"conv_{index}")
            for index, count in enumerate(self.filters)
        ]
        self.flatten = keras.layers.Flatten(name="flatten")

    def build(self, input_shape):
        num_features = int(input_shape[-1])
        if num_features != math.prod(self.image_shape):
            raise ValueError(
                f"The conv encoder reads rows of {math.prod(self.image_shape)} values "
                f"(image_shape={self.image_shape}), but the input has {num_features} features. "
                "Pass the image_shape of the flattened images."
            )
        shape = (input_shape[0],) + self.image_shape
        for layer in self.conv_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        super().build((input_shape[0], math.prod(shape[1:])))

    def _features(self, x):
        images = tf.reshape(x, (-1,) + self.image_shape)  # (B, H, W, C)
        for layer in self.conv_layers:
            images = layer(images)
        return self.flatten(images)  # (B, H' * W' * filters[-1])

    def get_config(self):
        config = super().get_config()
        config.update(image_shape=list(self.image_shape), filters=list(self.filters))
        return config


def build_encoder(encoder_type, latent_dim, hidden_units, activation, image_shape=None, **kwargs):
    """Return an `Encoder` (`"mlp"`) or a `ConvEncoder` (`"conv"`, needs `image_shape`)."""
    if encoder_type not in ENCODER_TYPES:
        raise ValueError(f"`encoder` must be one of {ENCODER_TYPES}. Received: encoder={encoder_type!r}")
    if encoder_type == "mlp":
        return Encoder(latent_dim, hidden_units, activation, **kwargs)
    if image_shape is None:
        raise ValueError(
            "encoder='conv' needs the shape of one image: pass image_shape=(height, width, channels), "
            "e.g. (28, 28, 1)."
        )
    return ConvEncoder(latent_dim, image_shape, hidden_units=hidden_units, activation=activation, **kwargs)
