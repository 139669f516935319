"""scikit-learn's bundled 8x8 handwritten digits: the default dataset, no download needed."""
import numpy as np
import torch

from .base import DataError, DataSplits

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
    """Split sample indices so each class keeps ``test_fraction`` of its samples for testing.

    ``labels``: int ``[N]``. Returns ``(train, test)``, sorted int64 index arrays that partition
    ``range(N)``. The split depends only on ``labels``, ``test_fraction`` and ``seed``.
    """
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        test.append(rng.permutation(members)[: round(test_fraction * len(members))])
    test = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(labels)), test), test


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
    train, test = stratified_split(bunch.target, TEST_FRACTION, SPLIT_SEED)
    train_x = images[train]
    std, mean = torch.std_mean(train_x.float(), correction=0)
    return DataSplits(
        name="digits",
        train_x=train_x,
        train_y=labels[train],
        test_x=images[test],
        test_y=labels[test],
        num_classes=10,
        input_shape=(1, 8, 8),
        is_events=False,
        mean=(mean.item(),),
        std=(std.item(),),
        crop_padding=1,
        flip=False,
    )
