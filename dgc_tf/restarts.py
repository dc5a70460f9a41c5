"""Restarts of the whole training pipeline, kept by the training objective.

Results of DGC depend on the initialization (autoencoder weights, mixture
fit, which cluster each response curve lands in). As scikit-learn's mixtures
do with `n_init`, several runs are trained and the one with the best
objective on the training data is kept. True groups are never consulted.
"""

import keras
import numpy as np


def fit_with_restarts(
    build_model,
    x,
    y=None,
    n_init=3,
    seed=0,
    pretrain_kwargs=None,
    fit_kwargs=None,
    evaluation_samples=5,
):
    """Train `n_init` models from different seeds and return the best one.

    Each restart seeds Keras (`keras.utils.set_random_seed(seed + restart)`),
    builds a fresh model with `build_model(seed + restart)`, runs `pretrain`
    and `fit`, and scores it with the mean training loss (the negative ELBO)
    from `evaluate`, averaged over `evaluation_samples` passes because the
    objective samples `z`.

    Args:
        build_model: callable taking an integer seed and returning a compiled
            `dgc_tf.DGC`.
        x: training features of shape `(num_samples, num_features)`.
        y: training responses of shape `(num_samples,)`; None for VaDE.
        n_init: number of restarts, at least 1.
        seed: seed of the first restart.
        pretrain_kwargs: keyword arguments of `DGC.pretrain`.
        fit_kwargs: keyword arguments of `DGC.fit`.
        evaluation_samples: passes of `evaluate` averaged per restart.

    Returns:
        `(best_model, summaries)`: the model with the lowest training loss
        and one dict per restart with `seed`, `loss` and `history`.
    """
    if not isinstance(n_init, (int, np.integer)) or n_init < 1:
        raise ValueError(f"`n_init` must be a positive integer. Received: n_init={n_init!r}")
    pretrain_kwargs = dict(pretrain_kwargs or {})
    fit_kwargs = dict(fit_kwargs or {})
    verbose = fit_kwargs.get("verbose", "auto")

    best_model, best_loss, summaries = None, np.inf, []
    for restart in range(n_init):
        restart_seed = seed + restart
        keras.utils.set_random_seed(restart_seed)
        model = build_model(restart_seed)
        model.pretrain(x, y, **pretrain_kwargs)
        history = model.fit(x, y, **fit_kwargs)
        losses = [
            model.evaluate(x, y, batch_size=fit_kwargs.get("batch_size", 256), verbose=0, return_dict=True)["loss"]
            for _ in range(evaluation_samples)
        ]
        loss = float(np.mean(losses))
        summaries.append({"seed": restart_seed, "loss": loss, "history": history.history})
        if verbose:
            print(f"restart {restart + 1}/{n_init} (seed {restart_seed}): training loss {loss:.4f}")
        if np.isfinite(loss) and loss < best_loss:
            best_model, best_loss = model, loss
    if best_model is None:
        raise FloatingPointError(
            f"All {n_init} restarts ended with a non-finite training loss. Lower the "
            "learning rate or check the inputs for extreme values."
        )
    return best_model, summaries
