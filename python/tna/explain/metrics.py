"""Evaluation metrics of saliency maps (Vandersmissen & Oramas, arXiv 2302.10764), vectorized over a batch.

Conventions: ``classifier`` maps model inputs ``[B, C, H, W]`` float (already normalized: the model's input space)
to logits ``[B, K]``; a metric reads the softmax probability of ``labels`` (int64 ``[B]``, the true labels).
``images`` are ``[B, C, H, W]`` in the model's input space; ``maps`` are ``[B, H, W]`` float in [0, 1]
(non-negative and min-max scaled per image; nothing more is assumed, a constant map gives no NaN); ``boxes`` are
int64 ``[B, 4]`` as (y0, x0, y1, x1) with y1 and x1 exclusive. A baseline is a tensor like ``images``:
``constant_baseline`` (e.g. the normalized value of a black pixel), ``blur_baseline`` or ``noise_baseline``.

Deletion and insertion (Petsiuk et al., RISE): pixels are ranked by saliency, highest first, ties in raster order
(a stable sort). Step ``s`` of 100 perturbs the first ``min(s * ceil(H*W / 100), H*W)`` pixels of that order; the
label's probability is read at the 101 points ``s = 0 .. 100`` and the curve's trapezoid area is taken over the
fraction of pixels perturbed (``x = perturbed / (H*W)``, from 0 to 1; where ``100 * ceil(H*W / 100) > H*W`` the
last points all sit at ``x = 1`` and add no area). Deletion moves from the image toward the baseline, so a lower
area is better; insertion moves from the baseline toward the image, so a higher area is better. The ``_region9``
variants order the pixels region by region: non-overlapping 9x9 blocks (the last partial block of a row or column
included, its mean taken over its own pixels) ranked by mean saliency, ties by block index, raster order inside a
block; the schedule still counts pixels, so a step may perturb part of a block.

Average drop and increase in confidence (Chattopadhay et al., Grad-CAM++): ``p`` on the image and ``p'`` on the
image multiplied by the map, in a space whose origin is the zero baseline: ``zero + map * (image - zero)``. With
the default zero baseline (zeros of the model's input space, as in RISE's code) that is ``image * map`` in the
model's input space, which for normalized inputs pulls a pixel toward the dataset's mean pixel; a caller who wants
black passes ``constant_baseline(images, black)``. The ``_binary`` variants use ``map >= 0.5``.

:func:`evaluate` returns every metric oriented so that higher is better: a metric whose raw value is better lower
(deletion AUC, average drop; both in [0, 1]) is reported as ``1 - raw``. All reported values lie in [0, 1].
"""
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

STEPS = 100
BLUR_SIZE = 11
BLUR_SIGMA = 5.0
REGION = 9
BINARY_THRESHOLD = 0.5
BASELINES = ("zero", "blur", "noise")


def constant_baseline(images: Tensor, value: float | Sequence[float]) -> Tensor:
    """``[B, C, H, W]``: every pixel set to ``value``, a float or one value per channel (in the model's input
    space, e.g. ``(0 - mean) / std`` for black)."""
    fill = torch.as_tensor(value, dtype=images.dtype, device=images.device).reshape(-1, 1, 1)
    return torch.zeros_like(images) + fill


