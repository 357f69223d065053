"""DVC stage modules: each validates params, calls `lossviz`, writes its DVC outputs and logs to MLflow."""
