"""The paired bootstrap over prompts (gptjax.rlhf.stats.paired_bootstrap)."""

import itertools

import numpy as np
import pytest
from scipy import stats as scipy_stats

from gptjax.rlhf import stats


def test_hand_case_counts_and_point_estimates():
  a = [1.0, 0.5, 0.0, 0.4, 0.4]
  b = [0.0, 0.5, 1.0, 0.0, 0.2]
  r = stats.paired_bootstrap(a, b, n_boot=2000, seed=0)
  assert (r["wins"], r["ties"], r["losses"]) == (3, 1, 1)
  assert r["win_rate"] == pytest.approx((3 + 0.5) / 5)
  assert r["mean_diff"] == pytest.approx((1.0 + 0 - 1.0 + 0.4 + 0.2) / 5)
  assert r["mean_a"] == pytest.approx(0.46) and r["mean_b"] == pytest.approx(0.34)
  for key, point in (("mean_diff_ci95", r["mean_diff"]), ("win_rate_ci95", r["win_rate"])):
    lo, hi = r[key]
    assert lo < point < hi


def test_degenerate_intervals_collapse():
  """A constant difference and a clean sweep leave nothing to resample."""
  a = np.linspace(0, 1, 7)
  r = stats.paired_bootstrap(a, a - 0.25, n_boot=500)
  assert r["mean_diff_ci95"] == pytest.approx([0.25, 0.25])
  assert r["win_rate_ci95"] == pytest.approx([1.0, 1.0]) and r["losses"] == 0


def test_matches_exact_bootstrap_distribution():
  """n = 4 prompts: all 4^4 resamples are equally likely, so the exact percentile
  interval is computable by enumeration; Monte Carlo must land on it."""
  d = np.array([0.0, 0.1, 0.5, 1.0])
  means = np.array([d[list(idx)].mean() for idx in itertools.product(range(4), repeat=4)])
  exact = np.percentile(means, [2.5, 97.5])
  r = stats.paired_bootstrap(d, np.zeros(4), n_boot=40_000, seed=3)
  assert r["mean_diff_ci95"] == pytest.approx(exact, abs=0.03)


def test_agrees_with_scipy_percentile_bootstrap():
  rng = np.random.default_rng(0)
  a = rng.random(60).round(1)  # coarse scores: ties happen
  b = rng.random(60).round(1)
  r = stats.paired_bootstrap(a, b, n_boot=20_000, seed=1)
  diff = scipy_stats.bootstrap(
    (a, b),
    lambda x, y: np.mean(x - y),
    paired=True,
    vectorized=False,
    n_resamples=20_000,
    method="percentile",
    random_state=2,
  ).confidence_interval
  w = (a > b) + 0.5 * (a == b)
  win = scipy_stats.bootstrap(
    (w,), np.mean, n_resamples=20_000, method="percentile", random_state=2
  ).confidence_interval
  assert r["mean_diff_ci95"] == pytest.approx([diff.low, diff.high], abs=0.01)
  assert r["win_rate_ci95"] == pytest.approx([win.low, win.high], abs=0.01)


def test_expected_win_values_replace_the_indicator():
  a, b = np.array([0.3, 0.3]), np.array([0.3, 0.3])
  r = stats.paired_bootstrap(a, b, n_boot=100, wins=[0.9, 0.7])
  assert r["win_rate"] == pytest.approx(0.8)
  assert r["ties"] == 2  # the counts still compare a and b as given


def test_bad_input_raises():
  with pytest.raises(ValueError, match="equal-length"):
    stats.paired_bootstrap([1.0, 2.0], [1.0])
  with pytest.raises(ValueError, match="n_boot"):
    stats.paired_bootstrap([1.0], [1.0], n_boot=0)
  with pytest.raises(ValueError, match="wins"):
    stats.paired_bootstrap([1.0], [1.0], wins=[1.5])
