"""DVC stage modules: each validates params, calls `lossviz`, writes its DVC outputs and logs to MLflow."""

from lossviz.runtime import prepare_cpu_environment

prepare_cpu_environment()  # every stage imports this package first, before anything loads torch
