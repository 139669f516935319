"""Do the evaluation metrics of explanations agree? (Vandersmissen & Oramas, arXiv 2302.10764)

- :func:`metric_correlations`: for one explanation method, the correlation of every pair of metrics across the
  images (Spearman, or point-biserial where a metric is binary).
- :func:`krippendorff_alpha_ordinal` over :func:`method_ranks`: with the images as raters and the methods as
  units, how far the images agree on the ranking of the methods by one metric.
- :func:`plot_correlations`: the correlation matrix as a heat map.
"""
import numpy as np
from scipy import stats

from ..report import pyplot


def _binary(values: np.ndarray) -> bool:
    return bool(np.isin(values, (0, 1)).all())


def metric_correlations(scores: dict) -> tuple[list, np.ndarray, np.ndarray]:
    """Correlations across images between the metrics of one method.

    ``scores``: ``{metric: array [n]}``, the n images in the same order for every metric. Returns the names
    ``[m]``, the symmetric matrix ``[m, m]`` float and the kinds ``[m, m]`` str: ``"point-biserial"`` where either
    metric's values all lie in {0, 1} (``scipy.stats.pointbiserialr``; the phi coefficient when both do), else
    ``"spearman"`` (``scipy.stats.spearmanr``). A pair with a metric constant over the images gives NaN.
    """
    names = list(scores)
    values = [np.asarray(scores[name], dtype=float) for name in names]
    size = len(names)
    matrix = np.full((size, size), np.nan)
    kinds = np.full((size, size), "spearman", dtype=object)
    for i in range(size):
        for j in range(i, size):
            binary = _binary(values[i]) or _binary(values[j])
            if binary:
                kinds[i, j] = kinds[j, i] = "point-biserial"
            if np.ptp(values[i]) > 0 and np.ptp(values[j]) > 0:
                correlation = stats.pointbiserialr if binary else stats.spearmanr
                matrix[i, j] = matrix[j, i] = correlation(values[i], values[j]).statistic
    return names, matrix, kinds


def method_ranks(scores: np.ndarray) -> np.ndarray:
    """``[images, methods]`` float: per image, the rank of each method by its score (``scores`` ``[images,
    methods]``, higher is better): 1 for the best, ties sharing their average rank, NaN scores left NaN and
    not ranked. These, not ``argsort`` (an order: which method stands at each place), are the ratings for
    :func:`krippendorff_alpha_ordinal`; the paper's authors' code passed the argsort order, which is a mistake."""
    return stats.rankdata(-np.asarray(scores, dtype=float), axis=1, nan_policy="omit")


def krippendorff_alpha_ordinal(ratings: np.ndarray) -> float:
    """Krippendorff's alpha at the ordinal level (Krippendorff, "Computing Krippendorff's alpha-reliability").

    ``ratings``: ``[raters, units]`` float, NaN where a rater gave no value. Only units with at least two values
    count. From the coincidence matrix ``o[c, k] = sum_u (ordered pairs of values c, k in unit u) / (m_u - 1)``
    (``m_u``: unit u's number of values), the marginals ``n_c`` and ``n = sum n_c``, the ordinal distance
    ``delta[c, k] = (sum_{g=c..k} n_g - (n_c + n_k) / 2) ** 2`` (the squared gap between the values' mid-ranks
    ``cumsum(n)_c - n_c / 2``): ``alpha = 1 - (n - 1) * sum o * delta / sum n_c n_k delta``. 1 is perfect
    agreement, 0 chance; NaN where nothing can disagree (no pairable unit or a single value). Reversing the
    order of the values leaves alpha unchanged.
    """
    ratings = np.asarray(ratings, dtype=float)
    pairable = ratings[:, (~np.isnan(ratings)).sum(0) >= 2]
    values = np.unique(pairable[~np.isnan(pairable)])
    counts = (pairable[:, :, None] == values).sum(0)
    weighted = counts / (counts.sum(1, keepdims=True) - 1)
    coincidences = weighted.T @ counts - np.diag(weighted.sum(0))
    marginals = coincidences.sum(1)
    mid_ranks = np.cumsum(marginals) - marginals / 2
    delta = (mid_ranks[:, None] - mid_ranks[None, :]) ** 2
    expected = (np.outer(marginals, marginals) * delta).sum()
    if expected == 0:
        return float("nan")
    return float(1 - (marginals.sum() - 1) * (coincidences * delta).sum() / expected)


def plot_correlations(names: list, matrix: np.ndarray, path, title: str) -> None:
    """A PNG heat map of ``matrix`` ``[m, m]`` (diverging colours from -1 to 1, the value written in each cell,
    "-" where NaN) with the metric ``names`` on both axes."""
    plt = pyplot()
    side = 3 + 0.6 * len(names)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, "-" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="white" if abs(value) > 0.6 else "black")
    fig.colorbar(image, ax=ax, label="correlation")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
