"""The search's stages: which chains each stage tries, on top of which, for each target.

Each stage tries a few settings of one step on top of the best candidate so far that meets the
budget, so good combinations are found without trying them all. Settings of one kind form a
ladder from mild to harsh (:data:`LADDERS`); a ladder ends at its first rung that loses more than
a near miss (see :class:`tfopt.search.candidates.Standings`). The stages of each target, in order
(:data:`PLANS`):

1. ``int8``: int8 of the model as it is (post-training quantization);
2. ``channels``: channel pruning at a few aggressiveness levels, per-layer ratios read off a
   sensitivity sweep (accuracy with a fraction of one layer's channels removed, no fine-tune); for
   the size target then deeper cuts of the layer that holds the most weights, on top of the best
   level (a sweep without fine-tune is cautious, and for size a narrow layer pays twice: fewer
   weights, and denser kernels that cost fewer gzip bits per kept weight after magnitude pruning);
3. ``remove`` (latency and MACs targets; layers whose removal keeps the shapes), and for the
   latency target ``fold_pool`` (:mod:`tfopt.surgery.fold_pool`: an exact rewrite of a conv and
   the 2×2 max-pool after it into one stride-2 conv, faster where the conv reads few channels;
   the first foldable pool alone, then all; kept only where its file is measured faster), then
   ``downsample`` (latency and MACs targets; :mod:`tfopt.surgery.stride`): a stride-1 convolution
   at stride 2, so every later layer works on maps a quarter the size: a late one (the smallest
   maps of at least 4×4), then the last and the first at the input's height and width, mildest
   first, on the best chain and on the input model, fine-tuned at the retraining rate (three times
   the highest probed rate);
4. ``prune`` (size target): magnitude pruning at per-layer sparsities from a second sweep, and at
   overall sparsities spread by erk or er, weights ranked by magnitude or by the activation
   criterion (magnitude times the root-mean-square of the input each weight reads; whichever pair
   loses less when the model is pruned at once), on the model itself and on the best
   channel-pruned candidate that has used at most half the budget (the overall targets also on
   the best one, where it differs); overall targets, which go beyond what the sweep tolerated,
   fine-tune at the highest probed rate;
5. ``longer``: the near-missed prune candidates with fewer non-zero weights than the best (the one
   keeping fewest, and the one that lost least) pruned again over three times the epochs, then
   ``cluster``: clustering to 32, 16, 8 and 4 values per kernel (size target);
6. ``steps``: every registered step that declares a ladder for the target
   (``STEPS[name].ladder(target)``) and is not one of :data:`BUILT_IN`, as a stage named after the
   step, on the best chain so far;
7. ``qat``: quantization-aware training for the best candidates whose post-training int8 missed,
   and for the near misses (over budget by at most twice the budget) that would beat the best so far;
8. ``recluster`` (size target): when that made a chain the best that clustering has not seen,
   clustering of that chain, and quantization-aware training for its near misses;
9. ``extend`` (every target, with a time budget): the time the plan left goes to longer fine-tunes
   of what would beat the best, and of the best itself while it loses accuracy
   (:mod:`tfopt.search.extend`), until the budget is spent or nothing is left to improve.

A stage function takes the running search (:class:`tfopt.search.engine.Search`) and a dict the
stages share (what an earlier stage chose), and returns False when the time budget or the
candidate limit ran out. The functions that plan chains from rows (:func:`qat_chains`,
:func:`longer_chains`, :func:`recluster_start`, :func:`prune_start`, :func:`prune_chains`,
:func:`largest_group`, :func:`deeper_cuts`, :func:`overall_prune_steps`, :func:`pick_pruning`,
:func:`sweep_levels`) read plain data.
"""

from __future__ import annotations

from tfopt.errors import TfoptError
from tfopt.search import measure as M
from tfopt.search.candidates import ChainStep, chain_key, score
from tfopt.search.extend import extend_stage
from tfopt.steps import STEPS
from tfopt.surgery.stride import downsample_points

