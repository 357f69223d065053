"""DVC stage `batch_sweep` (the seed paper's Figure 4): an Optuna study over the training batch size, each
trial a `lossviz.training.train` run tracked as an MLflow child run of the study's parent run.

    python -m pipelines.batch_sweep                                  # the stage: set up, work, finalize
    python -m pipelines.batch_sweep --protocol converged             # stage batch_sweep_converged
    python -m pipelines.batch_sweep worker --storage URL --study NAME  # one more worker on the same study

Storage: an Optuna journal file, `studies/batch_sweep/journal.log` (a `persist: true` DVC output, so a
killed sweep started again continues), or the URL in params `batch_sweep.storage` or the environment
variable LOSSVIZ_OPTUNA_STORAGE (`postgresql://…`, `sqlite:///…`, or a journal file path).
The study's name is a digest of everything that shapes its trials (settings, prepared data, training
code), and the study records those settings: changed params make a new study, and a study named by hand
whose settings differ is refused with the differing keys.

Protocols (`--protocol`, `pipelines.sweep.layout.PROTOCOLS`): `fixed`, the paper's, trains every batch size for
`epochs` epochs, so a large batch takes few steps and may end undertrained; `converged` (stage
`batch_sweep_converged`, outputs `models/batch_sweep_converged/`) early-stops every batch size on validation loss
(at most `converged_max_epochs`). Each is its own study; the report sets their verdicts side by side.

Any number of workers share a study, each trial run exactly once; a dead worker's trial is retried from its
last epoch checkpoint (`pipelines.sweep.trials`, `pipelines.sweep.workers`). A trial trained on another
machine reaches the stage's DVC outputs through its MLflow run's checkpoint artifact (use a team tracking
server: MLFLOW_TRACKING_URI).

Outputs (DVC): `models/batch_sweep/bs_XXXXX/model.pt` (+ trial.json) per completed batch size and
`models/batch_sweep/sweep.json` (persisted, like the journal). This stage only trains: the `batch_landscapes`
stage draws the study's Optuna pages (`reports/batch_sweep/`) from the storage.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # read once, when mlflow is first imported

from lossviz.data import DataError  # noqa: E402
from lossviz.params import Params  # noqa: E402
from pipelines.common import repo_root, stage_params  # noqa: E402
from pipelines.sweep.finalize import check_grid_done, finalize  # noqa: E402
from pipelines.sweep.layout import JOURNAL_PATH, PARENT_ATTR, PROTOCOLS  # noqa: E402
from pipelines.sweep.settings import (  # noqa: E402
    SweepError,
    check_settings,
    derived_study_name,
    load_sweep_splits,
    sweep_settings,
)
from pipelines.sweep.storage import Liveness, storage_url  # noqa: E402
from pipelines.sweep.study import load_sweep_study, run_sweep_worker, setup_study, wait_until_done  # noqa: E402
from pipelines.tracking import ensure_store, log_inputs, split_inputs  # noqa: E402

PROGRESS = True  # tqdm per trial, as the train stage


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.batch_sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="fixed",
                        help="fixed: `epochs` epochs for every batch size (the paper; stage batch_sweep); converged: "
                             "early stopping on validation loss up to `converged_max_epochs` (stage "
                             "batch_sweep_converged) (default: %(default)s)")
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker", help="run trials of an existing study (several workers may share it)")
    worker.add_argument("--storage", default=None, help="Optuna storage URL (default: as the stage resolves it)")
    worker.add_argument("--study", required=True, help="study name (printed by the stage, in study.json)")
    worker.add_argument("--device", default=None, help="default: params `device`")
    worker.add_argument("--max-trials", type=int, default=None)
    return parser.parse_args(argv)


def worker(args: argparse.Namespace, params: Params, root: Path) -> int:
    """`python -m pipelines.batch_sweep worker`: trials of a study the stage set up, until none is left."""
    url = args.storage or storage_url(params, root)
    try:
        ran = run_sweep_worker(url, args.study, root, device=args.device or params.device,
                               max_trials=args.max_trials, progress=PROGRESS)
    except SweepError as error:
        print(f"batch_sweep worker: {error}", file=sys.stderr)
        return 2
    print(f"batch_sweep worker: ran trials {ran}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = repo_root()
    params = stage_params(root)
    if args.command == "worker":
        return worker(args, params, root)

    section = params.batch_sweep
    protocol = PROTOCOLS[args.protocol]
    stage = protocol.stage
    try:
        settings = sweep_settings(params, root, protocol)
        splits = load_sweep_splits(root, settings)
    except (SweepError, DataError, ValueError) as error:
        print(f"{stage}: {error}", file=sys.stderr)
        return 2
    problems = check_settings(settings, splits)
    if problems:
        print(f"{stage}: invalid params\n" + "\n".join(f"  {line}" for line in problems), file=sys.stderr)
        return 2
    url = storage_url(params, root)
    study_name = section.study_name + protocol.suffix if section.study_name else derived_study_name(settings)
    (root / JOURNAL_PATH).parent.mkdir(parents=True, exist_ok=True)  # the DVC output exists whatever the URL
    (root / protocol.models_dir).mkdir(parents=True, exist_ok=True)
    ensure_store(root)
    try:
        study = setup_study(url, study_name, settings, section.n_trials, root, Liveness.from_params(section))
        log_inputs(split_inputs(splits), study.user_attrs[PARENT_ATTR])
        wait_until_done(url, study_name, root, settings, params.device, splits, PROGRESS)
        study, _ = load_sweep_study(url, study_name, root)
        check_grid_done(study, settings)
        summary = finalize(study, settings, url, root)
    except SweepError as error:
        print(f"{stage}: {error}", file=sys.stderr)
        return 2
    for trial in summary["trials"]:
        print(f"{stage}: batch {trial['batch_size']:>6}: val {trial['final_val_acc']:.4f} "
              f"test {trial['final_test_acc']:.4f} train {trial.get('final_train_acc', math.nan):.4f}")
    print(f"{stage}: study {study_name}: best batch size {summary['best_batch_size']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
