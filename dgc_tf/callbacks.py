"""Keras callbacks for training DGC models."""

import keras
import numpy as np


class PriorRefit(keras.callbacks.Callback):
    """Set the mixture prior by its closed-form M-step at the end of epochs.

    Gradient steps move the prior slowly, so the components can lag behind
    the clusters that the response has already formed. This callback calls
    `DGC.refit_prior` (the ELBO-optimal weights, means and variances for the
    current encoder and cluster weights) at the end of every `every`-th
    epoch from `start_epoch` on. Starting after a few epochs lets the
    response heads form the clusters first. Refitting from the very first
    epoch can lock in an unbalanced early split.

    Args:
        x: training features of shape `(num_samples, num_features)`.
        y: training responses of shape `(num_samples,)`, or None to refit
            with the prediction-time weights.
        start_epoch: first epoch (1-based) after which the prior is refitted.
        every: refit interval in epochs.
        max_rows: rows used per refit (a fixed random subset when `x` is larger).
        seed: seed of that subset.
    """

    def __init__(self, x, y=None, start_epoch=1, every=1, max_rows=20000, seed=0):
        super().__init__()
        if int(start_epoch) < 1 or int(every) < 1:
            raise ValueError(
                f"`start_epoch` and `every` must be at least 1. Received: start_epoch={start_epoch!r}, every={every!r}"
            )
        rows = np.arange(len(x))
        if len(x) > max_rows:
            rows = np.sort(np.random.default_rng(seed).permutation(len(x))[:max_rows])
        self.x = np.asarray(x)[rows]
        self.y = None if y is None else np.asarray(y)[rows]
        self.start_epoch = int(start_epoch)
        self.every = int(every)

    def on_epoch_end(self, epoch, logs=None):
        completed = epoch + 1
        if completed >= self.start_epoch and (completed - self.start_epoch) % self.every == 0:
            self.model.refit_prior(self.x, self.y)
