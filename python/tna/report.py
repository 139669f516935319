"""What a run writes at the end: report.json, report.md and PNG plots; and the comparison of several runs."""
import json
import statistics
from pathlib import Path


def _pyplot():
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
        ("test accuracy (base)", _percent(report["test_accuracy"]["base"])),
        ("test accuracy (twin)", _percent(report["test_accuracy"]["twin"])),
        ("spike rate (spikes / neuron / step)", f"{report['spike_rate']['mean']:.4f}"),
        ("spikes per sample", f"{report['spikes_per_sample']:.0f}"),
        ("synaptic operations per sample",
         f"{report['synops_per_sample']:.3g} AC + {report['macs_per_sample']:.3g} MAC"),
        ("energy per sample", f"{report['energy_uj_per_sample']:.4g} uJ (same network as ANN: "
                              f"{report['ann_macs_per_sample']:.3g} MAC, {report['ann_energy_uj_per_sample']:.4g} uJ)"),
        ("model size fp32", f"{sizes['fp32'] / 1024:.1f} KiB"),
        ("model size deployed",
         f"{sizes['deployed'] / 1024:.1f} KiB ({sizes['fp32'] / sizes['deployed']:.1f}x smaller)"),
        ("training time", f"{report['wall_time_s']:.1f} s on {report['device']}"),
    ]
    layer_rows = [f"| {name} | {rate:.4f} |" for name, rate in report["spike_rate"]["per_layer"].items()]
    (run_dir / "report.md").write_text(
        "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
        + "\n| layer | spike rate |\n|---|---|\n" + "\n".join(layer_rows) + "\n")

    plt = _pyplot()
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


def _label(report: dict) -> str:
    beta = report.get("sparsity", {}).get("weight", 0.0)
    return f"{report['method']} ({report['weights']}" + (f", beta {beta:g})" if beta else ")")


def write_comparison(out_dir, reports: list) -> dict:
    """``comparison.json``, ``comparison.md`` and ``comparison.png`` in ``out_dir``: per method and weight
    precision, the mean and standard deviation over seeds of the base (and twin) test accuracy."""
    out_dir = Path(out_dir)
    groups = {}
    for report in reports:
        groups.setdefault(_label(report), []).append(report)
    summary = {}
    for label, members in groups.items():
        base = [r["test_accuracy"]["base"] for r in members]
        twins = [r["test_accuracy"]["twin"] for r in members if r["test_accuracy"]["twin"] is not None]
        summary[label] = {
            "method": members[0]["method"], "weights": members[0]["weights"],
            "seeds": [r["seed"] for r in members],
            "base_mean": statistics.fmean(base), "base_std": statistics.stdev(base) if len(base) > 1 else 0.0,
            "twin_mean": statistics.fmean(twins) if twins else None,
            "spike_rate_mean": statistics.fmean(r["spike_rate"]["mean"] for r in members),
            "sparsity_weight": members[0].get("sparsity", {}).get("weight", 0.0),
            "deployed_bytes": members[0]["model_bytes"]["deployed"],
        }
    (out_dir / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    if len({r.get("sparsity", {}).get("weight", 0.0) for r in reports}) > 1:
        _pareto(out_dir, reports)
    lines = ["| method | weights | seeds | base test accuracy (mean ± std) | twin test accuracy (mean) "
             "| spike rate | deployed size |", "|---|---|---|---|---|---|---|"]
    for row in summary.values():
        lines.append(f"| {row['method']} | {row['weights']} | {len(row['seeds'])} | "
                     f"{100 * row['base_mean']:.2f}% ± {100 * row['base_std']:.2f} | {_percent(row['twin_mean'])} | "
                     f"{row['spike_rate_mean']:.4f} | {row['deployed_bytes'] / 1024:.1f} KiB |")
    (out_dir / "comparison.md").write_text("\n".join(lines) + "\n")

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(summary) + 2), 4))
    labels = list(summary)
    ax.bar(range(len(labels)), [100 * summary[k]["base_mean"] for k in labels],
           yerr=[100 * summary[k]["base_std"] for k in labels], capsize=6)
    for i, label in enumerate(labels):
        ax.scatter([i] * len(groups[label]), [100 * r["test_accuracy"]["base"] for r in groups[label]],
                   color="black", s=12, zorder=3)
    ax.set_xticks(range(len(labels)), labels)
    low = min(100 * r["test_accuracy"]["base"] for r in reports)
    ax.set_ylim(max(0.0, low - 5), 100)
    ax.set_ylabel("base test accuracy (%), mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(out_dir / "comparison.png", dpi=100)
    plt.close(fig)
    return summary


def _pareto(out_dir, reports: list) -> None:
    """``pareto.json`` (one point per run: beta, spike rate, base test accuracy, energy) and ``pareto.png``
    (accuracy against spike rate, one series per method and weight precision, labelled with beta)."""
    points = [{"method": r["method"], "weights": r["weights"], "seed": r["seed"], "beta": r["sparsity"]["weight"],
               "spike_rate": r["spike_rate"]["mean"], "accuracy": r["test_accuracy"]["base"],
               "energy_uj_per_sample": r["energy_uj_per_sample"]} for r in reports]
    (Path(out_dir) / "pareto.json").write_text(json.dumps(points, indent=2) + "\n")
    plt = _pyplot()
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
