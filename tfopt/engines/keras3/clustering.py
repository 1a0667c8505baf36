"""Weight clustering of a Keras 3 model: at most ``clusters`` distinct values per variable.

Each selected variable is clustered once by 1-D k-means (linear or k-means++ start), then
fine-tuned with its weights shared: after every update a constraint moves each centroid to
the mean of its weights and sets every weight to its centroid. The assignment of weights to
centroids is fixed at the start (as in Deep Compression), so the constraint needs no state:
the assignment is a constant, correct when a jitted step bakes it in. With sparsity
preserved, zero is one of the values and the weights that were zero stay exactly zero.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from tfopt.engines.keras3.training import FineTune, Session

INITS = ("kmeans++", "linear")
SPARSE_ENOUGH = 0.1


def _lloyd(values, centroids, iterations=30):
    """1-D k-means: assignments by the midpoints between sorted centroids."""
    for _ in range(iterations):
        centroids = np.sort(centroids)
        labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2.0, values)
        sums = np.bincount(labels, weights=values, minlength=len(centroids))
        counts = np.bincount(labels, minlength=len(centroids))
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(moved, centroids, rtol=0, atol=1e-12):
            break
        centroids = moved
    centroids = np.sort(centroids)
    labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2.0, values)
    return centroids, labels


def _kmeans_plus_plus(values, k, rng, sample=20000):
    points = values if values.size <= sample else rng.choice(values, sample, replace=False)
    centroids = [points[rng.integers(points.size)]]
    distance = (points - centroids[0]) ** 2
    for _ in range(1, k):
        total = distance.sum()
        pick = rng.integers(points.size) if total <= 0 else rng.choice(points.size, p=distance / total)
        centroids.append(points[pick])
        distance = np.minimum(distance, (points - points[pick]) ** 2)
    return np.asarray(centroids, dtype="float64")


def kmeans_1d(values, k, init="kmeans++", seed=0):
    """Cluster values into at most ``k`` groups.

    Args:
        values: 1-D array.
        k: Number of clusters; fewer are used when there are fewer distinct values.
        init: ``"kmeans++"`` or ``"linear"`` (evenly spaced between min and max).
        seed: Seed of the k-means++ draw.

    Returns:
        ``(centroids, labels)``: float64 centroids and, for each value, the index of its
        centroid. Empty clusters are dropped.
    """
    values = np.asarray(values, dtype="float64").ravel()
    distinct = np.unique(values)
    if distinct.size <= k:
        return distinct, np.searchsorted(distinct, values)
    if init == "linear":
        start = np.linspace(values.min(), values.max(), k)
    else:
        start = _kmeans_plus_plus(values, k, np.random.default_rng(seed))
    centroids, labels = _lloyd(values, start)
    used = np.unique(labels)
    remap = np.full(len(centroids), -1)
    remap[used] = np.arange(used.size)
    return centroids[used], remap[labels]


def assign_clusters(weight, clusters, init="kmeans++", preserve_zeros=False, seed=0):
    """Cluster one weight array.

    Args:
        weight: The array.
        clusters: At most this many distinct values (zero included when preserved).
        init: k-means start, ``"kmeans++"`` or ``"linear"``.
        preserve_zeros: Keep zero as a value of its own holding exactly the zero weights.
        seed: Seed of the k-means++ draw.

    Returns:
        ``(centroids, labels, zero_label)``: labels has the weight's size (flattened);
        ``zero_label`` is the index of the zero centroid, or None.
    """
    flat = np.asarray(weight, dtype="float64").ravel()
    if not preserve_zeros:
        centroids, labels = kmeans_1d(flat, clusters, init, seed)
        return centroids, labels, None
    nonzero = flat != 0
    centroids, labels_nz = kmeans_1d(flat[nonzero], max(clusters - 1, 1), init, seed)
    labels = np.full(flat.size, len(centroids))
    labels[nonzero] = labels_nz
    return np.append(centroids, 0.0), labels, len(centroids)


def _sharing_constraint(labels, count, zero_label, shape):
    """Each centroid to the mean of its weights, each weight to its centroid."""
    ids = labels.astype("int32")
    members = np.maximum(np.bincount(ids, minlength=count), 1).astype("float32")
    keep = np.ones(count, "float32")
    if zero_label is not None:
        keep[zero_label] = 0.0

    def constraint(weight):
        flat = ops.reshape(weight, (-1,))
        sums = ops.segment_sum(flat, ids, num_segments=count)
        centroids = sums / ops.cast(members, flat.dtype) * ops.cast(keep, flat.dtype)
        return ops.reshape(ops.take(centroids, ids), shape)

    return constraint


def cluster(model, data, *, clusters=16, init="kmeans++", preserve_sparsity=None, skip=(),
            include=None, seed=0, **fine_tune):
    """Cluster the weights of a copy of a Keras 3 model and fine-tune them shared.

    Example::

        clustered = cluster(model, (x, y), clusters=16, epochs=1)

    Args:
        model: A built Keras 3 model (any kind). It is not changed.
        data: ``(x, y)``, ``(x, y, sample_weight)`` or a ``tf.data.Dataset``.
        clusters: At most this many distinct values per selected variable, zero included
            when preserved. A variable with fewer weights keeps its values.
        init: ``"kmeans++"`` or ``"linear"``.
        preserve_sparsity: True: zeros stay zeros in every variable; False: never; None
            (default): in variables at least 10% zero.
        skip: Layer names or path globs left as they are.
        include: Variable path globs to cluster instead of the default rules.
        seed: Seed of the k-means++ draws.
        **fine_tune: Settings of the fine-tune (see :func:`~tfopt.engines.keras3.prune`).

    Returns:
        A new model of the same class, each selected variable holding at most ``clusters``
        distinct values.

    Raises:
        ValueError: For ``clusters`` < 2, an unknown ``init``, a pattern matching nothing.
        TypeError: For an unknown keyword argument, or a model that cannot be copied.
    """
    if int(clusters) < 2:
        raise ValueError(f"cluster(): clusters must be at least 2; received {clusters}.")
    if init not in INITS:
        raise ValueError(f"cluster(): unknown init {init!r}; allowed: {', '.join(INITS)}.")
    session = Session(model, data, FineTune.from_kwargs("cluster", fine_tune))
    entries = session.entries(include, skip, "cluster")
    for i, entry in enumerate(entries):
        value = np.asarray(ops.convert_to_numpy(entry.variable))
        zero_share = float(np.mean(value == 0))
        preserve = zero_share >= SPARSE_ENOUGH if preserve_sparsity is None else bool(preserve_sparsity)
        centroids, labels, zero_label = assign_clusters(value, int(clusters), init, preserve, seed + i)
        entry.variable.assign(centroids[labels].reshape(value.shape).astype(value.dtype))
        session.constrain(entry.variable,
                          _sharing_constraint(labels, len(centroids), zero_label, entry.shape))
    session.fit()
    return session.model
