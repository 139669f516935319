"""Tests for tna.report's statistics: the paired difference over seeds and its Student-t interval."""
import pytest

from tna.report import paired_difference


def test_paired_difference_matches_a_hand_computation():
    values = {0: 0.90, 1: 0.80, 2: 0.85}
    reference = {0: 0.85, 1: 0.80, 2: 0.80, 3: 0.10}  # seed 3 has no partner and is left out
    diff = paired_difference(values, reference)
    # differences 0.05, 0, 0.05: mean 1/30, sample sd 0.05 / sqrt(3); t(0.975, 2 df) = 4.302653
    half = 4.302653 * (0.05 / 3 ** 0.5) / 3 ** 0.5
    assert diff["seeds"] == [0, 1, 2]
    assert diff["mean"] == pytest.approx(1 / 30)
    assert diff["low"] == pytest.approx(1 / 30 - half, rel=1e-5)
    assert diff["high"] == pytest.approx(1 / 30 + half, rel=1e-5)


def test_paired_difference_with_too_few_seeds_has_no_interval():
    assert paired_difference({0: 0.5}, {0: 0.25}) == {"seeds": [0], "mean": 0.25, "low": None, "high": None}
    assert paired_difference({0: 0.5}, {1: 0.25})["mean"] is None
