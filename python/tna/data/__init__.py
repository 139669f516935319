"""Datasets for the TNA trainer, held in memory as compact uint8 tensors, and device-side batching.

``load_dataset(name, data_dir)`` returns a ``DataSplits``; ``batches(data, train, batch_size, ...)``
turns it into normalized, shuffled and augmented float batches on the training device. Missing or
malformed data raises ``DataError``, whose message tells the user what to fetch and where to put it.
"""
from .base import DataError, DataSplits, hold_out
from .batching import batches, num_batches, random_crop_flip
from .canvas import CANVASES, load_canvas
from .cifar import load_cifar
from .digits import load_digits_splits
from .dvs import load_cifar10dvs
from .mnist5k import load_mnist5k

DATASETS = ("digits", "mnist5k", "digits-canvas", "mnist5k-canvas", "cifar10", "cifar100", "cifar10dvs")

__all__ = ["DATASETS", "DataError", "DataSplits", "batches", "hold_out", "load_dataset", "num_batches",
           "random_crop_flip"]


def load_dataset(name: str, data_dir=None, *, timesteps: int = 10, size: int = 48, download: bool = False,
                 val_fraction: float = 0.0, train_fraction: float = 1.0) -> DataSplits:
    """Load the dataset ``name`` (one of ``DATASETS``) with both splits.

    ``data_dir`` (default ``./data``; ignored by the bundled ``digits`` and ``mnist5k`` and their canvases)
    holds the dataset folder (``cifar-10-batches-py``, ``cifar-100-python``, ``CIFAR10DVS``) or is that
    folder itself.
    ``timesteps`` (frames per recording) and ``size`` (frame height and width) only matter for
    ``cifar10dvs``. ``download=True`` fetches a missing CIFAR or CIFAR10-DVS dataset.
    ``val_fraction`` / ``train_fraction``: see ``hold_out`` (the defaults hold nothing out).
    """
    if name == "digits":
        data = load_digits_splits()
    elif name == "mnist5k":
        data = load_mnist5k()
    elif name in CANVASES:
        data = load_canvas(name)
    elif name in ("cifar10", "cifar100"):
        data = load_cifar(name, data_dir, download=download)
    elif name == "cifar10dvs":
        data = load_cifar10dvs(data_dir, timesteps=timesteps, size=size, download=download)
    else:
        raise DataError(f"Unknown dataset {name!r}: choose one of {', '.join(DATASETS)}.")
    return hold_out(data, val_fraction, train_fraction)
