"""The code-data ablation: probe generators and scorers on hand cases, the arms'
mixtures and token counts, the statistics, and the tiny preset end to end."""

import json
import math
import os

import numpy as np
import pytest

from configs import code_ablation as ablation_configs
from gptjax.data import packing
from gptjax.scaling import ablation, ablation_report, code_probes
from gptjax.scaling.probes import ProbeItem, exact_match

# ----------------------------------------------------------------------------
# Probe generators.


def _closer_of(context: str) -> str:
  """The closer an independent stack over the space-separated items expects."""
  stack = []
  for tok in context.split():
    if tok in "([{":
      stack.append(tok)
    elif tok in ")]}":
      assert stack.pop() == {")": "(", "]": "[", "}": "{"}[tok]
  return {"(": ")", "[": "]", "{": "}"}[stack[-1]]


def test_nested_items_close_the_opener_at_the_given_distance():
  items = code_probes.nested_items((1, 5, 9), n=20, seed=3)
  assert len(items) == 60
  for it in items:
    assert it.gold == _closer_of(it.context) and it.target == " " + it.gold
    toks = it.context.split()
    depth, i = 0, len(toks) - 1  # walk back to the unmatched opener
    while True:
      if toks[i] in ")]}":
        depth += 1
      elif toks[i] in "([{":
        if depth == 0:
          break
        depth -= 1
      i -= 1
    assert len(toks) - 1 - i == it.meta["distance"]


def test_code_brackets_pair_real_brackets_and_skip_strings():
  src = 'x = f(a, [1, 2])  # ( not this\ns = "( nor this"\nd = {"k": (3)}\n'
  pairs = code_probes.code_brackets(src)
  got = sorted((src[o], src[c], src[o + 1 : c]) for o, c in pairs)
  assert got == sorted(
    [("(", ")", "a, [1, 2]"), ("[", "]", "1, 2"), ("{", "}", '"k": (3)'), ("(", ")", "3")]
  )
  assert code_probes.code_brackets('s = """unterminated\n') == []  # no crash, no pairs


def test_prose_brackets_parentheses_and_quotes():
  text = 'He said "go now" (quietly).\n\nShe (who knew) left.'
  pairs = code_probes.prose_brackets(text)
  spans = sorted(text[o : c + 1] for o, c in pairs)
  assert spans == sorted(['"go now"', "(quietly)", "(who knew)"])


def test_closer_items_bin_by_span_and_end_before_the_closer():
  docs = [("d", "a = f(x)\nb = g(" + "y, " * 30 + "z)\n")]
  items = code_probes.closer_items(docs, "code", spans=(5, 200), n=5, lead=10)
  assert {it.meta["bin"] for it in items} == {5, 200}
  for it in items:
    assert it.gold == ")" and it.kind == "prefix"
    assert it.context.endswith(it.meta["between"]) and "(" + it.meta["between"] in it.context


def test_state_programs_agree_with_the_python_interpreter_and_english():
  for k in (1, 2, 4, 8):
    for it_code, it_en in zip(
      code_probes.state_items("code", (k,), 25, seed=1),
      code_probes.state_items("english", (k,), 25, seed=1),
    ):
      program, query = it_code.context.rsplit("\nassert ", 1)
      env: dict = {}
      exec(program, {}, env)  # noqa: S102 -- generated digits and names only
      assert str(env[query.split()[0]]) == it_code.gold == it_en.gold
      assert it_code.meta == it_en.meta == {"steps": k}
      assert it_en.context.count(" has") == k + 1  # k sentences and the query
  with pytest.raises(ValueError):
    code_probes.state_items("french", (1,), 1)


def test_arithmetic_items_teacher_force_the_gold_chain():
  from gptjax.tasks.world import make_world

  world = make_world(0)
  for cot in (False, True):
    for it in code_probes.arithmetic_items(world, (2,), 5, cot):
      assert it.kind == "number" and it.target == " " + it.gold
      assert it.context.endswith("The answer is")
      assert (it.context.count("=") >= 1) == cot
      assert exact_match(it, f"{it.context} {it.gold}.")
      assert not exact_match(it, f"{it.context} {int(it.gold) + 1}.")


def test_prefix_and_number_exact_match():
  it = ProbeItem("p", "p", " )", ")", "prefix")
  assert exact_match(it, ") + 1") and exact_match(it, " )") and not exact_match(it, "]")
  num = ProbeItem("p", "", " 12", "12", "number")
  assert exact_match(num, "3 + 9 = 12. The answer is 12.")
  assert not exact_match(num, "The answer is 12 or 13") and not exact_match(num, "none")


# ----------------------------------------------------------------------------
# Arms: mixtures, realised fractions, tokens.


def test_arm_mixture_keeps_the_rest_in_proportion():
  m = ablation.arm_mixture({"english": 0.45, "code": 0.25, "world": 0.3}, 0.5)
  assert m["code"] == 0.5 and sum(m.values()) == pytest.approx(1.0)
  assert m["english"] / m["world"] == pytest.approx(0.45 / 0.3)
  assert "code" not in ablation.arm_mixture({"english": 1.0, "code": 1.0}, 0.0)
  with pytest.raises(ValueError):
    ablation.arm_mixture({"english": 1.0}, 1.0)


def test_stratified_counts_hold_every_prefix_to_the_weights():
  w = np.array([0.1, 0.54, 0.36])
  B, total = 16, np.zeros(3)
  for s in range(500):
    c = packing.stratified_counts(w, s, B)
    assert c.sum() == B and (c >= 0).all()
    total += c
    assert np.all(np.abs(total - w * (s + 1) * B) < 1 + 1e-9)


