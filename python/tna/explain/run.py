"""``tna-explain``: explain a trained network's test images with every method, grade the maps with every metric,
run the sanity checks and the coherency analysis, and write the results to one folder.

The work is cut into units (a method's maps for a chunk of images, their scores, a manipulation, the
randomization check), each written to ``OUT/cache/`` as soon as it is done, so a killed run resumes where it
stopped: call it again with the same arguments. ``OUT/settings.json`` records the arguments, and a folder that
holds another run's settings is refused.

Conventions: images are explained for their true label; "zero" (the baseline of Integrated Gradients, occlusion,
RISE, deletion "zero" and the average drop) means a black image, ``-mean / std`` in the model's input space.
Two reference explanations join the methods: ``random`` (a uniform random map) and, where the data has boxes,
``box`` (the object's box itself).
"""
import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import CheckpointError, load_checkpoint, save_atomic
from ..config import ConfigError
from ..data import DataSplits, load_dataset
from ..deploy import deployed_run, load_deployed
from ..files import write_atomically
from . import coherency, metrics
from .methods import METHODS, MethodSettings, attribute, to_maps
from .sanity import cascading_randomization, completeness_gaps, liveness, plot_randomization, weight_layers

REFERENCES = ("random", "box")
MANIPULATED = ("integrated_gradients", "smoothgrad")
MANIPULATIONS = {"blur": metrics.blur_map, "clip99": metrics.clip_map, "binary": metrics.binarize_map}
EXAMPLES = 6


@dataclass(frozen=True)
class ExplainSettings:
    """What one ``tna-explain`` run computes. ``methods``: resolved names; ``metrics``: the comma list asked for
    ("all" = every metric the data allows: the box metrics only where it has boxes)."""

    model: str
    dataset: Optional[str]  # None: the one the model was trained on
    n: int
    methods: list
    metrics: str
    seed: int
    chunk: int
    randomization_n: int
    method_settings: MethodSettings = field(default_factory=MethodSettings)


def load_model(path) -> tuple:
    """``(model, config)`` from a ``tna-export`` file or a training run's folder; CheckpointError otherwise."""
    path = Path(path)
    if path.is_dir():
        if not (path / "checkpoint.pt").exists():
            raise CheckpointError(f"{path} is a folder without checkpoint.pt: give a tna-train run folder or a "
                                  "model file written by tna-export")
        model, config, _ = deployed_run(path)
        return model, config
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: give a model file written by tna-export or a run folder")
    return load_deployed(path)


def resolve(names: str, known: tuple, what: str) -> list:
    """The comma list ``names`` ("all" or empty: every one of ``known``), checked against ``known``."""
    if not names or names == "all":
        return list(known)
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ConfigError(f"unknown {what} {', '.join(map(repr, unknown))}: choose from {', '.join(known)}")
    return chosen


def test_images(data: DataSplits, n: int, seed: int) -> tuple:
    """``(indices [n], images [n, C, H, W] normalized, labels [n], boxes [n, 4] or None, black [C])``: ``n`` test
    images drawn by ``seed`` (a seeded permutation of the test split, so a larger n extends a smaller one)."""
    if data.is_events:
        raise ConfigError(f"{data.name} holds event recordings; tna-explain explains image models (the methods "
                          "of tna.explain.methods also take event frames from Python)")
    total = len(data.test_y)
    if not 1 <= n <= total:
        raise ConfigError(f"--n must be between 1 and the {total} test images of {data.name}, got {n}")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
    mean = torch.tensor(data.mean).view(-1, 1, 1)
    std = torch.tensor(data.std).view(-1, 1, 1)
    images = (data.test_x[order].float() - mean) / std
    boxes = None if data.test_boxes is None else data.test_boxes[order]
    return order, images, data.test_y[order], boxes, (-mean / std).flatten()


