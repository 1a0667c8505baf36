"""Weight clustering (TFMOT cluster_weights), fine-tune, strip; reports unique values per layer."""

from __future__ import annotations

import numpy as np

from tfopt.steps.prune import check_layer_names, kernels, prunable


def unique_values(model) -> dict:
    """Distinct values in each conv/dense kernel, counted from the weights."""
    return {layer.name: int(sum(len(np.unique(w.numpy())) for w in kernels(layer)))
            for layer in model.layers if prunable(layer)}


#: A kernel with at least this fraction of zeros counts as pruned: clustering keeps its zeros.
SPARSE_KERNEL = 0.1


def keeps_zeros(layer, preserve_sparsity) -> bool:
    """Whether clustering keeps ``layer``'s zeros: as asked, or (None) when its kernels are pruned."""
    if preserve_sparsity is not None:
        return bool(preserve_sparsity)
    ws = [w.numpy() for w in kernels(layer)]
    return sum(int(np.count_nonzero(w == 0)) for w in ws) >= SPARSE_KERNEL * max(sum(w.size for w in ws), 1)


def wrap_for_clustering(model, *, clusters: int = 16, init: str = "kmeans_plus_plus", skip=(),
                        preserve_sparsity: bool | None = None):
    """For your own training loop: a copy of ``model`` with its conv/dense kernels wrapped for
    weight clustering (TFMOT ``cluster_weights``); train it, then :func:`tfopt.steps.prune.strip`."""
    from tfopt.config.steps import ClusterConfig
    from tfopt.config.validation import validated

    cfg = validated(ClusterConfig, dict(clusters=clusters, init=init, skip=list(skip),
                                        preserve_sparsity=preserve_sparsity), "cluster")
    return _wrap(model, cfg)


def _wrap(model, cfg):
    from tfopt.interop import import_tfmot
    tfmot = import_tfmot()
    import tf_keras as keras

    from tfopt.export import plain_copy

    check_layer_names(model, cfg.skip, "skip")
    cl = tfmot.clustering.keras
    init = getattr(cl.CentroidInitialization, cfg.init.upper())  # one of tfopt.config.choices.CLUSTER_INITS

    def wrap(layer):
        if not prunable(layer) or layer.name in cfg.skip:
            return layer
        if keeps_zeros(layer, cfg.preserve_sparsity):
            # sparsity-preserving clustering: the pruned zeros stay zeros, one centroid is 0
            return cl.cluster_weights(layer, number_of_clusters=cfg.clusters, cluster_centroids_init=init,
                                      preserve_sparsity=True)
        return cl.cluster_weights(layer, number_of_clusters=cfg.clusters, cluster_centroids_init=init)

    return keras.models.clone_model(plain_copy(model), clone_function=wrap)


def cluster(model, data, *, clusters: int = 16, init: str = "kmeans_plus_plus", skip=(),
            preserve_sparsity: bool | None = None, epochs: int = 1, lr: float | None = None,
            batch_size: int | None = None, log=print, **fit):
    """Cluster a copy of ``model``'s kernels into ``clusters`` shared values per layer,
    fine-tune it on ``data`` and strip the wrappers.

    Args:
        init: centroid initialisation: ``kmeans_plus_plus``, ``linear``, ``density_based`` or ``random``.
        skip: layers left unclustered.
        preserve_sparsity: keep a pruned kernel's zeros (one of its ``clusters`` values is 0);
            None: for kernels that are at least 10% zero.
        **fit: more :func:`tfopt.steps.runner.fine_tune` arguments.

    Returns:
        ``(clustered model, report)``; the report counts the unique values per layer.
    """
    from tfopt.config.steps import ClusterConfig
    from tfopt.config.validation import validated
    from tfopt.steps.prune import strip
    from tfopt.steps.runner import (
        RECALIBRATION_BATCHES,
        fine_tune,
        recalibrate_batchnorm,
    )

    bn_batches = fit.pop("bn_batches", RECALIBRATION_BATCHES)
    cfg = validated(ClusterConfig, dict(clusters=clusters, init=init, skip=list(skip),
                                        preserve_sparsity=preserve_sparsity, epochs=epochs, lr=lr,
                                        batch_size=batch_size), "cluster")
    kept = [layer.name for layer in model.layers
            if prunable(layer) and layer.name not in cfg.skip and keeps_zeros(layer, cfg.preserve_sparsity)]
    if kept:
        log(f"clustering keeps the zeros of: {', '.join(kept)}")
    work = _wrap(model, cfg)
    history, seconds = fine_tune(work, data, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, log=log, **fit)
    clustered = strip(work)
    recalibrate_batchnorm(clustered, data, batches=bn_batches, batch_size=cfg.batch_size, log=log)
    return clustered, {"unique_values": unique_values(clustered), "history": history, "fine_tune_seconds": seconds}
