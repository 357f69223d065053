"""DVC stage `validate`: check the whole of params.yaml before any other stage runs.

DVC deletes a stage's outputs before it runs the stage's command, so a stage that rejects its params has
already lost them. Every other stage depends on this one's output, so `dvc repro` runs this check first and
stops at a rejected param with every output as it was. The output is the same bytes whatever the params, so
a passing check never reruns anything by itself; each stage still reruns on its own params, as declared in
dvc.yaml.
"""

from __future__ import annotations

from lossviz.checkpoints import atomic_write
from pipelines.common import repo_root, stage_params

CHECKED = "tmp/params_checked.txt"
CONTENT = b"params.yaml passed lossviz's checks (see pipelines/validate.py)\n"


def main() -> int:
    root = repo_root()
    stage_params(root)  # prints every problem and exits 2 on a rejected param
    atomic_write(root / CHECKED, lambda stream: stream.write(CONTENT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
