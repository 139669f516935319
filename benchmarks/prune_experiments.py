"""The lottery-ticket study of the README, resumable: ticket searches with every importance metric.

    python benchmarks/prune_experiments.py                  # every setup, one search at a time
    python benchmarks/prune_experiments.py lenet-fp --dry-run
    python benchmarks/prune_experiments.py --summarize      # only rewrite the study tables and plots

Setups (the first is the first setup of Vandersmissen & Oramas (2023), LeNet-300-100 on MNIST, here spiking and
on the bundled 5,000 MNIST digits; training as in the paper: 40 epochs, batch 128, SGD lr 0.1, rewind epoch 0):

- ``lenet-fp`` / ``lenet-ternary``: ``--arch mlp`` on ``mnist5k``, ``--method baseline``, 15 rounds; seed 0
  with all five metrics, seeds 1 and 2 with magnitude, l1 and l2;
- ``convnet-digits``: the digits defaults (TNA, ternary convnet), 10 rounds, all five metrics, seed 0.

Each (setup, seed) is one ``tna-prune`` call into ``benchmarks/results/tna_prune/<setup>/seed<s>``; a search
folder with a ``prune.json`` is continued with ``tna-prune --resume``, so killing this script loses at most
the epochs since the last checkpoint. When a setup's searches are done, ``study.{md,json}`` and
``study.png`` in its folder give, over seeds, the test accuracy per metric and round, the overlap of the
tickets at 67.2%, 89.3% and 96.5% sparsity (rounds 5, 10, 15), and each layer's remaining weights at the last
round (a layer near zero has collapsed).
"""
import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path("benchmarks") / "results" / "tna_prune"  # relative to ROOT: the configs name no machine's paths
ALL = ("magnitude", "l1", "l2", "softmax", "minmax")
FIRST = ("magnitude", "l1", "l2")
PAPER_LENET = ("--dataset", "mnist5k", "--arch", "mlp", "--method", "baseline", "--epochs", "40", "--batch-size",
               "128", "--optimizer", "sgd", "--lr", "0.1", "--weight-decay", "0", "--rounds", "15",
               "--rewind-epoch", "0")
SETUPS = {
    "lenet-fp": {"flags": PAPER_LENET + ("--weights", "fp"), "seeds": {0: ALL, 1: FIRST, 2: FIRST}},
    "lenet-ternary": {"flags": PAPER_LENET + ("--weights", "ternary"), "seeds": {0: ALL, 1: FIRST, 2: FIRST}},
    "convnet-digits": {"flags": ("--rounds", "10"), "seeds": {0: ALL}},
}
OVERLAP_ROUNDS = (5, 10, 15)


def tna_prune() -> list:
    return [sys.executable, "-c", "import sys; from tna.cli import prune_main; sys.exit(prune_main())"]


def calls(setup: str) -> list:
    """The tna-prune argument lists of ``setup``, one per seed."""
    plan = SETUPS[setup]
    result = []
    for seed, metrics in plan["seeds"].items():
        out = RESULTS / setup / f"seed{seed}"
        if (ROOT / out / "prune.json").is_file():
            result.append(["--resume", str(out), "--no-progress"])
        else:
            result.append([*plan["flags"], "--seeds", str(seed), "--importance", ",".join(metrics), "--out", str(out),
                           "--no-progress"])
    return result


def _mean_std(values: list) -> tuple:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(setup: str) -> dict:
    """``study.{json,md}`` and ``study.png`` of a finished setup, from its searches' ``summary.json`` and
    ``overlap.json``."""
    folder = ROOT / RESULTS / setup
    seeds = {seed: json.loads((folder / f"seed{seed}" / "summary.json").read_text()) for seed in SETUPS[setup]["seeds"]}
    overlaps = {seed: json.loads((folder / f"seed{seed}" / "overlap.json").read_text())["rounds"] for seed in seeds}
    metrics = [m for m in ALL if any(m in s["curves"] for s in seeds.values())]
    rounds = len(next(iter(seeds.values()))["curves"][metrics[0]])
    curves = {}
    for metric in metrics:
        runs = [s["curves"][metric] for s in seeds.values() if metric in s["curves"]]
        curves[metric] = [{
            "sparsity": statistics.fmean(run[k]["sparsity"] for run in runs),
            "test_accuracy": _mean_std([run[k]["test_accuracy"] for run in runs]),
            "seeds": len(runs),
            "remaining_per_layer": {layer: statistics.fmean(1 - run[k]["sparsity_per_layer"][layer] for run in runs)
                                    for layer in runs[0][k]["sparsity_per_layer"]},
        } for k in range(rounds)]
    shared = {}
    for k in (r for r in OVERLAP_ROUNDS if r < rounds):
        for a, b in itertools.combinations(metrics, 2):
            pairs = [overlaps[s][str(k)]["pairs"] for s in seeds]
            values = [p[f"{a}|{b}"] for p in pairs if f"{a}|{b}" in p]
            if values:
                shared.setdefault(str(k), {})[f"{a}|{b}"] = {
                    "overall": statistics.fmean(v["overall"] for v in values), "seeds": len(values),
                    "per_layer": {layer: statistics.fmean(v["per_layer"][layer] for v in values)
                                  for layer in values[0]["per_layer"]}}
    study = {"setup": setup, "flags": list(SETUPS[setup]["flags"]), "curves": curves, "overlap": shared}
    (folder / "study.json").write_text(json.dumps(study, indent=2) + "\n")
    (folder / "study.md").write_text(_markdown(study, metrics, rounds))
    _plot(folder / "study.png", study, metrics)
    return study


