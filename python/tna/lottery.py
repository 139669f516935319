"""Ticket searches of ``tna-prune``: Lottery Ticket Rewinding with layer-wise importance, resumable.

One search (one seed, one method and precision) in folder ``OUT``:

- ``OUT/round0/``: the dense network trained once (shared by every importance metric: same initialization,
  same data order). Its weights at the end of epoch ``rewind_epoch`` (0 = the initialization) are kept in
  ``OUT/rewind.pt`` (``{"format", "epoch", "base", "twin"}`` state dicts).
- ``OUT/<importance>/round<k>/`` for k = 1 .. rounds: ``masks.pt`` (``{"format", "importance", "round",
  "base": {layer: bool mask}, "twin": {..}}``; ``torch.load(weights_only=True)`` reads it), made from the
  previous round's trained weights by removing ``prune_rate`` of the kept weights with the lowest importance
  (see :mod:`tna.pruning`), then a training run from the rewind point with those masks, from epoch
  ``rewind_epoch`` to the end: the usual run files, and ``report.json`` with ``sparsity``,
  ``sparsity_per_layer``, the SynOps of the pruned network and ``ticket`` (metric, round, settings).
- Per metric ``accuracy_sparsity.png`` and ``layers.png`` (per-layer kept fraction against round: a collapsing
  layer is visible); across metrics ``overlap.json`` / ``overlap.png`` (per round and pair of metrics, the
  share of kept connections both keep, |A and B| / |A or B|, overall and per layer), ``accuracy_sparsity.png``
  with every metric, and ``summary.json`` / ``summary.md``.

Every step is written atomically and skipped when its output exists, and each training run continues from its
checkpoint, so a search killed anywhere and run again ends with the same masks and metrics.
"""
import itertools
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_atomic
from .config import ConfigError, TrainConfig
from .data import load_dataset
from .network import build_network, twin_weights
from .losses import uses_twin
from .pruning import IMPORTANCES, SCOPES, PrunedRun, full_masks, layer_sparsity, overlap, prunable_layers, prune_step
from .report import pyplot
from .trainer import Trainer


@dataclass
class PruneSettings:
    """The ticket search's own settings (the training run's are a TrainConfig)."""

    importance: tuple = ("magnitude",)
    rounds: int = 5
    prune_rate: float = 0.2
    rewind_epoch: int = 0
    scope: str = "global"
    first_last: bool = True
    prune_twin: bool = False

    def validate(self, config: TrainConfig) -> None:
        unknown = [m for m in self.importance if m not in IMPORTANCES]
        if unknown or not self.importance or len(set(self.importance)) != len(self.importance):
            raise ConfigError(f"--importance must be a comma list of distinct metrics from {IMPORTANCES}, got "
                              f"{list(self.importance)}")
        if self.rounds < 1 or not 0 < self.prune_rate < 1:
            raise ConfigError(f"--rounds must be >= 1 and --prune-rate in (0, 1), got {self.rounds} and "
                              f"{self.prune_rate}")
        if not 0 <= self.rewind_epoch < config.epochs:
            raise ConfigError(f"--rewind-epoch must be in [0, epochs - 1] = [0, {config.epochs - 1}], got "
                              f"{self.rewind_epoch}")
        if self.scope not in SCOPES:
            raise ConfigError(f"--prune-scope must be one of {SCOPES}, got {self.scope!r}")
        if self.prune_twin and not uses_twin(config.method):
            raise ConfigError(f"--prune-twin needs a method with a twin (tna, dml), not {config.method}")

    def to_dict(self) -> dict:
        return {**asdict(self), "importance": list(self.importance)}


