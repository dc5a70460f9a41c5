"""The Deep Goal-Oriented Clustering model as a `keras.Model`."""

import math
import numbers
import os
import threading
import warnings

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from dgc_tf import objective, preprocessing
from dgc_tf.decoder import LIKELIHOODS, Decoder
from dgc_tf.encoder import ENCODER_TYPES, build_encoder, validate_image_shape
from dgc_tf.heads import HEAD_CAPACITIES, RESPONSE_FAMILIES, ResponseHeads
from dgc_tf.initialization import describe_collapse, fit_class_mixture, fit_mixture
from dgc_tf.prior import MixturePrior

tfd = tfp.distributions

TERM_NAMES = ("reconstruction", "response", "cluster_kl", "latent_kl")


def _is_array_like(data):
    """Tell arrays and frames apart from datasets, generators and dict inputs."""
    if data is None or isinstance(data, (tf.data.Dataset, dict, keras.utils.PyDataset)):
        return False
    return not callable(getattr(data, "__next__", None))


def _map_batches(function, arrays, batch_size):
    """Call `function` on row batches of NumPy arrays; return its outputs concatenated.

    `function` returns one tensor or a tuple of tensors; the result is a
    tuple of NumPy arrays, one per output.
    """
    outputs = []
    for start in range(0, len(arrays[0]), batch_size):
        batch_outputs = function(*(array[start : start + batch_size] for array in arrays))
        if not isinstance(batch_outputs, (tuple, list)):
            batch_outputs = (batch_outputs,)
        outputs.append([tensor.numpy() for tensor in batch_outputs])
    return tuple(np.concatenate(parts) for parts in zip(*outputs))


# Ways `pretrain` can initialize the mixture prior from the pretrained codes.
PRIOR_INITIALIZATIONS = ("mixture", "shared", "class")


