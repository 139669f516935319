"""Digits pasted at random places on a larger, noisy canvas: classification data whose test split says where
the evidence lies (a box and a stroke mask per image), for explanation methods and their evaluation.

``digits-canvas``: each 8x8 ``digits`` image (values 0..16) on a 24x24 canvas, background noise 0..1.
``mnist5k-canvas``: each 28x28 ``mnist5k`` image (values 0..255) on a 48x48 canvas, background noise 0..12.

Every canvas pixel starts as uniform integer noise in ``0..noise_max`` (at most 1/16 of the value range), so a
black (all-zero) baseline differs from the image everywhere, not only on the digit. The source image is then
placed at a uniformly random offset, and its non-zero (stroke) pixels replace the noise exactly; its zero
pixels keep the noise. The stroke pixels form the mask, and the mask's tight box is the box. Offsets and noise
come from a fixed seed, independent of any training seed, so the dataset is the same on every load.

The source's train / test split, labels and classes are kept. No random crop (``crop_padding`` 0): the digit
is already placed at random, and a crop would shift it off its recorded box; no flip, as for the sources.
"""
import dataclasses

import numpy as np
import torch

from .base import DataSplits, grayscale_stats
from .digits import load_digits_splits
from .mnist5k import load_mnist5k

CANVAS_SEED = 0

# name: (source loader, canvas side in pixels, largest noise value)
CANVASES = {
    "digits-canvas": (load_digits_splits, 24, 1),
    "mnist5k-canvas": (load_mnist5k, 48, 12),
}


def paste(images: torch.Tensor, side: int, noise_max: int, rng: np.random.Generator) -> tuple:
    """Place each image at a random offset on a noisy ``side`` x ``side`` canvas.

    ``images``: uint8 ``[N, 1, h, w]`` with ``h, w <= side``. Returns ``(canvas, masks)``: the canvases, uint8
    ``[N, 1, side, side]``, and the stroke masks, bool ``[N, side, side]`` (True where the placed image is
    non-zero; there the canvas equals the image, elsewhere it is noise in ``0..noise_max``).
    """
    n, _, h, w = images.shape
    noise = rng.integers(0, noise_max + 1, size=(n, side, side), dtype=np.uint8)
    top = rng.integers(0, side - h + 1, size=n)
    left = rng.integers(0, side - w + 1, size=n)
    rows = (top[:, None] + np.arange(h))[:, :, None]
    cols = (left[:, None] + np.arange(w))[:, None, :]
    placed = np.zeros((n, side, side), dtype=np.uint8)
    placed[np.arange(n)[:, None, None], rows, cols] = images[:, 0].numpy()
    masks = placed > 0
    canvas = np.where(masks, placed, noise)
    return torch.from_numpy(canvas).unsqueeze(1), torch.from_numpy(masks)


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """The smallest box around each mask: bool ``[N, H, W]`` (each with a True pixel) -> int64 ``[N, 4]`` rows
    ``(y0, x0, y1, x1)``, ``y1`` and ``x1`` exclusive."""
    rows, cols = masks.any(2), masks.any(1)
    y0, x0 = rows.int().argmax(1), cols.int().argmax(1)
    y1 = masks.shape[1] - rows.flip(1).int().argmax(1)
    x1 = masks.shape[2] - cols.flip(1).int().argmax(1)
    return torch.stack([y0, x0, y1, x1], 1).long()


def load_canvas(name: str) -> DataSplits:
    """The canvas dataset ``name`` (a key of ``CANVASES``): uint8 ``[N, 1, side, side]`` images, the source's
    labels and split, mean and std of the training canvases, and the test split's ``test_boxes`` and
    ``test_masks``. A missing source package raises the source's ``DataError``."""
    load_source, side, noise_max = CANVASES[name]
    source = load_source()
    rng = np.random.default_rng(CANVAS_SEED)
    train_x, _ = paste(source.train_x, side, noise_max, rng)
    test_x, test_masks = paste(source.test_x, side, noise_max, rng)
    mean, std = grayscale_stats(train_x)
    return dataclasses.replace(source, name=name, train_x=train_x, test_x=test_x, input_shape=(1, side, side),
                               mean=mean, std=std, crop_padding=0, test_boxes=tight_boxes(test_masks),
                               test_masks=test_masks)
