"""The named choices that the library, the recipe schema and the command line share, written once.

Imports nothing: the schema (:mod:`tfopt.config.steps`) and the engines (:mod:`tfopt.surgery.channels`,
:mod:`tfopt.steps.cluster`, :mod:`tfopt.tflite`) read the same tuples.
"""

#: How channels are ranked for structured pruning.
CRITERIA = ("l1", "l2", "bn_gamma", "activation", "taylor")
#: How magnitude pruning ranks the weights of a layer: by magnitude, or by magnitude times the
#: root-mean-square of the input each weight reads (:func:`tfopt.steps.prune.input_scales`).
PRUNE_CRITERIA = ("magnitude", "activation")
#: The criteria that run training images through the model.
DATA_CRITERIA = ("activation", "taylor")
#: Weight clustering's centroid initialisations (TFMOT's ``CentroidInitialization`` names, lower case).
CLUSTER_INITS = ("kmeans_plus_plus", "linear", "density_based", "random")
#: TFLite conversion modes.
TFLITE_MODES = ("float32", "dynamic", "float16", "int8")
#: ``tfopt quantize`` modes: the post-training ones that change the weights, and quantization-aware training.
QUANTIZE_MODES = ("dynamic", "float16", "int8", "qat")
