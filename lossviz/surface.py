"""The `Surface`: a computed loss landscape (1-D or 2-D) with everything needed to trust and redo it.

Arrays follow the official loss-landscape tool's layout fixed for non-square grids: 2-D arrays are
(ny, nx) with Z[iy, ix]; 1-D surfaces have `ys is None` and arrays of shape (nx,).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Surface:
    xs: np.ndarray                 # (nx,) α coordinates
    ys: np.ndarray | None          # (ny,) β coordinates, None for a 1-D slice
    loss: np.ndarray               # (ny, nx) or (nx,): mean loss over the examples; NaN = not computed/clipped
    acc: np.ndarray                # same shape: accuracy in percent
    loss_se: np.ndarray            # same shape: standard error of the mean loss over the examples
    example_indices: np.ndarray    # (n_examples,) indices into the evaluation split, same for every point
    meta: dict[str, Any] = field(default_factory=dict)  # seed, norm, ignore, mode, n_examples, model_hash,
    #                                                     dataset, split, model name, ...

    @property
    def is_2d(self) -> bool:
        return self.ys is not None

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.ys), len(self.xs)) if self.is_2d else (len(self.xs),)