class TicketSearch:
    """One search: ``run()`` trains round 0, then every metric's rounds, then writes the summaries."""

    def __init__(self, config: TrainConfig, settings: PruneSettings, out, *, progress: bool = True):
        settings.validate(config)
        self.config, self.settings, self.out, self.progress = config, settings, Path(out), progress
        data = load_dataset(config.dataset, config.data_dir, timesteps=config.timesteps, download=config.download,
                            val_fraction=config.val_fraction, train_fraction=config.train_fraction)
        self.networks = {"base": build_network(config, data, weights=config.weights, width=1.0)}
        if settings.prune_twin:
            self.networks["twin"] = build_network(config, data, weights=twin_weights(config),
                                                  width=config.twin_width)
        self.layers = {name: prunable_layers(model, settings.first_last) for name, model in self.networks.items()}

    def _say(self, text: str) -> None:
        print(f"tna-prune: {text}", file=sys.stderr, flush=True)

    def _keep_rewind(self, epochs_done: int, networks: dict) -> None:
        path = self.out / "rewind.pt"
        if epochs_done == self.settings.rewind_epoch and not path.exists():
            save_atomic({"format": CHECKPOINT_FORMAT, "epoch": epochs_done,
                         **{name: model.state_dict() for name, model in networks.items()}}, path)

    def _ticket(self, metric: str, k: int) -> dict:
        return {**self.settings.to_dict(), "importance": metric, "round": k}

    def _masks(self, metric: str, k: int) -> dict:
        """``{network: {layer: mask}}`` of round ``k``: read back, or made from round ``k - 1`` and saved."""
        path = self.out / metric / f"round{k}" / "masks.pt"
        if path.is_file():
            state = load_checkpoint(path, "mask file")
            return {name: state[name] for name in self.layers}
        previous = self.out / ("round0" if k == 1 else f"{metric}/round{k - 1}")
        trained = load_checkpoint(previous / "checkpoint.pt")
        old = (load_checkpoint(previous / "masks.pt", "mask file") if k > 1
               else {name: full_masks(layers) for name, layers in self.layers.items()})
        masks = {}
        for name, layers in self.layers.items():
            weights = {layer: trained[name][f"{layer}.weight"] for layer in layers}
            masks[name] = prune_step(weights, old[name], metric, self.settings.prune_rate, self.settings.scope)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomic({"format": CHECKPOINT_FORMAT, "importance": metric, "round": k, **masks}, path)
        return masks

    def _train(self, run_dir: Path, pruned: PrunedRun) -> dict:
        if (run_dir / "report.json").is_file():
            return json.loads((run_dir / "report.json").read_text())
        return Trainer(self.config, run_dir, progress=self.progress, pruned=pruned).run()

    def run(self) -> dict:
        """Train every round that is not finished; returns the summary (also in ``summary.json``)."""
        layer_names = list(self.layers["base"])
        self._say(f"round 0 (dense) -> {self.out / 'round0'}")
        reports = {"dense": self._train(self.out / "round0", PrunedRun(layer_names, on_epoch_end=self._keep_rewind,
                                                                         ticket=self._ticket("dense", 0)))}
        rewind = load_checkpoint(self.out / "rewind.pt", "rewind point")
        start = {name: rewind[name] for name in ("base", "twin") if name in rewind}
        for metric in self.settings.importance:
            for k in range(1, self.settings.rounds + 1):
                masks = self._masks(metric, k)
                run_dir = self.out / metric / f"round{k}"
                removed, _ = layer_sparsity(masks["base"], self.layers["base"])
                self._say(f"{metric}, round {k}/{self.settings.rounds} ({100 * removed:.1f}% of the weights "
                          f"pruned) -> {run_dir}")
                report = self._train(run_dir, PrunedRun(layer_names, masks, start, self.settings.rewind_epoch,
                                                        ticket=self._ticket(metric, k)))
                reports[(metric, k)] = report
        return write_summary(self.out, self.settings, reports, self._all_masks())

    def _all_masks(self) -> dict:
        return {(metric, k): load_checkpoint(self.out / metric / f"round{k}" / "masks.pt", "mask file")["base"]
                for metric in self.settings.importance for k in range(1, self.settings.rounds + 1)}


def _row(report: dict) -> dict:
    return {"sparsity": report["sparsity"], "sparsity_per_layer": report["sparsity_per_layer"],
            "val_accuracy": report["val_accuracy"]["base"], "test_accuracy": report["test_accuracy"]["base"],
            "synops_per_sample": report["synops_per_sample"], "energy_uj_per_sample": report["energy_uj_per_sample"],
            "nonzero_weights": report["nonzero_weights"]}


