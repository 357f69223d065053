"""`make ui`'s first step: point a checkout's MLflow store at that checkout, as every stage does when it opens
the store. After a `cp -a` or `mv` the store still names the old tree's artifact folders until a stage runs;
a UI started before then would show the old tree's artifacts (after a `mv`, none).

Usage: python scripts/relocate_store.py CHECKOUT"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# the local store is the one to relocate, whatever server the stages are pointed at
os.environ.pop("MLFLOW_TRACKING_URI", None)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # pipelines/ runs from the checkout

from pipelines.tracking import ensure_store  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.rsplit("\n", 1)[-1], file=sys.stderr)
        return 2
    checkout = Path(argv[0]).resolve()
    if not (checkout / "mlruns" / "mlflow.db").is_file():
        return 0  # no store yet: nothing recorded elsewhere
    ensure_store(checkout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
