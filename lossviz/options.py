"""The names a user picks from, in params.yaml and on the command line, for the engine and the directions.

They live in this dependency-free module so that the params schema can offer them as its allowed values
without importing the engine: a training stage validates its params without depending on the engine's code.
The engine keys its evaluators by `EVALUATION_METHODS` and the directions module checks against the others;
`tests/test_engine.py` checks that the engine's registry has exactly these names.
"""

EVALUATION_METHODS = ("naive", "fast", "vmap")  # lossviz.engine.EVALUATORS
METHODS = ("auto", *EVALUATION_METHODS)  # "auto": vmap on CUDA, fast elsewhere
NORMS = ("filter", "layer", "weight", "dfilter", "dlayer", "none")  # lossviz.directions.normalize_direction
IGNORES = ("biasbn", "none")  # "biasbn": biases and BatchNorm parameters get zero directions
MODES = ("weights", "states")  # parameters only, or the whole state_dict (BatchNorm running stats too)
