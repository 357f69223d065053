"""Surfaces across processes and GPUs with torch.distributed, as launched by `torchrun`.

The same `lossviz surface` command, started by torchrun, splits the grid points between the ranks:

    torchrun --standalone --nproc_per_node N -m lossviz.cli surface --model resnet56 --checkpoint model.t7 \\
        --dataset cifar10 --x -1:1:51 --y -1:1:51 --out surface.h5

and across nodes, the same command on every node with `--nnodes M --node_rank R --master_addr HOST
--master_port PORT` in place of `--standalone`. Every rank loads the checkpoint and the data itself (each
node needs them); rank 0 alone reads and writes `--out` and `--dir-file`, decides which points are left
and records every rank's results. Each rank runs on CUDA device LOCAL_RANK with NCCL when the device
resolves to CUDA (`--device auto` or `cuda`, one GPU per process of a node), else on the CPU with gloo
(`--device cpu`, or `auto` without CUDA), where each rank takes cores // nproc_per_node threads unless
LOSSVIZ_THREADS says otherwise. The surface equals the single-process one: a point's values do not depend
on the rank that computes it (bit for bit on the CPU with the same threads per process; the vmap method
on GPUs batches points differently, which may change the last bits).

Resuming works as without torchrun: rank 0 writes the points to `--out` as the ranks finish them (flushed
every half second), and when a rank dies torchrun stops the others, so a killed job loses about the last
half second of work and rerunning the same command (with any number of ranks, or without torchrun)
computes only the points the file does not hold yet; the progress bar starts at the points already done.
Across nodes `--out` must be where rank 0 finds it on the rerun: a shared filesystem, or a fixed
`--node_rank` (rank 0 stays on node 0).

`process_group(device)` joins the job torchrun started (RANK, WORLD_SIZE, LOCAL_RANK in the environment);
outside torchrun it does nothing. The engine uses the default group when one is initialized
(`lossviz.engine.compute_surface`), and then expects every rank to call it with the same arguments.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from lossviz.runtime import resolve_device

T = TypeVar("T")
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting its variables)."""
    return all(name in os.environ for name in LAUNCH_VARIABLES)


def launch_rank() -> int:
    """This process's global rank from the launcher's environment (0 when not launched)."""
    return int(os.environ.get("RANK", 0))


def local_rank() -> int:
    """This process's rank on its node (0 when not launched)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def rank_device(device: str | torch.device = "auto") -> torch.device:
    """The device this rank computes on: an unnumbered CUDA device becomes cuda:LOCAL_RANK under torchrun."""
    resolved = resolve_device(device)
    if resolved.type != "cuda" or not launched():
        return resolved
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if resolved.index is not None:
        if local_world > 1:  # NCCL refuses two ranks on one GPU
            raise ValueError(f"device={device!r} under torchrun with {local_world} processes per node would put "
                             "them all on one GPU; use 'cuda' or 'auto' (each rank takes cuda:LOCAL_RANK)")
        return resolved
    if local_rank() >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local_rank()} has no GPU: {torch.cuda.device_count()} visible; start at "
                         "most that many processes per node (torchrun --nproc_per_node), or use device 'cpu'")
    return torch.device("cuda", local_rank())


@contextmanager
def process_group(device: str | torch.device = "auto") -> Iterator[torch.device]:
    """Join torchrun's job for the duration of the block (no-op when not launched, or when a group
    already exists); yields this rank's device."""
    resolved = rank_device(device)
    if not launched() or is_active():
        yield resolved
        return
    # torchrun's OMP_NUM_THREADS=1 is overridden by runtime.configure_cpu, which by default takes every core:
    # give each local rank its share instead, unless LOSSVIZ_THREADS says otherwise.
    local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("LOSSVIZ_THREADS", str(max(1, cores // local_world)))
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)  # NCCL's object collectives stage their bytes on the current device
        dist.init_process_group("nccl", device_id=resolved)
    else:
        dist.init_process_group("gloo")
    try:
        yield resolved
    finally:
        dist.destroy_process_group()


def from_rank_zero(make: Callable[[], T]) -> T:
    """`make()` run on rank 0 alone; its result, or the exception it raised, reaches every rank."""
    if not is_active():
        return make()
    payload: list[Any] = [None]
    if rank() == 0:
        try:
            payload = [(make(), None)]
        except Exception as error:
            dist.broadcast_object_list([(None, _picklable(error))], src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    value, error = payload[0]
    if error is not None:
        raise on_every_rank(error)
    return value


def on_every_rank(error: Exception) -> Exception:
    """Mark `error` as raised alike on every rank (rank 0 reports it; see `reports`)."""
    error.lossviz_every_rank = True  # type: ignore[attr-defined]
    return error


def reports(error: BaseException) -> bool:
    """Whether this process should print `error`: rank 0 always, another rank when the error is its own
    (not one that every rank raised alike), so that a failure on one rank is not silent."""
    return launch_rank() == 0 or not getattr(error, "lossviz_every_rank", False)


def all_gather(value: T) -> list[T]:
    """Every rank's `value`, in rank order, on every rank."""
    if not is_active():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def _picklable(error: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__} on rank 0: {error}")
    return error