@keras.saving.register_keras_serializable(package="dgc_tf")
class DGC(keras.Model):
    """A VAE with a Gaussian-mixture prior whose clusters each predict `y`.

    Generative process: `c ~ Cat(pi)`, `z ~ N(mu_c, sigma2_c)`, `x ~ p(x|z)`,
    `y ~ p(y|z, c)`. Training maximizes the ELBO of `dgc_tf.objective` with
    the cluster posterior q(c|x, y) in closed form; prediction weighs the
    clusters without `y` and averages their responses.

    Typical use:

    ```python
    model = DGC(num_clusters=2, response="gaussian")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.pretrain(x_train, epochs=20)   # autoencoder, then the mixture prior
    model.fit(x_train, y_train, epochs=30)
    outputs = model.predict(x_test)      # cluster_probs, cluster, y_pred, z_mean
    ```

    Args:
        num_clusters: number of clusters `K`, at least 1 and at most the
            number of distinct training rows.
        response: family of `y`: `"categorical"`, `"bernoulli"` or
            `"gaussian"` (a mean and a variance per cluster).
        latent_dim: size of `z`.
        encoder_units: hidden widths of the encoder MLP, e.g.
            `(500, 500, 2000)` for images.
        decoder_units: hidden widths of the decoder; defaults to the encoder
            widths reversed.
        likelihood: `"bernoulli"` for inputs in [0, 1] (images), or
            `"gaussian"` for standardized features.
        feature_scaling: `"standard"`, `"minmax"`, `"none"`, or `"auto"`:
            min-max for a Bernoulli decoder, standard otherwise.
        head: response head capacity: `"bias"` (p(y|c)), `"linear"` or `"mlp"`.
        head_units: hidden widths of MLP heads.
        response_weight: weight `w` of the response term; 1 is the DGC bound,
            0 turns the model into VaDE (no response term, `y` optional).
        entropy_regularizer: subtract the per-cluster response entropy `H_k`
            (the regularized bound); without it the prediction-time weights
            fall back to p(k|z).
        num_samples: Monte Carlo samples `M` of `z` per example.
        activation: hidden activation of encoder and decoder.
        variance_floor: smallest variance of a mixture component.
        num_classes: number of classes of a categorical `y`; set by `adapt`.
        classes: the label vocabulary; set by `adapt`.
        seed: seed of the sampling of `z` and of the mixture initialization.
            Weight initialization and shuffling follow Keras's global seed:
            call `keras.utils.set_random_seed` too for repeatable runs
            (`fit_with_restarts` does).
        encoder: `"mlp"` (the default) or `"conv"`, a small convolutional
            encoder for flattened images; `encoder_units` are then the
            widths of its dense layers after the convolutions.
        image_shape: `(height, width, channels)` of one image, required by
            `encoder="conv"`, e.g. `(28, 28, 1)`.
        reconstruction_weight: weight `v` of the reconstruction term log
            p(x|z); 1 is the DGC bound, 0 drops the decoder from the
            objective (the supervision-only ablation).
    """

    def __init__(
        self,
        num_clusters,
        response="categorical",
        latent_dim=10,
        encoder_units=(128, 256, 256),
        decoder_units=None,
        likelihood="gaussian",
        feature_scaling="auto",
        head="linear",
        head_units=(32,),
        response_weight=1.0,
        entropy_regularizer=True,
        num_samples=1,
        activation="relu",
        variance_floor=1e-4,
        num_classes=None,
        classes=None,
        seed=None,
        encoder="mlp",
        image_shape=None,
        reconstruction_weight=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._validate_arguments(
            num_clusters, response, latent_dim, likelihood, feature_scaling, head, response_weight, num_samples
        )
        self.num_clusters = int(num_clusters)
        self.response = response
        self.latent_dim = int(latent_dim)
        self.encoder_units = tuple(int(units) for units in encoder_units)
        self.decoder_units = tuple(
            int(units) for units in (decoder_units if decoder_units is not None else self.encoder_units[::-1])
        )
        self.likelihood = likelihood
        if feature_scaling == "auto":
            feature_scaling = "minmax" if likelihood == "bernoulli" else "standard"
        self.feature_scaling = feature_scaling
        self.head = head
        self.head_units = tuple(int(units) for units in head_units)
        self.response_weight = float(response_weight)
        self.entropy_regularizer = bool(entropy_regularizer)
        self.num_samples = int(num_samples)
        self.activation = activation
        self.variance_floor = float(variance_floor)
        self.classes = list(classes) if classes is not None else None
        if response == "bernoulli":
            num_classes = 2
        elif self.classes is not None:
            num_classes = len(self.classes)
        self.num_classes = int(num_classes) if num_classes is not None else None
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.prior_initialized = False

        self.encoder_type, self.image_shape = self._validate_encoder(encoder, image_shape)
        self.reconstruction_weight = self._validate_reconstruction_weight(reconstruction_weight)
        self.encoder = build_encoder(
            self.encoder_type, self.latent_dim, self.encoder_units, activation, self.image_shape, name="encoder"
        )
        # The prior's densities stay in float32 under a mixed-precision policy.
        self.prior = MixturePrior(
            self.num_clusters, self.latent_dim, self.variance_floor, name="prior", dtype="float32"
        )
        self.decoder = None
        self.heads = None
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss",) + TERM_NAMES}
        self.trackers["entropy_clipped"] = keras.metrics.Mean(name="entropy_clipped")

    @staticmethod
    def _validate_encoder(encoder, image_shape):
        if encoder not in ENCODER_TYPES:
            raise ValueError(f"`encoder` must be one of {ENCODER_TYPES}. Received: encoder={encoder!r}")
        if encoder == "conv" and image_shape is None:
            raise ValueError(
                "encoder='conv' needs the shape of one image: pass image_shape=(height, width, channels), "
                "e.g. (28, 28, 1)."
            )
        return encoder, None if image_shape is None else validate_image_shape(image_shape)

    @staticmethod
    def _validate_reconstruction_weight(weight):
        if (
            isinstance(weight, bool)
            or not isinstance(weight, numbers.Real)
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ValueError(
                "`reconstruction_weight` must be a finite number >= 0 (1 for DGC, 0 for the "
                f"ablation without a decoder). Received: reconstruction_weight={weight!r}"
            )
        return float(weight)

    @staticmethod
    def _validate_arguments(
        num_clusters, response, latent_dim, likelihood, feature_scaling, head, response_weight, num_samples
    ):
        if not isinstance(num_clusters, (int, np.integer)) or isinstance(num_clusters, bool) or num_clusters < 1:
            raise ValueError(
                "`num_clusters` must be a positive integer, chosen by the user "
                f"(it is never derived from y). Received: num_clusters={num_clusters!r}"
            )
        if response not in RESPONSE_FAMILIES:
            raise ValueError(f"`response` must be one of {RESPONSE_FAMILIES}. Received: response={response!r}")
        if int(latent_dim) < 1:
            raise ValueError(f"`latent_dim` must be at least 1. Received: latent_dim={latent_dim!r}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"`likelihood` must be one of {LIKELIHOODS}. Received: likelihood={likelihood!r}")
        if feature_scaling not in preprocessing.FEATURE_SCALINGS + ("auto",):
            raise ValueError(
                f"`feature_scaling` must be one of {preprocessing.FEATURE_SCALINGS + ('auto',)}. "
                f"Received: feature_scaling={feature_scaling!r}"
            )
        if head not in HEAD_CAPACITIES:
            raise ValueError(f"`head` must be one of {HEAD_CAPACITIES}. Received: head={head!r}")
        if not math.isfinite(float(response_weight)) or float(response_weight) < 0:
            raise ValueError(
                f"`response_weight` must be a finite number >= 0. Received: response_weight={response_weight!r}"
            )
        if int(num_samples) < 1:
            raise ValueError(f"`num_samples` must be at least 1. Received: num_samples={num_samples!r}")

    # ------------------------------------------------------------------ building

    @property
    def uses_response(self):
        return self.response_weight > 0.0

    def build(self, input_shape):
        num_features = int(input_shape[-1])
        if self.response == "categorical" and self.num_classes is None and not self.uses_response:
            # NOTE: a VaDE model fitted without y never trains its heads; two
            # placeholder classes keep the prediction dict's shape defined.
            self.num_classes = 2
        if self.response == "categorical" and self.num_classes is None:
            raise ValueError(
                "The number of classes of the categorical response is unknown. "
                "Call `model.adapt(x, y)` first, or pass `num_classes` or `classes`."
            )
        self.decoder = Decoder(num_features, self.decoder_units, self.likelihood, self.activation, name="decoder")
        self.heads = ResponseHeads(
            self.num_clusters, self.response, self.num_classes, self.head, self.head_units, name="heads"
        )
        self.encoder.build((None, num_features))
        self.prior.build((None, self.latent_dim))
        self.decoder.build((None, self.latent_dim))
        self.heads.build((None, self.latent_dim))
        self.feature_offset = self.add_weight(
            name="feature_offset", shape=(num_features,), initializer="zeros", trainable=False
        )
        self.feature_scale = self.add_weight(
            name="feature_scale", shape=(num_features,), initializer="ones", trainable=False
        )
        self.response_offset = self.add_weight(name="response_offset", shape=(), initializer="zeros", trainable=False)
        self.response_scale = self.add_weight(name="response_scale", shape=(), initializer="ones", trainable=False)
        self.built = True

    @property
    def num_features(self):
        return self.decoder.num_features if self.decoder is not None else None

    def adapt(self, x, y=None):
        """Learn the preprocessing from training data and build the model.

        Sets the feature offset and scale, the class vocabulary of a
        categorical or Bernoulli `y`, and the mean and scale of a Gaussian `y`.
        All of them are saved with the model and applied inside its graph.

        Args:
            x: array of shape `(num_samples, num_features)`.
            y: array of shape `(num_samples,)`, or None.
        """
        x = preprocessing.as_feature_matrix(x)
        if y is not None:
            self._check_lengths(x, y)
            if self.response == "gaussian":
                offset, scale = preprocessing.response_statistics(preprocessing.as_response_vector(y))
            else:
                classes = preprocessing.build_vocabulary(y)
                if self.response == "bernoulli" and len(classes) != 2:
                    raise ValueError(
                        f"A Bernoulli response needs exactly 2 classes. Received {len(classes)}: "
                        f"{classes[:10]}. Use response='categorical'."
                    )
                if self.built and self.classes is not None and classes != self.classes:
                    raise ValueError(
                        f"`y` has classes {classes[:10]}, but the model was built for {self.classes[:10]}."
                    )
                self.classes = classes
                self.num_classes = len(classes)
        if not self.built:
            self.build((None, x.shape[1]))
        elif x.shape[1] != self.num_features:
            raise ValueError(
                f"`x` has {x.shape[1]} features, but the model was built for {self.num_features}."
            )
        offset_x, scale_x = preprocessing.feature_statistics(x, self.feature_scaling)
        self.feature_offset.assign(offset_x)
        self.feature_scale.assign(scale_x)
        if y is not None and self.response == "gaussian":
            self.response_offset.assign(offset)
            self.response_scale.assign(scale)
        self.adapted = True
        return self

    @staticmethod
    def _check_lengths(x, y):
        if len(y) != len(x):
            raise ValueError(
                f"`x` and `y` must have the same number of rows. Received {len(x)} rows in x "
                f"and {len(y)} in y."
            )

    def encode_response(self, y):
        """Convert raw responses to what the graph takes: class indices, or floats."""
        if self.response == "gaussian":
            return preprocessing.as_response_vector(y)
        if self.classes is None:
            raise ValueError("The class vocabulary is unknown. Call `model.adapt(x, y)` first.")
        return preprocessing.encode_labels(y, self.classes)

    def decode_labels(self, indices):
        """Map class indices back to the labels of the training data."""
        return np.asarray(self.classes, dtype=object if isinstance(self.classes[0], str) else None)[
            np.asarray(indices)
        ]

    # ------------------------------------------------------------------ forward passes

    # Scaled features are clipped to this many units (standard deviations for
    # standard scaling), so a far outlier keeps every downstream value finite
    # in float32 instead of overflowing to NaN.
    FEATURE_CLIP = 1e4

    def scale_features(self, x):
        """Return `(x - offset) / scale` in float32, clipped to +-FEATURE_CLIP."""
        scaled = (tf.cast(x, tf.float32) - self.feature_offset) / self.feature_scale
        return tf.clip_by_value(scaled, -self.FEATURE_CLIP, self.FEATURE_CLIP)

    # The three networks may run in float16 or bfloat16 under a mixed-precision
    # policy; their outputs are cast so that the objective is computed in float32.

    def encode(self, x_model):
        """Return `(z_mean, z_log_var)` in float32 for scaled inputs."""
        z_mean, z_log_var = self.encoder(x_model)
        return tf.cast(z_mean, tf.float32), tf.cast(z_log_var, tf.float32)

    def decoder_params(self, z):
        """Return the decoder's output for `z` in float32."""
        return tf.cast(self.decoder(z), tf.float32)

    def head_params(self, z):
        """Return the response heads' parameters for `z` in float32, `(..., K, P)`."""
        return tf.cast(self.heads(z), tf.float32)

    def _prepare_response(self, y):
        if self.response == "gaussian":
            y = tf.reshape(tf.cast(y, tf.float32), [-1])
            return (y - self.response_offset) / self.response_scale
        if self.response == "bernoulli":
            return tf.reshape(tf.cast(y, tf.float32), [-1])
        return tf.reshape(tf.cast(y, tf.int32), [-1])

    def _per_sample(self, rows):
        """Reshape a network's output for `M * B` rows of `z` to `(M, B, ...)`."""
        return tf.reshape(rows, [self.num_samples, -1] + rows.shape[1:].as_list())

    def _response_terms(self, z_rows, y_model):
        """Return log p(y|z,k) and clipped H_k(z), each `(M, B, K)`, and the clip mask.

        `z_rows` contains the `M` samples of `z` as one batch, shape `(M * B, D)`.
        """
        distribution = self.heads.distribution(self._per_sample(self.head_params(z_rows)))
        log_likelihood = distribution.log_prob(y_model[:, tf.newaxis])  # (..., B, K)
        entropy, clipped = objective.clipped_entropy(distribution)
        return log_likelihood, entropy, clipped

    @property
    def entropy_scale(self):
        return 1.0 if self.entropy_regularizer else 0.0

    def compute_terms(self, x, y=None, training=False):
        """Return the per-example ELBO terms, each of shape `(batch,)`.

        Args:
            x: raw features of shape `(batch, num_features)`.
            y: encoded responses of shape `(batch,)`, or None (VaDE).
        """
        x_model = self.scale_features(x)  # (B, F)
        z_mean, z_log_var = self.encode(x_model)  # (B, D) each
        batch_size = tf.shape(z_mean)[0]
        noise = self._replica_noise(batch_size)  # (M, B, D)
        z = z_mean + tf.exp(0.5 * z_log_var) * noise  # (M, B, D)
        # The decoder and the heads take the M samples as one batch of M * B
        # rows. On a 3-D input each Dense layer goes through tensordot, whose
        # shape arithmetic and its gradient cost more than the matrix
        # products of a small network.
        z_rows = tf.reshape(z, [-1, self.latent_dim])  # (M * B, D)

        log_posterior = objective.cluster_log_posterior(self.prior(z))  # (M, B, K)
        if self.reconstruction_weight > 0.0:
            x_params = self._per_sample(self.decoder_params(z_rows))  # (M, B, F)
            reconstruction = self.decoder.distribution(x_params).log_prob(x_model)  # (M, B)
        else:
            reconstruction = tf.zeros(tf.shape(z)[:2])  # (M, B); the ablation never runs the decoder
        latent_kl = self.prior.kl_from_posterior(z_mean, z_log_var)  # (B, K)

        response_log_likelihood = entropy = None
        clip_fraction = tf.zeros([batch_size])
        if y is not None and self.uses_response:
            response_log_likelihood, entropy, clipped = self._response_terms(z_rows, self._prepare_response(y))
            log_weights = objective.labeled_log_weights(
                response_log_likelihood, entropy, log_posterior, self.response_weight, self.entropy_scale
            )  # (M, B, K)
            clip_fraction = tf.reduce_mean(tf.cast(clipped, z.dtype), axis=[0, 2])  # (B,)
        else:
            log_weights = log_posterior
        terms = objective.elbo_terms(
            log_weights,
            self.prior.log_mixture_weights(),
            latent_kl,
            reconstruction,
            response_log_likelihood,
            entropy,
            self.response_weight,
            self.entropy_scale,
            reconstruction_weight=self.reconstruction_weight,
        )
        terms["entropy_clipped"] = clip_fraction
        return terms

    def _replica_noise(self, batch_size):
        """Draw this replica's rows of one standard-normal draw for the global batch.

        Every replica has the same seed state and draws the same global
        tensor, then keeps the rows of its own slice of the batch. One device
        draws the same tensor and keeps all of it, so the noise per example
        does not depend on the number of replicas.
        """
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            shape = (self.num_samples, batch_size, self.latent_dim)
            return keras.random.normal(shape, seed=self.seed_generator, dtype="float32")
        sizes = context.all_gather(tf.reshape(batch_size, [1]), axis=0)  # (replicas,)
        offset = tf.reduce_sum(sizes[: context.replica_id_in_sync_group])
        shape = (self.num_samples, tf.reduce_sum(sizes), self.latent_dim)
        noise = keras.random.normal(shape, seed=self.seed_generator, dtype="float32")
        return noise[:, offset : offset + batch_size]

    def _check_response_given(self, y):
        if y is None and self.uses_response:
            raise ValueError(
                "Training DGC needs the response `y`: call fit(x, y). To cluster "
                "without a response (VaDE), build the model with response_weight=0."
            )

    def _global_batch_size(self, x):
        """Return the number of rows in this step over all replicas.

        Summed across replicas rather than multiplied, so that a last batch
        split unevenly still divides by its true size.
        """
        local = tf.cast(tf.shape(x)[0], tf.float32)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return local
        return tf.stop_gradient(context.all_reduce(tf.distribute.ReduceOp.SUM, local))

    def _loss(self, terms, x, sample_weight):
        per_example = -terms["elbo"]  # (B,)
        if sample_weight is not None:
            per_example = per_example * tf.reshape(tf.cast(sample_weight, per_example.dtype), [-1])
        # Summed over the replica's rows and divided by the global batch, so
        # that gradients summed across replicas equal single-device ones.
        return tf.reduce_sum(per_example) / self._global_batch_size(x), per_example

    def _update_trackers(self, terms, per_example_loss):
        self.trackers["loss"].update_state(per_example_loss)
        for name in TERM_NAMES:
            self.trackers[name].update_state(terms[name])
        if self.uses_response:
            self.trackers["entropy_clipped"].update_state(terms["entropy_clipped"])
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._check_response_given(y)

        with tf.GradientTape() as tape:
            terms = self.compute_terms(x, y, training=True)
            loss, per_example = self._loss(terms, x, sample_weight)
            scaled_loss = self.optimizer.scale_loss(loss)

        gradients = tape.gradient(scaled_loss, self.trainable_variables)
        # The response heads get no gradient when the response term is off (VaDE).
        pairs = [(g, v) for g, v in zip(gradients, self.trainable_variables) if g is not None]
        self.optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])

        return self._update_trackers(terms, per_example)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._check_response_given(y)
        terms = self.compute_terms(x, y)
        _, per_example = self._loss(terms, x, sample_weight)
        return self._update_trackers(terms, per_example)

    def _encode_deterministic(self, x):
        """Return z_mean, log p(k|z) and the head parameters at z = z_mean."""
        z_mean, _ = self.encode(self.scale_features(x))  # (B, D)
        log_posterior = objective.cluster_log_posterior(self.prior(z_mean))  # (B, K)
        return z_mean, log_posterior, self.head_params(z_mean)  # params: (B, K, P)

    def call(self, x, training=False):
        """Return the prediction-time outputs without `y`, with `z = z_mean`.

        Returns:
            A dict: `cluster_probs` `(B, K)`, `cluster` int64 `(B,)`,
            `y_pred` (class probabilities `(B, C)`, the probability of the
            second class `(B,)` for Bernoulli, or the response mean `(B,)`),
            and `z_mean` `(B, D)`.
        """
        z_mean, log_posterior, params = self._encode_deterministic(x)
        if self.uses_response:
            entropy, _ = objective.clipped_entropy(self.heads.distribution(params))
            log_weights = objective.unlabeled_log_weights(entropy, log_posterior, self.entropy_scale)
        else:
            log_weights = log_posterior
        weights = tf.exp(log_weights)  # (B, K)
        head_means = self.heads.mean(params)  # (B, K, C) or (B, K)
        if self.response == "categorical":
            y_pred = tf.einsum("bk,bkc->bc", weights, head_means)
        else:
            y_pred = tf.reduce_sum(weights * head_means, axis=-1)
        if self.response == "gaussian":
            y_pred = y_pred * self.response_scale + self.response_offset
        return {
            "cluster_probs": weights,
            "cluster": tf.argmax(weights, axis=-1),
            "y_pred": y_pred,
            "z_mean": z_mean,
        }

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(x, training=False)

    def labeled_cluster_probs(self, x, y):
        """Return the training-time weights q(c|x, y) at `z = z_mean`, shape `(B, K)`.

        Args:
            x: raw features of shape `(batch, num_features)`.
            y: encoded responses of shape `(batch,)`.
        """
        z_mean, log_posterior, params = self._encode_deterministic(x)
        distribution = self.heads.distribution(params)
        log_likelihood = distribution.log_prob(self._prepare_response(y)[:, tf.newaxis])
        entropy, _ = objective.clipped_entropy(distribution)
        return tf.exp(
            objective.labeled_log_weights(
                log_likelihood, entropy, log_posterior, self.response_weight, self.entropy_scale
            )
        )

    # ------------------------------------------------------------------ NumPy-level API

    def _check_num_features(self, x):
        if self.built and self.decoder is not None and x.shape[1] != self.num_features:
            raise ValueError(
                f"`x` must have shape (num_rows, {self.num_features}), the number of features "
                f"the model was trained on. Received shape {x.shape}."
            )

    def _prepare_arrays(self, x, y):
        if _is_array_like(x):
            x = preprocessing.as_feature_matrix(x)
            self._check_num_features(x)
            if y is not None:
                self._check_lengths(x, y)
        if y is not None and _is_array_like(x):
            y = self.encode_response(y)
        return x, y

    def fit(self, x=None, y=None, validation_data=None, callbacks=None, **kwargs):
        """Train the full objective; arrays are checked and `y` encoded first.

        With array input and no earlier `adapt`/`pretrain`, the preprocessing
        is learned from `x` and `y`, and the mixture prior is initialized from
        the current encoder (a warning recommends `pretrain`). A `tf.data`
        dataset must yield raw features and encoded `y` (see
        `encode_response`). Training stops with `FloatingPointError` when
        the loss stops being finite. Other arguments are those of
        `keras.Model.fit`.
        """
        arrays = _is_array_like(x)
        if arrays and not getattr(self, "adapted", False):
            self.adapt(x, y)
        if self.uses_response and y is None and arrays:
            self._check_response_given(y)
        x, y = self._prepare_arrays(x, y)
        if isinstance(validation_data, (tuple, list)) and len(validation_data) >= 2:
            x_val, y_val = self._prepare_arrays(validation_data[0], validation_data[1])
            validation_data = (x_val, y_val) + tuple(validation_data[2:])
        if not self.prior_initialized:
            if arrays:
                warnings.warn(
                    "The mixture prior was not initialized by `pretrain`; fitting a "
                    "Gaussian mixture to the untrained encoder's codes instead. "
                    "Call `model.pretrain(x)` first for reliable clusters.",
                    stacklevel=2,
                )
                self.initialize_prior(x)
            else:
                warnings.warn(
                    "The mixture prior was not initialized: call `model.pretrain(x)` "
                    "with an array before fitting on a dataset.",
                    stacklevel=2,
                )
        if not self.compiled:
            self.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3))

        guard = FiniteLossGuard()
        history = super().fit(
            x, y, validation_data=validation_data, callbacks=list(callbacks or []) + [guard], **kwargs
        )
        guard.raise_if_stopped()
        if arrays:
            self._warn_if_collapsed(x)
        return history

    def evaluate(self, x=None, y=None, **kwargs):
        """`keras.Model.evaluate` with array checks and `y` encoded first."""
        x, y = self._prepare_arrays(x, y)
        return super().evaluate(x, y, **kwargs)

    def predict(self, x, batch_size=None, verbose="auto", **kwargs):
        """`keras.Model.predict` on raw features, returning a dict of NumPy arrays."""
        if _is_array_like(x):
            x = preprocessing.as_feature_matrix(x)
            self._check_num_features(x)
        return super().predict(x, batch_size=batch_size, verbose=verbose, **kwargs)

    def predict_labeled(self, x, y, batch_size=1024):
        """Return cluster weights and ids computed with `y` (the training-time rule).

        Returns:
            A dict of NumPy arrays: `cluster_probs` `(N, K)` and `cluster` `(N,)`.
        """
        x, y = self._prepare_arrays(x, y)
        if not hasattr(self, "_labeled_function"):
            self._labeled_function = tf.function(self.labeled_cluster_probs, reduce_retracing=True)
        (probs,) = _map_batches(self._labeled_function, (x, y), batch_size)
        return {"cluster_probs": probs, "cluster": probs.argmax(axis=1)}

    def predict_labels(self, x, **kwargs):
        """Return the predicted class label of each row, decoded to the training labels."""
        y_pred = self.predict(x, **kwargs)["y_pred"]
        if self.response == "categorical":
            return self.decode_labels(y_pred.argmax(axis=1))
        if self.response == "bernoulli":
            return self.decode_labels((y_pred >= 0.5).astype(np.int64))
        raise ValueError("`predict_labels` is for class responses; read `y_pred` for a Gaussian response.")

    def _warn_if_collapsed(self, x, max_rows=2000):
        rows = np.random.default_rng(0).permutation(len(x))[:max_rows]
        # One traced call on all rows. `predict` would run Keras's loop in
        # batches of 32, which took 0.17 to 0.34 s after every `fit` call on
        # the benchmark networks (benchmarks/train_throughput.py).
        if not hasattr(self, "_cluster_probs_function"):
            self._cluster_probs_function = tf.function(
                lambda rows: self(rows)["cluster_probs"], reduce_retracing=True
            )
        (cluster_probs,) = _map_batches(self._cluster_probs_function, (x[np.sort(rows)],), max_rows)
        message = describe_collapse(cluster_probs)
        if message:
            warnings.warn(message, stacklevel=3)

    # ------------------------------------------------------------------ pretraining

    def pretrain(
        self,
        x,
        y=None,
        epochs=10,
        batch_size=256,
        learning_rate=1e-3,
        verbose="auto",
        prior_init="mixture",
        mixture_n_init=1,
    ):
        """Pretrain encoder and decoder as an autoencoder, then initialize the prior.

        The autoencoder maximizes log p(x | z = z_mean) with the model's own
        decoder likelihood. A diagonal Gaussian mixture fitted to the codes
        then sets the prior (with fallbacks, see
        `dgc_tf.initialization.fit_mixture`).

        Args:
            x: raw features of shape `(num_samples, num_features)`.
            y: responses of shape `(num_samples,)`, used only to learn the
                preprocessing (`adapt`) when it was not learned before; the
                autoencoder never uses them.
            epochs: autoencoder epochs; 0 skips straight to the mixture fit.
            batch_size: autoencoder batch size.
            learning_rate: Adam learning rate of the autoencoder.
            verbose: Keras verbosity.
            prior_init: `"mixture"` fits a Gaussian mixture to the codes, so
                clusters start from the geometry of `x`. `"shared"` starts
                every component at the mean and variance of all codes (with
                a small random offset between means), so p(k|z) is nearly
                uniform and the response `y` decides the first split; use it
                when clusters should follow `y` more than the shape of `x`.
                `"class"` (class responses only; needs `y`) fits a mixture to
                the codes of each class separately, so every component starts
                pure in `y` and the shape of `x` splits each class among its
                components (`dgc_tf.initialization.fit_class_mixture`).
            mixture_n_init: initializations of the mixture fit.

        Returns:
            The autoencoder's `keras.callbacks.History`, or None for 0 epochs.
        """
        if prior_init not in PRIOR_INITIALIZATIONS:
            raise ValueError(
                f"`prior_init` must be one of {PRIOR_INITIALIZATIONS}. Received: prior_init={prior_init!r}"
            )
        if prior_init == "class":
            self._check_class_init(y)
        x = preprocessing.as_feature_matrix(x)
        if not getattr(self, "adapted", False):
            self.adapt(x, y)
        history = None
        if epochs > 0:
            autoencoder = Autoencoder(self)
            autoencoder.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate))
            guard = FiniteLossGuard()
            history = autoencoder.fit(
                x, epochs=epochs, batch_size=batch_size, verbose=verbose, callbacks=[guard]
            )
            guard.raise_if_stopped()
        if prior_init == "mixture":
            self.initialize_prior(x, n_init=mixture_n_init)
        elif prior_init == "class":
            self.initialize_class_prior(x, y, n_init=mixture_n_init)
        else:
            self.initialize_shared_prior(x)
        return history

    def initialize_shared_prior(self, x, offset=0.01):
        """Start all components at the moments of the codes, `offset` standard deviations apart."""
        z_mean = self._encode_mean(x).astype(np.float64)
        rng = np.random.default_rng(self.seed)
        scale = z_mean.std(axis=0) + 1e-6
        means = z_mean.mean(axis=0) + offset * scale * rng.standard_normal((self.num_clusters, self.latent_dim))
        variances = np.tile(z_mean.var(axis=0) + self.variance_floor, (self.num_clusters, 1))
        self.prior.assign(np.full(self.num_clusters, 1.0 / self.num_clusters), means, variances)
        self.prior_initialized = True
        self.initialization_method = "shared"

    def _check_class_init(self, y):
        if self.response not in ("categorical", "bernoulli"):
            raise ValueError(
                f"prior_init='class' needs a class response ('categorical' or 'bernoulli'), but this "
                f"model's response is {self.response!r}. Use prior_init='shared' or 'mixture'."
            )
        if y is None:
            raise ValueError("prior_init='class' needs the responses: call `pretrain(x, y, prior_init='class')`.")

    def initialize_class_prior(self, x, y, n_init=1):
        """Fit the mixture prior to the codes of each class of `y` (see `fit_class_mixture`)."""
        self._check_class_init(y)
        x = preprocessing.as_feature_matrix(x)
        if not getattr(self, "adapted", False):
            self.adapt(x, y)
        labels = np.asarray(self.encode_response(y)).reshape(-1)
        self._check_lengths(x, labels)
        weights, means, variances, method = fit_class_mixture(
            self._encode_mean(x),
            labels,
            self.num_clusters,
            seed=self.seed or 0,
            n_init=n_init,
            variance_floor=self.variance_floor,
        )
        self.prior.assign(weights, means, variances)
        self.prior_initialized = True
        self.initialization_method = method

    def initialize_prior(self, x, n_init=1, max_rows=20000):
        """Fit the mixture prior to the encoder's `z_mean` of (up to `max_rows` of) `x`."""
        x = preprocessing.as_feature_matrix(x)
        if not getattr(self, "adapted", False):
            self.adapt(x)
        if len(x) > max_rows:
            x = x[np.sort(np.random.default_rng(self.seed).permutation(len(x))[:max_rows])]
        z_mean = self._encode_mean(x)
        weights, means, variances, method = fit_mixture(
            z_mean, self.num_clusters, seed=self.seed or 0, n_init=n_init, variance_floor=self.variance_floor
        )
        if method != "gaussian_mixture":
            warnings.warn(
                f"The Gaussian mixture fit on the latent codes failed; the prior was "
                f"initialized with the fallback '{method}'. This happens with many "
                "duplicate rows or clusters of a few rows.",
                stacklevel=2,
            )
        self.prior.assign(weights, means, variances)
        self.prior_initialized = True
        self.initialization_method = method

    def refit_prior(self, x, y=None, batch_size=2048):
        """Set the prior to its ELBO-optimal value for the current q(z|x) and q(c|x).

        This is the M-step of the mixture: with `lambda_nk` the cluster
        weights of row n (computed with `y` when given, else without) and
        `m_n`, `v_n` the mean and variance of q(z|x_n),

            pi_k     = mean_n lambda_nk
            mu_k     = sum_n lambda_nk m_n / sum_n lambda_nk
            sigma2_k = sum_n lambda_nk (v_n + (m_n - mu_k)^2) / sum_n lambda_nk

        maximize the ELBO over the prior in closed form, where gradient steps
        would take many epochs to get there.

        Args:
            x: raw features of shape `(num_samples, num_features)`.
            y: raw responses of shape `(num_samples,)`, or None.
        """
        x, y = self._prepare_arrays(x, y)
        use_labels = y is not None and self.uses_response
        functions = self.__dict__.setdefault("_prior_statistics_functions", {})
        if use_labels not in functions:

            def statistics(rows, responses):
                z_mean, z_log_var = self.encode(self.scale_features(rows))
                if use_labels:
                    weights = self.labeled_cluster_probs(rows, responses)
                else:
                    weights = self(rows)["cluster_probs"]
                return weights, z_mean, tf.exp(z_log_var)

            functions[use_labels] = tf.function(statistics, reduce_retracing=True)
        statistics_function = functions[use_labels]
        responses = y if use_labels else np.zeros(len(x), np.float32)  # unused without labels
        weights, means, variances = (
            array.astype(np.float64) for array in _map_batches(statistics_function, (x, responses), batch_size)
        )  # (N, K), (N, D), (N, D)

        totals = weights.sum(axis=0) + 1e-10  # (K,)
        component_means = weights.T @ means / totals[:, None]  # (K, D)
        second_moments = weights.T @ (variances + means**2) / totals[:, None]  # (K, D)
        component_variances = np.maximum(second_moments - component_means**2, self.variance_floor)
        self.prior.assign(totals / totals.sum(), component_means, component_variances)
        self.prior_initialized = True

    def _encode_mean(self, x, batch_size=2048):
        if not hasattr(self, "_encode_mean_function"):
            self._encode_mean_function = tf.function(
                lambda rows: self.encode(self.scale_features(rows))[0], reduce_retracing=True
            )
        (z_mean,) = _map_batches(self._encode_mean_function, (x,), batch_size)
        return z_mean

    # ------------------------------------------------------------------ generation

    def sample(self, num_samples, seed=None):
        """Draw clusters, latent codes, inputs and responses from the model.

        Args:
            num_samples: number of draws.
            seed: integer seed, for repeatable draws.

        Returns:
            A dict of NumPy arrays: `cluster` `(N,)`, `z` `(N, D)`, `x_mean`
            (decoder mean in raw feature units) and `x` (a draw of p(x|z)),
            both `(N, F)`, and `y` `(N,)`: decoded labels or raw-unit values.
        """
        # A pair of integers is a stateless seed; a bare int would make TFP draw one statefully.
        seed = seed if seed is not None else int(np.random.default_rng().integers(2**31))
        seeds = tfp.random.split_seed((0, seed), n=4)
        cluster = tfd.Categorical(logits=self.prior.mixture_logits).sample(num_samples, seed=seeds[0])
        means = tf.gather(self.prior.component_means, cluster)
        scales = tf.sqrt(tf.gather(self.prior.variances(), cluster))
        z = means + scales * tf.random.stateless_normal(tf.shape(means), seed=seeds[1])
        x_params = self.decoder_params(z)
        x_mean = self.decoder.mean(x_params) * self.feature_scale + self.feature_offset
        x_draw = tf.cast(self.decoder.distribution(x_params).sample(seed=seeds[2]), x_mean.dtype)
        x_draw = x_draw * self.feature_scale + self.feature_offset
        head_params = tf.gather(self.head_params(z), cluster, axis=1, batch_dims=1)  # (N, P)
        y = self.heads.distribution(head_params).sample(seed=seeds[3]).numpy()
        if self.response == "gaussian":
            y = y * float(self.response_scale.numpy()) + float(self.response_offset.numpy())
        else:
            y = self.decode_labels(y.astype(np.int64))
        return {
            "cluster": cluster.numpy(),
            "z": z.numpy(),
            "x_mean": x_mean.numpy(),
            "x": x_draw.numpy(),
            "y": y,
        }

    # ------------------------------------------------------------------ serialization

    def get_config(self):
        config = super().get_config()
        config.update(
            num_clusters=self.num_clusters,
            response=self.response,
            latent_dim=self.latent_dim,
            encoder_units=list(self.encoder_units),
            decoder_units=list(self.decoder_units),
            likelihood=self.likelihood,
            feature_scaling=self.feature_scaling,
            head=self.head,
            head_units=list(self.head_units),
            response_weight=self.response_weight,
            entropy_regularizer=self.entropy_regularizer,
            num_samples=self.num_samples,
            activation=self.activation,
            variance_floor=self.variance_floor,
            num_classes=self.num_classes,
            classes=self.classes,
            seed=self.seed,
            encoder=self.encoder_type,
            image_shape=None if self.image_shape is None else list(self.image_shape),
            reconstruction_weight=self.reconstruction_weight,
        )
        return config

    def save(self, filepath, overwrite=True, **kwargs):
        """`keras.Model.save`, written under a temporary name and renamed into place.

        A reader never sees a half-written `.keras` file, and a failed save
        leaves an existing file untouched.
        """
        filepath = os.fspath(filepath)
        if not filepath.endswith(".keras"):
            return super().save(filepath, overwrite=overwrite, **kwargs)
        if os.path.exists(filepath) and not overwrite:
            raise FileExistsError(f"{filepath} exists. Pass overwrite=True to replace it.")
        directory, name = os.path.split(os.path.abspath(filepath))
        temporary = os.path.join(directory, f".{name[: -len('.keras')]}.tmp-{os.getpid()}.keras")
        try:
            super().save(temporary, overwrite=True, **kwargs)
            os.replace(temporary, filepath)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    def build_from_config(self, config):
        super().build_from_config(config)
        # A saved model was adapted and initialized before it was saved; its
        # weights, loaded next, carry the preprocessing and the prior.
        self.adapted = True
        self.prior_initialized = True