def _markdown(study: dict, metrics: list, rounds: int) -> str:
    shown = [k for k in range(rounds) if k in (0, 1, 3, 5, 8, 10, 12, 15) or k == rounds - 1]
    curves = study["curves"]
    lines = ["| importance | seeds | " + " | ".join(f"round {k} ({100 * curves[metrics[0]][k]['sparsity']:.1f}%)"
                                                   for k in shown) + " |",
             "|---|---:|" + "---:|" * len(shown)]
    for metric in metrics:
        seeds = curves[metric][0]["seeds"]
        cells = [f"{100 * mean:.2f} ± {100 * std:.2f}" if seeds > 1 else f"{100 * mean:.2f}" for mean, std in
                 (curves[metric][k]["test_accuracy"] for k in shown)]
        lines.append(f"| {metric} | {seeds} | " + " | ".join(cells) + " |")
    lines += ["", "Test accuracy (%; mean ± std where more than one seed ran) by round (sparsity).", ""]
    if study["overlap"]:
        ks = list(study["overlap"])
        lines += ["| pair | " + " | ".join(f"round {k} ({100 * curves[metrics[0]][int(k)]['sparsity']:.1f}%)"
                                           for k in ks) + " |", "|---|" + "---:|" * len(ks)]
        for pair in study["overlap"][ks[0]]:
            lines.append(f"| {pair.replace('|', ' / ')} | "
                         + " | ".join(f"{100 * study['overlap'][k][pair]['overall']:.1f}%" for k in ks) + " |")
        lines += ["", "Shared kept connections, |A and B| / |A or B| (mean over the seeds both metrics ran).", ""]
    last = rounds - 1
    layers = list(curves[metrics[0]][last]["remaining_per_layer"])
    lines += ["| importance | " + " | ".join(layers) + " |", "|---|" + "---:|" * len(layers)]
    for metric in metrics:
        lines.append(f"| {metric} | " + " | ".join(f"{100 * curves[metric][last]['remaining_per_layer'][layer]:.2f}%"
                                                 for layer in layers) + " |")
    lines += ["", f"Weights remaining per layer after round {last} (mean over seeds).", ""]
    return "\n".join(lines)


def _plot(path: Path, study: dict, metrics: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for metric in metrics:
        rows = study["curves"][metric]
        ax.errorbar([100 * (1 - r["sparsity"]) for r in rows], [100 * r["test_accuracy"][0] for r in rows],
                    yerr=[100 * r["test_accuracy"][1] for r in rows], fmt="o-", ms=3, capsize=2,
                    label=f"{metric} ({rows[0]['seeds']} seed{'s' if rows[0]['seeds'] > 1 else ''})")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{study['setup']}: accuracy against sparsity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setups", nargs="*", help=f"some of {list(SETUPS)} (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="print the tna-prune calls, run nothing")
    parser.add_argument("--summarize", action="store_true", help="only write the studies of finished setups")
    args = parser.parse_args(argv)
    unknown = [s for s in args.setups if s not in SETUPS]
    if unknown:
        parser.error(f"unknown setup(s) {unknown}; choose from {list(SETUPS)}")
    os.chdir(ROOT)
    for setup in args.setups or SETUPS:
        if not args.summarize:
            for flags in calls(setup):
                print("tna-prune " + " ".join(flags), file=sys.stderr, flush=True)
                if not args.dry_run and subprocess.run(tna_prune() + flags).returncode != 0:
                    raise SystemExit(f"tna-prune {' '.join(flags)} failed")
        if not args.dry_run:
            summarize(setup)
            print(f"{setup}: {RESULTS / setup / 'study.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
