"""The explanation study of the README (issue 17, after Vandersmissen & Oramas), resumable.

    python benchmarks/explain_study.py                       # every setup, one step at a time
    python benchmarks/explain_study.py digits-canvas --dry-run
    python benchmarks/explain_study.py --summarize           # only rewrite study.md

Per dataset (``digits-canvas``: all 359 test images; ``mnist5k-canvas``: 500 of its 1000) and weight precision
(fp, ternary): train the convnet with the dataset's defaults (TNA, seed 0) into
``benchmarks/results/tna_explain/<dataset>/tna-<weights>-seed0``, export it to ``model-<weights>.pt`` and run
``tna-explain`` on it into ``explain-<weights>/`` with every method and ``STUDY_METRICS``. Each step is skipped
when its output exists and continued where it stopped otherwise (``tna-train --resume``; ``tna-explain`` keeps
its finished units), so killing this script loses little. ``study.md`` in the results folder puts the fp and
ternary networks side by side: accuracy, the metric table with the random-map and box references, alpha per
metric, the randomization check and the completeness gap.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path("benchmarks") / "results" / "tna_explain"  # relative to ROOT: the outputs name no machine's paths
SETUPS = {
    "digits-canvas": {"n": 359, "rise_masks": 5000},
    "mnist5k-canvas": {"n": 500, "rise_masks": 2000},
}
WEIGHTS = ("fp", "ternary")
# the paper's metrics, deletion and insertion with the zero and the blur baselines (the noise baselines and the 9x9
# region orders are left to tna-explain's default run: each curve metric costs 101 forward passes per map)
STUDY_METRICS = ("deletion_zero", "deletion_blur", "insertion_zero", "insertion_blur", "average_drop",
                 "average_drop_binary", "increase_confidence", "increase_confidence_binary", "pointing_game", "iou",
                 "relevance_mass", "sparsity_gini")


def _cli(main: str) -> list:
    return [sys.executable, "-c", f"import sys; from tna.cli import {main}; sys.exit({main}())"]


def steps(dataset: str, weights: str) -> list:
    """The commands still to run for one setup, in order (empty when it is complete)."""
    folder = RESULTS / dataset
    run = folder / f"tna-{weights}-seed0"
    model = folder / f"model-{weights}.pt"
    explain = folder / f"explain-{weights}"
    todo = []
    report = ROOT / run / "report.json"
    if (ROOT / run / "config.json").is_file():
        if not report.is_file():
            todo.append(_cli("train_main") + ["--resume", str(run), "--no-progress"])
    else:
        todo.append(_cli("train_main") + ["--dataset", dataset, "--weights", weights, "--seeds", "0", "--out",
                                          str(folder), "--no-progress"])
    if not (ROOT / model).is_file():
        todo.append(_cli("export_main") + [str(run), "--out", str(model)])
    if not (ROOT / explain / "report.md").is_file():
        plan = SETUPS[dataset]
        todo.append(_cli("explain_main") + [str(model), "--n", str(plan["n"]), "--metrics", ",".join(STUDY_METRICS),
                                            "--rise-masks", str(plan["rise_masks"]), "--out", str(explain),
                                            "--no-progress"])
    return todo


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def summarize(dataset: str) -> None:
    """Write ``study.md`` for ``dataset`` from the finished ``explain-<weights>/explanations.json``."""
    folder = ROOT / RESULTS / dataset
    results = {w: json.loads((folder / f"explain-{w}" / "explanations.json").read_text())
               for w in WEIGHTS if (folder / f"explain-{w}" / "explanations.json").is_file()}
    if not results:
        return
    lines = [f"# Explanation study on {dataset}", ""]
    for weights, result in results.items():
        sanity = result["sanity"]
        methods = list(result["metrics"])
        names = list(next(iter(result["metrics"].values())))
        lines += [f"## {weights} weights: {result['n']} test images, accuracy {sanity['accuracy']:.3f}", "",
                  "Mean over images, every metric oriented so that higher is better (deletion and average drop as "
                  "1 - raw); `random` and `box` are the reference explanations.", "",
                  _row(["metric", *methods]), _row(["---"] * (len(methods) + 1))]
        for name in names:
            lines.append(_row([name, *(f"{result['metrics'][m][name]['mean']:.3f}" for m in methods)]))
        alpha = result["coherency"]["alpha"]
        lines += ["", "Krippendorff's alpha (ordinal, on the methods' ranks per image): " + ", ".join(
            f"{name} {'n/a' if alpha[name] is None else format(alpha[name], '.3f')}" for name in names) + ".", ""]
        randomization = sanity["randomization"]
        lines += ["Cascading randomization, Spearman with the trained maps (layers randomized top first, "
                  "cumulatively):", "", _row(["method", *randomization["layers"]]),
                  _row(["---"] * (len(randomization["layers"]) + 1))]
        lines += [_row([m, *(f"{v:.2f}" for v in curve)]) for m, curve in randomization["spearman"].items()]
        gap = sanity.get("completeness_gap")
        if gap:
            lines += ["", f"Integrated Gradients' relative completeness gap: mean {gap['mean']:.3f} "
                          f"(std {gap['std']:.3f}).", ""]
        rates = ", ".join(f"{k} {v:.3f}" for k, v in sanity["firing_rates"].items())
        lines += [f"Firing rates: {rates}.", ""]
    (folder / "study.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("setups", nargs="*", help=f"datasets to run (default all: {', '.join(SETUPS)})")
    p.add_argument("--dry-run", action="store_true", help="print the commands still to run")
    p.add_argument("--summarize", action="store_true", help="only rewrite the study tables")
    args = p.parse_args(argv)
    chosen = args.setups or list(SETUPS)
    unknown = [s for s in chosen if s not in SETUPS]
    if unknown:
        print(f"unknown setup(s) {', '.join(unknown)}: choose from {', '.join(SETUPS)}", file=sys.stderr)
        return 2
    for dataset in chosen:
        for weights in WEIGHTS:
            for command in [] if args.summarize else steps(dataset, weights):
                print(" ".join(command[3:]) if args.dry_run else f"{dataset} {weights}: {' '.join(command[3:])}",
                      flush=True)
                if not args.dry_run and subprocess.run(command, cwd=ROOT).returncode != 0:
                    print(f"{dataset} {weights}: that step failed; fix it and run this script again", file=sys.stderr)
                    return 1
        if not args.dry_run:
            summarize(dataset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