class Cache:
    """The finished units of a run, one ``torch.save`` file each under ``OUT/cache``, written atomically."""

    def __init__(self, out: Path):
        self.folder = out / "cache"
        self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, key: str, compute):
        path = self.folder / f"{key}.pt"
        if path.exists():
            return torch.load(path, weights_only=False)
        value = compute()
        save_atomic(value, path)
        return value


def _check_settings(out: Path, settings: ExplainSettings) -> None:
    path = out / "settings.json"
    text = json.dumps(asdict(settings), indent=2, sort_keys=True)
    if path.exists():
        if path.read_text() != text:
            raise ConfigError(f"{out} holds a tna-explain run with other settings (see {path}); use another --out "
                              "or delete that folder")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda f: f.write(text.encode()))


def _summary(values: Tensor) -> dict:
    values = values.double()
    return {"mean": float(values.mean()), "std": float(values.std(correction=0)), "n": len(values)}


def run_explain(settings: ExplainSettings, out, progress=None) -> dict:
    """Run everything ``settings`` asks for into the folder ``out``; returns the content of explanations.json.
    ``progress``: an optional callable ``progress(total)`` returning an object with ``update()`` and ``close()``
    (a tqdm bar)."""
    out = Path(out)
    model, config = load_model(settings.model)
    dataset = settings.dataset or config.dataset
    data = load_dataset(dataset, config.data_dir, timesteps=config.timesteps)
    if dataset != config.dataset and (
            data.input_shape, data.num_classes) != _shape_of(load_dataset(config.dataset, config.data_dir)):
        raise ConfigError(f"{settings.model} was trained on {config.dataset}, whose images or classes differ from "
                          f"{dataset}'s")
    indices, images, labels, boxes, black = test_images(data, settings.n, settings.seed)
    metric_names = metric_list(settings.metrics, has_boxes=boxes is not None, dataset=data.name)
    _check_settings(out, settings)
    cache = Cache(out)
    zero = metrics.constant_baseline(images, black.tolist())
    methods = settings.methods + [name for name in REFERENCES if name != "box" or boxes is not None]
    chunks = [slice(start, start + settings.chunk) for start in range(0, settings.n, settings.chunk)]
    units = (len(methods) * len(chunks) * 2 + len(MANIPULATIONS) * len(chunks) * len(MANIPULATED)
             + len(settings.methods) * (1 + len(weight_layers(model))))
    bar = progress(units) if progress is not None else None
    tick = bar.update if bar is not None else (lambda: None)

    sanity = liveness(model, images, zero)
    with torch.no_grad():
        sanity["accuracy"] = float((model(images).argmax(1) == labels).float().mean())

    def maps_of(method: str, part: slice, index: int) -> dict:
        generator = torch.Generator().manual_seed(settings.seed * 1000 + index)
        x, y, base = images[part], labels[part], zero[part]
        if method == "random":
            return {"maps": metrics.random_maps(tuple(x.shape[:1]) + tuple(x.shape[-2:]), generator)}
        if method == "box":
            return {"maps": metrics.box_maps(boxes[part], *x.shape[-2:])}
        raw = attribute(method, model, x, y, base, settings.method_settings, generator)
        result = {"maps": to_maps(raw)}
        if method == "integrated_gradients":
            result["completeness_gap"] = completeness_gaps(model, x, y, base, raw)
        return result

    def scores_of(maps: Tensor, part: slice) -> dict:
        return metrics.evaluate(metric_names, model, images[part], labels[part], maps,
                                None if boxes is None else boxes[part], zero=zero[part],
                                batch_size=settings.method_settings.batch_size)

    maps, scores = {}, {}
    for method in methods:
        parts = []
        for index, part in enumerate(chunks):
            parts.append(cache.get(f"maps-{method}-{index}", lambda: maps_of(method, part, index)))
            tick()
        maps[method] = torch.cat([p["maps"] for p in parts])
        if method == "integrated_gradients":
            sanity["completeness_gap"] = _summary(torch.cat([p["completeness_gap"] for p in parts]))
        scored = []
        for index, part in enumerate(chunks):
            scored.append(cache.get(f"scores-{method}-{index}", lambda: scores_of(maps[method][part], part)))
            tick()
        scores[method] = {name: torch.cat([s[name] for s in scored]) for name in metric_names}

    manipulations = {}
    for method in [m for m in MANIPULATED if m in maps]:
        for label, manipulate in MANIPULATIONS.items():
            scored = []
            for index, part in enumerate(chunks):
                scored.append(cache.get(f"scores-{method}+{label}-{index}",
                                        lambda: scores_of(manipulate(maps[method][part]), part)))
                tick()
            after = {name: torch.cat([s[name] for s in scored]) for name in metric_names}
            manipulations[f"{method}+{label}"] = {
                name: {"before": float(scores[method][name].mean()), "after": float(after[name].mean()),
                       "gini_after": float(metrics.gini(manipulate(maps[method])).mean())}
                for name in metric_names}

    subset = slice(0, min(settings.randomization_n, settings.n))
    randomization = cache.get("randomization", lambda: cascading_randomization(
        model, images[subset], labels[subset], zero[subset], settings.methods, settings.method_settings,
        settings.seed, tick))
    if bar is not None:
        bar.close()

    result = {
        "model": str(settings.model), "dataset": data.name, "n": settings.n, "settings": asdict(settings),
        "orientation": "every metric is reported so that higher is better (deletion and average drop as 1 - raw)",
        "metrics": {method: {name: _summary(values) for name, values in by_metric.items()}
                    for method, by_metric in scores.items()},
        "sanity": {**sanity, "manipulations": manipulations, "randomization": randomization},
        "coherency": _coherency(scores, metric_names, out),
    }
    _write_outputs(out, result, indices, labels, scores, images, maps, boxes)
    plot_randomization(randomization, out / "randomization.png")
    return result