#: The settings each built-in ladder tries, by target, from mild to harsh: the share of channels cut
#: from the group holding the most kernel weights (deeper than the sweep's levels), the overall
#: sparsities spread by erk or er beside the sweep's per-layer levels, the shared values per kernel.
LADDERS = {
    "size": {"deeper_channels": [{"ratio": r} for r in (0.5, 0.7, 0.8, 0.9)],
             "prune": [{"sparsity": s} for s in (0.8, 0.9, 0.95, 0.97)],
             "cluster": [{"clusters": c} for c in (32, 16, 8, 4)]},
    "latency": {},
    "macs": {},
}
#: The stages of each target, in order; ``steps`` is where the registered steps with a ladder run.
PLANS = {
    "size": ("int8", "channels", "deeper_channels", "prune", "longer", "cluster", "steps", "qat", "recluster",
             "extend"),
    "latency": ("int8", "channels", "remove", "fold_pool", "downsample", "steps", "qat", "extend"),
    "macs": ("int8", "channels", "remove", "downsample", "steps", "qat", "extend"),
}
#: The registered steps the built-in stages run; a ladder they declare is not a stage of its own.
BUILT_IN = ("structured", "prune", "cluster", "quantize", "remove", "fold_pool", "downsample")
#: Ways of spreading an overall sparsity over the layers, and of ranking a layer's weights; the
#: search uses the pair whose one-shot pruning at :data:`ALLOCATION_PROBE` keeps the most
#: selection accuracy (the first on a tie).
ALLOCATIONS = ("erk", "er")
PRUNE_CRITERIA = ("magnitude", "activation")
ALLOCATION_PROBE = 0.9
#: Share of the budget the chain the prune stage starts from may have used: pruning, clustering and
#: int8 still to come each cost some accuracy (see :func:`prune_start`).
HEADROOM = 0.5
#: How many times the search's fine-tune epochs the longer prune fine-tune gets (see :func:`longer_chains`).
LONG_EPOCHS = 3
#: How many removable layers the remove stage tries, one at a time.
REMOVE_TRIES = 3


def overall_sparsities(target: str = "size") -> tuple:
    return tuple(s["sparsity"] for s in LADDERS[target].get("prune", []))


def registered_stages(target: str) -> list[str]:
    """The registered steps, beyond :data:`BUILT_IN`, that declare a ladder for ``target``."""
    return [step.name for step in STEPS if step.name not in BUILT_IN and step.ladder(target)]


def run(search) -> None:
    """Run the stages of ``search.target`` in order, until one runs out of time or candidates."""
    shared = {}
    for name in PLANS[search.target]:
        if not STAGES[name](search, shared):
            return


# -- planning from rows ---------------------------------------------------------------------------


def sweep_levels(rows, base_acc, tolerances) -> list[dict]:
    """Per-layer settings at each tolerance (points of selection accuracy a layer may lose alone,
    before fine-tuning): the largest ratio or sparsity whose sweep stays within it; a level equal
    to the one before is left out."""
    out = []
    for tol in tolerances:
        chosen = {}
        for r in rows:
            if (base_acc - r["accuracy"]) * 100 <= tol and r["ratio"] > chosen.get(r["layer"], 0):
                chosen[r["layer"]] = r["ratio"]
        if out and chosen == out[-1]:
            continue
        out.append(chosen)
    return out


def largest_group(sizes: dict, groups):
    """The channel group holding the most kernel weights (``sizes``: ``{layer: kernel weights}``;
    ``groups``: the channel groups); None when no group has a kernel."""
    groups = [g for g in groups if g in sizes]
    return max(groups, key=lambda g: sizes[g]) if groups else None


def deeper_cuts(start, largest: str, numbered: int, rate: dict | None = None) -> list:
    """Chains that cut the channel group ``largest`` deeper than ``start`` does, one rung per ratio
    of the size ladder above its own (other groups as ``start`` has them), numbered on from
    ``numbered``, fine-tuned with ``rate`` (``{"lr": ...}``). None unless ``start`` is the input
    model or a single channel cut."""
    if len(start) > 1 or (start and start[0].name != "structured"):
        return []
    per_layer = dict(start[0].settings["per_layer"]) if start else {}
    deeper = [s["ratio"] for s in LADDERS["size"]["deeper_channels"] if s["ratio"] > per_layer.get(largest, 0.0)]
    return [[ChainStep("structured", {"ratio": 0.0, "per_layer": {**per_layer, largest: r}}, dict(rate or {}),
                       label=numbered + i + 1)] for i, r in enumerate(deeper)]


def pick_pruning(accuracies: dict) -> tuple:
    """``(allocation, criterion)`` of the pair in ``accuracies`` (``{(allocation, criterion):
    accuracy after pruning at once}``) that keeps the most accuracy, the first on a tie."""
    return max(accuracies, key=lambda k: accuracies[k])


