"""scikit-learn's bundled 8x8 handwritten digits: the default dataset, no download needed."""
import numpy as np
import torch

from .base import DataError, DataSplits, grayscale_splits

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def load_digits_splits() -> DataSplits:
    """The 1797 digits as uint8 ``[N, 1, 8, 8]`` (values 0..16), 10 classes, split 80/20 per class
    with a fixed seed (independent of any training seed), so the test set never changes; mean and
    std come from the training split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DataError(
            "The 'digits' dataset is scikit-learn's bundled 8x8 digits, but scikit-learn is not "
            "installed: run `pip install scikit-learn` (or install the training extra, "
            "`pip install \"tna-kernels[train]\"`)."
        ) from err
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return grayscale_splits("digits", images, labels, test_fraction=TEST_FRACTION, seed=SPLIT_SEED,
                            crop_padding=1)
