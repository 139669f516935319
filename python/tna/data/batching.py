"""Mini-batches on the training device: deterministic shuffling, rank sharding and augmentation.

All randomness comes from CPU ``torch.Generator``s seeded from ``(seed, epoch)`` (the order, shared
by every rank) and ``(seed, epoch, rank)`` (the augmentation), so a run resumed at an epoch boundary
sees the same batches, on CPU and GPU alike.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import DataSplits


def _generator(*entropy: int) -> torch.Generator:
    """A CPU generator seeded from non-negative integers, mixed by numpy's ``SeedSequence``."""
    seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def _shard(order: torch.Tensor, world_size: int, rank: int) -> torch.Tensor:
    """``rank``'s share of ``order`` (int64 ``[n]``), like ``DistributedSampler``: ``order`` is padded by
    wrapping around to a multiple of ``world_size``, then every ``world_size``-th index from
    ``rank`` is taken. Returns int64 ``[ceil(n / world_size)]``."""
    total = math.ceil(len(order) / world_size) * world_size
    copies = math.ceil(total / max(len(order), 1))
    return order.repeat(copies)[:total][rank::world_size]


def num_batches(data: DataSplits, train: bool, batch_size: int, *, world_size: int = 1,
                drop_last: bool = False) -> int:
    """How many batches ``batches`` yields per rank with the same arguments."""
    per_rank = math.ceil(len(data.train_y if train else data.test_y) / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Augment a whole batch at once on its own device.

    ``x``: float ``[B, ..., H, W]`` (images ``[B, C, H, W]`` or events ``[B, T, C, H, W]``). Each sample
    is zero-padded by ``padding`` on every side and cropped back to ``H x W`` at a random offset, the
    same for all its channels and timesteps; then, if ``flip``, mirrored left-right with probability
    1/2. Random numbers are drawn from the CPU ``generator``. Returns a tensor shaped like ``x``.
    """
    batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    device = x.device
    if padding > 0:
        padded = F.pad(x.reshape(batch, -1, height, width), (padding,) * 4)
        windows = padded.unfold(2, height, 1).unfold(3, width, 1)
        offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator).to(device)
        x = windows[torch.arange(batch, device=device), :, offsets[0], offsets[1]].reshape(x.shape)
    if flip:
        mirror = (torch.rand(batch, generator=generator) < 0.5).to(device)
        x = torch.where(mirror.view(batch, *[1] * (x.dim() - 1)), x.flip(-1), x)
    return x


def batches(data: DataSplits, train: bool, batch_size: int, *, seed: int, epoch: int, device="cpu",
            augment: bool = True, rank: int = 0, world_size: int = 1, drop_last: bool = False):
    """Yield ``(x, y)`` batches of one split.

    ``x``: float32 on ``device``, ``[B, C, H, W]`` (images) or ``[B, T, C, H, W]`` (events), normalized
    as ``(x - mean) / std`` per channel; ``y``: int64 ``[B]`` on ``device``.

    Training batches follow a permutation drawn from ``(seed, epoch)`` only (``seed``, ``epoch`` >= 0),
    and, if ``augment``, get ``random_crop_flip`` with ``data.crop_padding`` and ``data.flip`` (before
    normalization, so the padding is black / no events), its randomness drawn from
    ``(seed, epoch, rank)``. Test batches are in order and never augmented. With ``world_size > 1``
    each rank takes a disjoint 1/world_size share of the (shuffled) indices, padded by wrapping so
    every rank gets the same number of batches (``num_batches``); on the test split this counts up
    to world_size - 1 samples twice. ``drop_last`` drops a final batch smaller than ``batch_size``.
    The stored tensors may live on any device (e.g. moved to the GPU once with
    ``dataclasses.replace``); indexing happens there.
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got batch_size={batch_size}, "
                         f"rank={rank}, world_size={world_size}")
    stored_x, stored_y = (data.train_x, data.train_y) if train else (data.test_x, data.test_y)
    n = len(stored_y)
    order = torch.randperm(n, generator=_generator(seed, epoch)) if train else torch.arange(n)
    indices = _shard(order, world_size, rank).to(stored_x.device)
    augmentation = _generator(seed, epoch, rank) if train and augment else None
    mean = torch.tensor(data.mean, dtype=torch.float32, device=device).view(-1, 1, 1)
    std = torch.tensor(data.std, dtype=torch.float32, device=device).view(-1, 1, 1)
    for start in range(0, len(indices), batch_size):
        index = indices[start:start + batch_size]
        if drop_last and len(index) < batch_size:
            break
        x = stored_x[index].to(device).float()
        if augmentation is not None:
            x = random_crop_flip(x, data.crop_padding, data.flip, augmentation)
        yield (x - mean) / std, stored_y[index].to(device)