def _gaussian_blur(x: Tensor) -> Tensor:
    """``[N, C, H, W] -> [N, C, H, W]``: each channel blurred by an 11x11 Gaussian of sigma 5 (sum 1), the border
    extended by replicate padding (which works for any image size)."""
    offsets = torch.arange(BLUR_SIZE, dtype=x.dtype, device=x.device) - BLUR_SIZE // 2
    line = torch.exp(-offsets ** 2 / (2 * BLUR_SIGMA ** 2))
    kernel = torch.outer(line, line) / line.sum() ** 2
    channels = x.shape[1]
    padded = F.pad(x, [BLUR_SIZE // 2] * 4, mode="replicate")
    return F.conv2d(padded, kernel.expand(channels, 1, -1, -1), groups=channels)


def blur_baseline(images: Tensor) -> Tensor:
    """``[B, C, H, W]``: the images blurred by an 11x11 Gaussian of sigma 5, replicate padding."""
    return _gaussian_blur(images)


def noise_baseline(images: Tensor, generator: torch.Generator) -> Tensor:
    """``[B, C, H, W]``: Gaussian noise with, per image and channel, the mean and (population) standard deviation
    of that image's channel: the image's first two moments without its structure."""
    mean = images.mean((2, 3), keepdim=True)
    std = images.std((2, 3), correction=0, keepdim=True)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    return mean + std * noise


def _rescale(maps: Tensor) -> Tensor:
    """``[B, H, W]`` min-max scaled per image to [0, 1]; a constant map becomes zeros."""
    low = maps.amin((1, 2), keepdim=True)
    span = maps.amax((1, 2), keepdim=True) - low
    return (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny)


def blur_map(maps: Tensor) -> Tensor:
    """``[B, H, W]``: the maps blurred like :func:`blur_baseline`, then min-max rescaled to [0, 1]."""
    return _rescale(_gaussian_blur(maps[:, None])[:, 0])


def clip_map(maps: Tensor, percentile: float = 99) -> Tensor:
    """``[B, H, W]``: values above each map's ``percentile`` (linear interpolation between order statistics) set
    to it, then min-max rescaled to [0, 1]."""
    ceiling = torch.quantile(maps.flatten(1), percentile / 100, dim=1)
    return _rescale(torch.minimum(maps, ceiling[:, None, None]))


def binarize_map(maps: Tensor, threshold: float = BINARY_THRESHOLD) -> Tensor:
    """``[B, H, W]``: 1 where ``maps >= threshold``, else 0."""
    return (maps >= threshold).to(maps.dtype)


def random_maps(shape: Sequence[int], generator: torch.Generator) -> Tensor:
    """``shape`` (``[B, H, W]``): uniform random values in [0, 1) on the generator's device."""
    return torch.rand(tuple(shape), generator=generator, device=generator.device)


def box_maps(boxes: Tensor, height: int, width: int) -> Tensor:
    """``[B, H, W]`` float: the box as an explanation, 1 inside (y0 <= y < y1, x0 <= x < x1) and 0 outside."""
    ys = torch.arange(height, device=boxes.device)[None, :, None]
    xs = torch.arange(width, device=boxes.device)[None, None, :]
    y0, x0, y1, x1 = (boxes[:, i, None, None] for i in range(4))
    return ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)).float()


def _label_probabilities(classifier: Callable, count: int, build: Callable, batch_size: int,
                         device: torch.device) -> Tensor:
    """``[count]``: the label's softmax probability for ``count`` inputs made ``batch_size`` at a time by
    ``build(index int64 [n]) -> (inputs [n, C, H, W], labels int64 [n])``."""
    chunks = []
    for start in range(0, count, batch_size):
        inputs, labels = build(torch.arange(start, min(start + batch_size, count), device=device))
        with torch.no_grad():
            logits = classifier(inputs)
        chunks.append(torch.softmax(logits.float(), dim=1).gather(1, labels[:, None])[:, 0])
    return torch.cat(chunks)


def _pixel_ranks(maps: Tensor, region: int) -> Tensor:
    """``[B, H*W]`` int64: each pixel's position in the perturbation order. Blocks of ``region`` x ``region``
    pixels (1: single pixels) are ranked by mean saliency, highest first, ties by block index; pixels follow
    their block's rank, then raster order."""
    _, height, width = maps.shape
    means = F.avg_pool2d(maps[:, None], region, ceil_mode=True).flatten(1)
    block_rank = torch.empty_like(means, dtype=torch.long)
    order = torch.sort(means, dim=1, descending=True, stable=True).indices
    block_rank.scatter_(1, order, torch.arange(means.shape[1], device=maps.device).expand_as(order))
    ys = torch.arange(height, device=maps.device)[:, None] // region
    xs = torch.arange(width, device=maps.device)[None, :] // region
    block = (ys * math.ceil(width / region) + xs).flatten()
    key = block_rank[:, block] * (height * width) + torch.arange(height * width, device=maps.device)
    ranks = torch.empty_like(key)
    ranks.scatter_(1, key.argsort(dim=1), torch.arange(height * width, device=maps.device).expand_as(key))
    return ranks


