"""Tests for the coherency analysis: metric correlations, ordinal Krippendorff's alpha over method ranks, the plot."""
import math

import numpy as np
import pytest
from scipy import stats

from tna.explain.coherency import krippendorff_alpha_ordinal, method_ranks, metric_correlations, plot_correlations


def test_identical_rankings_agree_perfectly():
    ranks = method_ranks(np.array([[0.9, 0.1, 0.5, 0.3]] * 6) + np.arange(6)[:, None])
    assert krippendorff_alpha_ordinal(ranks) == pytest.approx(1.0)


def test_alpha_by_hand():
    # Units (1, 1), (2, 3), (3, 2): o_11 = 2, o_23 = o_32 = 2; n_c = 2 for c = 1, 2, 3 and n = 6; mid-ranks 1, 3, 5,
    # so delta_12 = delta_23 = 4 and delta_13 = 16. Observed: sum o * delta = 2 * 4 + 2 * 4 = 16; expected:
    # sum n_c n_k delta = 2 * 4 * (4 + 16 + 4) = 192; alpha = 1 - (n - 1) * 16 / 192 = 7 / 12.
    ratings = np.array([[1.0, 2.0, 3.0], [1.0, 3.0, 2.0]])
    assert krippendorff_alpha_ordinal(ratings) == pytest.approx(7 / 12)


def test_alpha_skips_units_with_one_value_and_is_nan_without_disagreement_possible():
    ratings = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, np.nan], [np.nan] * 4])
    assert krippendorff_alpha_ordinal(ratings) == pytest.approx(7 / 12)
    assert math.isnan(krippendorff_alpha_ordinal(np.array([[2.0, 2.0], [2.0, 2.0]])))
    assert math.isnan(krippendorff_alpha_ordinal(np.array([[1.0, np.nan], [np.nan, 2.0]])))


def test_alpha_matches_the_krippendorff_package():
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(0)
    for _ in range(5):
        ratings = rng.integers(1, 6, size=(9, 7)).astype(float)
        ratings[rng.random(ratings.shape) < 0.25] = np.nan
        expected = krippendorff.alpha(reliability_data=ratings, level_of_measurement="ordinal")
        assert krippendorff_alpha_ordinal(ratings) == pytest.approx(expected)
    ranks = method_ranks(rng.random((12, 5)) + np.arange(5))
    expected = krippendorff.alpha(reliability_data=ranks, level_of_measurement="ordinal")
    assert krippendorff_alpha_ordinal(ranks) == pytest.approx(expected)


def test_method_ranks_are_ranks_not_an_argsort_order():
    scores = np.array([[0.3, 0.1, 0.2], [0.5, 0.5, np.nan]])
    ranks = method_ranks(scores)
    np.testing.assert_array_equal(ranks[0], [1, 3, 2])           # argsort of -scores would be [0, 2, 1]
    np.testing.assert_array_equal(ranks[1], [1.5, 1.5, np.nan])
    both = np.array([[0.3, 0.1, 0.2], [0.31, 0.11, 0.21], [0.1, 0.3, 0.2]])
    by_rank = krippendorff_alpha_ordinal(method_ranks(both))
    by_order = krippendorff_alpha_ordinal(np.argsort(-both, axis=1).astype(float))
    assert by_rank != pytest.approx(by_order)


def test_correlations():
    rng = np.random.default_rng(1)
    x = rng.random(16)
    hit = (x + 0.3 * rng.random(16) > 0.6).astype(float)
    names, matrix, kinds = metric_correlations({"a": x, "cubed": x ** 3, "hit": hit, "flat": np.full(16, 0.4)})
    assert names == ["a", "cubed", "hit", "flat"]
    assert matrix[0, 1] == pytest.approx(1.0) and kinds[0, 1] == "spearman"
    assert matrix[0, 2] == pytest.approx(stats.pointbiserialr(hit, x).statistic)
    assert kinds[2, 0] == "point-biserial" and matrix[2, 0] == matrix[0, 2]
    assert matrix[0, 2] != pytest.approx(stats.spearmanr(hit, x).statistic)
    assert np.isnan(matrix[3]).all() and np.isnan(matrix[:, 3]).all()
    assert np.allclose(np.diag(matrix)[:3], 1.0)


def test_plot_writes_a_png(tmp_path):
    names, matrix, _ = metric_correlations({"a": [1, 2, 3, 4], "b": [4, 3, 1, 2], "c": [0, 0, 0, 0]})
    plot_correlations(names, matrix, tmp_path / "correlations.png", "method X")
    assert (tmp_path / "correlations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
