"""The built-in steps, registered in :data:`tfopt.steps.STEPS` by name.

Each step's function and its command and chain adapters live in its own module
(:mod:`tfopt.steps.prune`, ...); they are named here as ``"module:function"`` and imported on
first use, so that reading the registry (``tfopt --help``, ``tfopt validate``) imports none of
them. The order of registration is the order of the help and of a chain's choices.
"""

from tfopt.config import steps as C
from tfopt.config.step_registry import register

register("structured", C.StructuredConfig, "channels", "tfopt.steps.structured:channel_prune",
         command="tfopt.steps.structured:run_structured", apply="tfopt.steps.structured:apply_structured",
         cli="prune", cli_flag="structured", distributed=True, token=C.TOKENS["structured"],
         help="Remove whole channels (filters, units) and every weight that reads them.")
register("prune", C.PruneConfig, "pruned", "tfopt.steps.prune:prune", command="tfopt.steps.prune:run_prune",
         apply="tfopt.steps.prune:apply_prune", distributed=True, token=C.TOKENS["prune"],
         help="Magnitude pruning with a schedule preflight, then strip.")
register("cluster", C.ClusterConfig, "clustered", "tfopt.steps.cluster:cluster",
         command="tfopt.steps.cluster:run_cluster", apply="tfopt.steps.cluster:apply_cluster", distributed=True,
         token=C.TOKENS["cluster"], help="Weight clustering: a few shared values per layer, then strip.")
register("quantize", C.QuantizeConfig, C.quantize_suffix, "tfopt.steps.quantize:quantize",
         command="tfopt.steps.quantize:run_quantize", apply="tfopt.steps.quantize:apply_quantize", distributed=True,
         help="Post-training quantization (dynamic, float16, int8) or quantization-aware training.")
register("export", C.Export, "export", "tfopt.steps.quantize:export", command="tfopt.steps.quantize:run_export",
         chain=False, section="export", help="SavedModel, .keras and verified .tflite files.")
register("remove", C.RemoveConfig, C.remove_suffix, "tfopt.steps.remove:remove",
         command="tfopt.steps.remove:run_remove", apply="tfopt.steps.remove:apply_remove", chain=False,
         cli="remove-layers", distributed=True, token=C.TOKENS["remove"],
         help="Remove shape-keeping layers or residual blocks, rewire, fine-tune.")
register("fold_bn", None, "folded", "tfopt.steps.fold:fold", command="tfopt.steps.fold:run_fold_bn",
         apply="tfopt.steps.fold:apply_fold_bn", chain=False,
         help="Fold BatchNorm into the conv or dense layer before it.")
register("fold_pool", C.FoldPoolConfig, "poolfolded", "tfopt.steps.fold:fold_pool",
         apply="tfopt.steps.fold:apply_fold_pool", token=C.TOKENS["fold_pool"],
         help="Fold each 2×2 max-pool into the conv before it: one stride-2 conv, the same outputs.")
register("downsample", C.DownsampleConfig, "downsampled", "tfopt.steps.downsample:downsample", distributed=True,
         token=C.TOKENS["downsample"],
         help="Multiply a convolution's stride: every later layer works on smaller maps; fine-tune.")
