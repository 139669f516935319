"""Explanation methods for the package's spiking networks: one saliency map per image, for its true label.

Every method takes a ``model`` (``[B, C, H, W]`` images, or ``[B, T, C, H, W]`` event frames, -> logits
``[B, K]``; a ``SpikingNetwork`` or a deployed one), ``inputs`` in the model's input space, int64 ``labels``
``[B]`` and a ``baseline`` shaped like ``inputs`` (the "absent" input: a black image, which for normalized
inputs is ``-mean / std``, not zero). Captum computes the methods it has; this module adds the time folding of
Grad-CAM, RISE and the Spike Activation Map.

- ``saliency``: the gradient of the label's logit (Captum ``Saliency``, signed).
- ``integrated_gradients``: Captum ``IntegratedGradients`` from the baseline, ``ig_steps`` steps (Gauss-Legendre).
- ``smoothgrad``: Captum ``NoiseTunnel`` over the gradient, ``smoothgrad_samples`` samples of Gaussian noise
  with a standard deviation of ``smoothgrad_sigma`` times the batch's value range.
- ``occlusion``: Captum ``Occlusion``, square windows of ``occlusion_window`` pixels moved by
  ``occlusion_stride``, filled with the baseline; the attribution is the drop of the label's softmax.
- ``gradcam``: Grad-CAM at the last convolution, folded over time (Kim & Panda's SNN Grad-CAM): the layer runs
  on the folded ``[T * B, C, h, w]`` batch, so Captum's ``LayerGradCam`` gives one ReLU'd map per timestep,
  viewed as ``[T, B, h, w]`` and summed over T, then upsampled (bilinear) to the input size.
- ``rise``: RISE (Petsiuk et al., 2018): ``rise_masks`` random masks from a ``rise_grid`` x ``rise_grid`` grid
  whose cells are kept with probability ``rise_keep``, upsampled and randomly shifted; the map is the average
  of the masks weighted by the label's softmax on ``baseline + (inputs - baseline) * mask``.
- ``sam``: the Spike Activation Map (Kim & Panda, 2021), forward only and label-free: at each timestep t the
  sum over channels of ``spike(t) * sum_{t' < t, spike(t')} exp(-sam_gamma * (t - t'))`` in the last spiking
  layer with a spatial map, so neurons that fire again after a short interval light up; summed over T.

``explain`` turns any of them into maps ``[B, H, W]`` the way the evaluation paper does: negative values set
to 0, the mean over channels (and time, for event frames), min-max scaled to [0, 1] per image.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import tna_kernels.nn as tnn

from ..models.layers import SpikingNeurons, StaticLinearStem, StaticStem

METHODS = ("saliency", "integrated_gradients", "smoothgrad", "occlusion", "gradcam", "rise", "sam")


@dataclass(frozen=True)
class MethodSettings:
    """The methods' parameters; the defaults are the evaluation paper's (Vandersmissen & Oramas)."""

    ig_steps: int = 50
    smoothgrad_samples: int = 10
    smoothgrad_sigma: float = 0.1
    occlusion_window: int = 8
    occlusion_stride: int = 8
    rise_masks: int = 5000
    rise_grid: int = 7
    rise_keep: float = 0.1
    sam_gamma: float = 0.5
    batch_size: int = 64


def to_maps(attributions: Tensor) -> Tensor:
    """``[B, ..., H, W]`` attributions -> maps ``[B, H, W]`` in [0, 1]: max(0, .), the mean over the dimensions
    between batch and space, min-max per image (a constant map becomes all zeros)."""
    maps = attributions.detach().float().clamp(min=0)
    maps = maps.flatten(1, -3).mean(1) if maps.dim() > 3 else maps
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp(min=torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def last_conv(model: nn.Module) -> nn.Module:
    """The last convolution of ``model`` in module order (Grad-CAM's layer); ValueError when it has none."""
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, tnn.TernaryConv2d))]
    if not convs:
        raise ValueError("gradcam needs a convolution, and this model has none (an MLP?)")
    return convs[-1]


