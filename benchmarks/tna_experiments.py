"""The TNA experiments of the README, resumable: lambda sweep, method comparison, low-data, ablations, sparsity.

    python benchmarks/tna_experiments.py lambda              # first: chooses lambda on validation accuracy
    python benchmarks/tna_experiments.py compare lowdata ablation sparsity
    python benchmarks/tna_experiments.py all --jobs 2        # everything, two runs at a time
    python benchmarks/tna_experiments.py compare --dry-run   # list the tna-train calls, run nothing

Every group is a list of ``tna-train`` calls, one per (setting, seed), each writing into a folder under
``benchmarks/results/``. ``tna-train`` skips a run that has its ``report.json`` and continues one that has a
``checkpoint.pt``, so killing this script loses at most the epochs since the last checkpoint, and running it
again continues. A kd student is in the same call as its teacher (the fp baseline of the same seed), so the
teacher's checkpoint is there when the student starts. When a group's calls are done, one more call per
folder with all its seeds (every run then already finished) writes the folder's ``comparison.*``. ``--jobs N``
runs N calls at a time with the CPU cores shared among them; a run's time per epoch is then that of its share.

The lambda group writes ``tna_lambda/chosen.json``: the lambda with the best mean validation accuracy over
both datasets (means over seeds, then over datasets; a finer step around it is added first when it is not at
an end of the grid). The other groups train TNA with that lambda, so they need the lambda group first.
"""
import argparse
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path("benchmarks") / "results"  # relative to ROOT, so the configs written name no machine's paths
DATASETS = ("digits", "mnist5k")
LAMBDAS = (0.005, 0.05, 0.5, 2.0)
SWEEP_SEEDS = (0, 1, 2)
SEEDS = (0, 1, 2, 3, 4)
CHOSEN = RESULTS / "tna_lambda" / "chosen.json"


def tna_train() -> list:
    return [sys.executable, "-c", "import sys; from tna.cli import train_main; sys.exit(train_main())"]


def call(out: Path, seeds, *flags) -> list:
    """The tna-train arguments of one call."""
    return ["--out", str(out), "--seeds", ",".join(str(s) for s in seeds), "--no-progress", *flags]


def run_calls(calls: list, jobs: int, dry_run: bool) -> None:
    """Run tna-train ``calls`` (argument lists), ``jobs`` at a time; stop at the first failure."""
    if dry_run:
        for args in calls:
            print("tna-train " + " ".join(args))
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    def one(args):
        print("tna-train " + " ".join(args), file=sys.stderr, flush=True)
        result = subprocess.run(tna_train() + args, env=env)
        if result.returncode != 0:
            raise SystemExit(f"tna-train {' '.join(args)} failed with exit status {result.returncode}")

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, calls))


def per_seed(out: Path, seeds, *flags) -> list:
    """One call per seed, then the call over every seed that writes the folder's comparison."""
    return [call(out, [seed], *flags) for seed in seeds], [call(out, seeds, *flags)]


def finer(grid: list, best: float) -> list:
    """The geometric midpoints between ``best`` and its neighbours in the sorted ``grid`` (none at an end)."""
    i = grid.index(best)
    if i in (0, len(grid) - 1):
        return []
    return [round(math.sqrt(best * grid[i - 1]), 4), round(math.sqrt(best * grid[i + 1]), 4)]


def best_lambda(grid: list) -> float:
    """The lambda of ``grid`` with the best validation accuracy, averaged over seeds and then over datasets."""
    means = {}
    for dataset in DATASETS:
        for lam in grid:
            vals = []
            for seed in SWEEP_SEEDS:
                report = RESULTS / "tna_lambda" / dataset / f"tna-ternary-lambda{lam:g}-seed{seed}" / "report.json"
                vals.append(json.loads(report.read_text())["val_accuracy"]["base"])
            means.setdefault(lam, []).append(sum(vals) / len(vals))
    return max(grid, key=lambda lam: sum(means[lam]) / len(means[lam]))