@keras.saving.register_keras_serializable(package="dgc_tf")
class Autoencoder(keras.Model):
    """The deterministic autoencoder `x -> z_mean -> p(x|z)` of a DGC model.

    Shares the encoder, decoder and feature scaling of `dgc`; training it
    maximizes log p(x | z = z_mean).
    """

    def __init__(self, dgc, **kwargs):
        super().__init__(**kwargs)
        self.dgc = dgc
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def call(self, x):
        z_mean, _ = self.dgc.encoder(self.dgc.scale_features(x))
        return self.dgc.decoder(z_mean)

    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        x_model = self.dgc.scale_features(x)
        # z_log_var plays no part in the autoencoder, so its layer is left out.
        log_var_variables = {id(v) for v in self.dgc.encoder.log_var_layer.trainable_variables}
        variables = [
            variable
            for variable in self.dgc.encoder.trainable_variables + self.dgc.decoder.trainable_variables
            if id(variable) not in log_var_variables
        ]
        with tf.GradientTape() as tape:
            z_mean, _ = self.dgc.encode(x_model)
            per_example = -self.dgc.decoder.distribution(self.dgc.decoder_params(z_mean)).log_prob(x_model)
            loss = tf.reduce_sum(per_example) / self.dgc._global_batch_size(x)
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        self.loss_tracker.update_state(per_example)
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker]