def last_spatial_neurons(model: nn.Module, inputs: Tensor) -> SpikingNeurons:
    """The last spiking layer of ``model`` whose output has a spatial map (``[T, B, C, h, w]``), found by one
    forward pass; ValueError when there is none."""
    found = []
    hooks = [m.register_forward_hook(lambda module, args, out: found.append(module) if out.dim() == 5 else None)
             for m in model.modules() if isinstance(m, SpikingNeurons)]
    try:
        with torch.no_grad():
            model(inputs[:1])
    finally:
        for hook in hooks:
            hook.remove()
    if not found:
        raise ValueError("sam needs a spiking layer with a spatial map, and this model has none (an MLP?)")
    return found[-1]


def _softmax_of(model: nn.Module):
    return lambda x: torch.softmax(model(x), dim=1)


def _upsample(maps: Tensor, size) -> Tensor:
    """``[B, h, w]`` -> ``[B, H, W]`` (bilinear)."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def gradcam_per_timestep(model: nn.Module, inputs: Tensor, labels: Tensor, layer: nn.Module = None) -> Tensor:
    """Grad-CAM of every timestep at ``layer`` (default ``last_conv``): ``[T, B, h, w]``, each ReLU'd; the layer
    must run on the folded ``[T * B, ...]`` batch (or on ``[B, ...]`` once, as a static stem does: T = 1)."""
    from captum.attr import LayerGradCam

    layer = last_conv(model) if layer is None else layer
    cams = LayerGradCam(model, layer).attribute(inputs, target=labels, relu_attributions=True)
    return cams.squeeze(1).unflatten(0, (-1, len(inputs)))


def spike_activation_map(spikes: Tensor, gamma: float) -> Tensor:
    """SAM of every timestep from a spiking layer's output ``spikes`` ``[T, B, C, h, w]`` (0/1): ``[T, B, h, w]``
    where step t sums, over channels, ``spikes[t] * sum_{t' < t} spikes[t'] * exp(-gamma * (t - t'))``."""
    steps = spikes.shape[0]
    t = torch.arange(steps, dtype=spikes.dtype, device=spikes.device)
    gap = t[:, None] - t[None, :]
    decay = torch.where(gap > 0, torch.exp(-gamma * gap), torch.zeros_like(gap))  # [t, t']
    contribution = torch.einsum("st,tbchw->sbchw", decay, spikes)
    return (contribution * spikes).sum(2)


def _sam(model: nn.Module, inputs: Tensor, gamma: float) -> Tensor:
    layer = last_spatial_neurons(model, inputs)
    captured = []
    hook = layer.register_forward_hook(lambda module, args, out: captured.append(out.detach()))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        hook.remove()
    return spike_activation_map(captured[0].float(), gamma).sum(0)


def rise_masks(count: int, grid: int, keep: float, size, generator: torch.Generator) -> Tensor:
    """``count`` RISE masks ``[count, H, W]`` in [0, 1]: a random ``grid`` x ``grid`` binary grid (cells kept with
    probability ``keep``) upsampled (bilinear) to ``grid + 1`` cells' size and cropped at a random shift."""
    height, width = size
    cell_h, cell_w = math.ceil(height / grid), math.ceil(width / grid)
    cells = (torch.rand(count, 1, grid, grid, generator=generator) < keep).float()
    big = F.interpolate(cells, size=((grid + 1) * cell_h, (grid + 1) * cell_w), mode="bilinear",
                        align_corners=False).squeeze(1)
    dy = torch.randint(cell_h, (count,), generator=generator)
    dx = torch.randint(cell_w, (count,), generator=generator)
    rows = (dy[:, None] + torch.arange(height))[:, :, None]
    cols = (dx[:, None] + torch.arange(width))[:, None, :]
    return big[torch.arange(count)[:, None, None], rows, cols].clamp(0, 1)  # interpolation may round past 1


def _rise(model: nn.Module, inputs: Tensor, labels: Tensor, baseline: Tensor, settings: MethodSettings,
          generator: torch.Generator) -> Tensor:
    masks = rise_masks(settings.rise_masks, settings.rise_grid, settings.rise_keep, inputs.shape[-2:], generator)
    masks = masks.to(inputs.device)
    saliency = torch.zeros(len(inputs), *inputs.shape[-2:], device=inputs.device)
    with torch.no_grad():
        for image, base, label, out in zip(inputs, baseline, labels, saliency):
            for chunk in masks.split(settings.batch_size):
                shaped = chunk.view(len(chunk), *([1] * (image.dim() - 2)), *chunk.shape[-2:])
                probs = torch.softmax(model(base + (image - base) * shaped), dim=1)[:, label]
                out += torch.einsum("n,nhw->hw", probs, chunk)
    return saliency / (settings.rise_masks * settings.rise_keep)


def attribute(method: str, model: nn.Module, inputs: Tensor, labels: Tensor, baseline: Tensor,
              settings: MethodSettings = MethodSettings(), generator: torch.Generator = None) -> Tensor:
    """The raw attributions of ``method`` (one of ``METHODS``): shaped like ``inputs`` for the input methods,
    ``[B, H, W]`` for gradcam, rise and sam. ``generator`` seeds smoothgrad's noise and RISE's masks."""
    from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency

    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}: choose from {', '.join(METHODS)}")
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    if method in ("saliency", "smoothgrad"):
        inputs = inputs.detach().requires_grad_(True)
    if method == "saliency":
        return Saliency(model).attribute(inputs, target=labels, abs=False)
    if method == "integrated_gradients":
        return IntegratedGradients(model).attribute(inputs, baselines=baseline, target=labels,
                                                    n_steps=settings.ig_steps, internal_batch_size=settings.batch_size)
    if method == "smoothgrad":
        sigma = settings.smoothgrad_sigma * (inputs.max() - inputs.min()).item()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=generator)))
            return NoiseTunnel(Saliency(model)).attribute(inputs, nt_type="smoothgrad",
                                                          nt_samples=settings.smoothgrad_samples, stdevs=sigma,
                                                          target=labels, abs=False)
    if method == "occlusion":
        window = (*inputs.shape[1:-2], settings.occlusion_window, settings.occlusion_window)
        strides = (*inputs.shape[1:-2], settings.occlusion_stride, settings.occlusion_stride)
        return Occlusion(_softmax_of(model)).attribute(inputs, sliding_window_shapes=window, strides=strides,
                                                       baselines=baseline, target=labels,
                                                       perturbations_per_eval=max(1, settings.batch_size // len(inputs)))
    if method == "gradcam":
        return _upsample(gradcam_per_timestep(model, inputs, labels).sum(0), inputs.shape[-2:])
    if method == "rise":
        return _rise(model, inputs, labels, baseline, settings, generator)
    return _upsample(_sam(model, inputs, settings.sam_gamma), inputs.shape[-2:])


def saliency_per_timestep(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    """The gradient of the label's logit with respect to each timestep's input: ``[T, B, C, H, W]``, summing over
    T to the plain gradient. For event frames that is the input's own time axis; for direct encoding, where a
    static stem computes one current and feeds it at every step, it is the stem's vector-Jacobian product with
    the current's gradient at that step."""
    inputs = inputs.detach().requires_grad_(True)
    if getattr(model, "is_events", False):
        logits = model(inputs)
        grad, = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), inputs)
        return grad.transpose(0, 1)
    stem = getattr(model, "stem", None)
    if not isinstance(stem, (StaticStem, StaticLinearStem)):
        raise ValueError("per-timestep maps of direct-encoded inputs need a model with a static stem")
    fed = []
    hook = stem.lif.register_forward_pre_hook(lambda module, args: fed.append(args[0]))
    try:
        logits = model(inputs)
    finally:
        hook.remove()
    current, = fed  # [T, B, ...]: the stem's current expanded over time
    grad_current, = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), current, retain_graph=True)
    steps = []
    for t in range(len(grad_current)):
        only_t = torch.zeros_like(grad_current)
        only_t[t] = grad_current[t]
        steps.append(torch.autograd.grad(current, inputs, grad_outputs=only_t, retain_graph=True)[0])
    return torch.stack(steps)


def explain(method: str, model: nn.Module, inputs: Tensor, labels: Tensor, baseline: Tensor,
            settings: MethodSettings = MethodSettings(), generator: torch.Generator = None) -> Tensor:
    """Maps ``[B, H, W]`` in [0, 1] of ``method`` for ``labels`` (see ``attribute`` and ``to_maps``)."""
    return to_maps(attribute(method, model, inputs, labels, baseline, settings, generator))