def overall_prune_steps(how: dict, sparsities=None, rate: dict | None = None) -> list:
    """Prune steps to each overall sparsity, spread and ranked as ``how`` says (``{"allocation",
    "criterion"}``; each a setting only where it is not the default), fine-tuned with ``rate``."""
    knobs = ({"allocation": how["allocation"]} if how["allocation"] != "erk" else {}) \
        | ({"criterion": how["criterion"]} if how["criterion"] != "magnitude" else {})
    return [ChainStep("prune", {"sparsity": sp} | knobs, dict(rate or {}))
            for sp in (overall_sparsities() if sparsities is None else sparsities)]


def prune_start(standings, headroom: float = HEADROOM) -> list:
    """The chain the prune stage builds on first: the best feasible candidate that has used at
    most ``headroom`` of the budget, else the best. Pruning, clustering and int8 each cost some
    accuracy; a start at the edge of the budget leaves them none (LeNet-300-100, budget 0.5 pt: a
    784-60-50 start at a 0.47-pt drop kept no prune rung within budget, a 784-150-50 start at
    0.13 pt reached 90%). The best itself, where it differs, gets the overall targets too: some
    models lose nothing more to a first prune (LeNet-5 (Caffe), budget 0.2 pt: channels at a
    0.17-pt drop, then 80%, still 0.17)."""
    roomy = [r for r in standings.feasible() if r["drop_points"] <= headroom * standings.max_drop + 1e-9]
    return standings.chain_of(standings.best(roomy) or standings.best())


def longer_chains(standings, epochs: int, log=M.quiet) -> list:
    """Ladders for the near-missed prune candidates (post-training int8) that keep fewer non-zero
    weights than the best: the one keeping fewest, then the one that lost least, each with its
    prune step again over ``epochs``. The search's fine-tunes are short, so that many candidates
    fit its time; a deep prune keeps recovering long after (LeNet-300-100 cut to 784-90-50 and
    pruned to 93%: 98.25% test after 20 epochs, 98.63% after 60; pruned to 97% without the cut:
    a 0.60-pt selection drop after 20 epochs, none after 60)."""
    best = standings.best()
    if best is None:
        return []
    done = standings.near_misses([r for r in standings.rows.values() if not r.get("error") and r["stage"] == "prune"
                                  and r["int8"] == "ptq" and r["id"] in standings.chains
                                  and r["nonzero_params"] < best["nonzero_params"]])
    picked = []
    for key in (lambda r: (r["nonzero_params"], r["drop_points"]), lambda r: (r["drop_points"], r["nonzero_params"])):
        near = min(done, key=key, default=None)
        if near is not None and near not in picked:
            picked.append(near)
    ladders = []
    for near in picked:
        chain = standings.chains[near["id"]]
        last = chain[-1]
        ladders.append([chain[:-1] + [ChainStep(last.name, last.settings, {**last.fine_tune, "epochs": epochs},
                                                last.label)]])
        log(f"{near['id']} missed by {near['drop_points'] - standings.max_drop:.2f} pt with "
            f"{near['nonzero_params']:,} non-zero weights (the best keeps {best['nonzero_params']:,}): "
            f"pruning again over {epochs} epochs")
    return ladders


def qat_chains(standings) -> list:
    """Chains that get quantization-aware training, a further fine-tune: the two smallest whose
    post-training int8 lost what the Keras model kept, and the two near misses that lost least
    among those that would beat the best so far."""
    target, max_drop = standings.target, standings.max_drop
    done = [r for r in standings.rows.values()
            if not r.get("error") and r["int8"] == "ptq" and r["id"] in standings.chains]
    missed = [r for r in done if not r["meets_budget"]
              and (standings.base_acc - r["keras_selection_accuracy"]) * 100 <= max_drop]
    best = standings.best()
    near = [r for r in standings.near_misses(done) if best is None or score(r, target) < score(best, target)]
    chosen = []
    for r in sorted(missed, key=lambda r: score(r, target))[:2] + \
            sorted(near, key=lambda r: (r["drop_points"], score(r, target)))[:2]:
        if standings.chains[r["id"]] not in chosen:
            chosen.append(standings.chains[r["id"]])
    return chosen


def recluster_start(standings, clustered):
    """The chain of the best candidate when quantization-aware training made it the best and the
    cluster stage (which ran on ``clustered``) has not seen it; else None. QAT is one more
    fine-tune: it can lift a chain the earlier stages left over budget, and clustering that chain
    is the step it has not had."""
    b = standings.best()
    if b is None or b["int8"] != "qat":
        return None
    chain = standings.chains.get(b["id"], [])
    if chain == clustered or any(step.name == "cluster" for step in chain):
        return None
    return chain


# -- stages ---------------------------------------------------------------------------------------


def int8_stage(search, shared) -> bool:
    return search.stage("int8", [[[]]])