def _shape_of(data: DataSplits) -> tuple:
    return data.input_shape, data.num_classes


def metric_list(names: str, *, has_boxes: bool, dataset: str) -> list:
    """The metrics ``names`` asks for (a comma list, or "all": every metric, less the box metrics where the data
    has no boxes); ConfigError for an unknown name or a box metric asked for by name on data without boxes."""
    chosen = resolve(names, tuple(metrics.METRICS), "metric")
    if has_boxes:
        return chosen
    if not names or names == "all":
        return [name for name in chosen if not metrics.METRICS[name].needs_box]
    box_metrics = [name for name in chosen if metrics.METRICS[name].needs_box]
    if box_metrics:
        raise ConfigError(f"{dataset} has no object boxes, so the metrics {', '.join(box_metrics)} cannot be "
                          "computed: choose others with --metrics, or a dataset with boxes (digits-canvas, "
                          "mnist5k-canvas)")
    return chosen


def _coherency(scores: dict, names: list, out: Path) -> dict:
    """Per method: the correlation matrix between metrics across images (and its heat map); per metric:
    Krippendorff's alpha over the methods' ranks, images as raters."""
    correlations = {}
    for method, by_metric in scores.items():
        labels, matrix, kinds = coherency.metric_correlations({name: by_metric[name].numpy() for name in names})
        correlations[method] = {"metrics": labels, "matrix": _finite(matrix), "kinds": kinds.tolist()}
        coherency.plot_correlations(labels, matrix, out / f"coherency-{method}.png",
                                    f"{method}: correlation between metrics across images")
    methods = list(scores)
    alpha = {}
    for name in names:
        table = np.stack([scores[method][name].numpy() for method in methods], axis=1)  # [images, methods]
        value = coherency.krippendorff_alpha_ordinal(coherency.method_ranks(table))
        alpha[name] = None if math.isnan(value) else value
    return {"correlations": correlations, "alpha": alpha, "alpha_units": methods}


def _finite(matrix) -> list:
    return [[None if math.isnan(v) else float(v) for v in row] for row in np.asarray(matrix, dtype=float)]


