"""What a run writes at the end: report.json, report.md and PNG plots; and the comparison of several runs."""
import json
import statistics
from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def write_report(run_dir, report: dict, history: list) -> None:
    """``report.json``, ``report.md``, ``curves.png`` (loss and accuracy per epoch, base and twin) and
    ``spike_rates.png`` (per-layer firing rate of the base network on the test set) in ``run_dir``."""
    run_dir = Path(run_dir)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    sizes = report["model_bytes"]
    rows = [
        ("method", report["method"]), ("dataset", report["dataset"]), ("arch", report["arch"]),
        ("weights", report["weights"]), ("timesteps", report["timesteps"]), ("seed", report["seed"]),
        ("epochs", report["epochs"]),
        ("validation accuracy (base)", _percent(report["val_accuracy"]["base"])),
        ("test accuracy (base)", _percent(report["test_accuracy"]["base"])),
        ("test accuracy (twin)", _percent(report["test_accuracy"]["twin"])),
        ("spike rate (spikes / neuron / step)", f"{report['spike_rate']['mean']:.4f}"),
        ("spikes per sample", f"{report['spikes_per_sample']:.0f}"),
        ("synaptic operations per sample",
         f"{report['synops_per_sample']:.3g} AC + {report['macs_per_sample']:.3g} MAC"),
        ("energy per sample", f"{report['energy_uj_per_sample']:.4g} uJ (same network as ANN: "
                              f"{report['ann_macs_per_sample']:.3g} MAC, {report['ann_energy_uj_per_sample']:.4g} uJ)"),
        ("weights pruned", f"{100 * report['sparsity']:.1f}% ({report['nonzero_weights']} non-zero weights deployed)"),
        ("model size fp32", f"{sizes['fp32'] / 1024:.1f} KiB"),
        ("model size deployed",
         f"{sizes['deployed'] / 1024:.1f} KiB ({sizes['fp32'] / sizes['deployed']:.1f}x smaller)"),
        ("training time", f"{report['wall_time_s']:.1f} s on {report['device']} "
                          f"({report['epoch_time_s']:.1f} s per epoch)"),
    ]
    layer_rows = [f"| {name} | {rate:.4f} |" for name, rate in report["spike_rate"]["per_layer"].items()]
    (run_dir / "report.md").write_text(
        "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
        + "\n| layer | spike rate |\n|---|---|\n" + "\n".join(layer_rows) + "\n")

    plt = pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel(f"{report['method']} loss")
    ax_loss.legend()
    for network in ("base", "twin"):
        if history[0]["test_accuracy"][network] is None:
            continue
        ax_acc.plot(epochs, [r["train_accuracy"][network] for r in history], "--", label=f"{network} train")
        if history[0]["val_accuracy"][network] is not None:
            ax_acc.plot(epochs, [r["val_accuracy"][network] for r in history], ":", label=f"{network} validation")
        ax_acc.plot(epochs, [r["test_accuracy"][network] for r in history], label=f"{network} test")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    fig.suptitle(f"{report['method']} / {report['weights']} weights / {report['dataset']} / seed {report['seed']}")
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)

    per_layer = report["spike_rate"]["per_layer"]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(per_layer) + 2), 4))
    ax.bar(range(len(per_layer)), list(per_layer.values()))
    ax.set_xticks(range(len(per_layer)), list(per_layer), rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("spikes / neuron / timestep")
    ax.set_title("per-layer firing rate (base network, test set)")
    fig.tight_layout()
    fig.savefig(run_dir / "spike_rates.png", dpi=100)
    plt.close(fig)


# Settings that tell the runs of a comparison apart, besides method and weights, with how a label shows them.
_VARYING = (("tna_lambda", "lambda"), ("sparsity_weight", "beta"), ("twin_weights", "twin"),
            ("twin_width", "twin width"), ("train_fraction", "train fraction"))


def _setting(report: dict, key: str):
    """A run's value of one of ``_VARYING``, or None where it does not apply (lambda outside TNA, the twin's
    settings without a twin)."""
    if key == "tna_lambda" and report["method"] != "tna":
        return None
    if key.startswith("twin") and report.get("twin_weights") is None:
        return None
    return report["twin_weights"] if key == "twin_weights" else report["config"][key]


def _label(report: dict, varying: tuple) -> str:
    """"method (weights, and each varying setting of this run)", e.g. "tna (ternary, lambda 0.05)"."""
    parts = [report["weights"]]
    for key, shown in _VARYING:
        value = _setting(report, key)
        if key in varying and value is not None:
            parts.append(f"{shown} {value:g}" if isinstance(value, float) else f"{shown} {value}")
    return f"{report['method']} ({', '.join(parts)})"


def paired_difference(values: dict, reference: dict) -> dict:
    """Mean of the per-seed differences ``values[seed] - reference[seed]`` over the seeds both hold, with its
    two-sided 95% confidence interval by Student's t (n - 1 degrees of freedom): ``{"seeds", "mean", "low",
    "high"}`` (low and high are None with fewer than two seeds)."""
    from scipy import stats

    seeds = sorted(set(values) & set(reference))
    diffs = [values[s] - reference[s] for s in seeds]
    if not diffs:
        return {"seeds": [], "mean": None, "low": None, "high": None}
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return {"seeds": seeds, "mean": mean, "low": None, "high": None}
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return {"seeds": seeds, "mean": mean, "low": mean - half, "high": mean + half}


def _signed_points(diff: dict) -> str:
    if diff["mean"] is None:
        return "-"
    text = f"{100 * diff['mean']:+.2f}"
    if diff["low"] is not None:
        text += f" [{100 * diff['low']:+.2f}, {100 * diff['high']:+.2f}]"
    return text


def write_comparison(out_dir, reports: list) -> dict:
    """``comparison.json``, ``comparison.md`` and ``comparison.png`` in ``out_dir``.

    Runs are grouped by method, weight precision and whichever of lambda, beta, twin precision, twin width and
    training fraction differ between them. Per group: the mean and standard deviation over seeds of the base
    (and twin) validation and test accuracy, the training time per epoch, and the mean paired difference of
    test accuracy (same seed, same data order) against the reference group with its 95% confidence interval.
    The reference of a group is the ``baseline`` group of the same weight precision, or, without one, the
    first group of that precision (e.g. beta 0 in a sparsity sweep). Several lambdas add ``lambda_sweep.*``,
    several betas ``pareto.*``.
    """
    out_dir = Path(out_dir)
    varying = tuple(key for key, _ in _VARYING if len({_setting(r, key) for r in reports} - {None}) > 1)
    groups = {}
    for report in reports:
        groups.setdefault(_label(report, varying), []).append(report)

    def mean_of(values):
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else None

    summary = {}
    for label, members in groups.items():
        base = [r["test_accuracy"]["base"] for r in members]
        summary[label] = {
            "method": members[0]["method"], "weights": members[0]["weights"],
            **{key: _setting(members[0], key) for key in varying},
            "seeds": [r["seed"] for r in members],
            "val_mean": mean_of(r.get("val_accuracy", {}).get("base") for r in members),
            "base_mean": statistics.fmean(base), "base_std": statistics.stdev(base) if len(base) > 1 else 0.0,
            "twin_mean": mean_of(r["test_accuracy"]["twin"] for r in members),
            "spike_rate_mean": statistics.fmean(r["spike_rate"]["mean"] for r in members),
            "epoch_time_s": mean_of(r.get("epoch_time_s") for r in members),
            "sparsity_weight": members[0]["config"]["sparsity_weight"],
            "deployed_bytes": members[0]["model_bytes"]["deployed"],
        }
    for label, row in summary.items():
        same = [other for other in summary if summary[other]["weights"] == row["weights"]]
        reference = next((o for o in same if summary[o]["method"] == "baseline"), same[0])
        row["reference"] = reference
        row["difference"] = paired_difference(
            {r["seed"]: r["test_accuracy"]["base"] for r in groups[label]},
            {r["seed"]: r["test_accuracy"]["base"] for r in groups[reference]})
        reference_rate = summary[reference]["spike_rate_mean"]
        row["spike_rate_change"] = row["spike_rate_mean"] / reference_rate - 1 if reference_rate > 0 else 0.0
    (out_dir / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    if "sparsity_weight" in varying:
        _pareto(out_dir, reports)
    if "tna_lambda" in varying:
        _lambda_sweep(out_dir, reports)
    lines = ["| run | seeds | validation accuracy (mean) | base test accuracy (mean ± std) | difference vs "
             "reference, points (mean [95% CI]) | twin test accuracy (mean) | spike rate (vs reference) "
             "| training s / epoch | deployed size |", "|---|---|---|---|---|---|---|---|---|"]
    for label, row in summary.items():
        versus = ("(reference)" if row["reference"] == label
                  else f"{_signed_points(row['difference'])} vs {row['reference']}")
        time_text = "-" if row["epoch_time_s"] is None else f"{row['epoch_time_s']:.1f}"
        lines.append(f"| {label} | {len(row['seeds'])} | {_percent(row['val_mean'])} | {100 * row['base_mean']:.2f}% "
                     f"± {100 * row['base_std']:.2f} | {versus} | {_percent(row['twin_mean'])} | "
                     f"{row['spike_rate_mean']:.4f} ({100 * row['spike_rate_change']:+.1f}%) | {time_text} | "
                     f"{row['deployed_bytes'] / 1024:.1f} KiB |")
    excluded = [label for label, row in summary.items() if row["reference"] != label and row["difference"]["low"]
                is not None and (row["difference"]["low"] > 0 or row["difference"]["high"] < 0)]
    lines += ["", "Differences are in test accuracy points, paired by seed (same seed = same data order), with a "
              "95% Student-t interval over the per-seed differences. Intervals that exclude zero: "
              + (", ".join(excluded) if excluded else "none") + "."]
    (out_dir / "comparison.md").write_text("\n".join(lines) + "\n")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(summary) + 2), 4.5))
    labels = list(summary)
    ax.bar(range(len(labels)), [100 * summary[k]["base_mean"] for k in labels],
           yerr=[100 * summary[k]["base_std"] for k in labels], capsize=6)
    for i, label in enumerate(labels):
        ax.scatter([i] * len(groups[label]), [100 * r["test_accuracy"]["base"] for r in groups[label]],
                   color="black", s=12, zorder=3)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    low = min(100 * r["test_accuracy"]["base"] for r in reports)
    ax.set_ylim(max(0.0, low - 5), 100)
    ax.set_ylabel("base test accuracy (%), mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(out_dir / "comparison.png", dpi=100)
    plt.close(fig)
    return summary


def _lambda_sweep(out_dir, reports: list) -> None:
    """``lambda_sweep.json`` (per weight precision and lambda: mean and std over seeds of the base validation
    and test accuracy, and the lambda with the best mean validation accuracy) and ``lambda_sweep.png``."""
    sweep = {}
    for r in reports:
        if r["method"] == "tna":
            sweep.setdefault(r["weights"], {}).setdefault(r["config"]["tna_lambda"], []).append(r)
    table = {}
    for weights, by_lambda in sweep.items():
        rows = []
        for lam in sorted(by_lambda):
            members = by_lambda[lam]
            vals = [m["val_accuracy"]["base"] for m in members if m.get("val_accuracy", {}).get("base") is not None]
            tests = [m["test_accuracy"]["base"] for m in members]
            rows.append({"lambda": lam, "seeds": [m["seed"] for m in members],
                         "val_mean": statistics.fmean(vals) if vals else None,
                         "val_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                         "test_mean": statistics.fmean(tests),
                         "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0})
        chosen = [row for row in rows if row["val_mean"] is not None]
        table[weights] = {"runs": rows, "best_lambda_by_validation":
                          max(chosen, key=lambda row: row["val_mean"])["lambda"] if chosen else None}
    (Path(out_dir) / "lambda_sweep.json").write_text(json.dumps(table, indent=2) + "\n")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for weights, entry in table.items():
        rows = [row for row in entry["runs"] if row["lambda"] > 0]
        lams = [row["lambda"] for row in rows]
        if any(row["val_mean"] is not None for row in rows):
            ax.errorbar(lams, [100 * (row["val_mean"] or float("nan")) for row in rows],
                        yerr=[100 * row["val_std"] for row in rows], marker="o", capsize=4,
                        label=f"validation ({weights})")
        ax.errorbar(lams, [100 * row["test_mean"] for row in rows], yerr=[100 * row["test_std"] for row in rows],
                    marker="s", linestyle="--", capsize=4, label=f"test ({weights})")
    ax.set_xscale("log")
    ax.set_xlabel("TNA lambda (weight of the logit MSE)")
    ax.set_ylabel("base accuracy (%), mean ± std over seeds")
    ax.set_title("lambda sweep (lambda chosen on validation, never on test)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(out_dir) / "lambda_sweep.png", dpi=100)
    plt.close(fig)


def _pareto(out_dir, reports: list) -> None:
    """``pareto.json`` (one point per run: beta, spike rate, base test accuracy, energy) and ``pareto.png``
    (accuracy against spike rate, one series per method and weight precision, labelled with beta)."""
    points = [{"method": r["method"], "weights": r["weights"], "seed": r["seed"],
               "beta": r["config"]["sparsity_weight"],
               "spike_rate": r["spike_rate"]["mean"], "accuracy": r["test_accuracy"]["base"],
               "energy_uj_per_sample": r["energy_uj_per_sample"]} for r in reports]
    (Path(out_dir) / "pareto.json").write_text(json.dumps(points, indent=2) + "\n")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for series in sorted({(p["method"], p["weights"]) for p in points}):
        members = sorted((p for p in points if (p["method"], p["weights"]) == series), key=lambda p: p["spike_rate"])
        ax.plot([p["spike_rate"] for p in members], [100 * p["accuracy"] for p in members], "o-",
                label=f"{series[0]} ({series[1]})")
        for p in members:
            ax.annotate(f"{p['beta']:g}", (p["spike_rate"], 100 * p["accuracy"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("spikes / neuron / timestep (test set)")
    ax.set_ylabel("base test accuracy (%)")
    ax.set_title("accuracy against spike rate; labels: sparsity weight beta")
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(out_dir) / "pareto.png", dpi=100)
    plt.close(fig)