def test_arms_realise_their_code_fraction_and_equal_tokens():
  config = ablation_configs.get_config("tiny")
  points = ablation.make_points(config)
  assert len(points) == 4 * 3 and len({p.tokens for p in points}) == 1
  assert len({(p.N, p.n_params, p.flops) for p in points}) == 1  # one size, one budget
  for p in points:
    realised = ablation.realised_fractions(p.config).get("code", 0.0)
    assert abs(realised - p.tags["code_fraction"]) <= 0.01
    assert p.config.data.mixture_sampling == "stratified"
  # The same fractions as drawn by the data pipeline itself (source ids of every batch).
  p = points[7]

  class Stub(packing.Pipeline):
    def __init__(self, config):  # no streams needed for the source ids
      mixture = packing.validate_mixture(config.data.mixture)
      self.sources, self.sampling = list(mixture), config.data.mixture_sampling
      self.weights = np.array(list(mixture.values())) / sum(mixture.values())

  pipe, B = Stub(p.config), p.config.train.batch_size
  rng = lambda s: np.random.default_rng((p.config.seed, s))
  ids = np.concatenate([pipe.row_sources(rng(s), s, B) for s in range(p.config.train.steps)])
  frac = np.mean(ids == pipe.sources.index("code"))
  assert abs(frac - 0.25) <= 0.01


# ----------------------------------------------------------------------------
# Statistics.


def test_mean_ci_and_difference_against_hand_values():
  s = ablation_report.mean_ci([1.0, 2.0, 3.0])
  assert s["mean"] == 2.0 and s["half"] == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
  d = ablation_report.difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
  # equal variances 1: se = sqrt(2/3), Welch df = 4, t = 2.776445
  half = 2.776445 * math.sqrt(2 / 3)
  assert d["diff"] == 1.0 and d["lo"] == pytest.approx(1 - half, rel=1e-5)
  assert ablation_report.verdict(d, 1) == "cannot tell at this size"
  assert ablation_report.verdict({"lo": 0.1, "hi": 0.3}, 1) == "reproduces"
  assert ablation_report.verdict({"lo": 0.1, "hi": 0.3}, -1).startswith("does not")
  # MDE: (t_.975,4 + t_.8,4) * 1 * sqrt(2/3)
  mde = ablation_report.min_detectable_effect([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
  assert mde == pytest.approx((2.776445 + 0.940965) * math.sqrt(2 / 3), rel=1e-4)


def test_distance_slope_is_the_weighted_fit_on_log2_distance():
  by = {  # log2 distances 1, 2, 3 with log-probs -3, -2, -2 and weights 1, 1, 2
    "<=2": {"exact": 0.0, "logprob": -3.0, "n": 1},
    "<=4": {"exact": 0.0, "logprob": -2.0, "n": 1},
    "<=8": {"exact": 0.0, "logprob": -2.0, "n": 2},
  }
  # x mean 2.25, y mean -2.25: sum w dx dy = 0.9375 - 0.0625 + 0.375 = 1.25; sum w dx^2 = 2.75
  assert ablation_report.distance_slope(by) == pytest.approx(1.25 / 2.75)
  # numpy's weighted polyfit (weights multiply residuals: sqrt of ours) agrees
  fit = np.polyfit([1, 2, 3], [-3, -2, -2], 1, w=np.sqrt([1, 1, 2]))
  assert ablation_report.distance_slope(by) == pytest.approx(fit[0])
  assert ablation_report.distance_slope({"2": {"logprob": -1.0, "n": 3}}) is None
  row = {"final_eval": {}, "probes": {"nested": {"exact": 0.0, "logprob": -2.0, "by": by}}}
  assert ablation_report.metrics_of(row)["nested/distance_slope"] == pytest.approx(1.25 / 2.75)


# ----------------------------------------------------------------------------
# The tiny preset end to end.


@pytest.mark.slow
def test_tiny_ablation_end_to_end(tmp_path, data_cache_dir):
  config = ablation_configs.get_config("tiny")
  config.code_fractions, config.seeds = (0.0, 0.5), (0, 1)  # ~2 minutes on 2 CPU cores
  config.overrides.mesh = {"num_devices": 1}  # no collectives on the 8 fake devices
  config.sft.mesh.num_devices = 1
  points = ablation.make_points(config)
  workdir = str(tmp_path / "ablation")
  status = ablation.run_ablation(config, workdir, data_cache_dir, (1, 2), log=lambda _: None)
  assert not status["failed"], status["failed"]
  assert status["ran"] == [p.name for p in points[1::2]]
  status = ablation.run_ablation(config, workdir, data_cache_dir, log=lambda _: None)
  assert sorted(status["skipped"]) == sorted(p.name for p in points[1::2])
  summary = ablation_report.analyze(config, workdir, points, log=lambda _: None)
  assert set(summary["arms"]) == {0.0, 0.5} and not summary["missing"]
  for p in points:
    rec = json.load(open(os.path.join(workdir, "points", p.name, "done.json")))
    assert rec["tokens"] == points[0].tokens and rec["code_fraction"] == p.tags["code_fraction"]
    assert {"nested", "state_english", "arith_cot", "fewshot_count"} <= set(rec["probes"])
    assert math.isfinite(rec["final_eval"]["english/loss"])
    assert ("code/loss" in rec["final_eval"]) == (p.tags["code_fraction"] > 0)
  text = open(os.path.join(workdir, "report.md")).read()
  assert "## Claims" in text and text.count("| long-range") == 6
  for img in ("probes_vs_code_fraction.png", "longrange_vs_distance.png"):
    assert os.path.exists(os.path.join(workdir, img))