def write_summary(out, settings: PruneSettings, reports: dict, masks: dict) -> dict:
    """``summary.{json,md}``, ``overlap.{json,png}`` and the plots of a finished search in ``out``. ``reports``:
    ``{"dense": report, (metric, round): report}``; ``masks``: ``{(metric, round): base masks}``."""
    out = Path(out)
    dense = _row(reports["dense"])
    curves = {metric: [dense] + [_row(reports[(metric, k)]) for k in range(1, settings.rounds + 1)]
              for metric in settings.importance}
    pairs = list(itertools.combinations(settings.importance, 2))
    overlaps = {str(k): {f"{a}|{b}": overlap(masks[(a, k)], masks[(b, k)]) for a, b in pairs}
                for k in range(1, settings.rounds + 1)}
    summary = {"settings": settings.to_dict(), "curves": curves}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "overlap.json").write_text(json.dumps(
        {"rounds": {k: {"sparsity": {m: curves[m][int(k)]["sparsity"] for m in settings.importance},
                        "pairs": value} for k, value in overlaps.items()}}, indent=2) + "\n")
    lines = ["| importance | round | pruned | non-zero weights | val accuracy | test accuracy | SynOps / sample |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for metric, rows in curves.items():
        for k, row in enumerate(rows):
            val = "-" if row["val_accuracy"] is None else f"{100 * row['val_accuracy']:.2f}%"
            lines.append(f"| {metric} | {k} | {100 * row['sparsity']:.1f}% | {row['nonzero_weights']} | {val} | "
                         f"{100 * row['test_accuracy']:.2f}% | {row['synops_per_sample']:.3g} |")
    if pairs:
        lines += ["", "Shared kept connections (|A and B| / |A or B|) by round:", "",
                  "| pair | " + " | ".join(f"round {k}" for k in overlaps) + " |",
                  "|---|" + "---:|" * len(overlaps)]
        for a, b in pairs:
            lines.append(f"| {a} / {b} | "
                         + " | ".join(f"{100 * overlaps[k][f'{a}|{b}']['overall']:.1f}%" for k in overlaps) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    _plots(out, curves, overlaps, pairs)
    return summary


def _plots(out: Path, curves: dict, overlaps: dict, pairs: list) -> None:
    plt = pyplot()
    def accuracy_axes(ax):
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("weights remaining (%, log scale)")
        ax.set_ylabel("base test accuracy (%)")

    everything, ax_all = plt.subplots(figsize=(6, 4.5))
    for metric, rows in curves.items():
        remaining = [100 * (1 - r["sparsity"]) for r in rows]
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.plot(remaining, [100 * r["test_accuracy"] for r in rows], "o-", label="test")
        if rows[0]["val_accuracy"] is not None:
            ax.plot(remaining, [100 * r["val_accuracy"] for r in rows], "s--", label="validation")
        accuracy_axes(ax)
        ax.set_title(f"{metric}: accuracy against sparsity")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / metric / "accuracy_sparsity.png", dpi=100)
        plt.close(fig)
        ax_all.plot(remaining, [100 * r["test_accuracy"] for r in rows], "o-", label=metric)

        fig, ax = plt.subplots(figsize=(6, 4.5))
        for layer in rows[0]["sparsity_per_layer"]:
            ax.plot(range(len(rows)), [100 * (1 - r["sparsity_per_layer"][layer]) for r in rows], "o-", label=layer)
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)))
        ax.set_xlabel("round")
        ax.set_ylabel("weights remaining in the layer (%, log scale)")
        ax.set_title(f"{metric}: per-layer remaining weights")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / metric / "layers.png", dpi=100)
        plt.close(fig)
    accuracy_axes(ax_all)
    ax_all.set_title("accuracy against sparsity, every importance metric")
    ax_all.legend()
    everything.tight_layout()
    everything.savefig(out / "accuracy_sparsity.png", dpi=100)
    plt.close(everything)
    if not pairs:
        return
    rounds = list(overlaps)
    grid = torch.tensor([[overlaps[k][f"{a}|{b}"]["overall"] for k in rounds] for a, b in pairs])
    fig, ax = plt.subplots(figsize=(max(5.0, 2.5 + 0.7 * len(rounds)), max(3.0, 1.5 + 0.45 * len(pairs))))
    image = ax.imshow(100 * grid.numpy(), vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for i, j in itertools.product(range(len(pairs)), range(len(rounds))):
        ax.text(j, i, f"{100 * grid[i, j]:.0f}", ha="center", va="center", fontsize=7,
                color="white" if grid[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(rounds)), [f"round {k}" for k in rounds], rotation=45, fontsize=7)
    ax.set_yticks(range(len(pairs)), [f"{a} / {b}" for a, b in pairs], fontsize=7)
    ax.set_title("kept connections two metrics share (%)", fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "overlap.png", dpi=100)
    plt.close(fig)


__all__ = ["PruneSettings", "TicketSearch", "write_summary"]
