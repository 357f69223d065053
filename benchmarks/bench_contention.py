"""Throughput under contention: the landscape engine (lenet5 points/s, 250 examples, "fast" evaluator) and
training (lenet5 Adam steps/s at batch 16) with three busy neighbour processes on this machine's cores, as a
ratio of the quiet figure measured in the same run, for each CPU thread policy:

  all-cores   the previous policy: one OpenMP thread per core this process may run on, libgomp's default
              wait policy (a thread at a barrier spins before it sleeps)
  one-thread  a single thread (nothing to wait for), OMP_WAIT_POLICY=PASSIVE
  lossviz     the policy now: `lossviz.runtime.prepare_cpu_environment` before torch loads (as the `lossviz`
              command and the stages do: OMP_WAIT_POLICY=PASSIVE, a waiting thread sleeps at once, when
              other running tasks fill the cores at start, else libgomp's default), then
              `lossviz.runtime.configure_cpu` (one thread per usable core)

Each figure comes from a fresh process (libgomp reads its wait policy when it loads), started after the
neighbours (pure-Python busy loops) have run for a moment; policies alternate within each round, and the
median of the rounds counts. The run queue seen before each quiet measurement is printed: on a machine
shared with others, "quiet" includes their load, and the ratios say only how much worse three more busy
processes make it.

    python benchmarks/bench_contention.py [--seconds 3] [--rounds 2] [--neighbours 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

POLICIES = ("all-cores", "one-thread", "lossviz")
BUSY_LOOP = "while True: pass"


def measure(policy: str, seconds: float) -> dict[str, float]:
    """In a child process: set the threads as `policy` says, then run each workload for `seconds`."""
    if policy == "lossviz":
        from lossviz.runtime import prepare_cpu_environment

        prepare_cpu_environment()
    import torch
    import torch.nn.functional as F

    from lossviz.directions import random_directions
    from lossviz.engine import make_evaluator
    from lossviz.models import build_model
    from lossviz.runtime import configure_cpu

    if policy == "lossviz":
        configure_cpu()
    else:  # the previous configure_cpu (every core this process may use), or one thread
        torch.set_num_threads(1 if policy == "one-thread" else len(os.sched_getaffinity(0)))
        torch.set_flush_denormal(True)
    threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(250, 1, 28, 28, generator=generator)
    targets = torch.randint(0, 10, (250,), generator=generator)
    torch.manual_seed(0)
    model = build_model("lenet5")
    evaluator = make_evaluator("fast", model, random_directions(model, seed=0), inputs, targets, device="cpu")

    def engine_points(duration: float) -> float:
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < duration:
            alpha = (done % 21) / 10 - 1
            evaluator.evaluate_many([alpha], [-alpha])
            done += 1
        return done / (time.perf_counter() - start)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_steps(duration: float) -> float:
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < duration:
            batch = slice((done * 16) % 240, (done * 16) % 240 + 16)
            optimizer.zero_grad()
            F.cross_entropy(model(inputs[batch]), targets[batch]).backward()
            optimizer.step()
            done += 1
        return done / (time.perf_counter() - start)

    engine_points(0.5)  # warm-up: allocations, first-call dispatch
    engine = engine_points(seconds)
    evaluator.close()
    train_steps(0.5)
    training = train_steps(seconds)
    return {"threads": threads, "engine": engine, "training": training}


def run_queue() -> int:
    """Runnable tasks on the machine right now (/proc/stat procs_running, this script's own included)."""
    with open("/proc/stat") as stat:
        return next(int(line.split()[1]) for line in stat if line.startswith("procs_running"))


def child(policy: str, seconds: float) -> dict[str, float]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "LOSSVIZ_THREADS", "GOMP_SPINCOUNT")}
    if policy == "one-thread":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    result = subprocess.run([sys.executable, __file__, "--child", policy, "--seconds", str(seconds)], env=env,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per workload")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--neighbours", type=int, default=3, help="busy processes started for the busy figures")
    parser.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.seconds)))
        return

    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    for round_index in range(args.rounds):
        order = POLICIES if round_index % 2 == 0 else POLICIES[::-1]
        for condition in ("quiet", "busy"):
            neighbours = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
                          for _ in range(args.neighbours if condition == "busy" else 0)]
            try:
                time.sleep(0.5 if neighbours else 0)
                for policy in order:
                    queue = run_queue()
                    sample = child(policy, args.seconds)
                    samples.setdefault((policy, condition), []).append(sample)
                    print(f"round {round_index + 1} {condition:5s} {policy:9s} run queue {queue:2d}: "
                          f"{sample['threads']} threads, engine {sample['engine']:7.1f} points/s, "
                          f"training {sample['training']:7.1f} steps/s", flush=True)
            finally:
                for neighbour in neighbours:
                    neighbour.kill()
                    neighbour.wait()

    def median(policy: str, condition: str, key: str) -> float:
        return statistics.median(sample[key] for sample in samples[(policy, condition)])

    print(f"\n{'policy':10s} {'engine quiet':>13s} {'busy':>8s} {'ratio':>6s}   {'training quiet':>15s} "
          f"{'busy':>8s} {'ratio':>6s}")
    summary = {}
    for policy in POLICIES:
        row = {}
        for key in ("engine", "training"):
            quiet, busy = median(policy, "quiet", key), median(policy, "busy", key)
            row[key] = {"quiet": quiet, "busy": busy, "ratio": busy / quiet}
        summary[policy] = row
        print(f"{policy:10s} {row['engine']['quiet']:13.1f} {row['engine']['busy']:8.1f} "
              f"{row['engine']['ratio']:6.2f}   {row['training']['quiet']:15.1f} {row['training']['busy']:8.1f} "
              f"{row['training']['ratio']:6.2f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
