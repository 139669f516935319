"""The types every dataset loader returns or raises: ``DataSplits`` and ``DataError``."""
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

DEFAULT_DATA_DIR = Path("data")


class DataError(Exception):
    """Missing or malformed data.

    ``str(error)`` is one user-facing paragraph that names the files or folders that were expected
    and says how to get them (``--download``, or where to put the archive).
    """


@dataclass(frozen=True)
class DataSplits:
    """A dataset held in memory, both splits, in its compact stored form.

    Images are uint8 ``[N, C, H, W]``; event recordings are uint8 ``[N, T, C, H, W]`` (events per
    time bin, pixel and polarity, clipped to 255). Labels are int64 ``[N]``. ``mean`` and ``std`` are
    per channel, in units of the stored values (zeros and ones for events), and are applied by
    ``batches``; ``crop_padding`` (0 = no crop) and ``flip`` describe the training augmentation.
    ``val_x`` / ``val_y``: the validation part held out of the training split by ``hold_out`` (None when
    nothing was held out); ``validation()`` presents it as the test split, for evaluation.
    ``test_boxes`` / ``test_masks``: where the object of each test image lies, for explanation methods and
    their evaluation (the canvas datasets; None for the others). ``test_boxes`` is int64 ``[N_test, 4]``,
    rows ``(y0, x0, y1, x1)`` in pixels with ``y1`` and ``x1`` exclusive, the tight box of ``test_masks``;
    ``test_masks`` is bool ``[N_test, H, W]``, True on the object's pixels (a digit's strokes).
    """

    name: str
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    num_classes: int
    input_shape: tuple
    is_events: bool
    mean: tuple
    std: tuple
    crop_padding: int
    flip: bool
    val_x: Optional[torch.Tensor] = field(default=None, repr=False)
    val_y: Optional[torch.Tensor] = field(default=None, repr=False)
    test_boxes: Optional[torch.Tensor] = field(default=None, repr=False)
    test_masks: Optional[torch.Tensor] = field(default=None, repr=False)

    def validation(self) -> "DataSplits":
        """A copy whose test split is this one's validation split, without boxes or masks (raises ValueError
        when there is none)."""
        if self.val_y is None:
            raise ValueError(f"{self.name}: no validation split was held out")
        return dataclasses.replace(self, test_x=self.val_x, test_y=self.val_y, val_x=None, val_y=None,
                                   test_boxes=None, test_masks=None)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
    """Split sample indices so each class keeps ``test_fraction`` of its samples (rounded) for testing.

    ``labels``: int ``[N]``. Returns ``(train, test)``, sorted int64 index arrays that partition
    ``range(N)``. The split depends only on ``labels``, ``test_fraction`` and ``seed``.
    """
    rng = np.random.default_rng(seed)
    test = [np.empty(0, dtype=np.int64)]
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        test.append(rng.permutation(members)[: round(test_fraction * len(members))])
    test = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(labels)), test), test


def grayscale_splits(name: str, images: torch.Tensor, labels: torch.Tensor, *, test_fraction: float, seed: int,
                     crop_padding: int) -> DataSplits:
    """A bundled grayscale image dataset, split into train and test by ``stratified_split`` (fixed ``seed``).

    ``images``: uint8 ``[N, 1, H, W]``; ``labels``: int64 ``[N]`` in 0..9. ``mean`` and ``std`` come from the
    training split; no horizontal flip (digits are not mirror-symmetric).
    """
    train, test = stratified_split(labels.numpy(), test_fraction, seed)
    train_x = images[train]
    mean, std = grayscale_stats(train_x)
    return DataSplits(name=name, train_x=train_x, train_y=labels[train], test_x=images[test], test_y=labels[test],
                      num_classes=10, input_shape=tuple(images.shape[1:]), is_events=False, mean=mean, std=std,
                      crop_padding=crop_padding, flip=False)


def grayscale_stats(images: torch.Tensor) -> tuple:
    """``(mean, std)`` of uint8 ``[N, 1, H, W]`` images over every pixel, each a 1-tuple of floats."""
    std, mean = torch.std_mean(images.float(), correction=0)
    return (mean.item(),), (std.item(),)


HOLD_OUT_SEED = 1


def hold_out(data: DataSplits, val_fraction: float, train_fraction: float = 1.0) -> DataSplits:
    """Carve a validation split out of ``data``'s training split, then keep a fraction of the rest for training.

    Per class, ``val_fraction`` of the training samples become the validation split; of the remaining ones,
    ``train_fraction`` are kept for training (a stratified subset; 1 keeps all). Both choices depend only on
    the labels and the fractions (a fixed seed, independent of any training seed), so every run of a
    comparison sees the same validation and training samples, and the validation split does not change with
    ``train_fraction``. The test split (with its boxes and masks), ``mean`` and ``std`` are unchanged. When
    ``val_fraction`` rounds to no sample of any class (a tiny dataset), nothing is held out and ``val_x`` /
    ``val_y`` stay None; with ``val_fraction`` 0 and ``train_fraction`` 1, ``data`` itself is returned.
    """
    if not 0 <= val_fraction < 1 or not 0 < train_fraction <= 1:
        raise ValueError(f"need 0 <= val_fraction < 1 and 0 < train_fraction <= 1, got {val_fraction} and "
                         f"{train_fraction}")
    if val_fraction == 0 and train_fraction == 1:
        return data
    labels = data.train_y.cpu().numpy()
    rest, val = stratified_split(labels, val_fraction, HOLD_OUT_SEED)
    if train_fraction < 1:
        _, kept = stratified_split(labels[rest], train_fraction, HOLD_OUT_SEED + 1)
        rest = rest[kept]
    if len(rest) == 0:
        raise ValueError(f"{data.name}: val_fraction {val_fraction} and train_fraction {train_fraction} leave "
                         f"no training samples")
    rest, val = torch.from_numpy(rest), torch.from_numpy(val)
    has_val = len(val) > 0
    return dataclasses.replace(data, train_x=data.train_x[rest], train_y=data.train_y[rest],
                               val_x=data.train_x[val] if has_val else None,
                               val_y=data.train_y[val] if has_val else None)


def resolve_folder(data_dir, folder: str, marker: str) -> Path:
    """The dataset folder ``folder`` inside ``data_dir``, or ``data_dir`` itself when it already is
    that folder: named ``folder``, or holding the entry ``marker`` (a file or subfolder every copy
    of the dataset has)."""
    data_dir = Path(DEFAULT_DATA_DIR if data_dir is None else data_dir).expanduser()
    if data_dir.name == folder or (data_dir / marker).exists():
        return data_dir
    return data_dir / folder
