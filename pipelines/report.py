"""DVC stage `report`: `reports/index.html`, the page a user opens first. It sets each claim of the seed
paper beside the figure this run measured (read from the stages' metric files) and links every page the
other stages wrote under `reports/`."""

from __future__ import annotations

import json
from pathlib import Path

from lossviz.pages import write_gallery
from pipelines.common import repo_root, stage_params

INDEX = Path("reports/index.html")
METRICS = Path("metrics")


def _load(root: Path, name: str) -> dict:
    path = root / METRICS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def sample_size_claims(metrics: dict) -> list[tuple[str, str, str]]:
    by_n = {int(n): row for n, row in metrics.get("by_n", {}).items()}
    if not by_n:
        return []
    largest = max(by_n)
    rows = []
    if 250 in by_n:
        row = by_n[250]
        rows.append(("250 test examples give the same landscape as the whole test set",
                     "shape settled by ~10 examples; 1k→3k changes little",
                     f"n=250 vs n={largest}: Pearson r of ln(loss) {row['pearson_ln_loss']:.3f}, RMSE "
                     f"{row['rmse_ln_loss']:.3f}, minimum moved {row['argmin_distance']:.2f}"))
        rows.append(("evaluating 250 examples instead of 10k makes surfaces ~100× faster",
                     "100× (40× of it from CIFAR-10's 10k test set)",
                     f"{row['speedup']:.1f}× per surface, {row.get('point_speedup', float('nan')):.1f}× per "
                     f"point (n=250 vs n={largest})"))
    settled = [n for n, row in sorted(by_n.items()) if n != largest and row["pearson_ln_loss"] >= 0.99]
    rows.append(("few examples suffice for the shape", "~10 examples",
                 f"smallest n with Pearson r ≥ 0.99: {settled[0] if settled else 'none below ' + str(largest)}"))
    auto = metrics.get("auto")
    if auto:
        rows.append(("(beyond the paper) examples needed for a target error bar", "—",
                     f"n={auto['n']} keeps the worst standard error of ln(loss) ≤ {auto['tolerance']}"))
    return rows


def batch_claims(metrics: dict) -> list[tuple[str, str, str]]:
    per = metrics.get("per_batch_size", {})
    if not per:
        return []
    ranked = sorted(per.values(), key=lambda row: row["test_acc"], reverse=True)
    best = ", ".join(f"{row['batch_size']} ({_pct(row['test_acc'])})" for row in ranked[:2])
    sizes = ", ".join(str(size) for size in sorted(row["batch_size"] for row in per.values()))
    correlations = metrics.get("correlations", {})
    with_error = "; ".join(f"{measure} ρ={values['test_error']['spearman']:+.2f}"
                           for measure, values in sorted(correlations.items()))
    return [
        ("best test accuracy at moderate batch sizes", "between 160 and 1,600 (sizes 2 … 16,000)",
         f"best: {best} (of sizes {sizes})"),
        ("sharpness of the surface does not track generalization (contra Li et al.)", "judged by eye",
         f"Spearman with test error across {len(per)} sizes: {with_error}"),
    ]


def lottery_claims(metrics: dict, landscapes: dict) -> list[tuple[str, str, str]]:
    winning, random = metrics.get("winning", {}), metrics.get("random", {})
    levels = sorted(set(winning) & set(random))
    if not levels:
        return []
    last = levels[-1]
    gaps = [(winning[level]["remaining"], winning[level]["test_acc"] - random[level]["test_acc"]) for level in levels]
    opening = next((remaining for remaining, gap in gaps if gap >= 0.02), None)
    dense = winning[levels[0]]["test_acc"]
    rows = [
        ("winning tickets beat random tickets of the same sparsity; the gap opens near P_m = 50%",
         "gap opens near 50%, 16 points at the end",
         f"gap ≥ 2 points first at P_m = {_pct(opening) if opening is not None else 'never'}; "
         f"{100 * gaps[-1][1]:.1f} points at P_m = {_pct(gaps[-1][0])}"),
        ("a sparse winning ticket matches the dense network", "at P_m = 3.2%",
         f"P_m = {_pct(winning[last]['remaining'])}: winning {_pct(winning[last]['test_acc'])}, "
         f"random {_pct(random[last]['test_acc'])}, dense {_pct(dense)}"),
    ]
    shared = sorted(set(landscapes.get("winning", {})) & set(landscapes.get("random", {})))
    if shared:
        level = shared[-1]
        w, r = landscapes["winning"][level], landscapes["random"][level]
        rows.append(("random tickets' surfaces are shallower (a 'gradient desert')", "much shallower at low P_m",
                     f"depth at P_m = {_pct(w['remaining'])}: winning {w['depth']:.2f}, random {r['depth']:.2f}"))
    return rows


def stability_claims(metrics: dict) -> list[tuple[str, str, str]]:
    """Frankle et al. 2020's finding at the deepest level measured, from θ0 (k = 0)."""
    winning, random = metrics.get("winning", {}), metrics.get("random", {})
    levels = sorted(level for level in set(winning) & set(random) if "k_0" in winning[level] and "k_0" in random[level])
    if not levels:
        return []
    w, r = winning[levels[-1]]["k_0"], random[levels[-1]]["k_0"]

    def barrier(cell: dict) -> str:
        return (f"{cell['error_barrier']:.2f} ± {cell['error_barrier_se']:.2f} points "
                f"({'stable' if cell['stable'] else 'unstable'})")

    return [("sparse IMP tickets of small networks are stable from initialisation; random tickets at the same "
             "sparsity are not (Frankle et al. 2020, instability analysis)",
             f"LeNet on MNIST: IMP stable at k = 0 (barrier < {metrics.get('stable_threshold', 2):g} points)",
             f"error barrier at P_m = {_pct(w['remaining'])}, k = 0: winning {barrier(w)}, random {barrier(r)}; "
             f"{w.get('pairs', 1)} pair(s) of copies")]


def claims(root: Path) -> list[tuple[str, str, str]]:
    return (sample_size_claims(_load(root, "sample_size")) + batch_claims(_load(root, "batch_sweep"))
            + lottery_claims(_load(root, "lottery"), _load(root, "lottery_landscapes"))
            + stability_claims(_load(root, "lottery_stability")))


def main() -> int:
    root = repo_root()
    stage_params(root)  # the report reads no params, but a broken params.yaml should still stop it
    rows = claims(root)
    out = write_gallery(root / "reports", root / INDEX, title="lossviz: the seed paper's claims, measured",
                        summary=rows)
    print(f"report: {out.relative_to(root)} ({len(rows)} claims)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