def _curve(classifier: Callable, images: Tensor, labels: Tensor, maps: Tensor, start: Tensor, end: Tensor,
           region: int, batch_size: int) -> tuple[Tensor, Tensor]:
    """The label's probability as pixels go from ``start`` to ``end`` (both ``[B, C, H, W]``) in the order of
    ``maps``: fractions ``[STEPS + 1]`` of pixels moved, probabilities ``[B, STEPS + 1]``."""
    batch, _, height, width = images.shape
    pixels = height * width
    moved = (torch.arange(STEPS + 1, device=images.device) * math.ceil(pixels / STEPS)).clamp_max(pixels)
    ranks = _pixel_ranks(maps, region)

    def build(index):
        image, step = index // (STEPS + 1), index % (STEPS + 1)
        mask = (ranks[image] < moved[step, None]).view(-1, 1, height, width)
        return torch.where(mask, end[image], start[image]), labels[image]

    probabilities = _label_probabilities(classifier, batch * (STEPS + 1), build, batch_size, images.device)
    return moved.float() / pixels, probabilities.view(batch, STEPS + 1)


def deletion_curve(classifier: Callable, images: Tensor, labels: Tensor, maps: Tensor, baseline: Tensor, *,
                   region: int = 1, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Deletion: the most salient pixels (``region`` 9: 9x9 blocks) replaced by ``baseline`` step by step.
    Returns the fractions of pixels replaced ``[101]`` and the label's probabilities ``[B, 101]``, the first
    point on the unperturbed images."""
    return _curve(classifier, images, labels, maps, images, baseline, region, batch_size)


def insertion_curve(classifier: Callable, images: Tensor, labels: Tensor, maps: Tensor, baseline: Tensor, *,
                    region: int = 1, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Insertion: from ``baseline``, the most salient pixels of the images put back step by step. Returns the
    fractions of pixels put back ``[101]`` and the label's probabilities ``[B, 101]``, the first point on the
    baseline."""
    return _curve(classifier, images, labels, maps, baseline, images, region, batch_size)


def auc(fractions: Tensor, probabilities: Tensor) -> Tensor:
    """``[B]``: trapezoid area under ``probabilities`` ``[B, n]`` over ``fractions`` ``[n]`` (0 to 1)."""
    return torch.trapezoid(probabilities, fractions, dim=1)


def _confidences(classifier: Callable, images: Tensor, labels: Tensor, maps: Tensor, zero: Tensor, binary: bool,
                 batch_size: int) -> tuple[Tensor, Tensor]:
    """``p`` ``[B]`` on the images and ``p'`` ``[B]`` on ``zero + map * (image - zero)`` (the map, thresholded
    where ``binary``, broadcast over channels)."""
    if binary:
        maps = binarize_map(maps)
    both = torch.cat([images, zero + maps[:, None] * (images - zero)])
    labels = torch.cat([labels, labels])
    probabilities = _label_probabilities(classifier, len(both), lambda index: (both[index], labels[index]),
                                         batch_size, images.device)
    return probabilities.chunk(2)


def average_drop(classifier: Callable, images: Tensor, labels: Tensor, maps: Tensor, zero: Tensor, *,
                 binary: bool = False, batch_size: int = 256) -> Tensor:
    """``[B]`` in [0, 1]: ``max(0, p - p') / p``, the relative loss of confidence when only the map's pixels are
    kept (lower is better; 0 where ``p`` is 0)."""
    p, masked = _confidences(classifier, images, labels, maps, zero, binary, batch_size)
    return (p - masked).clamp_min(0) / p.clamp_min(torch.finfo(p.dtype).tiny)


def increase_confidence(classifier: Callable, images: Tensor, labels: Tensor, maps: Tensor, zero: Tensor, *,
                        binary: bool = False, batch_size: int = 256) -> Tensor:
    """``[B]`` in {0, 1}: 1 where keeping only the map's pixels raises the confidence (``p' > p``)."""
    p, masked = _confidences(classifier, images, labels, maps, zero, binary, batch_size)
    return (masked > p).float()


def pointing_game(maps: Tensor, boxes: Tensor) -> Tensor:
    """``[B]`` in {0, 1}: 1 where a pixel holding the map's maximum lies in the box (with ties, any maximum
    inside is a hit, so a constant map hits any non-empty box)."""
    inside = box_maps(boxes, *maps.shape[1:]) > 0
    top = maps == maps.amax((1, 2), keepdim=True)
    return (top & inside).flatten(1).any(1).float()


def iou(maps: Tensor, boxes: Tensor) -> Tensor:
    """``[B]``: intersection over union of the map's non-zero pixels and the box (0 where both are empty)."""
    inside = box_maps(boxes, *maps.shape[1:]) > 0
    region = maps > 0
    union = (region | inside).flatten(1).sum(1)
    return (region & inside).flatten(1).sum(1) / union.clamp_min(1)


def relevance_mass(maps: Tensor, boxes: Tensor) -> Tensor:
    """``[B]``: the map's sum inside the box over its total sum (0 for an all-zero map)."""
    total = maps.flatten(1).sum(1)
    inside = (maps * box_maps(boxes, *maps.shape[1:])).flatten(1).sum(1)
    return inside / total.clamp_min(torch.finfo(maps.dtype).tiny)


def gini(maps: Tensor) -> Tensor:
    """``[B]``: Gini index of each map's n values (Hurley & Rickard): with ``c`` sorted ascending,
    ``1 - 2 * sum_k c_k / sum(c) * (n - k + 1/2) / n`` for k = 1 .. n. 0 for a uniform (or all-zero) map,
    ``1 - 1/n`` for a one-hot map."""
    values = maps.flatten(1).sort(dim=1).values
    n = values.shape[1]
    weights = (n - torch.arange(1, n + 1, dtype=values.dtype, device=values.device) + 0.5) / n
    total = values.sum(1)
    index = 1 - 2 * (values * weights).sum(1) / total.clamp_min(torch.finfo(values.dtype).tiny)
    return torch.where(total > 0, index, 0.0)


@dataclass(frozen=True)
class Inputs:
    """What a metric may read: see the module docstring; ``baselines`` maps each of ``BASELINES`` to a tensor
    ``[B, C, H, W]``."""
    classifier: Callable
    images: Tensor
    labels: Tensor
    maps: Tensor
    boxes: Tensor | None
    baselines: dict
    batch_size: int


@dataclass(frozen=True)
class Metric:
    """``function(Inputs) -> Tensor [B]`` gives the raw value, better higher where ``higher_is_better_raw``;
    ``needs_box``: it reads ``boxes``."""
    function: Callable[[Inputs], Tensor]
    higher_is_better_raw: bool
    needs_box: bool
    description: str


def _curve_metric(curve: Callable, baseline: str, region: int, inputs: Inputs) -> Tensor:
    return auc(*curve(inputs.classifier, inputs.images, inputs.labels, inputs.maps, inputs.baselines[baseline],
                      region=region, batch_size=inputs.batch_size))


def _confidence_metric(function: Callable, binary: bool, inputs: Inputs) -> Tensor:
    return function(inputs.classifier, inputs.images, inputs.labels, inputs.maps, inputs.baselines["zero"],
                    binary=binary, batch_size=inputs.batch_size)


def _box_metric(function: Callable, inputs: Inputs) -> Tensor:
    return function(inputs.maps, inputs.boxes)


def _registry() -> dict:
    metrics = {}
    for baseline in BASELINES:
        for region, suffix, unit in ((1, "", "pixels"), (REGION, f"_region{REGION}", f"{REGION}x{REGION} regions")):
            metrics[f"deletion_{baseline}{suffix}"] = Metric(
                partial(_curve_metric, deletion_curve, baseline, region), False, False,
                f"1 - AUC of the label's probability as the most salient {unit} become the {baseline} baseline")
            metrics[f"insertion_{baseline}{suffix}"] = Metric(
                partial(_curve_metric, insertion_curve, baseline, region), True, False,
                f"AUC of the label's probability as the most salient {unit} return onto the {baseline} baseline")
    for binary, suffix, kept in ((False, "", "image * map"), (True, "_binary", "image * (map >= 0.5)")):
        metrics[f"average_drop{suffix}"] = Metric(
            partial(_confidence_metric, average_drop, binary), False, False,
            f"1 - max(0, p - p') / p, p' the label's probability on {kept} (toward the zero baseline)")
        metrics[f"increase_confidence{suffix}"] = Metric(
            partial(_confidence_metric, increase_confidence, binary), True, False,
            f"1 where p' > p, p' the label's probability on {kept} (toward the zero baseline)")
    metrics["pointing_game"] = Metric(partial(_box_metric, pointing_game), True, True,
                                      "1 where a maximum of the map lies in the box")
    metrics["iou"] = Metric(partial(_box_metric, iou), True, True,
                            "intersection over union of the map's non-zero pixels and the box")
    metrics["relevance_mass"] = Metric(partial(_box_metric, relevance_mass), True, True,
                                       "the map's sum inside the box over its total sum")
    metrics["sparsity_gini"] = Metric(lambda inputs: gini(inputs.maps), True, False,
                                      "Gini index of the map's values (0 uniform, toward 1 concentrated)")
    return metrics


METRICS = _registry()


def evaluate(names: Sequence[str], classifier: Callable, images: Tensor, labels: Tensor, maps: Tensor,
             boxes: Tensor | None = None, *, zero: Tensor | None = None, blur: Tensor | None = None,
             noise: Tensor | None = None, batch_size: int = 256) -> dict[str, Tensor]:
    """``{name: Tensor [B]}``, float32 on the images' device, for each of ``names`` (keys of ``METRICS``), every
    value oriented so that higher is better (``1 - raw`` where the raw metric is better lower).

    Baselines ``[B, C, H, W]`` in the model's input space, each built when not given: ``zero`` defaults to
    ``constant_baseline(images, 0.0)`` (the model space's zeros; pass the normalized black for black pixels),
    ``blur`` to ``blur_baseline(images)``, ``noise`` to ``noise_baseline(images, generator seeded 0)``. The
    classifier runs on at most ``batch_size`` inputs at a time, under ``torch.no_grad()``.
    """
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {sorted(METRICS)}")
    boxed = [name for name in names if METRICS[name].needs_box]
    if boxed and boxes is None:
        raise ValueError(f"metrics {boxed} need bounding boxes, and boxes=None (the data has none)")
    if maps.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"maps must be [B, H, W] = {[images.shape[0], *images.shape[2:]]}, got {list(maps.shape)}")
    baselines = {
        "zero": constant_baseline(images, 0.0) if zero is None else zero,
        "blur": blur_baseline(images) if blur is None else blur,
        "noise": (noise_baseline(images, torch.Generator(images.device).manual_seed(0)) if noise is None
                  else noise),
    }
    inputs = Inputs(classifier, images, labels, maps, boxes, baselines, batch_size)
    results = {}
    for name in names:
        raw = METRICS[name].function(inputs).float()
        results[name] = raw if METRICS[name].higher_is_better_raw else 1 - raw
    return results
