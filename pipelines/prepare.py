"""DVC stage `prepare`: each dataset in `data.datasets` from its first working source into
`data/prepared/<dataset>/` (train.pt, test.pt, manifest.json with sizes and SHA-256s)."""

from __future__ import annotations

import sys

from lossviz.data import DataError, read_dataset, write_prepared
from pipelines.common import data_root, repo_root, stage_params


def main() -> int:
    root = repo_root()
    params = stage_params(root)
    for dataset in params.data.datasets:
        try:
            splits, source = read_dataset(dataset, params.data.directory_for(dataset), root / "data" / "downloads",
                                          params.data.download, params.data.verify_checksums)
        except DataError as error:
            print(f"prepare: {error}", file=sys.stderr)
            return 1
        manifest = write_prepared(splits, data_root(root) / dataset,
                                  {"dataset": dataset, "source": source.describe,
                                   "verified_checksums": params.data.verify_checksums})
        sizes = ", ".join(f"{name}: {info['examples']}" for name, info in manifest["files"].items())
        print(f"prepare: {dataset} from {source.describe} ({sizes})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