def channel_stage(search, shared) -> bool:
    """Channel pruning at the per-layer ratios a sweep gives at each of ``search.levels``."""
    chains = []
    if search.levels:
        rows = M.channel_sensitivity(search.model, search.x_sel, search.y_sel)
        chains = [[ChainStep("structured", {"ratio": 0.0, "per_layer": p}, label=i + 1)]
                  for i, p in enumerate(sweep_levels(rows, search.standings.base_acc, search.levels)) if p]
    shared["channel_levels"] = len(chains)
    return search.stage("channels", [chains])


def deeper_channel_stage(search, shared) -> bool:
    """Deeper cuts of the group holding the most kernel weights (see :func:`deeper_cuts`)."""
    start = search.standings.base_chain()
    sizes = M.prunable_layers(search.model)
    largest = largest_group(sizes, M.channel_groups(search.model))
    rate = search.high_rate()
    chains = deeper_cuts(start, largest, shared.get("channel_levels", 0), rate) if largest else []
    if not chains:
        return True
    ratios = ", ".join(f"{chain[0].settings['per_layer'][largest]:.0%}" for chain in chains)
    search.log(f"{largest} holds the most kernel weights ({sizes[largest]:,}): cutting {ratios} of its channels"
               + (f" on top of {chain_key(start)}" if start else "")
               + (f", fine-tuned at {rate['lr']:g}" if rate else ""))
    return search.stage("channels", [chains])


def remove_stage(search, shared) -> bool:
    """Each of the first removable layers taken out of the best chain, one at a time."""
    start = search.standings.base_chain()
    names = M.removable_layers(search.keras_model(start))
    return not names or search.stage("remove", [[start + [ChainStep("remove", {"layers": [n]})]]
                                                for n in names[:REMOVE_TRIES]])


def fold_pool_stage(search, shared) -> bool:
    """An exact rewrite, no fine-tune: the first foldable pool alone, then every one."""
    start = search.standings.base_chain()
    convs = M.foldable_pools(search.keras_model(start))
    folds = [convs[:1]] + ([convs] if len(convs) > 1 else [])
    return not convs or search.stage("fold_pool", [[start + [ChainStep("fold_pool", {"layers": f, "measure": False})]]
                                                   for f in folds])


def downsample_stage(search, shared) -> bool:
    """Downsampling at each of :func:`~tfopt.surgery.stride.downsample_points` (a late one, then the
    last and the first convolution at the input's size), mildest first, one ladder on the best chain
    and, when that chain changed the model, one on the input model; fine-tuned at the retraining
    rate (a change this large leaves the minimum the model was trained into)."""
    start = search.standings.base_chain()
    ladders = []
    for chain in [start] + ([[]] if start else []):
        points, refusals = downsample_points(search.keras_model(chain))
        if not points:
            search.log(refusals[0] if refusals else "downsample: no stride-1 convolution wider than 1×1 to downsample")
            continue
        ladders.append([chain + [ChainStep("downsample", {"layer": p}, dict(search.retrain_rate()))] for p in points])
    return not ladders or search.stage("downsample", ladders)


def choose_pruning(search, model) -> dict:
    """How to spread an overall sparsity (:data:`ALLOCATIONS`) and rank the weights
    (:data:`PRUNE_CRITERIA`): the pair that loses least when ``model`` is pruned to
    :data:`ALLOCATION_PROBE` at once. erk gives a first conv and a dense head much of the cut;
    er, counting channels only, leaves more to the convolutions (Fashion-MNIST CNN at 90%: erk
    48%, er 88% selection accuracy). The activation criterion lets weights on inputs that are
    rarely non-zero go first (an MNIST MLP trained with shifted images keeps border-pixel
    weights that centred images never use). Returns ``{"allocation", "criterion", "scales"}``."""
    scales = M.input_scales(model, search.x_probe)
    accs = {(a, c): M.allocation_accuracy(model, search.x_sel, search.y_sel, ALLOCATION_PROBE, a,
                                          scales if c == "activation" else None)
            for c in PRUNE_CRITERIA for a in ALLOCATIONS}
    allocation, criterion = pick_pruning(accs)
    search.log("pruning at once to " + f"{ALLOCATION_PROBE:.0%}, without fine-tuning: "
               + ", ".join(f"{a} by {c} {v:.2%}" for (a, c), v in accs.items())
               + f"; spreading by {allocation}, ranking by {criterion}")
    return {"allocation": allocation, "criterion": criterion, "scales": scales if criterion == "activation" else None}