class FiniteLossGuard(keras.callbacks.Callback):
    """Stop training at the first non-finite loss and raise after `fit` returns.

    The guard is `async_safe`: unless another callback needs them in order,
    Keras runs its batch hooks on worker threads, so the training loop does
    not wait after every step to convert the logs to Python floats. Training
    then stops a few steps after the first non-finite loss. The reported
    batch is still the first one: the logged loss is the running mean of the
    epoch, non-finite from that batch on, and Keras finishes every pending
    hook at the end of the epoch.
    """

    async_safe = True

    def __init__(self):
        super().__init__()
        self.failed_epoch = None
        self.epoch = 0
        self._lock = threading.Lock()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or np.isfinite(float(loss)):
            return
        with self._lock:
            # Hooks on worker threads may finish out of order: keep the earliest batch.
            if self.failed_epoch is None or (self.epoch, batch) < self.failed_epoch:
                self.failed_epoch = (self.epoch, batch)
        self.model.stop_training = True

    def raise_if_stopped(self):
        if self.failed_epoch is None:
            return
        epoch, batch = self.failed_epoch
        raise FloatingPointError(
            f"The loss became NaN or infinite in epoch {epoch + 1}, batch {batch}. "
            "Likely causes: unscaled inputs (keep feature_scaling on), a learning "
            "rate that is too high, or a response far outside the training range. "
            "Lower the learning rate or check the data."
        )
