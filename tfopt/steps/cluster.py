"""Weight clustering (TFMOT cluster_weights), fine-tune, strip; reports unique values per layer."""

from __future__ import annotations

import numpy as np

from tfopt.config import steps as C
from tfopt.interop import import_tfmot, plain_copy
from tfopt.steps.prune import check_layer_names, kernels, prunable, strip
from tfopt.steps.runs import base_metrics, splits_of, with_step, write_run
from tfopt.steps.settings import fine_tune_from_recipe, step_settings
from tfopt.training import finetune
from tfopt.training.finetune import RECALIBRATION_BATCHES, recalibrate_batchnorm


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


def wrap_for_clustering(model, config):
    """For your own training loop: a copy of ``model`` with its conv/dense kernels wrapped for
    weight clustering (TFMOT ``cluster_weights``) as ``config`` (a
    :class:`~tfopt.config.steps.ClusterConfig`) says; train it, then :func:`tfopt.steps.prune.strip`."""
    import tf_keras as keras

    check_layer_names(model, config.skip, "skip")
    cl = import_tfmot().clustering.keras
    init = getattr(cl.CentroidInitialization, config.init.upper())  # one of tfopt.config.choices.CLUSTER_INITS

    def wrap(layer):
        if not prunable(layer) or layer.name in config.skip:
            return layer
        zeros_kept = keeps_zeros(layer, config.preserve_sparsity)
        values = [int(np.count_nonzero(w.numpy())) if zeros_kept else int(np.size(w)) for w in kernels(layer)]
        if min(values, default=0) <= config.clusters:
            return layer  # a kernel of no more weights than clusters already holds at most that many values
        if zeros_kept:
            # sparsity-preserving clustering: the pruned zeros stay zeros, one centroid is 0
            return cl.cluster_weights(layer, number_of_clusters=config.clusters, cluster_centroids_init=init,
                                      preserve_sparsity=True)
        return cl.cluster_weights(layer, number_of_clusters=config.clusters, cluster_centroids_init=init)

    return keras.models.clone_model(plain_copy(model), clone_function=wrap)


def cluster(model, data, config, fine_tune, *, log=print, bn_batches: int = RECALIBRATION_BATCHES, **inputs):
    """Cluster a copy of ``model``'s kernels into ``config.clusters`` shared values per layer,
    fine-tune it on ``data`` and strip the wrappers.

    Args:
        model: a tf_keras model; it is not changed.
        data: ``(x, y)`` arrays or a ``tf.data.Dataset``.
        config: a :class:`~tfopt.config.steps.ClusterConfig`: ``clusters``, the centroid ``init``
            (``kmeans_plus_plus``, ``linear``, ``density_based`` or ``random``), layers to ``skip``,
            and ``preserve_sparsity`` (keep a pruned kernel's zeros, one of its values being 0;
            None: for kernels that are at least 10% zero).
        fine_tune: the :class:`~tfopt.config.fine_tune.FineTuneSettings` of the fine-tune.
        log: receives progress lines.
        bn_batches: batches that re-estimate BatchNorm statistics afterwards (0: none).
        **inputs: options of :func:`tfopt.training.finetune.fine_tune`; others are ignored.

    Returns:
        ``(clustered model, report)``; the report counts the unique values per layer.
    """
    kept = [layer.name for layer in model.layers
            if prunable(layer) and layer.name not in config.skip and keeps_zeros(layer, config.preserve_sparsity)]
    if kept:
        log(f"clustering keeps the zeros of: {', '.join(kept)}")
    work = wrap_for_clustering(model, config)
    history, seconds = finetune.fine_tune(work, data, fine_tune, log=log, **finetune.options(inputs))
    clustered = strip(work)
    recalibrate_batchnorm(clustered, data, batches=bn_batches, batch_size=fine_tune.batch_size, log=log)
    left = unclustered(clustered, config)
    if left:
        log(f"left unclustered (TFMOT's clustering does not take their kernels, e.g. a depthwise kernel): "
            f"{', '.join(left)}")
    return clustered, {"unique_values": unique_values(clustered), "unclustered": left, "history": history,
                       "fine_tune_seconds": seconds}


def unclustered(model, config) -> list:
    """The layers clustering was asked to cover whose kernels still hold more than
    ``config.clusters`` values (TFMOT leaves depthwise kernels, and a separable conv's depthwise
    part, as they are)."""
    return [layer.name for layer in model.layers
            if prunable(layer) and layer.name not in config.skip
            and any(np.unique(np.asarray(w)).size > config.clusters for w in kernels(layer))]


# ---- the command and the chain step ------------------------------------------------------------

def apply_cluster(model, recipe, splits, cfg, log=print):
    """:func:`cluster` with the recipe's fine-tune settings."""
    data, fine_tune = fine_tune_from_recipe(recipe, splits, cfg, model, log)
    return cluster(model, data, cfg, fine_tune, log=log)


def run_cluster(source, given: dict, output=None, overwrite=False, log=print, step=None):
    """``tfopt cluster``: the recipe's ``optimize.cluster`` with ``given`` on top, the unique
    values per layer, a new ``<source>-clustered`` run. Returns ``(run path, metrics)``."""
    cfg = step_settings(source.recipe, "cluster", given)
    splits = splits_of(source)
    model, report = apply_cluster(source.model, source.recipe, splits, cfg, log=log)
    metrics = {**base_metrics(source, model, splits, log), "unique_values": report["unique_values"],
               "fine_tune_seconds": round(report["fine_tune_seconds"], 2)}
    for name, n in report["unique_values"].items():
        log(f"  {name:<20} {n} unique values")
    path = write_run(source, "clustered", step="cluster", recipe=with_step(source.recipe, "cluster", cfg),
                     metrics=metrics, model=model, history=report["history"], output=output, overwrite=overwrite,
                     log=log)
    return path, metrics