def prune_chains(start, edge, levels, names, hows: dict, rate: dict | None = None) -> list:
    """The prune stage's ladders: on ``start``, the sweep's per-layer ``levels`` (``names``: the
    prunable layers, those without a level left dense) and the overall targets; the overall
    targets on ``edge`` (the best), where it is another chain; and the harsher overall targets on
    the input model itself, where ``start`` is not it. ``hows``: how each start spreads and ranks
    (see :func:`choose_pruning`), by ``"start"``, ``"edge"``, ``"input"``. Overall targets go
    beyond what the sweep tolerated and fine-tune with ``rate``."""
    how = hows["start"]
    crit = {"criterion": how["criterion"]} if how["criterion"] != "magnitude" else {}
    ladders = [[start + [ChainStep("prune", {"per_layer": p, "sparsity": max(p.values()),
                                             "skip": [n for n in names if n not in p]} | crit, label=str(i + 1))]
                for i, p in enumerate(levels) if p]]
    # The sweep zeroes one layer at a time without a fine-tune, so it is cautious; overall
    # targets spread by erk or er (see choose_pruning) go further and let the fine-tune recover.
    ladders.append([start + [s] for s in overall_prune_steps(how, rate=rate)])
    if edge != start:
        # the smallest start, nearer the edge of the budget: its overall targets alone (a rung
        # with no room left ends the ladder soon)
        ladders.append([edge + [s] for s in overall_prune_steps(hows["edge"], rate=rate)])
    if start:
        # channel pruning and then high sparsity compound their losses: high sparsity alone
        # can keep fewer weights at a smaller loss
        ladders.append([[s] for s in overall_prune_steps(hows["input"], overall_sparsities()[1:], rate)])
    return ladders


def prune_stage(search, shared) -> bool:
    """Magnitude pruning from :func:`prune_start` and the best (see :func:`prune_chains`)."""
    x, y = search.x_sel, search.y_sel
    start, edge = prune_start(search.standings), search.standings.base_chain()
    start_model = search.keras_model(start)
    hows = {"start": choose_pruning(search, start_model)}
    levels = sweep_levels(M.magnitude_sensitivity(start_model, x, y, scales=hows["start"]["scales"]),
                          M.accuracy(start_model, x, y), search.levels)
    if edge != start:
        hows["edge"] = choose_pruning(search, search.keras_model(edge))
    if start:
        hows["input"] = choose_pruning(search, search.model)
    chains = prune_chains(start, edge, levels, list(M.prunable_layers(start_model)), hows, search.high_rate())
    return search.stage("prune", chains)


def longer_stage(search, shared) -> bool:
    ladders = longer_chains(search.standings, LONG_EPOCHS * search.fine_tune.epochs, search.log)
    return not ladders or search.stage("longer", ladders)


def cluster_ladder(start) -> list:
    return [start + [ChainStep("cluster", dict(s))] for s in LADDERS["size"]["cluster"]]


def cluster_stage(search, shared) -> bool:
    shared["clustered"] = start = search.standings.base_chain()
    return search.stage("cluster", [cluster_ladder(start)])


def registered_step_stages(search, shared) -> bool:
    """Each registered step with a ladder for the target (:func:`registered_stages`), a stage of
    its own on the best chain so far."""
    for name in registered_stages(search.target):
        start = search.standings.base_chain()
        if not search.stage(name, [[start + [ChainStep(name, dict(s))] for s in STEPS[name].ladder(search.target)]]):
            return False
    return True


def qat_stage(search, shared) -> bool:
    shared["qat"] = chosen = qat_chains(search.standings)
    return search.stage("qat", [[c] for c in chosen], qat=True)


def recluster_stage(search, shared) -> bool:
    again = recluster_start(search.standings, shared.get("clustered"))
    if again is None:
        return True
    search.log(f"quantization-aware training made {search.standings.best()['id']} the best: clustering its chain too")
    if not search.stage("cluster", [cluster_ladder(again)]):
        return False
    return search.stage("qat", [[c] for c in qat_chains(search.standings) if c not in shared.get("qat", [])], qat=True)


#: The stage functions by the names :data:`PLANS` use.
STAGES = {"int8": int8_stage, "channels": channel_stage, "deeper_channels": deeper_channel_stage,
          "remove": remove_stage, "fold_pool": fold_pool_stage, "downsample": downsample_stage, "prune": prune_stage,
          "longer": longer_stage,
          "cluster": cluster_stage, "steps": registered_step_stages, "qat": qat_stage, "recluster": recluster_stage,
          "extend": extend_stage}
