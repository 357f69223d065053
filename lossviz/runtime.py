"""Where code runs: device resolution, CPU threads, seeding. Shared by training and surfaces.

torch is imported inside the functions: `prepare_cpu_environment` must run before torch loads, and the
command line imports this module without paying for torch.
"""

from __future__ import annotations

import ctypes
import functools
import os
import random
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'"


def check_device_name(device: str) -> str:
    """Check the spelling of a `device` setting (not whether that device exists here)."""
    if device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise ValueError(f"device={device!r} is not valid; allowed: {DEVICE_HELP}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a `device` setting into a torch.device; 'auto' picks CUDA when it is available."""
    import torch

    if isinstance(device, torch.device):
        return device
    check_device_name(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(device)


def prepare_cpu_environment() -> None:
    """Before torch loads (the `lossviz` command and every stage call it first): on a machine that is already
    busy, OpenMP threads that wait sleep at once (OMP_WAIT_POLICY=PASSIVE) instead of spinning; on a quiet one
    libgomp's default stays (spin briefly, then sleep), unless the environment already says. Beside busy
    neighbours a spinning thread burns the time slices its sibling needs to reach the barrier and throughput
    collapses; but sleeping threads are slow to wake, which halved quiet training at batch 16
    (benchmarks/bench_contention.py). The wait policy changes timing only, never results; libgomp reads it
    once, when torch loads it, so it follows the load at start."""
    if "OMP_WAIT_POLICY" not in os.environ and machine_is_busy(other_running_tasks(), usable_cores()):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def machine_is_busy(others: int, cores: int) -> bool:
    """Busy: other tasks ready to run fill every core this process could use."""
    return others >= cores


def other_running_tasks() -> int:
    """Tasks running or ready to run on the machine now, this process excluded (Linux /proc/stat; 0 elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            running = next(int(line.split()[1]) for line in stat if line.startswith("procs_running"))
    except (OSError, StopIteration, ValueError):
        return 0
    return max(running - 1, 0)


def usable_cores() -> int:
    """The cores this process may run on (not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_cpu() -> None:
    """Threads for CPU work: LOSSVIZ_THREADS when set, else one per usable core. The count does not follow
    the machine's load: under contention the scheduler shares time per thread, so fewer threads only lose
    share (measured: benchmarks/bench_contention.py), and a fixed count keeps results independent of the
    neighbours. Also guards against subnormal floats, which make CPU inference many times slower near a flat
    minimum."""
    import torch

    setting = os.environ.get("LOSSVIZ_THREADS")
    threads = max(1, int(setting)) if setting else usable_cores()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    keep_freed_memory()


@functools.cache
def keep_freed_memory() -> None:
    """Keep freed memory in the process (glibc only). By default glibc hands every freed block larger
    than its mmap threshold back to the OS, so each training step or grid point page-faults its
    activations in afresh; keeping them makes CPU training steps ~25–30% faster. Process-wide, once."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way for explicit use."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
