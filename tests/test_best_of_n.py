"""Best-of-n (gptjax.rlhf.best_of_n): picking, the KL bound, exact subsampling,
and the expected W/T/L against greedy SFT. The end-to-end run is in test_dpo.py."""

import itertools
import math

import numpy as np
import pytest

from gptjax.rlhf import best_of_n, dpo, stats


def test_pick_with_a_fake_scorer():
  """A scorer that likes long answers picks the longest; the oracle picks the best gold."""
  answers = ["4", "The answer is 4.", "I think it is 5, probably.", "5"]
  gold = [1.0, 0.9, 0.0, 0.0]
  length_scorer = [len(a) for a in answers]
  assert answers[best_of_n.pick(length_scorer)] == "I think it is 5, probably."
  assert answers[best_of_n.pick(gold)] == "4"
  assert best_of_n.pick(length_scorer, n=2) == 1  # only the first two samples compete


def test_kl_bound():
  assert best_of_n.kl_bound(1) == 0.0
  assert best_of_n.kl_bound(4) == pytest.approx(math.log(4) - 0.75)
  assert best_of_n.kl_bound(16) == pytest.approx(1.8350, abs=1e-4)
  # The bound is exact for a continuous scorer: KL = sum_i p_i log(p_i / (1/N)) where
  # the best-of-n of N equally likely distinct outcomes picks the i-th smallest with
  # probability (i/N)^n - ((i-1)/N)^n. As N grows it tends to log n - (n-1)/n.
  N, n = 100_000, 4
  i = np.arange(1, N + 1)
  p = (i / N) ** n - ((i - 1) / N) ** n
  kl = float(np.sum(p * np.log(p * N)))
  assert kl == pytest.approx(best_of_n.kl_bound(n), abs=1e-3)
  with pytest.raises(ValueError, match="n >= 1"):
    best_of_n.kl_bound(0)


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_pick_weights_equal_enumerating_every_subset(n):
  keys = np.array([0.3, 0.9, 0.3, 0.1, 0.9, 0.5])  # ties: the lower index wins
  want = np.zeros(len(keys))
  subsets = list(itertools.combinations(range(len(keys)), n))
  for s in subsets:
    want[s[int(np.argmax(keys[list(s)]))]] += 1 / len(subsets)
  np.testing.assert_allclose(best_of_n.pick_weights(keys, n), want, atol=1e-12)


def test_pick_weights_are_unbiased_for_a_sampled_subset():
  """The weighted estimate equals the mean over random n-subsets (Monte Carlo)."""
  rng = np.random.default_rng(0)
  keys, gold = rng.random(16), rng.random(16)
  exact = best_of_n.pick_weights(keys, 4) @ gold
  draws = [gold[s][np.argmax(keys[s])] for s in (rng.choice(16, 4, False) for _ in range(20000))]
  assert exact == pytest.approx(np.mean(draws), abs=0.005)
  with pytest.raises(ValueError, match="1 <= n <= 16"):
    best_of_n.pick_weights(keys, 17)


def test_expected_judgement_and_outcome():
  js = [
    {"family": "count", "outcome": "correct", "correct": True, "score": 1.0},
    {"family": "count", "outcome": "wrong", "correct": False, "score": 0.0},
    {"family": "count", "outcome": "idk", "correct": False, "score": 0.4},
  ]
  w = np.array([0.5, 0.25, 0.25])
  e = best_of_n.expected_judgement(js, w)
  assert e == {"family": "count", "correct": 0.5, "score": pytest.approx(0.6)}
  np.testing.assert_allclose(best_of_n.expected_outcome([1.0, 0.0, 0.4], 0.4, w), [0.5, 0.25, 0.25])


def _judgement(score):
  """An `oracle.classify` dict of a qa_known answer with this score."""
  flags = dict.fromkeys(("content_correct", "idk", "declined", "hallucinated"), False)
  correct = score == 1.0
  outcome = "correct" if correct else "idk" if score == 0.4 else "wrong"
  return {"family": "qa_known", "outcome": outcome, "correct": correct, **flags, "score": score}


def test_report_matches_stats_for_concrete_picks():
  """With n = N every weight is 0 or 1: the expected report is the plain one,
  and win_summary equals stats.win_rate."""
  rng = np.random.default_rng(1)
  gold = rng.choice([0.0, 0.4, 1.0], size=(12, 3))
  rm = rng.random((12, 3))
  greedy = [_judgement(g) for g in rng.choice([0.0, 1.0], 12)]
  judgements = [[_judgement(g) for g in row] for row in gold]
  r = best_of_n.report("reward_model", greedy, judgements, gold, rm, rm, 3, 200, 0)
  picked = gold[np.arange(12), rm.argmax(1)]
  g_sft = [j["score"] for j in greedy]
  _same_win_rate(r["win_rate_vs_sft"], stats.win_rate(picked, g_sft))
  assert r["gold_mean"]["best_of_3"] == pytest.approx(picked.mean())
  assert r["kl_bound"] == pytest.approx(math.log(3) - 2 / 3)
  assert r["rm_score_mean"] == pytest.approx(rm.max(1).mean())
  w = dpo.win_summary(dpo.win_tie_loss(picked, g_sft))
  _same_win_rate(w, stats.win_rate(picked, g_sft))


def test_versus_sft_bootstraps_the_change_of_the_strict_correct_rate():
  """correct_vs_sft: the method's strict correct rate minus SFT's on the same
  prompts, with a paired interval that holds it, also for a method correct
  exactly where SFT is not; the report prints it beside the two rates."""
  from gptjax.pipeline import report

  rng = np.random.default_rng(2)
  sft = [_judgement(g) for g in rng.choice([0.0, 0.4, 1.0], 200)]
  method = [_judgement(g) for g in rng.choice([0.0, 0.4, 1.0], 200, p=[0.2, 0.2, 0.6])]
  c = dpo.versus_sft("m", sft, method, n_boot=500)["correct_vs_sft"]
  want = np.mean([j["correct"] for j in method]) - np.mean([j["correct"] for j in sft])
  assert c["mean_diff"] == pytest.approx(want) and c["n"] == 200
  assert c["mean_diff_ci95"][0] < want < c["mean_diff_ci95"][1]
  flipped = [_judgement(0.0 if j["correct"] else 1.0) for j in sft]
  c = dpo.versus_sft("m", sft, flipped, n_boot=100)["correct_vs_sft"]
  lost = -np.mean([j["correct"] for j in sft]) + np.mean([not j["correct"] for j in sft])
  assert c["mean_diff"] == pytest.approx(lost)
  assert report._change_interval(c) == f" ({lost:+.3f} [{c['mean_diff_ci95'][0]:+.3f}, " + (
    f"{c['mean_diff_ci95'][1]:+.3f}])"
  )
  assert report._change_interval(None) == ""  # an eval.json from before


def _same_win_rate(got, want):
  assert got.keys() == want.keys()
  assert got["ci95"] == pytest.approx(want["ci95"])
  assert {k: v for k, v in got.items() if k != "ci95"} == pytest.approx(
    {k: v for k, v in want.items() if k != "ci95"}
  )


def test_config_presets_validate():
  from configs import best_of_n as configs

  for preset in ("tiny", "small", "base"):
    best_of_n.validate(configs.get_config(preset))
  bad = configs.get_config("tiny")
  bad.best_of_n.ns = (0, 4)
  with pytest.raises(ValueError, match="best_of_n.ns"):
    best_of_n.validate(bad)
