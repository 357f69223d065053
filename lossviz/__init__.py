"""lossviz: fast, faithful loss-landscape surfaces and the experiments around them.

The library has no MLflow, Optuna or DVC inside: a notebook user calls it directly.
"""

__version__ = "0.1.0"