def lambda_group(jobs: int, dry_run: bool) -> None:
    def sweep(grid):
        flags = ("--method", "tna", "--weights", "ternary", "--tna-lambda", ",".join(f"{v:g}" for v in grid))
        calls, summaries = [], []
        for dataset in DATASETS:
            each, summary = per_seed(RESULTS / "tna_lambda" / dataset, SWEEP_SEEDS, "--dataset", dataset, *flags)
            calls += each
            summaries += summary
        run_calls(calls, jobs, dry_run)
        run_calls(summaries, 1, dry_run)

    grid = sorted(LAMBDAS)
    sweep(grid)
    if dry_run:
        return
    extra = finer(grid, best_lambda(grid))
    if extra:
        grid = sorted(grid + extra)
        sweep(grid)
    chosen = best_lambda(grid)
    CHOSEN.write_text(json.dumps({"grid": grid, "lambda": chosen, "seeds": list(SWEEP_SEEDS),
                                  "chosen_by": "best mean validation accuracy of the ternary TNA base network, "
                                               "mean over seeds, then over digits and mnist5k"}, indent=2) + "\n")
    print(f"lambda chosen on validation: {chosen:g} ({CHOSEN})", file=sys.stderr)


def chosen_lambda(dry_run: bool) -> str:
    if not CHOSEN.is_file():
        if dry_run:
            return "LAMBDA"
        raise SystemExit(f"{CHOSEN} is missing: run the lambda group first")
    return f"{json.loads(CHOSEN.read_text())['lambda']:g}"


def compare_group(jobs: int, dry_run: bool) -> None:
    lam = chosen_lambda(dry_run)
    calls, summaries = [], []
    for dataset in DATASETS:
        each, summary = per_seed(RESULTS / "tna_compare" / dataset, SEEDS, "--dataset", dataset, "--method",
                                 "baseline,kd,dml,tna", "--weights", "fp,ternary", "--tna-lambda", lam)
        calls += each
        summaries += summary
    run_calls(calls, jobs, dry_run)
    run_calls(summaries, 1, dry_run)


def lowdata_group(jobs: int, dry_run: bool) -> None:
    lam = chosen_lambda(dry_run)
    calls, summaries = [], []
    for fraction in ("0.1", "0.25"):
        each, summary = per_seed(RESULTS / "tna_lowdata" / f"mnist5k-train{fraction}", SEEDS, "--dataset",
                                 "mnist5k", "--method", "baseline,tna", "--weights", "ternary", "--tna-lambda", lam,
                                 "--train-fraction", fraction)
        calls += each
        summaries += summary
    run_calls(calls, jobs, dry_run)
    run_calls(summaries, 1, dry_run)


ABLATIONS = {
    "default": (),
    "twin-fp": ("--twin-weights", "fp"),
    "twin-width2": ("--twin-width", "2"),
    "lambda0": ("--tna-lambda", "0"),
}


def ablation_group(jobs: int, dry_run: bool) -> None:
    lam = chosen_lambda(dry_run)
    root = RESULTS / "tna_ablation" / "mnist5k"
    calls = []
    for name, flags in ABLATIONS.items():
        lam_flags = () if "--tna-lambda" in flags else ("--tna-lambda", lam)
        calls += [call(root / name, [seed], "--dataset", "mnist5k", "--method", "tna", "--weights", "ternary",
                       *lam_flags, *flags) for seed in SWEEP_SEEDS]
    run_calls(calls, jobs, dry_run)
    if dry_run:
        return
    from tna.report import write_comparison

    reports = [json.loads((root / name / f"tna-ternary-seed{seed}" / "report.json").read_text())
               for name in ABLATIONS for seed in SWEEP_SEEDS]
    write_comparison(root, reports)


def sparsity_group(jobs: int, dry_run: bool) -> None:
    lam = chosen_lambda(dry_run)
    each, summary = per_seed(RESULTS / "tna_sparsity" / "mnist5k", SEEDS, "--dataset", "mnist5k", "--method", "tna",
                             "--weights", "ternary", "--tna-lambda", lam, "--sparsity-weight", "0,1,2,4")
    run_calls(each, jobs, dry_run)
    run_calls(summary, 1, dry_run)


GROUPS = {"lambda": lambda_group, "compare": compare_group, "lowdata": lowdata_group, "ablation": ablation_group,
          "sparsity": sparsity_group}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/tna_experiments.py", description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="+", choices=[*GROUPS, "all"], help="the experiment groups to run, in order")
    parser.add_argument("--jobs", type=int, default=1, help="tna-train calls at a time (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the tna-train calls instead of running them")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    os.chdir(ROOT)
    for group in GROUPS if "all" in args.groups else args.groups:
        GROUPS[group](args.jobs, args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
