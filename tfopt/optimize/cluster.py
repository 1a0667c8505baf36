"""Weight clustering (TFMOT cluster_weights), fine-tune, strip; reports unique values per layer."""

from __future__ import annotations

import numpy as np

from tfopt.optimize.prune import check_layer_names, kernels, prunable

INIT = {"kmeans_plus_plus": "KMEANS_PLUS_PLUS", "linear": "LINEAR", "density_based": "DENSITY_BASED",
        "random": "RANDOM"}


def unique_values(model) -> dict:
    """Distinct values in each conv/dense kernel, counted from the weights."""
    return {layer.name: int(sum(len(np.unique(w.numpy())) for w in kernels(layer)))
            for layer in model.layers if prunable(layer)}


def cluster(model, recipe, splits, cfg, log=print):
    """Cluster a copy of ``model``'s kernels into ``cfg.clusters`` shared values per layer.

    Returns ``(plain clustered model, report)``.
    """
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    from tfopt.export import plain_copy
    from tfopt.optimize.runner import fine_tune

    check_layer_names(model, cfg.skip, "skip")
    cl = tfmot.clustering.keras
    init = getattr(cl.CentroidInitialization, INIT[cfg.init])

    def wrap(layer):
        if not prunable(layer) or layer.name in cfg.skip:
            return layer
        return cl.cluster_weights(layer, number_of_clusters=cfg.clusters, cluster_centroids_init=init)

    work = keras.models.clone_model(plain_copy(model), clone_function=wrap)
    history, seconds = fine_tune(work, recipe, splits, cfg, log=log)
    clustered = plain_copy(cl.strip_clustering(work))
    return clustered, {"unique_values": unique_values(clustered), "history": history, "fine_tune_seconds": seconds}
