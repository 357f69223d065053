"""The batch-size sweep's machinery, under the thin `pipelines.batch_sweep` stage: where it keeps things
(`layout`), what shapes its trials (`settings`), its Optuna storage (`storage`), how workers take turns and
tell the dead (`workers`), one trial's life (`trials`), the study from set-up to the worker loop (`study`),
its DVC outputs (`finalize`), and the Optuna pages the `batch_landscapes` stage draws from it (`pages`).
Only `pages` draws figures: the sweep stage itself trains and never imports a figure module."""