def _write_outputs(out: Path, result: dict, indices, labels, scores, images, maps, boxes) -> None:
    write_atomically(out / "explanations.json", lambda f: f.write(json.dumps(result, indent=2).encode()))

    def write_rows(f):
        lines = [["image", "label", "method", "metric", "value"]]
        for method, by_metric in scores.items():
            for name, values in by_metric.items():
                lines += [[int(i), int(y), method, name, f"{float(v):.6g}"] for i, y, v in zip(indices, labels, values)]
        text = "\n".join(",".join(map(str, line)) for line in lines) + "\n"
        f.write(text.encode())

    write_atomically(out / "per_image.csv", write_rows)
    plot_examples(images, maps, boxes, out / "examples.png")
    write_atomically(out / "report.md", lambda f: f.write(report_markdown(result).encode()))


def plot_examples(images: Tensor, maps: dict, boxes, path, rows: int = EXAMPLES) -> None:
    """A grid PNG: one row per image (the first ``rows``), the input then each method's map, the box drawn."""
    from ..report import pyplot

    plt = pyplot()
    rows = min(rows, len(images))
    columns = ["input"] + list(maps)
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows), squeeze=False)
    for r in range(rows):
        for c, name in enumerate(columns):
            ax = axes[r, c]
            shown = images[r].mean(0) if name == "input" else maps[name][r]
            ax.imshow(shown.numpy(), cmap="gray" if name == "input" else "inferno")
            if boxes is not None:
                y0, x0, y1, x1 = boxes[r].tolist()
                ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="cyan",
                                           linewidth=1))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name.replace("_", "\n"), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_markdown(result: dict) -> str:
    """report.md: the metric table, the sanity checks, the coherency summary."""
    methods = list(result["metrics"])
    names = list(next(iter(result["metrics"].values())))
    sanity = result["sanity"]
    lines = [f"# tna-explain: {result['model']} on {result['dataset']} ({result['n']} test images)", "",
             f"Accuracy on these images {sanity['accuracy']:.3f}; {result['orientation']}.", "",
             "## Metrics (mean over images)", "",
             "| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{result['metrics'][m][name]['mean']:.3f}" for m in methods) + " |")
    alpha = result["coherency"]["alpha"]
    lines += ["", "## Coherency", "", "Krippendorff's alpha (ordinal, on the ranks of the methods per image; 1: every "
              "image ranks the methods alike):", "", "| metric | alpha |", "|---|---|"]
    lines += [f"| {name} | {'n/a' if alpha[name] is None else f'{alpha[name]:.3f}'} |" for name in names]
    lines += ["", "Correlations between metrics across images, per method: `coherency-<method>.png`.", "",
              "## Sanity checks", "", "Firing rate per layer (spikes per neuron per step): "
              + ", ".join(f"{k} {v:.3f}" for k, v in sanity["firing_rates"].items())
              + f"; output change between the images and the black baseline {sanity['output_change']:.3f}."]
    if "completeness_gap" in sanity:
        gap = sanity["completeness_gap"]
        lines.append(f"Integrated Gradients' completeness gap (relative): mean {gap['mean']:.3f}, std "
                     f"{gap['std']:.3f}.")
    randomization = sanity["randomization"]
    lines += ["", "Cascading randomization (Spearman with the trained maps after randomizing the layers down to "
              "each one; `randomization.png`):", "",
              "| method | " + " | ".join(randomization["layers"]) + " |",
              "|---|" + "---|" * len(randomization["layers"])]
    lines += [f"| {m} | " + " | ".join(f"{v:.2f}" for v in curve) + " |"
              for m, curve in randomization["spearman"].items()]
    if sanity["manipulations"]:
        lines += ["", "Map manipulations (mean before -> after):", "", "| manipulation | "
                  + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for label, by_metric in sanity["manipulations"].items():
            lines.append(f"| {label} | " + " | ".join(
                f"{v['before']:.3f} -> {v['after']:.3f}" for v in by_metric.values()) + " |")
    return "\n".join(lines) + "\n"


